"""Scripted experts: waypoint state machines on privileged simulator state.

Every expert outputs actions in the environment's action space (tool deltas, yaw delta,
grip), so the same script drives the arm and the video hand. Waypoints are tracked with
a saturated proportional step on the controller's tool *target* (not the measured pose):
the target then lands exactly on the waypoint and the servo/weld removes the lag.

Suboptimality (for diverse demonstrations and videos) scales with ``noise``:

* Gaussian action noise with std ``noise`` (clipped to the action box);
* random offsets of the approach waypoints (std ``0.03 * noise`` m), so paths differ;
* hesitations: with probability ``0.2 * noise`` per step the expert pauses 1-3 steps.

Grasps are verified (the object must follow the tool); a failed grasp or a drop sends
the expert back to its approach phase, which is what makes the zero-noise experts
reliable (>= 95 % success, see tests/sim/test_native_experts.py).
"""

from __future__ import annotations

import math

import numpy as np

from sim.native.embodiments import POS_SCALE, YAW_LIMIT, YAW_SCALE
from sim.native.tasks import BASE_HALF, CUBE_HALF
from vptr.errors import ConfigError

OPEN, CLOSE = -1.0, 1.0
HOVER = 0.07        # approach height above the grasp point
CARRY_Z = 0.14      # tool height while carrying
CLOSE_STEPS = 4     # 0.2 s for the fingers to close


def wrap(angle: float) -> float:
    """Angle in [-pi, pi)."""
    return (angle + math.pi) % (2 * math.pi) - math.pi


def symmetric_yaw(angle: float, current: float, period: float) -> float:
    """The equivalent of ``angle`` (modulo ``period``) closest to ``current``, kept
    within the controller's yaw limits (a cube looks the same every 90 degrees, a
    parallel gripper every 180)."""
    best = None
    for k in range(-4, 5):
        cand = angle + k * period
        inside = -YAW_LIMIT - 1e-9 <= cand <= YAW_LIMIT + 1e-9
        if inside and (best is None or abs(cand - current) < abs(best - current)):
            best = cand
    return min(max(best, -YAW_LIMIT), YAW_LIMIT)


