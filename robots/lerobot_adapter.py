"""LeRobot interop, both ways, through LeRobot's own registry (no LeRobot code copied).

* :class:`LeRobotRobot` -- any LeRobot robot behind our protocol, selected by its config
  type (``so101_follower``, ``koch_follower``, ...): ``LeRobotRobot.from_type(type,
  port=..., ...)`` builds ``RobotConfig.get_choice_class(type)`` from the options
  (decoded by draccus, as LeRobot's command line does) and the robot with
  ``lerobot.robots.make_robot_from_config``. LeRobot robots declare names but no limits,
  so limits are given here (``limits={name: (low, high)}``, ``max_step``); without them
  the safety filter refuses to run unless asked explicitly for no limits.
* :class:`VptrSimArm` / :class:`VptrSimArmConfig` -- our simulated arm registered as the
  LeRobot robot type ``vptr_sim_arm`` (``RobotConfig.register_subclass``), so
  ``make_robot_from_config(VptrSimArmConfig(task="lift"))`` builds it and LeRobot's own
  recording loop drives it.

How ``make_robot_from_config`` finds a robot that is not built in (lerobot 0.6,
``lerobot/robots/utils.py``): after its list of built-in types it calls
``make_device_from_device_class(config)``, which strips ``Config`` from the config class
name (``VptrSimArmConfig`` -> ``VptrSimArm``) and looks the class up in the config's
parent module (here ``robots``: :mod:`robots` exposes ``VptrSimArm`` lazily). The
config type must be registered before a config is parsed: importing this module does
it. LeRobot's scripts import plugins by name: ``lerobot-record
--robot.discover_packages_path=robots --robot.type=vptr_sim_arm --robot.task=lift ...``
imports :mod:`robots` and its modules (``register_third_party_plugins`` only finds
installed distributions named ``lerobot_robot_*``, which this project is not).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

import numpy as np
from lerobot.robots import Robot as _LeRobotBase
from lerobot.robots import RobotConfig, make_robot_from_config

from robots.base import ActionSpec, Robot, RobotHealth, RobotSpec
from robots.sim_arm import SimArm
from vptr.errors import ConfigError, unknown

SIM_ARM_TYPE = "vptr_sim_arm"


@RobotConfig.register_subclass(SIM_ARM_TYPE)
@dataclasses.dataclass
class VptrSimArmConfig(RobotConfig):
    """LeRobot config of our simulated arm (``--robot.type=vptr_sim_arm``)."""

    task: str = "lift"  # native task: reach, push, lift, pickplace, stack, drawer
    image_size: int = 64  # camera image side in pixels
    # ``cameras`` is reserved by RobotConfig for LeRobot camera configs (checked in its
    # __post_init__), hence another name for the simulated cameras.
    camera_names: tuple[str, ...] = ("front",)
    seed: int = 0  # seed of the first episode (episode i: seed + i)
    domain_shift: float = 0.0  # 0 = robot appearance


class VptrSimArm(_LeRobotBase):
    """Our :class:`~robots.sim_arm.SimArm` as a LeRobot ``Robot`` (delegation)."""

    config_class = VptrSimArmConfig
    name = SIM_ARM_TYPE

    def __init__(self, config: VptrSimArmConfig) -> None:
        super().__init__(config)
        self.config = config
        self.arm = SimArm(task=config.task, image_size=config.image_size,
                          cameras=tuple(config.camera_names), seed=config.seed,
                          domain_shift=config.domain_shift)

    @property
    def spec(self) -> RobotSpec:
        return self.arm.spec

    @property
    def observation_features(self) -> dict:
        return self.arm.observation_features

    @property
    def action_features(self) -> dict:
        return self.arm.action_features

    @property
    def is_connected(self) -> bool:
        return self.arm.is_connected

    def connect(self, calibrate: bool = True) -> None:
        self.arm.connect(calibrate)

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def get_observation(self) -> dict:
        return self.arm.get_observation()

    def send_action(self, action: dict) -> dict:
        return self.arm.send_action(action)

    def disconnect(self) -> None:
        self.arm.disconnect()

    def stop(self) -> None:
        self.arm.stop()

    def health(self) -> RobotHealth:
        return self.arm.health()

    def current_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        return self.arm.current_action(observation)


_FAILED: dict[str, str] = {}


def load_registry() -> dict[str, str]:
    """Register every robot config LeRobot ships (each lives in its own subpackage,
    imported here) plus installed ``lerobot_robot_*`` plugins. Returns the subpackages
    that could not be imported (a missing vendor SDK) with the reason."""
    import lerobot.robots as pkg
    from lerobot.utils.import_utils import register_third_party_plugins

    if not _FAILED.get("_done"):
        for mod in pkgutil.iter_modules(pkg.__path__):
            if mod.ispkg:
                try:
                    importlib.import_module(f"{pkg.__name__}.{mod.name}")
                except Exception as e:  # a robot whose SDK is absent: the others still work
                    _FAILED[mod.name] = f"{type(e).__name__}: {e}"
        register_third_party_plugins()
        _FAILED["_done"] = "yes"
    return {k: v for k, v in _FAILED.items() if k != "_done"}


def known_types() -> list[str]:
    load_registry()
    return sorted(RobotConfig.get_known_choices())


def make_config(type_name: str, options: Mapping[str, Any] | None = None) -> RobotConfig:
    """The registered LeRobot config of ``type_name`` built from ``options`` (values may
    be strings, decoded as LeRobot's command line would)."""
    import draccus

    types = known_types()
    if type_name not in types:
        raise unknown("LeRobot robot type", type_name, types)
    cls = RobotConfig.get_choice_class(type_name)
    try:
        return draccus.decode(cls, dict(options or {}))
    except Exception as e:  # draccus.DecodingError, or a config's own __post_init__ check
        raise ConfigError(f"LeRobot robot {type_name!r}: {e}") from None


def _per_name(value: float | Mapping[str, float] | None, names: tuple[str, ...],
              what: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        extra = [k for k in value if k not in names]
        if missing or extra:
            raise ConfigError(f"{what}: missing {missing}, unknown {extra}")
        return tuple(float(value[n]) for n in names)
    return (float(value),) * len(names)


class LeRobotRobot(Robot):
    """Any LeRobot robot (an instance of ``lerobot.robots.Robot``) behind our protocol.

    ``limits``: name -> (low, high) for every action; ``max_step``: per-step change limit
    (one number for all actions, or per name); ``rate_hz``: the command rate the robot
    runs at (LeRobot's recordings default to 30 fps). A wrapped robot that carries our
    spec (:class:`VptrSimArm`) keeps it.
    """

    def __init__(self, robot: Any, limits: Mapping[str, tuple[float, float]] | None = None,
                 max_step: float | Mapping[str, float] | None = None, rate_hz: float = 30.0) -> None:
        self.robot = robot
        self.name = getattr(robot, "name", type(robot).__name__)
        inner = getattr(robot, "spec", None)
        if isinstance(inner, RobotSpec) and limits is None and max_step is None:
            self._spec = inner
            return
        obs = robot.observation_features
        state = tuple(k for k, v in obs.items() if not isinstance(v, tuple))
        cams = tuple((k, v) for k, v in obs.items() if isinstance(v, tuple))
        names = tuple(robot.action_features)
        low = high = None
        if limits is not None:
            bad = [n for n in names if n not in limits]
            if bad or set(limits) - set(names):
                raise ConfigError(f"{self.name} limits: missing {bad}, unknown "
                                  f"{sorted(set(limits) - set(names))}")
            low = tuple(float(limits[n][0]) for n in names)
            high = tuple(float(limits[n][1]) for n in names)
        action = ActionSpec(names=names, low=low, high=high,
                            max_step=_per_name(max_step, names, f"{self.name} max_step"))
        self._spec = RobotSpec(state_names=state, action=action, rate_hz=rate_hz, cameras=cams)

    @classmethod
    def from_type(cls, type_name: str, limits: Mapping[str, tuple[float, float]] | None = None,
                  max_step: float | Mapping[str, float] | None = None, rate_hz: float = 30.0,
                  **options: Any) -> LeRobotRobot:
        """Build the LeRobot robot registered as ``type_name`` with ``options``."""
        config = make_config(type_name, options)
        try:
            robot = make_robot_from_config(config)
        except Exception as e:
            raise ConfigError(f"LeRobot robot {type_name!r} could not be built: {e}") from None
        return cls(robot, limits=limits, max_step=max_step, rate_hz=rate_hz)

    @property
    def spec(self) -> RobotSpec:
        return self._spec

    @property
    def is_connected(self) -> bool:
        return bool(self.robot.is_connected)

    @property
    def is_calibrated(self) -> bool:
        return bool(self.robot.is_calibrated)

    def connect(self, calibrate: bool = True) -> None:
        self.robot.connect(calibrate)

    def calibrate(self) -> None:
        self.robot.calibrate()

    def configure(self) -> None:
        self.robot.configure()

    def disconnect(self) -> None:
        self.robot.disconnect()

    def get_observation(self) -> dict[str, Any]:
        return self.robot.get_observation()

    def send_action(self, action: dict[str, float]) -> dict[str, float]:
        return self.robot.send_action(action)

    def stop(self) -> None:
        stop = getattr(self.robot, "stop", None)
        if callable(stop):
            stop()

    def health(self) -> RobotHealth:
        health = getattr(self.robot, "health", None)
        return health() if callable(health) else RobotHealth()

    def current_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        inner = getattr(self.robot, "current_action", None)
        return inner(observation) if callable(inner) else super().current_action(observation)
