"""The two embodiments that share one action space.

* :class:`Arm` -- a 5-DoF WidowX-like arm (waist, shoulder, elbow, wrist pitch, wrist
  roll; link lengths close to the WidowX 250 used by BridgeData / V-PTR) with a parallel
  gripper, driven by joint position servos. End-effector deltas become joint targets by
  damped-least-squares inverse kinematics on ``mj_jacSite`` (Wampler 1986; Buss 2004,
  "Introduction to inverse kinematics with Jacobian transpose, pseudoinverse and damped
  least squares methods", eq. 10).
* :class:`Hand` -- the video embodiment: a floating, skin-coloured two-finger hand with a
  forearm, welded to a mocap body. No actions are ever recorded from it, but it performs
  the same tasks with the same action semantics, so the same expert drives both.

Action (both): ``[dx, dy, dz, dyaw, grip]`` in [-1, 1]. The tool target moves by
``POS_SCALE`` = 2 cm per unit per step (0.4 m/s at 20 Hz), the yaw target by
``YAW_SCALE`` = 0.15 rad per unit per step, and ``grip`` sets the finger target
linearly from fully open (-1, 9 cm between the fingers) to fully closed (+1). The
targets are integrated (so a zero action holds the pose, with no drift under load) but
never lead the measured tool pose by more than ``MAX_LEAD`` (no wind-up when blocked).
"""

from __future__ import annotations

import math

import mujoco
import numpy as np

from sim.native import scene

POS_SCALE = 0.02
YAW_SCALE = 0.15
YAW_LIMIT = math.pi / 2
MAX_LEAD = 0.05
MAX_YAW_LEAD = 0.4
FINGER_OPEN = 0.045  # travel of each finger: fully open gap = 2 * FINGER_OPEN
ACTION_NAMES = ["ee_dx", "ee_dy", "ee_dz", "ee_dyaw", "gripper"]

# Finger servos (both embodiments): soft enough to squeeze a cube with ~2-4 N.
_FINGER_ACT = 'kp="100" kv="2" forcerange="-6 6"'
_FINGER_JOINT = f'type="slide" range="0 {FINGER_OPEN}" armature="0.02" damping="0.5"'


