"""The native simulated arm (``sim.make("vptr/<Task>-v0")``) behind the Robot protocol.

Each :meth:`SimArm.send_action` advances the simulation by one 20 Hz control step, so
the control loop's rate is the simulation's real-time factor. Observation keys are the
environment's ``state_names`` (``waist_pos`` ... ``gripper_opening``: the names
``vptr generate robot`` writes into ``observation.state``, so a policy trained on that
data matches this robot name for name) and one entry per camera. Actions are the
environment's ``[ee_dx, ee_dy, ee_dz, ee_dyaw, gripper]`` in [-1, 1]: the first four are
relative (tool deltas; hold = 0), the gripper an absolute closure (-1 open, +1 closed).

:class:`~robots.lerobot_adapter.VptrSimArm` registers this robot with LeRobot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from robots.base import ActionSpec, Robot, RobotSpec, action_dict, action_vector
from vptr.errors import ConfigError, unknown

CONTROL_HZ = 20.0
# Per-step change limits (safe defaults; the safety filter reads them). A tool-delta of
# 1.0 moves the target 2 cm (0.15 rad) per step, so a change of at most 1.0 per step
# bounds the tool's acceleration to 2 cm/step^2 (8 m/s^2 at 20 Hz); the gripper may
# open or close fully in one step (its force is limited by the simulated servo).
MAX_STEP = (1.0, 1.0, 1.0, 1.0, 2.0)
UNITS = ("2 cm/step", "2 cm/step", "2 cm/step", "0.15 rad/step", "closure (-1 open, +1 closed)")


def env_id(task: str) -> str:
    """``lift`` / ``Lift`` / ``vptr/Lift-v0`` -> ``vptr/Lift-v0`` (native tasks only)."""
    from sim.native import TASK_IDS

    by_id = {eid: eid for eid, _ in TASK_IDS.values()}
    if task in by_id:
        return task
    key = task.lower()
    if key not in TASK_IDS:
        raise unknown("native sim task", task, TASK_IDS)
    return TASK_IDS[key][0]


class GymArm(Robot):
    """A ``sim`` environment (Gymnasium, ``{"state", "pixels"}`` observations) as a robot:
    one :meth:`send_action` is one control step. Subclasses give the spec and
    :meth:`current_action`."""

    def __init__(self, env_id: str, spec: RobotSpec, env_kwargs: dict[str, Any], seed: int = 0) -> None:
        self.env_id = env_id
        self._spec = spec
        self._kwargs = dict(env_kwargs)
        self.seed = int(seed)
        self._env = None
        self._obs: dict[str, Any] | None = None
        self._episode = 0
        self.success = False
        self.done = False
        self.reward = 0.0
        self.task_description = ""

    @property
    def spec(self) -> RobotSpec:
        return self._spec

    @property
    def is_connected(self) -> bool:
        return self._env is not None

    def connect(self, calibrate: bool = True) -> None:
        if self._env is not None:
            return
        import sim

        self._env = sim.make(self.env_id, **self._kwargs)
        self.task_description = getattr(self._env.unwrapped, "task_description", "")
        self.reset(self.seed)

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode (default seed: the base seed + the episode index)."""
        self._require_connected()
        seed = self.seed + self._episode if seed is None else int(seed)
        self._obs, info = self._env.reset(seed=seed)
        self._episode += 1
        self.success, self.done, self.reward = bool(info.get("is_success", False)), False, 0.0

    def disconnect(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def get_observation(self) -> dict[str, Any]:
        self._require_connected()
        obs = dict(zip(self._spec.state_names, (float(v) for v in self._obs["state"])))
        for cam, img in self._obs.get("pixels", {}).items():
            obs[cam] = img
        return obs

    def send_action(self, action: dict[str, float]) -> dict[str, float]:
        self._require_connected()
        names = self._spec.action.names
        a = action_vector(action, names)
        if not np.isfinite(a).all():
            raise ConfigError(f"{self.name}: non-finite action {a} (the safety filter holds these)")
        a = np.clip(a, -1.0, 1.0)
        self._obs, reward, terminated, truncated, info = self._env.step(a.astype(np.float32))
        self.reward = float(reward)
        self.success = self.success or bool(info.get("is_success", False))
        self.done = self.done or bool(terminated or truncated)
        return action_dict(a, names)


class SimArm(GymArm):
    """The native MuJoCo arm as a robot (see the module docstring)."""

    name = "vptr_sim_arm"

    def __init__(self, task: str = "lift", image_size: int = 64, cameras: tuple[str, ...] = ("front",),
                 seed: int = 0, domain_shift: float = 0.0, render_images: bool = True) -> None:
        from sim.native.embodiments import ACTION_NAMES, Arm

        if isinstance(cameras, str):
            raise ConfigError(f"cameras must be a tuple of camera names, got {cameras!r}")
        cams = tuple((c, (image_size, image_size, 3)) for c in cameras) if render_images else ()
        action = ActionSpec(names=tuple(ACTION_NAMES), units=UNITS, low=(-1.0,) * 5, high=(1.0,) * 5,
                            max_step=MAX_STEP, hold=(0.0, 0.0, 0.0, 0.0, None))
        super().__init__(env_id(task), RobotSpec(state_names=Arm.state_names, action=action,
                                                 rate_hz=CONTROL_HZ, cameras=cams),
                         {"image_size": image_size, "cameras": tuple(cameras),
                          "domain_shift": domain_shift, "render_images": render_images}, seed)

    def current_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        """Tool deltas 0 and the gripper closure that matches the measured opening."""
        from sim.native.embodiments import FINGER_OPEN

        grip = float(np.clip(1.0 - float(observation["gripper_opening"]) / FINGER_OPEN, -1.0, 1.0))
        return np.array([0.0, 0.0, 0.0, 0.0, grip])
