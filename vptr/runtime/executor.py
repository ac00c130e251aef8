"""Chunk executors (layer 3): turn a chunk policy into one action per control period.

The control loop calls :meth:`Executor.step` once per period with the newest packed
observation (None when there is no fresh one) and gets the action for that period, or
None when none is available (the loop then holds). Actions are indexed by control
period. A chunk inferred from the observation of period ``i0`` is for the periods
``i0 .. i0 + h - 1``: its first action is the one to take at its observation, as in
training (a chunk starts with the action recorded with its observation). In the
synchronous modes that action is executed (inference runs before the period's command is
sent); in the asynchronous ones period ``i0``'s command has gone by the time inference
starts, so at least the first action is skipped.

Modes (:class:`ExecutorConfig` ``mode``):

* ``chunk`` -- open loop: execute all h actions, then infer again (the loop waits).
* ``receding`` -- receding horizon: execute ``execute`` < h actions, then re-plan.
* ``ensemble`` -- temporal ensembling (ACT, Zhao et al. 2023, section 3.3): infer every
  period; the action for period t averages every chunk's prediction for t with weights
  ``exp(-m i)``, i = 0 for the oldest prediction.
* ``async`` -- inference in a background thread while the current chunk executes; the
  next chunk is requested after ``horizon`` actions of the current one (or earlier, when
  the pending actions would not cover the measured delay plus ``margin``), and blended
  linearly into the pending actions over their overlap when it lands.
* ``rtc`` -- Real-Time Chunking (:mod:`vptr.runtime.rtc`) for flow policies: as
  ``async``, but the next chunk is *sampled* as an inpainting of the pending actions.

Inference is serial by default (one request at a time: an RTC request needs the chunk
before it), so a chunk must outlast two inferences: with a latency of ``d`` periods a
chunk brings ``h - d`` new actions and the next one lands ``d`` periods later, so no
period goes without a command when ``d <= h / 2`` -- exactly at ``h / 2`` only when the
latency is a whole number of periods (``simulated_delay``); real threads add wake-up
time, so leave a period of slack, or (``async``) put ``inflight`` 2 requests in flight.

Index rules that avoid the failure modes LeRobot fixed in its RTC (deployment spec):
the delay ``d`` of a landed chunk is the number of actions popped since its request
(the index delta of the action queue), and exactly its first ``d`` actions are skipped;
the first chunk comes from :meth:`Executor.start`, before the clock starts, so it skips
nothing and its (cold-start) latency is kept out of the delay estimate; the prefix is
taken when the inference starts (the actions not yet executed then, padded by holding
the last one); the frozen part of the RTC mask is the largest delay measured over the
last ``delay_window`` chunks.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from typing import Any, Literal

import numpy as np

from vptr.errors import ConfigError
from vptr.runtime.policy import ChunkPolicy, FlowChunkPolicy
from vptr.runtime.rtc import Schedule, hold_padded, prefix_weights

Mode = Literal["chunk", "receding", "ensemble", "async", "rtc"]
MODES = ("chunk", "receding", "ensemble", "async", "rtc")


@dataclasses.dataclass(frozen=True)
class ExecutorConfig:
    """How chunks become actions (see the module docstring)."""

    mode: Mode = "async"
    execute: int = 0  # receding: actions executed before re-planning (0 = h // 2)
    ensemble_decay: float = 0.01  # ensemble: m in exp(-m i) (ACT's default)
    horizon: int = 0  # async/rtc: actions executed from a chunk before requesting the next (0 = h // 4, >= 2)
    margin: int = 2  # async/rtc: request early enough to land `margin` periods before the queue runs dry
    blend: Literal["linear", "none"] = "linear"  # async: crossfade of pending and new actions
    # rtc: decay of the prefix weights over the overlap. The paper's "exp" measured larger
    # seams than "linear" on the reference flow (0.21 vs 0.10 for chunks 1.0 apart).
    schedule: Schedule = "linear"
    max_guidance_weight: float = 10.0  # rtc: beta, the clip of the guidance weight
    delay_window: int = 5  # rtc: frozen steps = the largest delay of the last N chunks
    soft: int = 0  # rtc: guided steps after the frozen ones, at least (0 = h // 4; held padding if need be)
    warmup: bool = True  # rtc: one guided sample in start() (autograd's first use is slow: ~1 s)
    # async: inferences in flight at once (threads). One serves latencies up to half a chunk
    # (less a period of slack in real time); n serve up to n / (n + 1) of a chunk (requests
    # spaced ceil(delay / n) periods apart).
    inflight: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"executor: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for f in ("execute", "horizon", "margin"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"executor: {f} must be an integer >= 0, got {v!r}")
        if not self.ensemble_decay >= 0:
            raise ConfigError(f"executor: ensemble_decay must be >= 0, got {self.ensemble_decay}")
        if self.blend not in ("linear", "none"):
            raise ConfigError(f"executor: blend must be linear or none, got {self.blend!r}")
        if not self.max_guidance_weight > 0:
            raise ConfigError(f"executor: max_guidance_weight must be > 0, got {self.max_guidance_weight}")
        if self.delay_window < 1:
            raise ConfigError(f"executor: delay_window must be >= 1, got {self.delay_window}")
        if isinstance(self.inflight, bool) or not isinstance(self.inflight, int) or self.inflight < 1:
            raise ConfigError(f"executor: inflight must be an integer >= 1, got {self.inflight!r}")
        if self.inflight > 1 and self.mode != "async":
            raise ConfigError("executor: inflight > 1 is for mode 'async' (RTC inpaints on the "
                              "pending actions, which a chunk still in flight would change)")


@dataclasses.dataclass
class ExecutorStats:
    """What happened, for the loop's report and the benchmarks."""

    inferences: int = 0
    cold_start_s: float = 0.0  # the first inference (start()), excluded from everything else
    latencies_s: list[float] = dataclasses.field(default_factory=list)
    delays: list[int] = dataclasses.field(default_factory=list)  # periods from request to landing
    blocking_s: float = 0.0  # time the control thread waited for inference (synchronous modes)
    empty_steps: int = 0  # control periods with no action to execute
    dropped: int = 0  # actions dropped as stale (missed periods, chunks that landed too late)
    seams: list[float] = dataclasses.field(default_factory=list)  # max |a_t - a_{t-1}| at each chunk switch


