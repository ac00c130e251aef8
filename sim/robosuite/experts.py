"""Scripted experts for the wrapped robosuite tasks (privileged state, waypoint machines).

Each expert reads object and end-effector poses straight from robosuite's MuJoCo data
(privileged: a policy only sees ``obs``) and walks through a list of waypoints, e.g.
above the cube -> down to it -> close -> lift. At every step it servos the grip site to
the current waypoint with a proportional OSC_POSE delta action (position and, to keep
the gripper pointing down and aligned with the object, orientation), then adds Gaussian
noise of std ``noise`` to the whole action for suboptimal demonstrations.

Waypoint targets are functions of the live state, so a waypoint follows an object that
moved; a waypoint ends when the grip site is within ``tol`` of it (and, when it has an
orientation target, within ``rot_tol``) or its ``done`` condition holds, after at least
``min_steps`` steps, and after ``max_steps`` steps at the latest so a noisy expert never
stalls. If the object slips out of the hand while carrying (``retry_if``), the expert
plans again from the current state: open, go back above the object, grasp again.

Tasks: Lift, Stack (grasp the red cube across the line to the green one, place it on
top, release), PickPlaceCan (carry the can into its quadrant of the target bin) and Door
(grasp the lever from the front, turn it down, pull the door along its arc).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from sim.robosuite.env import ACTION_POS_SCALE, ACTION_ROT_SCALE, ARM, RobosuiteEnv
from vptr.errors import ConfigError

OPEN, CLOSE = -1.0, 1.0
# Grip frame of the Panda hand pointing straight down with yaw 0, as in robosuite's
# initial pose (x axis ~ world +y, z axis ~ world -z). The fingers close along the grip
# frame's x axis (measured from the finger pad positions), i.e. along world y here.
_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


# --------------------------------------------------------------------- privileged state
class Privileged:
    """Read-only view of the robosuite sim that the experts need (world frame)."""

    def __init__(self, env: RobosuiteEnv) -> None:
        self.rs = env.robosuite_env
        robot = self.rs.robots[0]
        self.eef_site = robot.eef_site_id[ARM]
        self._base_id = self.rs.sim.model.body_name2id(robot.robot_model.root_body)

    @property
    def data(self):
        return self.rs.sim.data

    def eef_pos(self) -> np.ndarray:
        return np.array(self.data.site_xpos[self.eef_site])

    def eef_rot(self) -> np.ndarray:
        return np.array(self.data.site_xmat[self.eef_site]).reshape(3, 3)

    def base_rot(self) -> np.ndarray:
        return np.array(self.data.body_xmat[self._base_id]).reshape(3, 3)

    def body_pos(self, body_id: int) -> np.ndarray:
        return np.array(self.data.body_xpos[body_id])

    def body_yaw(self, body_id: int) -> float:
        m = np.array(self.data.body_xmat[body_id]).reshape(3, 3)
        return float(np.arctan2(m[1, 0], m[0, 0]))


def down_rotation(yaw: float) -> np.ndarray:
    """Grip frame pointing down, rotated by ``yaw`` about world z."""
    c, s = np.cos(yaw), np.sin(yaw)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return rz @ _DOWN


def grasp_yaw(object_yaw: float, symmetry: float, avoid_xy: np.ndarray | None = None) -> float:
    """Gripper yaw (about the straight-down pose) that aligns the fingers with an object
    whose shape repeats every ``symmetry`` radians about z (pi/2 for a cube).

    Without ``avoid_xy`` the smallest such yaw; with it, the aligned yaw whose finger
    closing axis is most perpendicular to ``avoid_xy`` (e.g. towards a neighbouring
    object the open fingers could land on).
    """
    base = (object_yaw + symmetry / 2) % symmetry - symmetry / 2
    if avoid_xy is None:
        return float(base)
    # The two fingers are interchangeable, so yaws are equivalent modulo pi.
    n = max(1, round(np.pi / symmetry))
    cands = [(base + k * symmetry + np.pi / 2) % np.pi - np.pi / 2 for k in range(n)]
    avoid = np.asarray(avoid_xy, dtype=float) / (np.linalg.norm(avoid_xy) + 1e-9)

    def alignment(yaw: float) -> float:  # |cos| between the finger axis and avoid_xy
        return abs(float(np.array([-np.sin(yaw), np.cos(yaw)]) @ avoid))

    return float(min(cands, key=lambda c: (round(alignment(c), 3), abs(c))))


def servo_action(eef_pos: np.ndarray, eef_rot: np.ndarray, target_pos: np.ndarray,
                 target_rot: np.ndarray | None, base_rot: np.ndarray, gain: float = 1.0,
                 max_pos: float = 1.0, rot_gain: float = 1.0) -> np.ndarray:
    """OSC_POSE delta action (6,) moving the grip site towards a target pose.

    robosuite's OSC_POSE (input_ref_frame="base", goal_update_mode="achieved") sets the
    goal to the current pose plus the scaled delta expressed in the robot base frame; the
    rotation delta is an axis-angle that left-multiplies the current orientation
    (robosuite/controllers/parts/arm/osc.py, compute_goal_pos / compute_goal_ori).
    """
    action = np.zeros(6)
    dpos = base_rot.T @ (target_pos - eef_pos) * gain / ACTION_POS_SCALE
    norm = np.linalg.norm(dpos)
    action[:3] = dpos * (max_pos / norm if norm > max_pos else 1.0)
    if target_rot is not None:
        rotvec = Rotation.from_matrix(target_rot @ eef_rot.T).as_rotvec()
        action[3:] = np.clip(base_rot.T @ rotvec * rot_gain / ACTION_ROT_SCALE, -1.0, 1.0)
    return np.clip(action, -1.0, 1.0)


def rotation_error(a: np.ndarray, b: np.ndarray) -> float:
    """Angle in radians between two rotation matrices."""
    return float(np.linalg.norm(Rotation.from_matrix(a @ b.T).as_rotvec()))


# --------------------------------------------------------------------- waypoint machine
@dataclass(frozen=True)
class Waypoint:
    """One stage of an expert: where the grip site goes and what the gripper does."""

    name: str
    target: Callable[[], np.ndarray]  # world position of the grip site, read live
    gripper: float  # OPEN or CLOSE
    tol: float | None = 0.01  # metres; None = timed stage that ends after min_steps
    rot_tol: float = 0.08  # radians, only checked when the expert has an orientation target
    min_steps: int = 0
    max_steps: int = 60
    max_pos: float = 1.0  # cap on the position action norm (speed limit near objects)
    rotation: Callable[[], np.ndarray] | None = None  # grip orientation; None = plan default
    done: Callable[[], bool] | None = None  # custom end condition instead of tol/rot_tol
    # e.g. "the object slipped out of the hand": start the plan again from the first stage
    retry_if: Callable[[], bool] | None = None


class WaypointExpert:
    """Drives ``env`` through ``plan()``'s waypoints; ``plan`` is rebuilt at every reset.

    ``plan`` returns ``(waypoints, target_rotation)``; ``target_rotation`` (or None to keep
    the current orientation free) is the orientation of waypoints without their own. A
    waypoint whose ``retry_if`` fires re-plans from the current state (``retries`` counts).
    """

    def __init__(self, env: RobosuiteEnv,
                 plan: Callable[[Privileged], tuple[list[Waypoint], np.ndarray | None]],
                 noise: float = 0.0, seed: int | None = None) -> None:
        if not (np.isfinite(noise) and noise >= 0.0):
            raise ConfigError(f"expert noise must be a finite number >= 0, got {noise!r}")
        self.env = env
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self.sim = Privileged(env)
        self._plan = plan
        self._episode = None
        self.waypoints: list[Waypoint] = []
        self.target_rot: np.ndarray | None = None
        self.stage = 0
        self.steps_in_stage = 0
        self.retries = 0

    def reset(self) -> None:
        """Start a new episode (called automatically when the env was reset)."""
        self._replan()
        self.retries = 0
        self._episode = self.env.episode_index

    def _replan(self) -> None:
        self.waypoints, self.target_rot = self._plan(self.sim)
        self.stage = 0
        self.steps_in_stage = 0

    @property
    def stage_name(self) -> str:
        return self.waypoints[self.stage].name if self.waypoints else ""

    def _reached(self, wp: Waypoint) -> bool:
        if self.steps_in_stage < wp.min_steps:
            return False
        if self.steps_in_stage >= wp.max_steps:
            return True
        if wp.done is not None:
            return wp.done()
        if wp.tol is None:
            return True
        if np.linalg.norm(wp.target() - self.sim.eef_pos()) > wp.tol:
            return False
        rot = self._rotation(wp)
        return rot is None or rotation_error(rot, self.sim.eef_rot()) <= wp.rot_tol

    def _rotation(self, wp: Waypoint) -> np.ndarray | None:
        return wp.rotation() if wp.rotation is not None else self.target_rot

    def act(self, obs=None) -> np.ndarray:
        """Next action (7,) float32 in [-1, 1]; ``obs`` is unused (privileged state)."""
        del obs
        if self._episode != self.env.episode_index:
            self.reset()
        retry_if = self.waypoints[self.stage].retry_if
        if retry_if is not None and retry_if():
            self.retries += 1
            self._replan()
        while self.stage < len(self.waypoints) - 1 and self._reached(self.waypoints[self.stage]):
            self.stage += 1
            self.steps_in_stage = 0
        wp = self.waypoints[self.stage]
        self.steps_in_stage += 1
        action = np.empty(7)
        action[:6] = servo_action(self.sim.eef_pos(), self.sim.eef_rot(), wp.target(),
                                  self._rotation(wp), self.sim.base_rot(), max_pos=wp.max_pos)
        action[6] = wp.gripper
        if self.noise > 0.0:
            action += self.rng.normal(0.0, self.noise, size=7)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------- task plans
def _offset(fn: Callable[[], np.ndarray], dz: float = 0.0, dxy=(0.0, 0.0)) -> Callable[[], np.ndarray]:
    d = np.array([dxy[0], dxy[1], dz])
    return lambda: fn() + d


def _frozen(p: np.ndarray) -> Callable[[], np.ndarray]:
    p = np.array(p, dtype=float)
    return lambda: p


def _slipped(sim: Privileged, obj: Callable[[], np.ndarray], dist: float = 0.05
             ) -> Callable[[], bool]:
    """True once the grasped object's origin is more than ``dist`` from the grip site."""
    return lambda: float(np.linalg.norm(sim.eef_pos() - obj())) > dist


