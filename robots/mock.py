"""A mock robot with fault injection, for tests and benchmarks of the control stack.

Joints follow their commands exactly (absolute entries) or integrate them (relative
entries, those with a ``hold`` value); the observation has one ``<name>`` entry per
action and, optionally, small camera images. Faults (:class:`Faults`): latency of
observations and commands, dropped observations (:class:`~robots.base.ObservationTimeout`),
stale observations (the previous one again, its age growing in :meth:`MockRobot.health`),
a disconnect after N commands, a vendor fault (protective stop) after N commands.
Time comes from injected ``clock`` / ``sleep`` functions so tests can run on a fake
clock. Every command that reached the "driver" is kept in :attr:`MockRobot.sent`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from robots.base import (
    ActionSpec,
    ObservationTimeout,
    Robot,
    RobotDisconnected,
    RobotFault,
    RobotHealth,
    RobotSpec,
    action_dict,
    action_vector,
)
from vptr.errors import ConfigError

JOINTS = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")


def default_spec(rate_hz: float = 50.0, camera: tuple[int, int, int] | None = None) -> RobotSpec:
    """Six revolute joints (rad, +-2.5, 1 rad/s, 0.05 rad per step) and a gripper (0..1)."""
    names = tuple(f"{j}.pos" for j in JOINTS) + ("gripper.pos",)
    n = len(JOINTS)
    action = ActionSpec(names=names, units=("rad",) * n + ("closure",),
                        low=(-2.5,) * n + (0.0,), high=(2.5,) * n + (1.0,),
                        max_step=(0.05,) * n + (0.2,), max_velocity=(1.0,) * n + (5.0,))
    cams = (("front", camera),) if camera else ()
    return RobotSpec(state_names=names, action=action, rate_hz=rate_hz,
                     state_units=action.units, cameras=cams)


@dataclasses.dataclass(frozen=True)
class Faults:
    """What can go wrong (all off by default)."""

    obs_latency_s: float = 0.0  # added to every get_observation
    action_latency_s: float = 0.0  # added to every send_action
    drop_prob: float = 0.0  # get_observation raises ObservationTimeout
    stale_prob: float = 0.0  # get_observation returns the previous observation again
    disconnect_after: int | None = None  # the link drops after this many commands
    fault_after: int | None = None  # a vendor fault (protective stop) after this many commands
    seed: int = 0

    def __post_init__(self) -> None:
        for f in ("obs_latency_s", "action_latency_s"):
            if getattr(self, f) < 0:
                raise ConfigError(f"faults: {f} must be >= 0, got {getattr(self, f)}")
        for f in ("drop_prob", "stale_prob"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ConfigError(f"faults: {f} must be in [0, 1], got {getattr(self, f)}")


class MockRobot(Robot):
    """See the module docstring."""

    name = "mock"

    def __init__(self, spec: RobotSpec | None = None, faults: Faults = Faults(),
                 initial: np.ndarray | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._spec = spec or default_spec()
        self.faults = faults
        self._clock, self._sleep = clock, sleep
        a = self._spec.action
        if initial is None:
            mid = np.zeros(a.dim) if a.low is None else (np.array(a.low) + np.array(a.high)) / 2
            initial = mid
        self._position = np.asarray(initial, dtype=np.float64).copy()
        self._rng = np.random.default_rng(faults.seed)
        self._connected = False
        self._fault: str | None = None
        self._last_obs: dict[str, Any] | None = None
        self._last_fresh = 0.0
        self._lock = threading.Lock()
        self.sent: list[np.ndarray] = []
        self.stops = 0
        self.events: list[tuple[str, float]] = []  # ("send" | "stop" | ..., clock time)

    @property
    def spec(self) -> RobotSpec:
        return self._spec

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self, calibrate: bool = True) -> None:
        self._connected = True
        self._last_fresh = self._clock()

    def disconnect(self) -> None:
        self._connected = False

    def inject_fault(self, reason: str = "vendor fault (injected)") -> None:
        """A fault now, e.g. from another thread (the controller's protective stop)."""
        self._fault = reason

    def _observe(self) -> dict[str, Any]:
        obs: dict[str, Any] = action_dict(self._position, self._spec.action.names)
        step = len(self.sent)
        for cam, shape in self._spec.cameras:
            obs[cam] = np.full(shape, step % 256, dtype=np.uint8)
        return obs

    def get_observation(self) -> dict[str, Any]:
        self._require_link()
        f = self.faults
        if f.obs_latency_s:
            self._sleep(f.obs_latency_s)
        if f.drop_prob and self._rng.random() < f.drop_prob:
            raise ObservationTimeout(f"{self.name}: observation dropped (injected)")
        if self._last_obs is not None and f.stale_prob and self._rng.random() < f.stale_prob:
            return dict(self._last_obs)
        with self._lock:
            self._last_obs = self._observe()
        self._last_fresh = self._clock()
        return dict(self._last_obs)

    def send_action(self, action: dict[str, float]) -> dict[str, float]:
        self._require_link()
        if self._fault:
            raise RobotFault(f"{self.name}: {self._fault}")
        a = self._spec.action
        cmd = action_vector(action, a.names)
        if not np.isfinite(cmd).all():  # a driver never forwards a non-finite command
            raise RobotFault(f"{self.name}: non-finite command {cmd}")
        if a.low is not None:
            cmd = np.clip(cmd, a.low, a.high)
        if self.faults.action_latency_s:
            self._sleep(self.faults.action_latency_s)
        with self._lock:
            relative = np.array([h is not None for h in a.hold])
            self._position = np.where(relative, self._position + cmd, cmd)
            self.sent.append(cmd)
            self.events.append(("send", self._clock()))
        n = len(self.sent)
        f = self.faults
        if f.fault_after is not None and n >= f.fault_after:
            self._fault = "vendor fault (injected)"
        if f.disconnect_after is not None and n >= f.disconnect_after:
            self._connected = False
        return action_dict(cmd, a.names)

    def stop(self) -> None:
        self.stops += 1
        self.events.append(("stop", self._clock()))

    def health(self) -> RobotHealth:
        return RobotHealth(protective_stop=self._fault is not None, fault=self._fault,
                           obs_age_s=max(0.0, self._clock() - self._last_fresh))

    def _require_link(self) -> None:
        if not self._connected:
            raise RobotDisconnected(f"{self.name}: not connected")
