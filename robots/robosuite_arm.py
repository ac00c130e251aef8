"""The robosuite Panda arm (``sim.make("vptr/Robosuite<Task>-v0")``) behind the Robot protocol.

Each :meth:`RobosuiteArm.send_action` is one 20 Hz OSC_POSE control step. Observation
keys are the wrapper's ``STATE_NAMES`` (grip-site position and quaternion, finger
positions, joint angles as cos/sin) and one entry per camera (``agentview`` by default);
actions are its ``ACTION_NAMES`` in [-1, 1]: six relative tool deltas (1 = 5 cm or
0.5 rad per step; hold = 0) and the gripper (-1 open, +1 closed). robosuite is imported
when the robot connects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from robots.base import ActionSpec, RobotSpec
from robots.sim_arm import GymArm
from vptr.errors import ConfigError, unknown

CONTROL_HZ = 20.0
# A change of at most 0.5 per step in a tool delta bounds the commanded tool acceleration
# to 2.5 cm/step^2; the gripper may open or close fully in one step.
MAX_STEP = (0.5,) * 6 + (2.0,)
UNITS = ("5 cm/step",) * 3 + ("0.5 rad/step",) * 3 + ("closure (-1 open, +1 closed)",)
FINGER_RANGE = 0.08  # m: Panda finger opening, fully open (left - right finger qpos)


def robosuite_env_id(task: str) -> str:
    """``lift`` / ``Lift`` / ``vptr/RobosuiteLift-v0`` -> ``vptr/RobosuiteLift-v0``."""
    from sim.robosuite.tasks import TASKS

    ids = {t.env_id: t.env_id for t in TASKS.values()}
    by_name = {t.robosuite_name.lower(): t.env_id for t in TASKS.values()}
    if task in ids:
        return task
    if task.lower() not in by_name:
        raise unknown("robosuite task", task, by_name)
    return by_name[task.lower()]


class RobosuiteArm(GymArm):
    """See the module docstring."""

    name = "vptr_robosuite_arm"

    def __init__(self, task: str = "lift", image_size: int = 84,
                 cameras: tuple[str, ...] = ("agentview",), seed: int = 0,
                 render_images: bool = True) -> None:
        from sim.robosuite.env import ACTION_NAMES, STATE_NAMES

        if isinstance(cameras, str):
            raise ConfigError(f"cameras must be a tuple of camera names, got {cameras!r}")
        cams = tuple((c, (image_size, image_size, 3)) for c in cameras) if render_images else ()
        action = ActionSpec(names=ACTION_NAMES, units=UNITS, low=(-1.0,) * 7, high=(1.0,) * 7,
                            max_step=MAX_STEP, hold=(0.0,) * 6 + (None,))
        kwargs: dict[str, Any] = {"render_images": render_images}
        if render_images:
            kwargs.update(image_size=image_size, cameras=tuple(cameras))
        super().__init__(robosuite_env_id(task),
                         RobotSpec(state_names=STATE_NAMES, action=action, rate_hz=CONTROL_HZ,
                                   cameras=cams), kwargs, seed)

    def current_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        """Tool deltas 0 and the gripper closure that matches the measured finger opening."""
        opening = float(observation["gripper_qpos_left"]) - float(observation["gripper_qpos_right"])
        grip = float(np.clip(1.0 - 2.0 * opening / FINGER_RANGE, -1.0, 1.0))
        return np.array([0.0] * 6 + [grip])