def lift_plan(sim: Privileged) -> tuple[list[Waypoint], np.ndarray]:
    rs = sim.rs
    cube = lambda: sim.body_pos(rs.cube_body_id)
    rot = down_rotation(grasp_yaw(sim.body_yaw(rs.cube_body_id), np.pi / 2))
    table_z = rs.table_offset[2]
    return [
        Waypoint("above", _offset(cube, 0.08), OPEN, tol=0.015),
        Waypoint("descend", _offset(cube, 0.0), OPEN, tol=0.008, max_pos=0.5),
        Waypoint("close", _offset(cube, 0.0), CLOSE, tol=None, min_steps=10),
        Waypoint("lift", lambda: np.r_[cube()[:2], table_z + 0.2], CLOSE, tol=0.01,
                 retry_if=_slipped(sim, cube)),
    ], rot


def stack_plan(sim: Privileged) -> tuple[list[Waypoint], np.ndarray]:
    rs = sim.rs
    cube_a = lambda: sim.body_pos(rs.cubeA_body_id)  # red, half size 0.02
    cube_b = lambda: sim.body_pos(rs.cubeB_body_id)  # green, half size 0.025
    # Close the fingers across the A->B line so an open finger cannot land on cube B.
    yaw = grasp_yaw(sim.body_yaw(rs.cubeA_body_id), np.pi / 2,
                    avoid_xy=(cube_b() - cube_a())[:2])
    rot = down_rotation(yaw)
    table_z = rs.table_offset[2]
    carry_z = table_z + 0.05 + 0.12  # top of cube B + clearance for the carried cube

    def over_b(dz: float) -> Callable[[], np.ndarray]:
        # Grip site such that cube A's centre is ``dz`` above cube B's top face; the
        # measured grip-to-cube offset is capped so a lost cube cannot drag the target.
        def target() -> np.ndarray:
            grip_offset = sim.eef_pos() - cube_a()
            norm = np.linalg.norm(grip_offset)
            if norm > 0.02:
                grip_offset *= 0.02 / norm
            return cube_b() + np.array([0.0, 0.0, 0.025 + 0.02 + dz]) + grip_offset
        return target

    dropped = _slipped(sim, cube_a)
    return [
        Waypoint("above_a", _offset(cube_a, 0.08), OPEN, tol=0.015),
        Waypoint("descend_a", _offset(cube_a, 0.0), OPEN, tol=0.008, max_pos=0.5),
        Waypoint("close", _offset(cube_a, 0.0), CLOSE, tol=None, min_steps=10),
        Waypoint("lift", lambda: np.r_[cube_a()[:2], carry_z], CLOSE, tol=0.02,
                 retry_if=dropped),
        Waypoint("carry", lambda: np.r_[over_b(0.0)()[:2], carry_z], CLOSE, tol=0.01,
                 retry_if=dropped),
        Waypoint("lower", over_b(0.005), CLOSE, tol=0.006, max_pos=0.4, retry_if=dropped),
        Waypoint("release", over_b(0.005), OPEN, tol=None, min_steps=8),
        Waypoint("retreat", lambda: np.r_[cube_b()[:2], carry_z], OPEN, tol=0.01),
    ], rot


