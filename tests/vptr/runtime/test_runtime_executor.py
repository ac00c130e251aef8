"""Chunk executors: which action runs in which period, in every mode; asynchronous
inference and RTC without stalls or seams (deterministic latency, then real threads)."""

import time

import numpy as np
import pytest
from vptr_runtime_helpers import OBS, CountingPolicy, LatencyPolicy, disagreeing_flow, io, one_joint_robot

from vptr.errors import ConfigError
from vptr.runtime import ControlLoop, LoopConfig, SafetyFilter
from vptr.runtime.executor import ExecutorConfig, make_executor


def run(ex, n, obs=OBS):
    out = []
    for _ in range(n):
        a = ex.step(obs)
        out.append(None if a is None else float(a[0]))
    return out


@pytest.mark.parametrize("mode", ["chunk", "receding", "async", "rtc"])
def test_the_first_chunk_skips_nothing(mode):
    if mode == "rtc":
        p = disagreeing_flow(h=8, offset=3.0, slope=1.0)
        ex = make_executor(p, ExecutorConfig(mode="rtc", warmup=False), simulated_delay=3)
        ex.start(OBS)
        first = ex._q[:, 0].copy()
        got = run(ex, 4)  # chunk 0 runs until the first request lands (period 2 + 3 = 5)
        np.testing.assert_allclose(got, first[:4])
        return
    p = CountingPolicy(h=8)
    ex = make_executor(p, ExecutorConfig(mode=mode, execute=5),
                       simulated_delay=3 if mode == "async" else None)
    ex.start(OBS)
    # async: the first request (observation of period 1) lands at period 1 + 3 = 4
    n = 4 if mode == "async" else 5
    assert run(ex, n) == [0.0, 1.0, 2.0, 3.0, 4.0][:n]


def test_open_loop_and_receding_horizon_replan_where_they_should():
    ex = make_executor(CountingPolicy(h=4), ExecutorConfig(mode="chunk"))
    ex.start(OBS)
    assert run(ex, 9) == [0, 1, 2, 3, 1000, 1001, 1002, 1003, 2000]
    ex = make_executor(CountingPolicy(h=8), ExecutorConfig(mode="receding", execute=3))
    ex.start(OBS)
    assert run(ex, 8) == [0, 1, 2, 1000, 1001, 1002, 2000, 2001]
    assert ex.stats.inferences == 3 and ex.stats.blocking_s > 0


def test_temporal_ensembling_weights_the_oldest_prediction_most():
    class Const:
        def __init__(self):
            self.io, self.k = io(4), 0

        def __call__(self, obs):
            self.k += 1
            return np.full((4, 1), float(self.k - 1))  # chunk k predicts k everywhere

    m = 0.5
    ex = make_executor(Const(), ExecutorConfig(mode="ensemble", ensemble_decay=m))
    ex.start(OBS)
    got = run(ex, 6)
    w = np.exp(-m * np.arange(4))
    assert got[0] == 0.0
    assert got[2] == pytest.approx((w[:3] @ [0, 1, 2]) / w[:3].sum())
    # from period 3 on, four chunks cover each period: the last h predictions
    assert got[5] == pytest.approx((w @ [2, 3, 4, 5]) / w.sum())
    assert ex.stats.seams == []  # one blended stream, no chunk switches


def test_a_landed_chunk_skips_exactly_the_actions_popped_since_its_request():
    ex = make_executor(CountingPolicy(h=8), ExecutorConfig(mode="async", horizon=2, blend="none"),
                       simulated_delay=3)
    ex.start(OBS)
    got = run(ex, 8)
    # chunk 1 is requested with the observation of period 1 (2 executed): it is for
    # periods 1..8 (its first action is the one for its observation's period) and lands
    # 3 periods later: periods 1, 2, 3 ran from chunk 0, period 4 runs chunk 1's index 3
    assert got[:6] == [0, 1, 2, 3, 1003, 1004]
    assert ex.stats.delays[0] == 3 and ex.requests[0]["i0"] == 1


def test_an_asynchronous_chunk_runs_each_action_in_the_period_it_was_planned_for():
    """A chunk's action j is for its observation's period + j (as in training, where a
    chunk starts with the action taken at its observation): a policy whose actions name
    their period is executed exactly on time, whatever the latency."""

    class Timed(CountingPolicy):
        def __call__(self, obs):
            self.calls += 1
            return (float(obs["observation.state"][0]) + np.arange(self.h))[:, None]

    for mode in ("async", "rtc"):
        for delay in (1, 3, 4):
            policy = Timed(h=8)
            if mode == "rtc":
                policy.sample = lambda obs, prefix, weights, beta, p=policy: p(obs)
            ex = make_executor(policy, ExecutorConfig(mode=mode, blend="none", warmup=False),
                               simulated_delay=delay)
            ex.start({"observation.state": np.zeros(1)})
            got = [float(ex.step({"observation.state": np.array([float(t)])})[0])
                   for t in range(40)]
            assert got == [float(t) for t in range(40)], (mode, delay, got)
            assert ex.stats.inferences > 5


