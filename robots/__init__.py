"""Hardware abstraction layer: the Robot protocol (LeRobot-compatible) and its backends.

* :mod:`robots.base` -- the protocol, :class:`~robots.base.RobotSpec` (names, units,
  limits, rate), health and errors (numpy only);
* :mod:`robots.mock` -- a mock robot with fault injection;
* :mod:`robots.sim_arm` -- the native MuJoCo arm;
* :mod:`robots.ur` -- a UR arm through ``ur_rtde`` (imported lazily);
* :mod:`robots.lerobot_adapter` -- any LeRobot robot by config type, and our sim arm
  registered as the LeRobot robot ``vptr_sim_arm``.

The safety filter, chunk executor and control loop live in :mod:`vptr.runtime`.
Nothing here imports training code; backends import their SDKs only when used.
"""

from robots.base import ActionSpec, Robot, RobotHealth, RobotSpec

__all__ = ["ActionSpec", "Robot", "RobotHealth", "RobotSpec"]


def __getattr__(name: str):
    # LeRobot's make_robot_from_config finds a plugin robot class in the parent module of
    # its config (robots.lerobot_adapter.VptrSimArmConfig -> robots.VptrSimArm); resolve
    # it lazily so that `import robots` does not import LeRobot.
    if name in ("VptrSimArm", "VptrSimArmConfig"):
        from robots import lerobot_adapter

        return getattr(lerobot_adapter, name)
    raise AttributeError(f"module 'robots' has no attribute {name!r}")