def bin_quadrant(rs, object_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) xy corners of the target-bin quadrant that counts as success for an
    object (mirrors robosuite PickPlace.not_in_bin)."""
    low = np.array(rs.bin2_pos[:2], dtype=float)
    half = np.array(rs.bin_size[:2], dtype=float) / 2
    if object_id in (0, 2):
        low[0] -= half[0]
    if object_id < 2:
        low[1] -= half[1]
    return low, low + half


def pick_place_can_plan(sim: Privileged) -> tuple[list[Waypoint], np.ndarray]:
    rs = sim.rs
    can = lambda: sim.body_pos(rs.obj_body_id[rs.obj_to_use])
    # robosuite's nominal drop point (quadrant centre) for the can is at the edge of the
    # Panda's reach, where the arm sags and tilts; any point inside the quadrant counts,
    # so aim 30 % into it from the corner nearest the robot.
    low, high = bin_quadrant(rs, rs.object_id)
    goal_xy = low + 0.3 * (high - low)
    bin_z = rs.bin2_pos[2]
    carry_z = bin_z + 0.25
    drop = np.r_[goal_xy, bin_z + 0.12]
    rot = down_rotation(0.0)  # the can is round: any yaw grasps it
    dropped = _slipped(sim, can, dist=0.06)
    return [
        Waypoint("above", _offset(can, 0.10), OPEN, tol=0.015),
        # slightly above the can's body origin: the fingertips stop on the bin floor
        Waypoint("descend", _offset(can, 0.015), OPEN, tol=0.008, max_pos=0.5),
        Waypoint("close", _offset(can, 0.015), CLOSE, tol=None, min_steps=10),
        Waypoint("lift", lambda: np.r_[can()[:2], carry_z], CLOSE, tol=0.02, retry_if=dropped),
        Waypoint("carry", _frozen(np.r_[goal_xy, carry_z]), CLOSE, tol=0.015, retry_if=dropped),
        Waypoint("lower", _frozen(drop), CLOSE, tol=0.01, max_pos=0.5, retry_if=dropped),
        Waypoint("release", _frozen(drop), OPEN, tol=None, min_steps=8),
        Waypoint("retreat", _frozen(np.r_[goal_xy, carry_z]), OPEN, tol=0.01),
    ], rot


def axis_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    return Rotation.from_rotvec(np.asarray(axis) / np.linalg.norm(axis) * angle).as_matrix()


class _DoorKinematics:
    """Live pose of the door handle and where it would be at other hinge/latch angles.

    The handle is a lever on the latch body; turning it (latch joint, axis ~ the door
    normal) swings the latch clear of the frame, then the door turns about its vertical
    hinge (robosuite/models/assets/objects/door_lock.xml). A grasp that is rigid in the
    latch frame is moved to ``pose(phi, theta)`` by rotating the current handle pose
    about the latch axis by ``phi - phi_now`` and then about the hinge by
    ``theta - theta_now``.
    """

    def __init__(self, sim: Privileged) -> None:
        import mujoco

        rs = sim.rs
        self.sim = sim
        m = rs.sim.model._model
        self.latch_jnt = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, rs.door.joints[1])
        self.hinge_jnt = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, rs.door.joints[0])
        self.latch_body = rs.object_body_ids["latch"]
        self.site = rs.door_handle_site_id
        self.latch_qpos = rs.handle_qpos_addr
        self.hinge_qpos = rs.hinge_qpos_addr

    def angles(self) -> tuple[float, float]:
        q = self.sim.data.qpos
        return float(q[self.latch_qpos]), float(q[self.hinge_qpos])

    def pose(self, phi: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
        """(handle site position, latch body rotation) at latch angle phi, hinge theta."""
        d = self.sim.data
        phi_now, theta_now = self.angles()
        pivot, axis = np.array(d.xanchor[self.latch_jnt]), np.array(d.xaxis[self.latch_jnt])
        hinge, hinge_axis = np.array(d.xanchor[self.hinge_jnt]), np.array(d.xaxis[self.hinge_jnt])
        r_latch = axis_rotation(axis, phi - phi_now)
        r_hinge = axis_rotation(hinge_axis, theta - theta_now)
        site = pivot + r_latch @ (np.array(d.site_xpos[self.site]) - pivot)
        site = hinge + r_hinge @ (site - hinge)
        rot = r_hinge @ r_latch @ np.array(d.xmat[self.latch_body]).reshape(3, 3)
        return site, rot


def door_plan(sim: Privileged) -> tuple[list[Waypoint], np.ndarray]:
    """Grasp the lever end from the front (fingers above and below it), turn it down with a
    wrist roll, then pull the door open along its arc while holding the lever down."""
    kin = _DoorKinematics(sim)
    phi_goal = 1.2  # rad; the latch clears the frame well before the 1.57 joint limit
    theta_step, phi_step = 0.15, 0.35  # rad of look-ahead per step

    # Grip frame for the grasp: approach axis (z) along the latch axis towards the door,
    # fingers (x) vertical so they close on the top and bottom of the lever. x points
    # down: then the grasp frame is the start pose pitched up by ~90 deg (y is shared).
    axis = np.array(sim.data.xaxis[kin.latch_jnt])
    z = axis / np.linalg.norm(axis)
    x = np.array([0.0, 0.0, -1.0])
    x = x - z * (x @ z)
    x /= np.linalg.norm(x)
    grasp = np.stack([x, np.cross(z, x), z], axis=1)
    _, latch_rot0 = kin.pose(*kin.angles())
    grip_in_latch = latch_rot0.T @ grasp
    lost = _slipped(sim, lambda: np.array(sim.data.site_xpos[kin.site]))

    def target(dphi: float | None, dtheta: float, back: float = 0.0):
        def fn() -> np.ndarray:
            phi, theta = kin.angles()
            phi_t = phi_goal if dphi is None else min(phi + dphi, phi_goal)
            site, rot = kin.pose(phi_t, theta + dtheta)
            return site - back * rot @ grip_in_latch[:, 2]
        return fn

    def rotation(dphi: float | None, dtheta: float):
        def fn() -> np.ndarray:
            phi, theta = kin.angles()
            phi_t = phi_goal if dphi is None else min(phi + dphi, phi_goal)
            return kin.pose(phi_t, theta + dtheta)[1] @ grip_in_latch
        return fn

    return [
        Waypoint("in_front", target(0.0, 0.0, back=0.10), OPEN, tol=0.02, rot_tol=0.1),
        Waypoint("approach", target(0.0, 0.0), OPEN, tol=0.01, max_pos=0.5),
        Waypoint("close", target(0.0, 0.0), CLOSE, tol=None, min_steps=10),
        Waypoint("turn", target(phi_step, 0.0), CLOSE, rotation=rotation(phi_step, 0.0),
                 done=lambda: kin.angles()[0] >= phi_goal - 0.1, retry_if=lost),
        # the last stage never ends; the env terminates on success
        Waypoint("pull", target(None, theta_step), CLOSE, rotation=rotation(None, theta_step),
                 retry_if=lost),
    ], grasp


PLANS: dict[str, Callable[[Privileged], tuple[list[Waypoint], np.ndarray | None]]] = {
    "Lift": lift_plan,
    "Stack": stack_plan,
    "PickPlaceCan": pick_place_can_plan,
    "Door": door_plan,
}


def make_expert(env: RobosuiteEnv, noise: float = 0.0, seed: int | None = None) -> WaypointExpert:
    """The scripted expert of ``env``'s task."""
    if env.task not in PLANS:
        raise ConfigError(f"no scripted expert for robosuite task {env.task!r}; "
                          f"experts exist for: {', '.join(PLANS)}")
    return WaypointExpert(env, PLANS[env.task], noise=noise, seed=seed)