def test_missed_periods_drop_their_stale_actions_in_asynchronous_modes():
    ex = make_executor(CountingPolicy(h=8), ExecutorConfig(mode="async", horizon=8), simulated_delay=1)
    ex.start(OBS)
    assert float(ex.step(OBS)[0]) == 0.0
    assert float(ex.step(OBS, elapsed=3)[0]) == 3.0  # periods 1 and 2 were missed
    assert ex.stats.dropped == 2
    sync = make_executor(CountingPolicy(h=8), ExecutorConfig(mode="chunk"))
    sync.start(OBS)
    sync.step(OBS)
    assert float(sync.step(OBS, elapsed=3)[0]) == 1.0  # the synchronous robot waits instead


@pytest.mark.parametrize("mode", ["async", "rtc"])
@pytest.mark.parametrize("h", [8, 16])
def test_no_period_goes_without_a_command_with_half_a_chunk_of_latency(mode, h):
    p = disagreeing_flow(h=h) if mode == "rtc" else CountingPolicy(h=h)
    ex = make_executor(p, ExecutorConfig(mode=mode), simulated_delay=h // 2)
    ex.start(OBS)
    got = run(ex, 10 * h)
    assert None not in got and ex.stats.empty_steps == 0
    assert ex.stats.delays and set(ex.stats.delays) == {h // 2}
    # more latency than half a chunk cannot be served by serial inference: it stalls
    slow = make_executor(CountingPolicy(h=h), ExecutorConfig(mode="async"), simulated_delay=h // 2 + 1)
    slow.start(OBS)
    assert None in run(slow, 10 * h)


@pytest.mark.parametrize(("delay", "inflight"), [(5, 2), (6, 3)])  # the fewest that serve it
def test_several_inferences_in_flight_serve_any_latency_shorter_than_a_chunk(delay, inflight):
    h = 8  # one inference at a time serves up to h / 2 = 4 periods of latency
    ex = make_executor(CountingPolicy(h=h), ExecutorConfig(mode="async", inflight=inflight),
                       simulated_delay=delay)
    ex.start(OBS)
    got = run(ex, 12 * h)
    assert None not in got and ex.stats.empty_steps == 0, ex.stats
    assert set(ex.stats.delays) == {delay}
    # every executed action comes from the newest chunk that had landed: never older
    chunk_ids = [int(a // 1000) for a in got]
    assert chunk_ids == sorted(chunk_ids)
    # one fewer in flight than needed stalls
    few = make_executor(CountingPolicy(h=h), ExecutorConfig(mode="async", inflight=inflight - 1),
                        simulated_delay=delay)
    few.start(OBS)
    assert None in run(few, 12 * h)


def test_inflight_is_for_async_only():
    with pytest.raises(ConfigError, match="inflight"):
        ExecutorConfig(mode="rtc", inflight=2)
    with pytest.raises(ConfigError, match="inflight"):
        ExecutorConfig(mode="async", inflight=0)


@pytest.mark.parametrize("delay", [2, 5, 8])
def test_rtc_has_no_seam_jump_larger_than_the_step_limit_when_chunks_disagree(delay):
    limit = 0.15  # the consecutive chunks' means differ by 1.0
    rtc = make_executor(disagreeing_flow(h=16, offset=0.5), ExecutorConfig(mode="rtc"),
                        simulated_delay=delay)
    rtc.start(OBS)
    traj = np.array(run(rtc, 120))
    assert len(rtc.stats.seams) >= 6
    assert max(rtc.stats.seams) <= limit, rtc.stats.seams
    assert np.abs(np.diff(traj)).max() <= limit  # inside chunks as well
    plain = make_executor(disagreeing_flow(h=16, offset=0.5), ExecutorConfig(mode="async", blend="none"),
                          simulated_delay=delay)
    plain.start(OBS)
    run(plain, 120)
    assert max(plain.stats.seams) > 0.8  # without inpainting the chunks' disagreement shows


def test_rtc_hands_a_short_prefix_held_not_zero_padded_and_freezes_the_measured_delay():
    p = disagreeing_flow(h=8, offset=3.0)  # actions near +-3: a zero pad would stand out
    ex = make_executor(p, ExecutorConfig(mode="rtc", horizon=6, margin=0), simulated_delay=2)
    ex.start(OBS)
    run(ex, 30)
    (cold, _), (warm, _), *requests = p.prefixes
    assert cold is None  # the cold start is a plain sample
    first, second = ex.requests[0], ex.requests[1]
    # the first request runs before any delay was measured: all pending actions frozen
    # (the observation's own period, already executed, and the two after it)
    assert first["frozen"] == first["pending"] == 3
    assert second["frozen"] == ex.stats.delays[0] + 1 == 3
    for (prefix, weights), req in zip(requests, ex.requests):
        n = req["pending"]
        assert n < 8  # a short prefix ...
        np.testing.assert_array_equal(prefix[n:], np.repeat(prefix[n - 1:n], 8 - n, axis=0))  # ... held
        assert np.all(np.abs(prefix[:, 0]) > 2.0)  # never zeros
        np.testing.assert_array_equal(weights[:req["frozen"]], 1.0)


def test_a_bad_chunk_or_policy_is_a_clear_error():
    class Wrong:
        def __init__(self):
            self.io = io(4)

        def __call__(self, obs):
            return np.zeros((3, 1))

    ex = make_executor(Wrong(), ExecutorConfig(mode="chunk"))
    with pytest.raises(ConfigError, match="shape \\(3, 1\\), expected \\(4, 1\\)"):
        ex.start(OBS)
    with pytest.raises(ConfigError, match="needs a flow policy"):
        make_executor(CountingPolicy(), ExecutorConfig(mode="rtc"))
    with pytest.raises(ConfigError, match="mode must be one of"):
        ExecutorConfig(mode="fast")
    with pytest.raises(ConfigError, match="simulated_delay is only for async"):
        make_executor(CountingPolicy(), ExecutorConfig(mode="chunk"), simulated_delay=2)


def test_a_policy_error_in_the_inference_thread_reaches_the_control_thread():
    class Breaks(CountingPolicy):
        def __call__(self, obs):
            if self.calls == 1:
                raise RuntimeError("CUDA out of memory (simulated)")
            return super().__call__(obs)

    ex = make_executor(Breaks(h=4), ExecutorConfig(mode="async", horizon=1))
    ex.start(OBS)
    with pytest.raises(RuntimeError, match="out of memory"):
        for _ in range(200):
            ex.step(OBS)
            time.sleep(0.002)
    ex.close()


# ----------------------------------------------------------------------- real threads


def run_in_real_time(make_policy, cfg: ExecutorConfig, rate: float, steps: int):
    """(report, executor) of a real-clock loop run; retried, and the test skipped, when a
    shared machine starved the loop itself (only a run that kept its own deadlines says
    anything about the executor)."""
    for _attempt in range(3):
        policy = make_policy()
        robot = one_joint_robot(rate)
        executor = make_executor(policy, cfg)
        loop = ControlLoop(robot, policy.io, executor, SafetyFilter(robot.spec.action, rate),
                           LoopConfig(rate_hz=rate, max_steps=steps, stop_after_s=5.0,
                                      handle_sigint=False, estop_signal=None))
        report = loop.run()
        if report.missed == 0 and max(report.jitter_s) < 0.5 / rate:
            return report, executor
    pytest.skip("the machine was too loaded for a real-time run (the loop itself missed deadlines)")


def test_threads_in_flight_serve_more_than_half_a_chunk_of_latency():
    rate, h = 10.0, 8  # a chunk lasts 0.8 s; each inference takes 0.48 s (more than half)
    latency = 0.6 * h / rate
    report, executor = run_in_real_time(lambda: LatencyPolicy(h, latency, state=("a",)),
                                        ExecutorConfig(mode="async", inflight=3), rate, 40)
    assert report.steps == 40 and report.holds == 0 and executor.stats.empty_steps == 0, executor.stats
    assert min(executor.stats.latencies_s) >= 0.48 and executor.stats.inferences >= 8


@pytest.mark.parametrize(("mode", "latency_periods", "inflight"),
                         [("async", 3, 1), ("rtc", 3, 1), ("async", 4, 2)])
def test_threaded_inference_leaves_no_period_without_a_command(mode, latency_periods, inflight):
    """Serial inference is exactly stall-free at half a chunk of latency only in the
    discrete model (test above): real threads add wake-up time, so it gets one period of
    slack here; two requests in flight serve a full half chunk."""
    rate, h = 10.0, 8  # a chunk lasts 0.8 s
    latency = latency_periods / rate

    def policy():
        return (disagreeing_flow(h=h, latency_s=latency, state=("a",)) if mode == "rtc"
                else LatencyPolicy(h, latency, state=("a",)))

    report, executor = run_in_real_time(policy, ExecutorConfig(mode=mode, inflight=inflight),
                                        rate, 32)
    assert report.steps == 32 and report.stop_reason == "max_steps"
    assert executor.stats.inferences >= 5
    assert report.holds == 0 and executor.stats.empty_steps == 0, executor.stats
    assert min(executor.stats.latencies_s) >= latency
    # the index delta from the observation's period: the latency, one more when the
    # chunk landed just after a period started
    assert set(executor.stats.delays) <= {latency_periods, latency_periods + 1}, \
        executor.stats.delays