# --------------------------------------------------------------------------- executors


class Executor:
    """Shared queue and bookkeeping; subclasses implement :meth:`_next`."""

    synchronous = True

    def __init__(self, policy: ChunkPolicy, cfg: ExecutorConfig) -> None:
        self.policy, self.cfg = policy, cfg
        self.h = policy.io.chunk_size
        self.dim = len(policy.io.action_names)
        self.stats = ExecutorStats()
        self.t = 0  # index of the next control period
        self._q = np.zeros((0, self.dim))  # actions of periods q0, q0 + 1, ...
        self._q0 = 0
        self._qid = 0  # id of the chunk the queue holds (for seam statistics)
        self._chunks = 0
        self._last: np.ndarray | None = None
        self._last_id: int | None = None
        self.period_s: float | None = None
        # policies with a frame stack see every period's observation, not only the ones
        # that start an inference (vptr.runtime.artifact.ArtifactPolicy.observe)
        self._observe = getattr(policy, "observe", None)

    # -- what the loop calls ------------------------------------------------------------
    def start(self, obs: dict[str, np.ndarray], period_s: float | None = None) -> None:
        """Cold start: the first chunk, for periods 0 .. h - 1 (the loop's clock has not
        started, so nothing executes meanwhile and nothing is skipped). ``period_s``: the
        loop's period (asynchronous modes use it to judge how fresh an observation is)."""
        self.period_s = period_s
        if self._observe is not None:
            self._observe(obs)
        t0 = time.perf_counter()
        chunk = self._check(self.policy(obs))
        self.stats.cold_start_s = time.perf_counter() - t0
        self.stats.inferences += 1
        self._set_queue(chunk, self.t)

    def step(self, obs: dict[str, np.ndarray] | None, elapsed: int = 1) -> np.ndarray | None:
        """The action of the current period; ``elapsed`` > 1 after missed periods."""
        if obs is not None and self._observe is not None:
            self._observe(obs)
        if elapsed > 1 and not self.synchronous:
            self._skip(elapsed - 1)
        action = self._next(obs)
        self.t += 1
        if action is None:
            self.stats.empty_steps += 1
        else:
            if self._last is not None and self._last_id != self._qid:
                self.stats.seams.append(float(np.max(np.abs(action - self._last))))
            self._last, self._last_id = action, self._qid
        return action

    def close(self) -> None:
        pass

    # -- helpers ------------------------------------------------------------------------
    def _next(self, obs: dict[str, np.ndarray] | None) -> np.ndarray | None:
        raise NotImplementedError

    def _check(self, chunk: Any) -> np.ndarray:
        a = np.asarray(chunk, dtype=np.float64)
        if a.shape != (self.h, self.dim):
            raise ConfigError(f"policy returned a chunk of shape {a.shape}, expected ({self.h}, {self.dim}) "
                              f"(chunk size x {list(self.policy.io.action_names)})")
        return a

    def _set_queue(self, actions: np.ndarray, start: int) -> None:
        self._chunks += 1
        self._q, self._q0, self._qid = actions, start, self._chunks

    def pending(self) -> np.ndarray:
        """Actions queued for periods t, t + 1, ... (a view)."""
        return self._q[max(self.t - self._q0, 0):]

    def _pop(self) -> np.ndarray | None:
        i = self.t - self._q0
        return self._q[i].copy() if 0 <= i < len(self._q) else None

    def _skip(self, n: int) -> None:
        self.stats.dropped += int(min(n, len(self.pending())))
        self.t += n

    def _infer_blocking(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        t0 = time.perf_counter()
        chunk = self._check(self.policy(obs))
        dt = time.perf_counter() - t0
        self.stats.blocking_s += dt
        self.stats.latencies_s.append(dt)
        self.stats.inferences += 1
        return chunk


class ChunkExecutor(Executor):
    """``chunk``: open loop, re-plan when the chunk is used up."""

    def _next(self, obs):
        if len(self.pending()) == 0 and obs is not None:
            self._set_queue(self._infer_blocking(obs), self.t)
        return self._pop()


class RecedingExecutor(Executor):
    """``receding``: execute ``execute`` actions of each chunk, then re-plan."""

    def __init__(self, policy, cfg):
        super().__init__(policy, cfg)
        self.k = cfg.execute or max(1, self.h // 2)
        if not 1 <= self.k <= self.h:
            raise ConfigError(f"executor: execute must be in [1, h={self.h}], got {self.k}")

    def _next(self, obs):
        if (self.t - self._q0 >= self.k or len(self.pending()) == 0) and obs is not None:
            self._set_queue(self._infer_blocking(obs), self.t)
        return self._pop()


class EnsembleExecutor(Executor):
    """``ensemble``: ACT's temporal ensembling over every chunk covering the period."""

    def __init__(self, policy, cfg):
        super().__init__(policy, cfg)
        self._history: deque[tuple[int, np.ndarray]] = deque(maxlen=self.h)
        self._qid = 1  # one blended stream: no seams

    def start(self, obs, period_s=None):
        super().start(obs, period_s)
        self._history.append((self.t, self._q))
        self._qid = 1

    def _next(self, obs):
        if obs is not None and not (self._history and self._history[-1][0] == self.t):
            self._history.append((self.t, self._infer_blocking(obs)))
        preds = [chunk[self.t - s] for s, chunk in self._history if 0 <= self.t - s < self.h]
        if not preds:
            return None
        w = np.exp(-self.cfg.ensemble_decay * np.arange(len(preds)))  # i = 0: the oldest
        return (w[:, None] * np.stack(preds)).sum(0) / w.sum()


@dataclasses.dataclass
class _Job:
    obs: dict[str, np.ndarray]
    i0: int  # the first period the new chunk is for (not yet executed when it was requested)
    prefix: np.ndarray | None = None
    weights: np.ndarray | None = None
    due: int = 0  # simulated latency: the period index at which it lands


class AsyncExecutor(Executor):
    """``async``: inference in a background thread (the RTC paper's inference loop,
    Algorithm 1). The control thread only pops actions and posts observations under a
    lock; the worker starts a request from the newest observation as soon as the
    trigger holds, and swaps the new chunk in (skipping the ``d`` actions popped since
    the request) the moment it is ready -- not at the next period, which would waste
    a period per chunk. It waits for the next observation only when that is due within
    a quarter period (a fresher start gains a whole period of coverage).

    ``simulated_delay``: no thread; each request is computed at once and lands after
    exactly that many control periods (deterministic tests and benchmarks)."""

    synchronous = False
    FRESH_FRACTION = 0.75  # use the newest observation if it is younger than this x period

    def __init__(self, policy, cfg, simulated_delay: int | None = None):
        super().__init__(policy, cfg)
        # at least 2: re-planning every period made a 5-action flow policy fail under RTC
        self.s = cfg.horizon or min(self.h, max(2, self.h // 4))
        if not 1 <= self.s <= self.h:
            raise ConfigError(f"executor: horizon must be in [1, h={self.h}], got {self.s}")
        if simulated_delay is not None and (isinstance(simulated_delay, bool) or simulated_delay < 0):
            raise ConfigError(f"executor: simulated_delay must be >= 0 periods, got {simulated_delay!r}")
        self.simulated_delay = simulated_delay
        self._cond = threading.Condition()
        self._latest: tuple[dict, int, float] | None = None  # (obs, next period, wall time)
        self._latest_seq = self._used_seq = 0
        self._sim_jobs: list[tuple[_Job, np.ndarray]] = []
        self._inflight = 0  # requests begun and not yet landed
        self._last_i0 = 0  # first period of the newest request
        self._landed_i0 = 0  # first period of the newest chunk in the queue
        self._recent: deque[int] = deque(maxlen=cfg.delay_window)
        self._error: BaseException | None = None
        self._closed = False
        self._threads: list[threading.Thread] = []
        self.requests: list[dict[str, Any]] = []  # i0, pending and frozen counts of each request

    @property
    def delay_estimate(self) -> int:
        """The largest delay (periods) of the last chunks; 0 before the first landing."""
        return max(self._recent, default=0)

    def start(self, obs, period_s=None):
        super().start(obs, period_s)
        self._warm_up(obs)
        if self.simulated_delay is None and not self._threads:
            for k in range(self.cfg.inflight):
                thread = threading.Thread(target=self._work, name=f"vptr-inference-{k}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def step(self, obs, elapsed=1):
        with self._cond:
            if self._error is not None:
                raise self._error
            action = super().step(obs, elapsed)
            if obs is not None:  # a chunk from it starts at its period (just executed: t - 1)
                self._latest = (obs, self.t - 1, time.perf_counter())
                self._latest_seq += 1
            if self.simulated_delay is not None:
                self._simulate()
            self._cond.notify_all()
        return action

    def _next(self, obs):
        return self._pop()

    def _warm_up(self, obs) -> None:
        """One-time set-up costs to pay in the cold start (nothing for plain policies)."""

    # -- the inference loop (under self._cond unless said otherwise) ------------------------
    def _should_request(self) -> bool:
        if self._latest is None or self._latest_seq == self._used_seq:
            return False  # plan only from an observation not used yet
        if self._inflight >= self.cfg.inflight:
            return False
        i0 = self._latest[1]
        if self._inflight:  # another one in flight (inflight > 1): evenly spaced requests,
            # every `horizon` periods until a landing has measured the delay
            spacing = (max(1, math.ceil(self.delay_estimate / self.cfg.inflight)) if self._recent
                       else self.s)
            return i0 - self._last_i0 >= spacing
        executed = i0 + 1 - self._q0  # of the current chunk, the observation's period included
        remaining = self._q0 + len(self._q) - (i0 + 1)  # for the periods after it
        return executed >= self.s or remaining <= self.delay_estimate + self.cfg.margin

    def _fresh(self) -> bool:
        if self.period_s is None or self._latest is None:
            return True
        return time.perf_counter() - self._latest[2] < self.FRESH_FRACTION * self.period_s

    def _begin(self) -> _Job:
        obs, i0, _ = self._latest
        self._used_seq = self._latest_seq
        self._inflight += 1
        self._last_i0 = i0
        job = _Job(obs=obs, i0=i0)
        self.requests.append({"i0": i0, "t": self.t})
        return job

    def _call(self, job: _Job) -> np.ndarray:  # no lock held (threaded)
        return self.policy(job.obs)

    def _complete(self, job: _Job, chunk: np.ndarray, latency: float) -> None:
        self._inflight -= 1
        chunk = self._check(chunk)
        d = self.t - job.i0  # actions popped since the request: the index delta
        self.stats.inferences += 1
        self.stats.latencies_s.append(latency)
        self.stats.delays.append(d)
        self._recent.append(d)
        new = chunk[d:]
        if len(new) == 0 or job.i0 <= self._landed_i0:  # stale, or a newer plan landed first
            self.stats.dropped += len(new)
            return
        self._landed_i0 = job.i0
        self._set_queue(self._merge(self.pending(), new.copy()), self.t)

    def _merge(self, old: np.ndarray, new: np.ndarray) -> np.ndarray:
        n = min(len(old), len(new))
        if self.cfg.blend == "linear" and n > 0:
            w = (np.arange(1, n + 1) / (n + 1))[:, None]  # 0 -> old, 1 -> new
            new[:n] = (1 - w) * old[:n] + w * new[:n]
        return new

    def _simulate(self) -> None:
        while self._sim_jobs and self.t >= self._sim_jobs[0][0].due:
            job, chunk = self._sim_jobs.pop(0)
            self._complete(job, chunk, 0.0)
        if self._should_request():
            job = self._begin()
            job.due = job.i0 + self.simulated_delay
            self._sim_jobs.append((job, self._call(job)))

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not (self._should_request() and self._fresh()):
                    self._cond.wait(timeout=0.5)
                if self._closed:
                    return
                job = self._begin()
            t0 = time.perf_counter()
            try:
                chunk = self._call(job)
            except BaseException as e:  # raised in the control thread by the next step()
                with self._cond:
                    self._error = e
                return
            latency = time.perf_counter() - t0
            with self._cond:
                if self._closed:
                    return
                try:
                    self._complete(job, chunk, latency)
                except BaseException as e:
                    self._error = e
                    return

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=1.0)  # a stalled policy keeps its daemon thread; we move on
        self._threads = []


class RTCExecutor(AsyncExecutor):
    """``rtc``: the next chunk is inpainted on the pending actions (guided sampling)."""

    def __init__(self, policy, cfg, simulated_delay=None):
        if not callable(getattr(policy, "sample", None)):
            raise ConfigError("executor: mode 'rtc' needs a flow policy with sample(obs, prefix, "
                              "prefix_weights); use mode 'async' for other chunk policies")
        super().__init__(policy, cfg, simulated_delay)

    def _warm_up(self, obs) -> None:
        if self.cfg.warmup:  # part of the cold start: the guided path's one-time set-up
            t0 = time.perf_counter()
            self.policy.sample(obs, self._q.copy(), prefix_weights(self.h, 1, self.h),
                               self.cfg.max_guidance_weight)
            self.stats.cold_start_s += time.perf_counter() - t0

    def _begin(self) -> _Job:
        job = super()._begin()
        # The actions the robot will execute from job.i0 on, as the queue holds them now;
        # if the queue has run dry, the last executed action (held).
        queued = self._q[max(job.i0 - self._q0, 0):]
        pend = queued if len(queued) else self._last[None]
        # Frozen: the actions that execute while the inference runs (the delay estimate)
        # and the one the new chunk takes over with, so that the switch itself lands on
        # a frozen action and the decay blends toward the new plan only after it.
        # Before any chunk has landed the delay is unknown (and the cold start must not
        # stand in for it): freeze every pending action, which is never wrong.
        frozen = min(self.delay_estimate + 1 if self._recent else len(pend), self.h)
        # The overlap is the pending actions, but at least `soft` steps past the frozen
        # ones: when the queue holds little more than the delay (latency near half a
        # chunk) the first executed action of the new chunk would otherwise be unguided.
        overlap = min(self.h, max(len(pend), frozen + (self.cfg.soft or max(1, self.h // 4))))
        job.prefix = hold_padded(pend, self.h)
        job.weights = prefix_weights(self.h, frozen, overlap, self.cfg.schedule)
        self.requests[-1].update(pending=len(pend), frozen=frozen)
        return job

    def _call(self, job: _Job) -> np.ndarray:
        policy: FlowChunkPolicy = self.policy  # type: ignore[assignment]
        return policy.sample(job.obs, job.prefix, job.weights, self.cfg.max_guidance_weight)

    def _merge(self, old, new):
        return new  # the guidance already made the new chunk agree with the pending actions


EXECUTORS: dict[str, type[Executor]] = {"chunk": ChunkExecutor, "receding": RecedingExecutor,
                                        "ensemble": EnsembleExecutor, "async": AsyncExecutor,
                                        "rtc": RTCExecutor}


def make_executor(policy: ChunkPolicy, cfg: ExecutorConfig = ExecutorConfig(),
                  simulated_delay: int | None = None) -> Executor:
    """The executor of ``cfg.mode``; ``simulated_delay`` (async and rtc only): see
    :class:`AsyncExecutor`."""
    cls = EXECUTORS[cfg.mode]
    if issubclass(cls, AsyncExecutor):
        return cls(policy, cfg, simulated_delay)
    if simulated_delay is not None:
        raise ConfigError(f"executor: mode {cfg.mode!r} runs inference in the control thread; "
                          "simulated_delay is only for async and rtc")
    return cls(policy, cfg)


def boundary_stall_s(stats: ExecutorStats, period_s: float) -> float:
    """Time the robot waited at chunk boundaries: blocking inference plus empty periods."""
    return stats.blocking_s + stats.empty_steps * period_s


__all__ = ["EXECUTORS", "MODES", "AsyncExecutor", "ChunkExecutor", "EnsembleExecutor", "Executor",
           "ExecutorConfig", "ExecutorStats", "RTCExecutor", "RecedingExecutor", "boundary_stall_s",
           "make_executor"]
