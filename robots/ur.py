"""A Universal Robots arm through ``ur_rtde`` (SDU Robotics), imported only on connect.

Layer 1 of the deployment spec: the control loop sends targets at the policy rate
(``rate_hz``, e.g. 20 Hz); a servo thread streams ``servoJ`` (joint targets, rad) or
``servoL`` (tool pose ``[x, y, z, rx, ry, rz]``, m and axis-angle rad) at the vendor rate
(``servo_hz``, 125 or 500 Hz), linearly interpolating from the previous target to the
latest one over one policy period, timed by ur_rtde's ``initPeriod`` / ``waitPeriod``.
The RTDE watchdog is armed (``setWatchdog``) and kicked every servo cycle, so the
controller stops the arm by itself if this process hangs. ``servoStop`` runs in a
``finally`` whenever the servo thread ends (stop, disconnect, an exception).

Protective and emergency stops read from ``rtde_receive`` surface in :meth:`URArm.health`
and as :class:`~robots.base.RobotFault` on the next command; nothing auto-recovers.
Tests drive this class with a fake of the two interfaces (``rtde=(control_cls,
receive_cls)``).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np

from robots.base import (
    ActionSpec,
    Robot,
    RobotDisconnected,
    RobotFault,
    RobotHealth,
    RobotSpec,
    action_dict,
    action_vector,
)
from vptr.errors import ConfigError

JOINTS = ("base", "shoulder", "elbow", "wrist_1", "wrist_2", "wrist_3")
TCP = ("tcp.x", "tcp.y", "tcp.z", "tcp.rx", "tcp.ry", "tcp.rz")


@dataclasses.dataclass(frozen=True)
class URConfig:
    """Options of :class:`URArm` (conservative defaults; narrow the limits to your cell)."""

    host: str
    mode: Literal["servoJ", "servoL"] = "servoJ"  # joint or tool-pose servoing
    rate_hz: float = 20.0  # rate of the targets the control loop sends
    servo_hz: float = 500.0  # RTDE servo rate: 125 (CB3) or up to 500 (e-Series)
    lookahead_time: float = 0.1  # servoJ/L smoothing, 0.03-0.2 s
    gain: float = 300.0  # servoJ/L proportional gain, 100-2000
    watchdog_hz: float = 10.0  # the controller stops if kicks come slower than this
    max_joint_velocity: float = 0.5  # rad/s, the per-step limit at rate_hz follows
    max_tcp_velocity: float = 0.1  # m/s (and rad/s) in servoL mode
    # joint limits (rad): UR joints turn +-2 pi; the elbow is kept within +-pi
    joint_low: tuple[float, ...] = (-2 * math.pi, -2 * math.pi, -math.pi, -2 * math.pi, -2 * math.pi,
                                    -2 * math.pi)
    joint_high: tuple[float, ...] = (2 * math.pi, 2 * math.pi, math.pi, 2 * math.pi, 2 * math.pi,
                                     2 * math.pi)
    # tool workspace box (m) and rotation-vector range (rad) in servoL mode
    tcp_low: tuple[float, ...] = (-0.8, -0.8, 0.0, -math.pi, -math.pi, -math.pi)
    tcp_high: tuple[float, ...] = (0.8, 0.8, 0.9, math.pi, math.pi, math.pi)

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("ur: host is required (the robot's IP address)")
        if self.mode not in ("servoJ", "servoL"):
            raise ConfigError(f"ur: mode must be servoJ or servoL, got {self.mode!r}")
        if not 125 <= self.servo_hz <= 500:
            raise ConfigError(f"ur: servo_hz must be in [125, 500], got {self.servo_hz}")
        if not 0 < self.rate_hz <= self.servo_hz:
            raise ConfigError(f"ur: rate_hz must be in (0, servo_hz], got {self.rate_hz}")
        if not 0.03 <= self.lookahead_time <= 0.2:
            raise ConfigError(f"ur: lookahead_time must be in [0.03, 0.2], got {self.lookahead_time}")
        if not 100 <= self.gain <= 2000:
            raise ConfigError(f"ur: gain must be in [100, 2000], got {self.gain}")
        if self.watchdog_hz <= 0 or self.watchdog_hz > self.servo_hz:
            raise ConfigError(f"ur: watchdog_hz must be in (0, servo_hz], got {self.watchdog_hz}")


def _rtde_interfaces() -> tuple[Callable, Callable]:
    try:
        import rtde_control
        import rtde_receive
    except ImportError:
        raise ConfigError("the UR backend needs ur_rtde: pip install 'vptr[ur]' "
                          "(or pip install ur_rtde)") from None
    return rtde_control.RTDEControlInterface, rtde_receive.RTDEReceiveInterface


class URArm(Robot):
    """See the module docstring."""

    name = "ur"

    def __init__(self, config: URConfig, rtde: tuple[Callable, Callable] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.config = config
        self._rtde = rtde
        self._clock = clock
        c = config
        joint_mode = c.mode == "servoJ"
        names = tuple(f"{j}.pos" for j in JOINTS) if joint_mode else TCP
        vmax = c.max_joint_velocity if joint_mode else c.max_tcp_velocity
        action = ActionSpec(names=names, units=("rad",) * 6 if joint_mode else ("m",) * 3 + ("rad",) * 3,
                            low=c.joint_low if joint_mode else c.tcp_low,
                            high=c.joint_high if joint_mode else c.tcp_high,
                            max_velocity=(vmax,) * 6)
        state = tuple(f"{j}.pos" for j in JOINTS) + tuple(f"{j}.vel" for j in JOINTS) + TCP
        units = ("rad",) * 6 + ("rad/s",) * 6 + ("m",) * 3 + ("rad",) * 3
        self._spec = RobotSpec(state_names=state, action=action, rate_hz=c.rate_hz, state_units=units)
        self._control: Any = None
        self._receive: Any = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._prev = self._target = None
        self._t_set = 0.0
        self._fault: str | None = None
        self.servo_cycles = 0

    @property
    def spec(self) -> RobotSpec:
        return self._spec

    @property
    def is_connected(self) -> bool:
        return self._control is not None and bool(self._control.isConnected())

    def connect(self, calibrate: bool = True) -> None:
        if self._control is not None:
            return
        control_cls, receive_cls = self._rtde or _rtde_interfaces()
        hz = self.config.servo_hz
        self._receive = receive_cls(self.config.host, hz)
        self._control = control_cls(self.config.host, hz)
        if not self._control.isConnected():
            raise RobotDisconnected(f"ur: no RTDE connection to {self.config.host}")
        self._control.setWatchdog(self.config.watchdog_hz)

    def _measured(self) -> np.ndarray:
        r = self._receive
        return np.asarray(r.getActualQ() if self.config.mode == "servoJ" else r.getActualTCPPose(),
                          dtype=np.float64)

    def _start_servo(self) -> None:
        start = self._measured()
        with self._lock:
            self._prev, self._target, self._t_set = start, start.copy(), self._clock()
        self._stop.clear()
        self._thread = threading.Thread(target=self._servo_loop, name="ur-servo", daemon=True)
        self._thread.start()

    def _interpolated(self) -> np.ndarray:
        with self._lock:
            alpha = min(1.0, (self._clock() - self._t_set) * self.config.rate_hz)
            return self._prev + alpha * (self._target - self._prev)

    def _servo_loop(self) -> None:
        c, cfg = self._control, self.config
        servo = c.servoJ if cfg.mode == "servoJ" else c.servoL
        dt = 1.0 / cfg.servo_hz
        try:
            while not self._stop.is_set():
                t0 = c.initPeriod()
                # servoJ/servoL(target, speed, acceleration, time, lookahead_time, gain):
                # speed and acceleration are unused in servo mode.
                if not servo(self._interpolated().tolist(), 0.0, 0.0, dt, cfg.lookahead_time, cfg.gain):
                    self._fault = f"{cfg.mode} was refused by the controller"
                    break
                c.kickWatchdog()
                self.servo_cycles += 1
                c.waitPeriod(t0)
        except Exception as e:  # the link or the controller failed: stop, report, no retry
            self._fault = f"servo thread: {type(e).__name__}: {e}"
        finally:
            try:
                c.servoStop()
            except Exception as e:
                self._fault = self._fault or f"servoStop failed: {e}"

    def _stop_servo(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def get_observation(self) -> dict[str, Any]:
        self._require_connected()
        r = self._receive
        values = list(r.getActualQ()) + list(r.getActualQd()) + list(r.getActualTCPPose())
        return dict(zip(self._spec.state_names, (float(v) for v in values)))

    def send_action(self, action: dict[str, float]) -> dict[str, float]:
        self._require_connected()
        h = self.health()
        if not h.ok:
            self._stop_servo()
            raise RobotFault(f"ur: {h.describe()}")
        a = self._spec.action
        target = action_vector(action, a.names)
        if not np.isfinite(target).all():
            raise RobotFault(f"ur: non-finite target {target} (the safety filter holds these)")
        target = np.clip(target, a.low, a.high)
        if self._thread is None:
            self._start_servo()
        with self._lock:
            alpha = min(1.0, (self._clock() - self._t_set) * self.config.rate_hz)
            self._prev = self._prev + alpha * (self._target - self._prev)  # where the servo is now
            self._target, self._t_set = target, self._clock()
        return action_dict(target, a.names)

    def stop(self) -> None:
        """End servoing (``servoStop`` decelerates the arm); the next command restarts it
        from the measured pose."""
        self._stop_servo()

    def health(self) -> RobotHealth:
        r = self._receive
        if r is None:
            return RobotHealth(fault=self._fault)
        return RobotHealth(estop=bool(r.isEmergencyStopped()), protective_stop=bool(r.isProtectiveStopped()),
                           fault=self._fault)

    def current_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        return np.array([float(observation[n]) for n in self._spec.action.names])

    def disconnect(self) -> None:
        self._stop_servo()
        c, r = self._control, self._receive
        self._control = self._receive = None
        if c is not None:
            try:
                c.stopScript()
            finally:
                c.disconnect()
        if r is not None:
            r.disconnect()
