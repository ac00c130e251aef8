"""The control loop (layer 4): fixed rate, deadline and jitter statistics, watchdog,
e-stop, recording, clean shutdown.

One thread runs the loop; per period ``k`` it waits for ``t0 + k / rate``, reads the
robot, asks the executor for the period's action, passes it through the safety filter
and sends it. Inference runs in the executor's thread (asynchronous modes), logging and
recording in their own threads (:mod:`vptr.runtime.recording`): nothing slow runs here.

* Deadlines: the lateness of each period's start is its jitter; a period that starts
  more than one period late skips the missed periods (their actions are stale: the
  executor drops them) and counts them as ``missed``; a period whose work ends after the
  next deadline counts as an ``overrun``.
* Watchdog: no action from the executor -> the safety filter's hold command at once;
  none for ``stop_after_s`` -> the episode stops (``robot.stop()``). A vendor fault, a
  protective or emergency stop, or a lost link stops it too; nothing auto-recovers.
* E-stop: :meth:`ControlLoop.estop` (any thread) or a signal (``SIGUSR1`` by default)
  wakes the loop from its wait; no command is sent after it, and ``robot.stop()`` is
  called within the period (the latency is reported). Ctrl-C (SIGINT) ends the episode
  the same way, cleanly; a second Ctrl-C raises KeyboardInterrupt.
* Time comes from a clock object (:class:`RealClock`; :class:`FakeClock` in tests).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections import Counter
from typing import Any

import numpy as np

from robots.base import ObservationTimeout, Robot, RobotDisconnected, RobotError, action_dict
from vptr.errors import ConfigError
from vptr.runtime.executor import Executor, boundary_stall_s
from vptr.runtime.policy import PolicyIO, action_permutation, check_compatible, pack_observation
from vptr.runtime.recording import AsyncLog, EpisodeRecorder
from vptr.runtime.safety import SafetyFilter


class RealClock:
    """``time.perf_counter``; waits sleep on an event (so a stop wakes them at once) and
    spin for the last ``spin_s`` (sleep overshoot is ~0.1 ms on Linux, more under load)."""

    def __init__(self, spin_s: float = 0.0005) -> None:
        self.spin_s = spin_s

    def now(self) -> float:
        return time.perf_counter()

    def wait_until(self, deadline: float, event: threading.Event) -> bool:
        """Wait until ``deadline``; True if ``event`` was set (then return early)."""
        while True:
            remaining = deadline - time.perf_counter()
            if event.is_set():
                return True
            if remaining <= 0:
                return False
            if remaining > self.spin_s and event.wait(remaining - self.spin_s):
                return True


class FakeClock:
    """Time that moves only when told: waits jump to the deadline, ``sleep`` advances."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t
        self._lock = threading.Lock()

    def now(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        with self._lock:
            self.t += dt

    def wait_until(self, deadline: float, event: threading.Event) -> bool:
        if event.is_set():
            return True
        with self._lock:
            self.t = max(self.t, deadline)
        return event.is_set()


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Options of :class:`ControlLoop`."""

    rate_hz: float
    max_steps: int | None = None  # end after this many periods
    duration_s: float | None = None  # or after this long
    stop_after_s: float = 0.5  # watchdog: stop after this long without an action (hold before)
    plan_max_age_periods: float = 2.0  # only observations younger than this start an inference
    estop_signal: str | None = "SIGUSR1"  # signal that triggers the e-stop (None: none)
    handle_sigint: bool = True  # Ctrl-C ends the episode cleanly (main thread only)
    stop_when_done: bool = True  # end when the robot says its episode is over (simulation)
    check_rate: bool = True  # refuse a loop rate that differs from the policy's training rate

    def __post_init__(self) -> None:
        if not (isinstance(self.rate_hz, (int, float)) and 0 < self.rate_hz <= 2000):
            raise ConfigError(f"loop: rate_hz must be in (0, 2000], got {self.rate_hz!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"loop: max_steps must be >= 1, got {self.max_steps}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ConfigError(f"loop: duration_s must be > 0, got {self.duration_s}")
        if not self.stop_after_s > 0:
            raise ConfigError(f"loop: stop_after_s must be > 0, got {self.stop_after_s}")
        if self.estop_signal is not None and not hasattr(signal, self.estop_signal):
            raise ConfigError(f"loop: unknown signal {self.estop_signal!r}")

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz


def _percentiles(x: list[float]) -> dict[str, float]:
    if not x:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}
    a = np.asarray(x)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


@dataclasses.dataclass
class LoopReport:
    """What one run of the loop did (times in seconds)."""

    rate_hz: float
    steps: int = 0
    duration_s: float = 0.0
    stop_reason: str = ""
    jitter_s: list[float] = dataclasses.field(default_factory=list)  # lateness of each period's start
    work_s: list[float] = dataclasses.field(default_factory=list)  # time from start to command sent
    missed: int = 0  # periods skipped because the loop was late
    overruns: int = 0  # periods whose work ended after the next deadline
    holds: int = 0  # periods with no action from the executor
    counts: Counter = dataclasses.field(default_factory=Counter)  # obs_dropped, obs_stale, ...
    interventions: dict[str, int] = dataclasses.field(default_factory=dict)
    stop_latency_s: float | None = None  # e-stop / stop request -> robot.stop() returned
    boundary_stall_s: float = 0.0
    inference_s: list[float] = dataclasses.field(default_factory=list)
    seams: list[float] = dataclasses.field(default_factory=list)
    success: bool | None = None
    log_dropped: int = 0
    span_s: float = 0.0  # from the first period's start to the last one's

    @property
    def achieved_hz(self) -> float:
        return (self.steps - 1) / self.span_s if self.span_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        ms = {k: round(v * 1e3, 3) for k, v in _percentiles(self.jitter_s).items()}
        inf = {k: round(v * 1e3, 2) for k, v in _percentiles(self.inference_s).items()}
        return {"steps": self.steps, "achieved_hz": round(self.achieved_hz, 2), "jitter_ms": ms,
                "missed": self.missed, "overruns": self.overruns, "holds": self.holds,
                "inference_ms": inf, "boundary_stall_s": round(self.boundary_stall_s, 4),
                "largest_seam": round(max(self.seams, default=0.0), 4), "stop_reason": self.stop_reason,
                "interventions": dict(self.interventions), "counts": dict(self.counts),
                "success": self.success}


class ControlLoop:
    """See the module docstring. Refuses to start (ConfigError listing every mismatch)
    when the policy's observation/action spec does not match the robot."""

    def __init__(self, robot: Robot, io: PolicyIO, executor: Executor, safety: SafetyFilter,
                 cfg: LoopConfig, clock: RealClock | FakeClock | None = None,
                 log: AsyncLog | None = None, recorder: EpisodeRecorder | None = None) -> None:
        check_compatible(io, robot, cfg.rate_hz if cfg.check_rate else None)
        if safety.spec.names != robot.spec.action.names:
            raise ConfigError(f"loop: the safety filter's actions {safety.spec.names} are not the robot's "
                              f"{robot.spec.action.names}")
        self.robot, self.io, self.executor, self.safety, self.cfg = robot, io, executor, safety, cfg
        self.clock = clock or RealClock()
        self.log, self.recorder = log, recorder
        self._perm = action_permutation(io, robot)
        self._names = robot.spec.action.names
        self._stop = threading.Event()
        self._stop_reason = ""
        self._stop_requested_at: float | None = None
        self._sigints = 0

    # -- stopping from outside ------------------------------------------------------------
    def estop(self, reason: str = "e-stop") -> None:
        """Stop now (thread-safe; also what the e-stop signal calls)."""
        self.request_stop(reason)

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_requested_at = self.clock.now()
            self._stop_reason = reason
            self._stop.set()

    def _on_sigint(self, signum, frame) -> None:
        self._sigints += 1
        if self._sigints > 1:
            raise KeyboardInterrupt
        self.request_stop("interrupted (Ctrl-C)")

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}
        if self.cfg.handle_sigint:
            old[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        if self.cfg.estop_signal:
            sig = getattr(signal, self.cfg.estop_signal)
            old[sig] = signal.signal(sig, lambda s, f: self.estop(f"e-stop ({self.cfg.estop_signal})"))
        return old

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> LoopReport:
        """Run one episode; always ends with ``robot.stop()``, the executor closed and
        the episode handed to the recorder."""
        report = LoopReport(rate_hz=self.cfg.rate_hz)
        if not self.robot.is_connected:
            raise RobotDisconnected(f"{self.robot.name} is not connected (connect it first)")
        old = self._install_signals()
        try:
            self._prepare()
            self._loop(report)
        except RobotError as e:
            report.stop_reason = f"robot: {e}"
        finally:
            self._shutdown(report)
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return report

    def _prepare(self) -> None:
        obs = self.robot.get_observation()
        self.safety.reset(self.robot.current_action(obs))
        # cold start, before the clock runs (excluded from every statistic)
        self.executor.start(pack_observation(obs, self.io), self.cfg.period_s)
        self._last_obs = obs
        self._last_fresh = self.clock.now()

    def _loop(self, report: LoopReport) -> None:
        cfg, clock = self.cfg, self.clock
        period = cfg.period_s
        t0 = clock.now()
        self._last_action_t = t0
        k = 0
        first = t0
        while True:
            if cfg.max_steps is not None and report.steps >= cfg.max_steps:
                report.stop_reason = "max_steps"
                return
            deadline = t0 + k * period
            if cfg.duration_s is not None and deadline - t0 >= cfg.duration_s:
                report.stop_reason = "duration"
                return
            if clock.wait_until(deadline, self._stop):
                return
            start = clock.now()
            late = start - deadline
            missed = int(late // period) if late >= period else 0
            report.jitter_s.append(late)
            report.missed += missed
            k += missed
            reason = self._tick(report, start, 1 + missed)
            end = clock.now()
            if self.log is not None:
                self.log.put({"k": k, "late_ms": late * 1e3, "work_ms": (end - start) * 1e3,
                              "holds": report.holds, "command": self.safety.last})
            report.steps += 1
            report.duration_s = end - t0
            report.span_s = start - first if report.steps > 1 else 0.0
            first = start if report.steps == 1 else first
            report.work_s.append(end - start)
            if end > t0 + (k + 1) * period:
                report.overruns += 1
            if reason:
                report.stop_reason = reason
                return
            k += 1

    def _observe(self, report: LoopReport, now: float) -> tuple[dict | None, float]:
        """The newest observation (None if dropped) and the age of the freshest one."""
        try:
            obs = self.robot.get_observation()
        except ObservationTimeout:
            report.counts["obs_dropped"] += 1
            return None, now - self._last_fresh
        health = self.robot.health()
        if not health.ok:
            raise RobotError(health.describe())
        self._last_fresh = max(self._last_fresh, now - health.obs_age_s)
        self._last_obs = obs
        age = now - self._last_fresh
        if age > self.cfg.plan_max_age_periods * self.cfg.period_s:
            report.counts["obs_stale"] += 1
        return obs, age

    def _tick(self, report: LoopReport, now: float, elapsed: int) -> str:
        """One period: observe, act, filter, send. Returns a stop reason or ''."""
        obs, age = self._observe(report, now)
        fresh = obs is not None and age <= self.cfg.plan_max_age_periods * self.cfg.period_s
        action = self.executor.step(pack_observation(obs, self.io) if fresh else None, elapsed)
        if action is None:
            report.holds += 1
            if now - self._last_action_t > self.cfg.stop_after_s:
                return f"watchdog: no action for {now - self._last_action_t:.3f} s"
        else:
            self._last_action_t = now
            action = action[self._perm]
        command = self.safety(action, obs_age_s=age)
        if self._stop.is_set():  # an e-stop that arrived during this period: send nothing
            return ""
        sent = self.robot.send_action(action_dict(command, self._names))
        if self.recorder is not None and self._last_obs is not None:
            self.recorder.record(self._last_obs, sent)
        if self.cfg.stop_when_done and getattr(self.robot, "done", False):
            return "episode done"
        return ""

    def _shutdown(self, report: LoopReport) -> None:
        try:
            if self.robot.is_connected:
                self.robot.stop()
        except RobotError as e:
            report.counts["stop_failed"] += 1
            report.stop_reason = report.stop_reason or f"robot: {e}"
        finally:
            if self._stop_requested_at is not None:
                report.stop_latency_s = self.clock.now() - self._stop_requested_at
                report.stop_reason = report.stop_reason or self._stop_reason
            self.executor.close()
            stats = self.executor.stats
            report.boundary_stall_s = boundary_stall_s(stats, self.cfg.period_s)
            report.inference_s = list(stats.latencies_s)
            report.seams = list(stats.seams)
            report.interventions = dict(self.safety.interventions)
            report.success = getattr(self.robot, "success", None)
            if self.recorder is not None:
                self.recorder.end_episode(save=report.steps > 0)
            if self.log is not None:
                report.log_dropped = self.log.dropped