class Embodiment:
    """Common target bookkeeping; subclasses map the targets onto the simulator."""

    name: str = ""
    has_wrist_camera: bool = False
    state_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.model: mujoco.MjModel | None = None
        self.data: mujoco.MjData | None = None
        self.target_pos = np.zeros(3)
        self.target_yaw = 0.0
        self.finger_target = FINGER_OPEN

    # -- MJCF ---------------------------------------------------------------------------
    def xml(self) -> tuple[str, str, str]:
        """(worldbody fragment, actuator fragment, equality fragment)."""
        raise NotImplementedError

    # -- binding / reset ----------------------------------------------------------------
    def bind(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        self.model, self.data = model, data
        self.tcp_id = model.site("tcp").id
        self.finger_qadr = np.array([model.joint(j).qposadr[0] for j in ("finger_l", "finger_r")])
        self.finger_act = np.array([model.actuator(a).id for a in ("finger_l", "finger_r")])

    def reset(self, start_pos: np.ndarray) -> None:
        """Place the tool at ``start_pos`` (yaw 0, fingers open); ends with mj_forward."""
        raise NotImplementedError

    # -- per step -----------------------------------------------------------------------
    def _integrate_targets(self, action: np.ndarray) -> None:
        tcp = self.data.site_xpos[self.tcp_id]
        t = np.clip(self.target_pos + action[:3] * POS_SCALE, scene.WORKSPACE_LOW,
                    scene.WORKSPACE_HIGH)
        lead = t - tcp
        dist = math.sqrt(lead @ lead)
        if dist > MAX_LEAD:
            t = tcp + lead * (MAX_LEAD / dist)
        self.target_pos = t
        yaw = self.tcp_yaw()
        y = min(max(self.target_yaw + float(action[3]) * YAW_SCALE, -YAW_LIMIT), YAW_LIMIT)
        self.target_yaw = min(max(y, yaw - MAX_YAW_LEAD), yaw + MAX_YAW_LEAD)
        self.finger_target = FINGER_OPEN * 0.5 * (1.0 - float(action[4]))

    def apply_action(self, action: np.ndarray) -> None:
        """Set actuator controls / mocap pose for one control step (before mj_step)."""
        raise NotImplementedError

    # -- readouts -----------------------------------------------------------------------
    @property
    def tcp_pos(self) -> np.ndarray:
        return self.data.site_xpos[self.tcp_id]

    def tcp_yaw(self) -> float:
        # The tool y axis (finger opening direction) is (-sin yaw, cos yaw, 0).
        m = self.data.site_xmat[self.tcp_id]
        return math.atan2(-m[1], m[4])

    def opening(self) -> float:
        """Gap between the finger pads in metres (0 = closed)."""
        return float(self.data.qpos[self.finger_qadr[0]] + self.data.qpos[self.finger_qadr[1]])

    def state(self) -> np.ndarray:
        raise NotImplementedError


def _finger_bodies(kind: str) -> str:
    """Two parallel fingers sliding along the tool y axis, pads at y = +-q."""
    if kind == "arm":
        rgba = 'rgba="0.30 0.30 0.32 1"'
        geom = '<geom class="grip" type="box" size="0.012 0.006 0.022" pos="0 {s}0.006 0" {rgba}/>'
        pos = "0 0 0.065"
        left, right = geom.format(s="", rgba=rgba), geom.format(s="-", rgba=rgba)
    else:  # index finger and (shorter, thicker) thumb, skin coloured capsules
        rgba = 'rgba="0.87 0.66 0.52 1"'
        left = ('<geom class="grip" type="capsule" fromto="0 0.008 -0.03 0 0.008 0.012" '
                f'size="0.008" {rgba}/>')
        right = ('<geom class="grip" type="capsule" fromto="0 -0.010 -0.02 0 -0.010 0.008" '
                 f'size="0.010" {rgba}/>')
        pos = "0 0 0.048"
    return f"""
        <body name="finger_l" pos="{pos}">
          <joint name="finger_l" axis="0 1 0" {_FINGER_JOINT}/>
          {left}
        </body>
        <body name="finger_r" pos="{pos}">
          <joint name="finger_r" axis="0 -1 0" {_FINGER_JOINT}/>
          {right}
        </body>"""


_FINGER_ACTUATORS = (f'<position name="finger_l" joint="finger_l" {_FINGER_ACT} '
                     f'ctrlrange="0 {FINGER_OPEN}"/>'
                     f'<position name="finger_r" joint="finger_r" {_FINGER_ACT} '
                     f'ctrlrange="0 {FINGER_OPEN}"/>')


class Arm(Embodiment):
    """WidowX-like 5-DoF arm + parallel gripper, DLS Jacobian IK on position servos."""

    name = "arm"
    has_wrist_camera = True
    joints = ("waist", "shoulder", "elbow", "wrist_pitch", "wrist_roll")
    state_names = tuple([f"{j}_pos" for j in joints] + [f"{j}_vel" for j in joints]
                        + ["ee_x", "ee_y", "ee_z", "ee_yaw", "gripper_opening"])
    # Home tool pose: above the middle of the spawn region.
    home_pos = np.array([0.24, 0.0, 0.18])
    # Initial guess for the home IK (elbow up, tool down).
    _q_guess = np.array([0.0, 0.3, 0.5, 0.77, 0.0])
    damping = 0.03  # DLS damping (lambda), metres/radians
    max_dq = 0.35   # rad per control step, a safety bound on the IK step

    def xml(self) -> tuple[str, str, str]:
        link = 'rgba="0.13 0.13 0.15 1"'
        accent = 'rgba="0.45 0.47 0.50 1"'
        # Geared servos reflect a large rotor inertia (armature). It also keeps the stiff
        # position loops well inside the explicit stability limit at dt = 10 ms: with
        # armature 0.02 the wrist servos chattered and shook grasped cubes loose.
        jnt = 'armature="0.1" damping="0.5"'
        grip_quat = scene.fmt([math.cos(math.pi / 4), 0.0, math.sin(math.pi / 4), 0.0])
        wrist_cam_pos = (0.09, 0.0, -0.02)
        wrist_cam_quat = scene.look_at_quat(wrist_cam_pos, (-0.02, 0.0, 0.15), up=(-1.0, 0.0, 0.0))
        body = f"""
    <body name="arm_base" pos="0 0 0">
      <geom type="box" size="0.06 0.06 0.02" pos="0 0 0.02" {link}/>
      <body name="arm_waist" pos="0 0 0.04" gravcomp="1">
        <joint name="waist" axis="0 0 1" range="-2.5 2.5" {jnt}/>
        <geom type="box" size="0.04 0.04 0.04" pos="0 0 0.04" {accent}/>
        <body name="arm_upper" pos="0 0 0.08" gravcomp="1">
          <joint name="shoulder" axis="0 1 0" range="-1.8 1.8" {jnt}/>
          <geom type="box" fromto="0 0 -0.02 0.05 0 0.27" size="0.02 0.02 0" {link}/>
          <body name="arm_fore" pos="0.05 0 0.25" gravcomp="1">
            <joint name="elbow" axis="0 1 0" range="-1.6 2.4" {jnt}/>
            <geom type="box" fromto="0 0 0 0.25 0 0" size="0.018 0.018 0" {link}/>
            <geom type="box" size="0.026 0.03 0.026" {accent}/>
            <body name="arm_wrist" pos="0.25 0 0" gravcomp="1">
              <joint name="wrist_pitch" axis="0 1 0" range="-2.0 2.4" {jnt}/>
              <geom type="box" fromto="-0.015 0 0 0.035 0 0" size="0.017 0.017 0" {accent}/>
              <body name="gripper" pos="0.045 0 0" quat="{grip_quat}" gravcomp="1">
                <joint name="wrist_roll" axis="0 0 1" range="-3.1 3.1" {jnt}/>
                <geom type="box" size="0.022 0.022 0.01" pos="0 0 0.01" {link}/>
                <geom class="grip" type="box" size="0.016 0.05 0.01" pos="0 0 0.03" {accent}/>
                <site name="tcp" pos="0 0 0.07"/>
                <camera name="wrist" pos="{scene.fmt(wrist_cam_pos)}"
                        quat="{scene.fmt(wrist_cam_quat)}" fovy="75"/>
                {_finger_bodies("arm")}
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>"""
        # kv ~ critical damping 2 sqrt(kp I) for I ~ 0.25 (proximal) / 0.1 (wrist) kg m^2.
        big = 'kp="500" kv="22" forcerange="-40 40"'
        small = 'kp="200" kv="9" forcerange="-15 15"'
        acts = "".join(
            f'<position name="{j}" joint="{j}" {big if i < 3 else small} '
            f'ctrlrange="-3.1 3.1"/>' for i, j in enumerate(self.joints))
        return body, acts + _FINGER_ACTUATORS, ""

    def bind(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        super().bind(model, data)
        dofs = [model.joint(j).dofadr[0] for j in self.joints]
        qadr = [model.joint(j).qposadr[0] for j in self.joints]
        # IK slices the Jacobian columns, so the arm dofs must be the first five.
        if dofs != list(range(5)) or qadr != list(range(5)):
            raise AssertionError(f"arm joints must come first in the model, got dofs {dofs}")
        self.q_low = model.jnt_range[[model.joint(j).id for j in self.joints], 0].copy()
        self.q_high = model.jnt_range[[model.joint(j).id for j in self.joints], 1].copy()
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self._jac = np.zeros((6, 5))
        self._err = np.zeros(6)
        self._reg = (self.damping ** 2) * np.eye(6)
        self.home_q = self._solve_ik(self._q_guess, self.home_pos, 0.0, iters=60)

    def _ik_step(self, target_pos: np.ndarray, target_yaw: float) -> np.ndarray:
        """One damped-least-squares step from the current kinematics: returns dq."""
        m, d = self.model, self.data
        mujoco.mj_jacSite(m, d, self._jacp, self._jacr, self.tcp_id)
        jac, err = self._jac, self._err
        jac[:3] = self._jacp[:, :5]
        jac[3:] = self._jacr[:, :5]
        err[:3] = target_pos - d.site_xpos[self.tcp_id]
        # Orientation error: the vee of the skew part of Rd R^T, i.e. sin(angle) * axis
        # (Siciliano et al., Robotics, 2009, eq. 3.85), fine for the small per-step errors.
        r = d.site_xmat[self.tcp_id].reshape(3, 3)
        e = scene.tool_mat(target_yaw) @ r.T
        err[3] = 0.5 * (e[2, 1] - e[1, 2])
        err[4] = 0.5 * (e[0, 2] - e[2, 0])
        err[5] = 0.5 * (e[1, 0] - e[0, 1])
        # dq = J^T (J J^T + lambda^2 I)^-1 e  (Buss 2004, eq. 10)
        dq = jac.T @ np.linalg.solve(jac @ jac.T + self._reg, err)
        return np.clip(dq, -self.max_dq, self.max_dq)

    def _solve_ik(self, q0: np.ndarray, pos: np.ndarray, yaw: float, iters: int) -> np.ndarray:
        m, d = self.model, self.data
        q = np.array(q0, dtype=np.float64)
        for _ in range(iters):
            d.qpos[:5] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            q = np.clip(q + self._ik_step(pos, yaw), self.q_low, self.q_high)
        return q

    def reset(self, start_pos: np.ndarray) -> None:
        m, d = self.model, self.data
        q = self._solve_ik(self.home_q, start_pos, 0.0, iters=20)
        d.qpos[:5] = q
        d.qvel[:5] = 0.0
        d.qpos[self.finger_qadr] = FINGER_OPEN
        d.ctrl[:5] = q
        d.ctrl[self.finger_act] = FINGER_OPEN
        mujoco.mj_forward(m, d)
        self.target_pos = d.site_xpos[self.tcp_id].copy()
        self.target_yaw = self.tcp_yaw()
        self.finger_target = FINGER_OPEN

    def apply_action(self, action: np.ndarray) -> None:
        self._integrate_targets(action)
        d = self.data
        q = d.qpos[:5]
        d.ctrl[:5] = np.clip(q + self._ik_step(self.target_pos, self.target_yaw),
                             self.q_low, self.q_high)
        d.ctrl[self.finger_act] = self.finger_target

    def state(self) -> np.ndarray:
        d = self.data
        out = np.empty(15, dtype=np.float32)
        out[:5] = d.qpos[:5]
        out[5:10] = d.qvel[:5]
        out[10:13] = d.site_xpos[self.tcp_id]
        out[13] = self.tcp_yaw()
        out[14] = self.opening()
        return out


class Hand(Embodiment):
    """Floating two-finger hand (the video embodiment), welded to a mocap target."""

    name = "hand"
    has_wrist_camera = False
    state_names = ("ee_x", "ee_y", "ee_z", "ee_yaw", "gripper_opening",
                   "ee_vx", "ee_vy", "ee_vz")
    tcp_offset = 0.05  # tcp below the palm origin, along the tool z axis

    def xml(self) -> tuple[str, str, str]:
        skin = 'rgba="0.87 0.66 0.52 1"'
        sleeve = 'rgba="0.20 0.35 0.62 1"'
        start = Arm.home_pos + np.array([0.0, 0.0, self.tcp_offset])
        quat = scene.fmt(scene.tool_quat(0.0))
        body = f"""
    <body name="hand_mocap" mocap="true" pos="{scene.fmt(start)}" quat="{quat}"/>
    <body name="hand" pos="{scene.fmt(start)}" quat="{quat}" gravcomp="1">
      <freejoint name="hand_free"/>
      <geom class="grip" type="box" size="0.022 0.042 0.014" pos="0 0 0.004" {skin}/>
      <geom type="capsule" fromto="0.0 0 -0.02 0.09 0 -0.15" size="0.026" {skin}/>
      <geom type="capsule" fromto="0.07 0 -0.12 0.13 0 -0.22" size="0.034" {sleeve}/>
      <geom type="capsule" fromto="0 0.025 0.018 0.0 0.03 0.03" size="0.009" {skin}/>
      <site name="tcp" pos="0 0 {self.tcp_offset}"/>
      {_finger_bodies("hand")}
    </body>"""
        equality = ('<weld name="hand_weld" body1="hand_mocap" body2="hand" '
                    'relpose="0 0 0 1 0 0 0" solref="0.02 1"/>')
        return body, _FINGER_ACTUATORS, equality

    def bind(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        super().bind(model, data)
        self.mocap_id = model.body("hand_mocap").mocapid[0]
        jnt = model.joint("hand_free")
        self.free_qadr = int(jnt.qposadr[0])
        self.free_dadr = int(jnt.dofadr[0])

    def _mocap_pose(self, tcp_target: np.ndarray, yaw: float) -> tuple[np.ndarray, np.ndarray]:
        # The tool z axis points straight down, so the palm origin is tcp_offset above.
        pos = tcp_target.copy()
        pos[2] += self.tcp_offset
        return pos, scene.tool_quat(yaw)

    def reset(self, start_pos: np.ndarray) -> None:
        m, d = self.model, self.data
        pos, quat = self._mocap_pose(np.asarray(start_pos, dtype=np.float64), 0.0)
        d.mocap_pos[self.mocap_id] = pos
        d.mocap_quat[self.mocap_id] = quat
        d.qpos[self.free_qadr:self.free_qadr + 3] = pos
        d.qpos[self.free_qadr + 3:self.free_qadr + 7] = quat
        d.qvel[self.free_dadr:self.free_dadr + 6] = 0.0
        d.qpos[self.finger_qadr] = FINGER_OPEN
        d.ctrl[self.finger_act] = FINGER_OPEN
        mujoco.mj_forward(m, d)
        self.target_pos = d.site_xpos[self.tcp_id].copy()
        self.target_yaw = 0.0
        self.finger_target = FINGER_OPEN

    def apply_action(self, action: np.ndarray) -> None:
        self._integrate_targets(action)
        d = self.data
        pos, quat = self._mocap_pose(self.target_pos, self.target_yaw)
        d.mocap_pos[self.mocap_id] = pos
        d.mocap_quat[self.mocap_id] = quat
        d.ctrl[self.finger_act] = self.finger_target

    def state(self) -> np.ndarray:
        d = self.data
        out = np.empty(8, dtype=np.float32)
        out[:3] = d.site_xpos[self.tcp_id]
        out[3] = self.tcp_yaw()
        out[4] = self.opening()
        out[5:8] = d.qvel[self.free_dadr:self.free_dadr + 3]
        return out


EMBODIMENTS: dict[str, type[Embodiment]] = {"arm": Arm, "hand": Hand}