class ScriptedExpert:
    """Base class: phase bookkeeping, waypoint tracking and noise."""

    def __init__(self, env, noise: float = 0.0, seed: int | None = None) -> None:
        if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0.0):
            raise ConfigError(f"expert noise must be a finite number >= 0, got {noise!r}")
        self.env = env
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self._episode = -1
        self.reset()

    # -- episode state -------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new episode (called automatically when the env was reset)."""
        self.phase = "start"
        self.phase_steps = 0
        self._hesitate = 0
        self._memo: dict[str, np.ndarray] = {}
        n = self.noise
        self.offsets = self.rng.normal(0.0, 0.03 * n, size=(4, 3)) if n > 0 else np.zeros((4, 3))
        self._episode = self.env._episode

    def goto(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0

    # -- action helpers ------------------------------------------------------------------
    @property
    def emb(self):
        return self.env._emb

    def move(self, goal, yaw: float | None, grip: float) -> np.ndarray:
        """Action that moves the tool target towards ``goal`` (saturated, direction kept)."""
        emb = self.emb
        delta = (np.asarray(goal, dtype=np.float64) - emb.target_pos) / POS_SCALE
        peak = np.abs(delta).max()
        if peak > 1.0:
            delta /= peak
        dyaw = 0.0 if yaw is None else (yaw - emb.target_yaw) / YAW_SCALE
        return np.array([delta[0], delta[1], delta[2], min(max(dyaw, -1.0), 1.0), grip])

    def near(self, goal, tol: float, yaw: float | None = None, yaw_tol: float = 0.08) -> bool:
        emb = self.emb
        ok = np.linalg.norm(emb.tcp_pos - np.asarray(goal)) < tol
        return bool(ok and (yaw is None or abs(wrap(emb.tcp_yaw() - yaw)) < yaw_tol))

    # -- main entry ----------------------------------------------------------------------
    def act(self, obs=None) -> np.ndarray:
        """Next action (float32, in [-1, 1]); ``obs`` is accepted for API symmetry, the
        expert reads the simulator state directly."""
        if self.env._episode != self._episode:
            self.reset()
        action = self.plan(self.env.privileged_state())
        self.phase_steps += 1
        if self.noise > 0.0:
            if self._hesitate > 0:
                self._hesitate -= 1
                action[:4] = 0.0
            elif self.rng.random() < 0.2 * self.noise:
                self._hesitate = int(self.rng.integers(1, 4))
            action = action + self.rng.normal(0.0, self.noise, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def plan(self, s: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    # -- shared pick routine -------------------------------------------------------------
    def pick(self, cube: np.ndarray, cube_yaw: float) -> np.ndarray | None:
        """Approach, descend, close and lift the cube to CARRY_Z. Returns the action, or
        None once the cube is held at carrying height (the caller continues)."""
        emb = self.emb
        if self.phase == "start":
            self.goto("approach")
        if self.phase == "approach":
            yaw = symmetric_yaw(cube_yaw, emb.tcp_yaw(), math.pi / 2)
            self._memo["yaw"] = np.array([yaw])
            goal = cube + np.array([0.0, 0.0, HOVER]) + self.offsets[0]
            if self.near(goal, 0.015, yaw) or (self.phase_steps > 30 and self.near(goal, 0.03)):
                self.goto("descend")
            return self.move(goal, yaw, OPEN)
        yaw = float(self._memo["yaw"][0])
        if self.phase == "descend":
            goal = cube.copy()
            goal[2] = max(goal[2], 0.02)
            if self.near(goal, 0.008) or self.phase_steps > 15:
                self.goto("close")
            return self.move(goal, yaw, OPEN)
        if self.phase == "close":
            if self.phase_steps >= CLOSE_STEPS:
                self.goto("lift")
            return self.move(emb.target_pos, yaw, CLOSE)
        if self.phase == "lift":
            if not self.holding(cube):
                self.goto("approach")
                return self.move(emb.target_pos + np.array([0, 0, 0.02]), yaw, OPEN)
            goal = np.array([emb.target_pos[0], emb.target_pos[1], CARRY_Z])
            if self.near(goal, 0.02):
                return None
            return self.move(goal, yaw, CLOSE)
        return None

    def holding(self, cube: np.ndarray) -> bool:
        """The cube is between the fingers (they stopped on it, not closed on air)."""
        emb = self.emb
        return bool(np.linalg.norm(emb.tcp_pos - cube) < 0.03 and emb.opening() > 0.02)


class ReachExpert(ScriptedExpert):
    def plan(self, s):
        target = s["target_pos"]
        if self.phase == "start":
            self.goto("via" if self.noise > 0 else "final")
        if self.phase == "via":
            goal = target + self.offsets[0]
            if self.near(goal, 0.015) or self.phase_steps > 20:
                self.goto("final")
            return self.move(goal, None, OPEN)
        return self.move(target, None, OPEN)


class LiftExpert(ScriptedExpert):
    def plan(self, s):
        cube = s["cube_pos"]
        a = self.pick(cube, float(s["cube_yaw"][0]))
        if a is not None:
            return a
        # Held at carry height: keep holding (success is cube z > 8 cm).
        goal = np.array([self.emb.target_pos[0], self.emb.target_pos[1], CARRY_Z + 0.02])
        return self.move(goal, None, CLOSE)


class _PlaceExpert(ScriptedExpert):
    """Pick the cube, carry it above ``place_xy``, lower to ``release_z``, open, retreat."""

    def place_target(self, s) -> tuple[np.ndarray, float]:
        raise NotImplementedError

    def plan(self, s):
        cube = s["cube_pos"]
        emb = self.emb
        if self.phase in ("start", "approach", "descend", "close", "lift"):
            a = self.pick(cube, float(s["cube_yaw"][0]))
            if a is not None:
                return a
            self.goto("carry")
        place_xy, release_z = self.place_target(s)
        # Carry the cube (not the tool) over the target: correct for the grasp offset.
        grasp_offset = emb.tcp_pos[:2] - cube[:2]
        if self.phase in ("carry", "lower") and not self.holding(cube):
            self.goto("approach")
            return self.move(emb.target_pos, None, OPEN)
        if self.phase == "carry":
            goal = np.array([*(place_xy + grasp_offset), CARRY_Z]) + self.offsets[1] * [1, 1, 0]
            if self.near(goal, 0.015):
                self.goto("lower")
            return self.move(goal, None, CLOSE)
        if self.phase == "lower":
            goal = np.array([*(place_xy + grasp_offset), release_z + (emb.tcp_pos[2] - cube[2])])
            if self.near(goal, 0.008) or self.phase_steps > 20:
                self.goto("release")
            return self.move(goal, None, CLOSE)
        if self.phase == "release":
            if self.phase_steps >= CLOSE_STEPS:
                self.goto("retreat")
            return self.move(emb.target_pos, None, OPEN)
        # retreat: straight up, open
        return self.move(np.array([emb.target_pos[0], emb.target_pos[1], CARRY_Z]), None, OPEN)


class PickPlaceExpert(_PlaceExpert):
    def place_target(self, s):
        # Release with the cube bottom ~3.5 cm above the bin floor (walls are 5 cm high).
        return s["bin_pos"][:2], 0.06


class StackExpert(_PlaceExpert):
    def place_target(self, s):
        base = s["base_pos"]
        return base[:2], base[2] + BASE_HALF + CUBE_HALF + 0.006


class PushExpert(ScriptedExpert):
    """Two-finger pusher: half-open fingers side by side, perpendicular to the push, so
    the cube face is pushed at two points and does not spin."""

    push_grip = 1.0
    contact = CUBE_HALF + 0.014
    push_z = 0.025

    def plan(self, s):
        emb = self.emb
        cube, goal = s["cube_pos"][:2], s["goal_pos"][:2]
        to_goal = goal - cube
        dist = float(np.linalg.norm(to_goal))
        d = to_goal / max(dist, 1e-6)
        yaw = symmetric_yaw(math.atan2(d[1], d[0]), emb.tcp_yaw(), math.pi)
        behind = cube - d * (self.contact + 0.02)
        if self.phase == "start":
            self.goto("align")
        if self.phase == "align":
            g = np.array([*behind, self.push_z + 0.06]) + self.offsets[0] * [1, 1, 0]
            if self.near(g, 0.012, yaw) or (self.phase_steps > 30 and self.near(g, 0.025)):
                self.goto("lower")
            return self.move(g, yaw, self.push_grip)
        if self.phase == "lower":
            g = np.array([*behind, self.push_z])
            if self.near(g, 0.01) or self.phase_steps > 15:
                self.goto("push")
            return self.move(g, yaw, self.push_grip)
        if self.phase == "push":
            rel = emb.tcp_pos[:2] - cube
            lateral = abs(rel[0] * d[1] - rel[1] * d[0])
            along = -(rel @ d)  # how far behind the cube the tool is
            if lateral > 0.02 or along < self.contact - 0.012:
                self.goto("retreat")
            else:
                step = min(dist, 0.03)
                g = np.array([*(cube - d * self.contact + d * step), self.push_z])
                return self.move(g, yaw, self.push_grip)
        # retreat: up, then re-align behind the cube
        g = np.array([emb.target_pos[0], emb.target_pos[1], self.push_z + 0.06])
        if emb.tcp_pos[2] > self.push_z + 0.045:
            self.goto("align")
        return self.move(g, None, self.push_grip)


class DrawerExpert(ScriptedExpert):
    """Grasp the handle bar from above (fingers closing along the pull axis) and pull."""

    half_open = 0.0     # finger gap ~4.5 cm: one finger fits between bar and drawer front
    target_open = 0.12

    def plan(self, s):
        emb = self.emb
        bar = s["handle_pos"]
        yaw = symmetric_yaw(math.pi / 2, emb.tcp_yaw(), math.pi)
        if self.phase == "start":
            self.goto("approach")
        if self.phase == "approach":
            g = bar + np.array([0.0, 0.0, HOVER]) + self.offsets[0] * [1, 1, 0.5]
            if self.near(g, 0.012, yaw) or (self.phase_steps > 30 and self.near(g, 0.025, yaw, 0.15)):
                self.goto("descend")
            return self.move(g, yaw, self.half_open)
        if self.phase == "descend":
            g = bar + np.array([0.0, 0.0, 0.004])
            if self.near(g, 0.008) or self.phase_steps > 15:
                self.goto("close")
            return self.move(g, yaw, self.half_open)
        if self.phase == "close":
            if self.phase_steps >= CLOSE_STEPS:
                self.goto("pull")
            return self.move(emb.target_pos, yaw, CLOSE)
        if self.phase == "pull":
            if np.linalg.norm(emb.tcp_pos - bar) > 0.03:  # lost the handle: start over
                self.goto("regrasp")
            elif float(s["drawer_open"][0]) < self.target_open:
                return self.move(bar + np.array([-0.03, 0.0, 0.004]), yaw, CLOSE)
            else:
                return self.move(emb.target_pos, yaw, CLOSE)
        # regrasp: open and rise, then approach again
        g = np.array([emb.target_pos[0], emb.target_pos[1], bar[2] + HOVER])
        if emb.tcp_pos[2] > bar[2] + HOVER - 0.02:
            self.goto("approach")
        return self.move(g, yaw, self.half_open)


EXPERTS: dict[str, type[ScriptedExpert]] = {
    "reach": ReachExpert, "push": PushExpert, "lift": LiftExpert,
    "pickplace": PickPlaceExpert, "stack": StackExpert, "drawer": DrawerExpert,
}


def make_expert(env, noise: float = 0.0, seed: int | None = None) -> ScriptedExpert:
    """The scripted expert of ``env``'s task (``env`` is a TabletopEnv, unwrapped)."""
    return EXPERTS[env.task](env, noise=noise, seed=seed)
