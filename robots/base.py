"""The Robot protocol: LeRobot's ``Robot`` API plus the spec our safety layer needs.

Structurally the same as ``lerobot.robots.Robot`` (so LeRobot tools can drive ours and
any LeRobot robot plugs in through :mod:`robots.lerobot_adapter`):
``observation_features`` / ``action_features`` (name -> ``float`` or ``(H, W, C)``,
available while disconnected), ``is_connected``, ``connect(calibrate=True)``,
``disconnect()``, ``get_observation() -> dict``, ``send_action(dict) -> dict`` (what was
actually sent, after the driver's own clipping), a context manager.

Extensions (deployment spec, "Robot protocol"): :attr:`Robot.spec` (names, units, limits,
per-step change limit, velocity cap, rate), :meth:`Robot.stop` (controlled stop),
:meth:`Robot.health` (e-stop, protective stop, vendor fault, observation age) and
:meth:`Robot.current_action` (the command that holds the robot where it is: the
reference the safety filter ramps from, so the first target is reached slowly).

This module imports only numpy: vendor SDKs and LeRobot are imported by the backends.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vptr.errors import ConfigError, VptrError


class RobotError(VptrError):
    """A robot that cannot go on (the control loop stops; nothing auto-recovers)."""


class RobotDisconnected(RobotError):
    """The link to the robot is gone (or was never made)."""


class RobotFault(RobotError):
    """The vendor controller reports a fault, a protective stop or an e-stop."""


class ObservationTimeout(RobotError):
    """No observation arrived in time (a dropped frame or message); the loop holds."""


def _floats(name: str, values: Sequence[float] | None, n: int, what: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    out = tuple(float(v) for v in values)
    if len(out) != n:
        raise ConfigError(f"{what}: {name} has {len(out)} entries for {n} actions")
    if any(math.isnan(v) for v in out):
        raise ConfigError(f"{what}: {name} contains NaN")
    return out


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    """What a robot accepts, entry by entry (all tuples have one value per name).

    ``low`` / ``high``: command limits (None: the robot does not declare them, and the
    safety filter refuses to run without limits given explicitly). ``max_step``: the
    largest change of a command between two control periods (LeRobot's
    ``max_relative_target``). ``max_velocity``: a cap in units/s, turned into a per-step
    limit at the loop's rate. ``hold``: the command that keeps the robot still, per
    entry; None for an absolute target (hold = repeat the last command), a number for a
    relative one (e.g. 0.0 for a velocity or delta command).
    """

    names: tuple[str, ...]
    units: tuple[str, ...] = ()
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None
    max_step: tuple[float, ...] | None = None
    max_velocity: tuple[float, ...] | None = None
    hold: tuple[float | None, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.names)
        what = "action spec"
        if n == 0 or len(set(self.names)) != n:
            raise ConfigError(f"{what}: names must be non-empty and unique, got {self.names!r}")
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "units", tuple(self.units) or ("",) * n)
        if len(self.units) != n:
            raise ConfigError(f"{what}: {len(self.units)} units for {n} actions")
        for field in ("low", "high", "max_step", "max_velocity"):
            object.__setattr__(self, field, _floats(field, getattr(self, field), n, what))
        if (self.low is None) != (self.high is None):
            raise ConfigError(f"{what}: give both low and high limits, or neither")
        if self.low is not None and any(lo > hi for lo, hi in zip(self.low, self.high)):
            raise ConfigError(f"{what}: low > high for "
                              f"{[nm for nm, lo, hi in zip(self.names, self.low, self.high) if lo > hi]}")
        for field in ("max_step", "max_velocity"):
            vals = getattr(self, field)
            if vals is not None and any(v <= 0 for v in vals):
                raise ConfigError(f"{what}: {field} must be > 0 for every action, got {vals}")
        hold = tuple(self.hold) or (None,) * n
        if len(hold) != n:
            raise ConfigError(f"{what}: {len(hold)} hold values for {n} actions")
        object.__setattr__(self, "hold", tuple(None if h is None else float(h) for h in hold))

    @property
    def dim(self) -> int:
        return len(self.names)


@dataclasses.dataclass(frozen=True)
class RobotSpec:
    """Observation and action layout, units, limits and the command rate of a robot.

    ``state_names``: the scalar observation entries, in order (what packs into
    ``observation.state``); ``cameras``: camera name -> ``(H, W, C)``; ``rate_hz``: the
    command rate the robot is built for (the sim arm: 20 Hz; a servo driver
    interpolates between commands at its own, higher rate).
    """

    state_names: tuple[str, ...]
    action: ActionSpec
    rate_hz: float
    state_units: tuple[str, ...] = ()
    cameras: tuple[tuple[str, tuple[int, int, int]], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_names", tuple(self.state_names))
        object.__setattr__(self, "state_units", tuple(self.state_units) or ("",) * len(self.state_names))
        cams = tuple(self.cameras.items()) if isinstance(self.cameras, Mapping) else tuple(self.cameras)
        object.__setattr__(self, "cameras", tuple((str(c), tuple(int(s) for s in shape))
                                                  for c, shape in cams))
        if len(self.state_units) != len(self.state_names):
            raise ConfigError(f"robot spec: {len(self.state_units)} units for "
                              f"{len(self.state_names)} state entries")
        names = list(self.state_names) + [c for c, _ in self.cameras]
        if len(set(names)) != len(names):
            raise ConfigError(f"robot spec: repeated observation names in {names}")
        for cam, shape in self.cameras:
            if len(shape) != 3 or min(shape) <= 0:
                raise ConfigError(f"robot spec: camera {cam!r} needs an (H, W, C) shape, got {shape}")
        if not (isinstance(self.rate_hz, (int, float)) and 0 < self.rate_hz <= 10_000):
            raise ConfigError(f"robot spec: rate_hz must be in (0, 10000], got {self.rate_hz!r}")

    @property
    def camera_shapes(self) -> dict[str, tuple[int, int, int]]:
        return dict(self.cameras)

    def observation_features(self) -> dict[str, Any]:
        return {**{n: float for n in self.state_names}, **self.camera_shapes}

    def action_features(self) -> dict[str, type]:
        return {n: float for n in self.action.names}


@dataclasses.dataclass(frozen=True)
class RobotHealth:
    """What :meth:`Robot.health` reports. ``ok`` is False for any stop or fault."""

    estop: bool = False
    protective_stop: bool = False
    fault: str | None = None
    obs_age_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.estop or self.protective_stop or self.fault)

    def describe(self) -> str:
        parts = [p for p, on in (("e-stop", self.estop), ("protective stop", self.protective_stop)) if on]
        if self.fault:
            parts.append(f"fault: {self.fault}")
        return ", ".join(parts) or "ok"


def action_vector(action: Mapping[str, Any], names: Sequence[str]) -> np.ndarray:
    """The entries of an action dict in ``names`` order (a missing or extra key is an error)."""
    missing = [n for n in names if n not in action]
    extra = [k for k in action if k not in names]
    if missing or extra:
        raise ConfigError(f"action keys do not match the robot: missing {missing}, unexpected {extra}")
    return np.array([float(action[n]) for n in names], dtype=np.float64)


def action_dict(vector: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    return {n: float(v) for n, v in zip(names, np.asarray(vector, dtype=np.float64))}


class Robot(abc.ABC):
    """Base class of our robots (see the module docstring). Subclasses set ``name`` and
    implement ``spec``, ``is_connected``, ``connect``, ``disconnect``,
    ``get_observation`` and ``send_action``."""

    name: str = "robot"

    @property
    @abc.abstractmethod
    def spec(self) -> RobotSpec: ...

    @property
    def robot_type(self) -> str:
        return self.name

    @property
    def observation_features(self) -> dict[str, Any]:
        return self.spec.observation_features()

    @property
    def action_features(self) -> dict[str, type]:
        return self.spec.action_features()

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:  # noqa: B027 (LeRobot API; optional)
        """Nothing to calibrate by default (LeRobot API)."""

    def configure(self) -> None:  # noqa: B027 (LeRobot API; optional)
        """Nothing to configure by default (LeRobot API)."""

    @abc.abstractmethod
    def connect(self, calibrate: bool = True) -> None: ...

    @abc.abstractmethod
    def disconnect(self) -> None: ...

    @abc.abstractmethod
    def get_observation(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def send_action(self, action: dict[str, float]) -> dict[str, float]: ...

    def stop(self) -> None:  # noqa: B027 (optional: most robots hold without commands)
        """Bring the robot to a controlled stop (default: nothing moves without commands)."""

    def health(self) -> RobotHealth:
        return RobotHealth()

    def current_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        """The command that keeps the robot where it is: the hold value of relative
        entries, the measured value (same name in ``observation``) of absolute ones."""
        spec = self.spec.action
        out = []
        for name, hold in zip(spec.names, spec.hold):
            if hold is not None:
                out.append(hold)
            elif name in observation:
                out.append(float(observation[name]))
            else:
                raise ConfigError(f"{self.name}: cannot tell the current command of {name!r} (no "
                                  "observation of that name); the robot must override current_action")
        return np.array(out, dtype=np.float64)

    def _require_connected(self) -> None:
        if not self.is_connected:
            raise RobotDisconnected(f"{self.name} is not connected (call connect() first)")

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.is_connected:
            self.disconnect()

    def __str__(self) -> str:
        return f"{self.name} ({type(self).__name__})"
