"""The control loop: watchdog, e-stop (programmatic and signal), Ctrl-C, deadlines,
faults, stale observations, spec mismatches and a log that never blocks."""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from vptr_runtime_helpers import CountingPolicy, LatencyPolicy, StallingPolicy, io, one_joint_robot

from robots.base import RobotDisconnected
from robots.mock import Faults, MockRobot, default_spec
from vptr.errors import ConfigError
from vptr.runtime import ControlLoop, FakeClock, LoopConfig, SafetyFilter
from vptr.runtime.executor import ExecutorConfig, make_executor
from vptr.runtime.policy import PolicyIO
from vptr.runtime.recording import AsyncLog

QUIET = {"handle_sigint": False, "estop_signal": None}


class ConstantPolicy:
    def __init__(self, h=4, value=0.1, state=("a",)):
        self.io = io(h, names=("a",), state=state)
        self.h, self.value = h, value

    def __call__(self, obs):
        return np.full((self.h, 1), self.value)


def make_loop(robot, policy, mode="async", clock=None, log=None, executor=None, **cfg):
    rate = cfg.pop("rate_hz", 50.0)
    return ControlLoop(robot, policy.io, make_executor(policy, executor or ExecutorConfig(mode=mode)),
                       SafetyFilter(robot.spec.action, rate), LoopConfig(rate_hz=rate, **{**QUIET, **cfg}),
                       clock=clock, log=log)


def test_the_watchdog_holds_then_stops_when_inference_stalls():
    clock = FakeClock()
    robot = one_joint_robot(clock=clock)
    policy = StallingPolicy(h=4)
    loop = make_loop(robot, policy, clock=clock, stop_after_s=0.2)
    try:
        report = loop.run()
    finally:
        policy.release.set()
    assert report.stop_reason.startswith("watchdog: no action for")
    sent = [float(c[0]) for c in robot.sent]
    assert sent[:4] == pytest.approx([0.01] * 4)  # the only chunk, then ...
    holds = sent[4:]
    assert len(holds) == report.holds - 1 and 9 <= len(holds) <= 11  # ... 0.2 s at 50 Hz of holds
    assert holds == pytest.approx([0.01] * len(holds))  # an absolute joint holds its last command
    assert loop.safety.interventions["hold"] == len(holds)
    assert robot.stops == 1 and robot.events[-1][0] == "stop"


def test_a_programmatic_e_stop_stops_within_one_period():
    clock = FakeClock()

    class EStopAt5(MockRobot):
        def send_action(self, action):
            out = super().send_action(action)
            if len(self.sent) == 5:
                loop.estop("operator")  # arrives in the middle of a period
            return out

    robot = one_joint_robot(clock=clock, robot_cls=EStopAt5)
    loop = make_loop(robot, ConstantPolicy(), mode="chunk", clock=clock, max_steps=100)
    report = loop.run()
    assert report.stop_reason == "operator" and len(robot.sent) == 5
    assert robot.events[-1][0] == "stop" and robot.stops == 1
    assert report.stop_latency_s < loop.cfg.period_s


def test_an_e_stop_from_another_thread_stops_the_real_time_loop_within_one_period():
    robot = one_joint_robot(rate=20.0)
    loop = make_loop(robot, ConstantPolicy(), rate_hz=20.0, duration_s=5.0)
    pressed = []
    timer = threading.Timer(0.3, lambda: (pressed.append(time.perf_counter()), loop.estop("button")))
    timer.start()
    report = loop.run()
    timer.join()
    stop_t = next(t for kind, t in robot.events if kind == "stop")
    assert report.stop_reason == "button"
    assert stop_t - pressed[0] < loop.cfg.period_s and report.stop_latency_s < loop.cfg.period_s
    assert all(t <= stop_t for kind, t in robot.events if kind == "send")


@pytest.mark.parametrize("sig, reason", [("SIGUSR1", "e-stop (SIGUSR1)"), ("SIGINT", "interrupted (Ctrl-C)")])
def test_the_e_stop_signal_and_ctrl_c_end_the_episode_cleanly(sig, reason):
    robot = one_joint_robot(rate=20.0)
    before = signal.getsignal(signal.SIGINT)
    loop = make_loop(robot, ConstantPolicy(), rate_hz=20.0, duration_s=5.0, handle_sigint=True,
                     estop_signal="SIGUSR1")
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), getattr(signal, sig)))
    timer.start()
    t0 = time.perf_counter()
    report = loop.run()  # returns: no KeyboardInterrupt escapes
    timer.join()
    assert report.stop_reason == reason and time.perf_counter() - t0 < 2.0
    assert robot.stops == 1 and report.stop_latency_s < loop.cfg.period_s
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_an_observation_spec_mismatch_refuses_to_start_and_lists_every_mismatch():
    robot = MockRobot(spec=default_spec(rate_hz=50, camera=(8, 8, 3)))
    robot.connect()
    names = robot.spec.action.names

    bad = PolicyIO(state_names=names[:5] + ("wrist_4.pos",), action_names=names[:6] + ("suction",),
                   chunk_size=4, cameras={"front": (16, 16, 3), "wrist": (8, 8, 3)}, rate_hz=30)
    policy = ConstantPolicy()
    policy.io = bad
    with pytest.raises(ConfigError) as e:
        ControlLoop(robot, bad, make_executor(policy, ExecutorConfig(mode="chunk")),
                    SafetyFilter(robot.spec.action, 50), LoopConfig(rate_hz=50))
    msg = str(e.value)
    assert "6 mismatches" in msg
    for part in ("state 'wrist_4.pos': the robot has no such observation",
                 "camera 'front': the policy expects (16, 16, 3), the robot gives (8, 8, 3)",
                 "camera 'wrist': the robot has no such camera",
                 "actions ['suction']: the robot has no such actions",
                 "actions ['gripper.pos']: the robot needs them but the policy does not produce them",
                 "rate: the policy was trained at 30 Hz, the loop runs at 50 Hz"):
        assert part in msg, msg


def test_late_periods_are_counted_and_their_stale_actions_dropped():
    clock = FakeClock()

    class SlowOnce(MockRobot):
        def get_observation(self):
            if len(self.sent) == 3:
                clock.sleep(0.05)  # 2.5 periods at 50 Hz
            return super().get_observation()

    robot = one_joint_robot(clock=clock, robot_cls=SlowOnce)
    policy = CountingPolicy(h=16)
    policy.io = io(16, names=("a",), state=("a",))
    # asynchronous (stale actions are dropped); no request within these 8 periods
    loop = make_loop(robot, policy, executor=ExecutorConfig(mode="async", horizon=16), clock=clock,
                     max_steps=8)
    report = loop.run()
    assert report.missed == 1 and report.overruns == 1
    assert max(report.jitter_s) == pytest.approx(0.03) and report.jitter_s[0] == 0.0
    assert [float(c[0]) for c in robot.sent][:5] == [0, 1, 2, 3, 5]  # period 4's action dropped
    assert loop.executor.stats.dropped == 1


def test_a_vendor_fault_or_a_lost_link_stops_the_episode_and_nothing_recovers():
    cases = ((Faults(fault_after=5), "vendor fault"), (Faults(disconnect_after=5), "not connected"))
    for faults, expect in cases:
        clock = FakeClock()
        robot = one_joint_robot(clock=clock, faults=faults)
        report = make_loop(robot, ConstantPolicy(), mode="chunk", clock=clock, max_steps=50).run()
        assert report.stop_reason.startswith("robot:") and expect in report.stop_reason
        assert len(robot.sent) == 5  # nothing is sent after the fault


def test_stale_observations_neither_start_inferences_nor_let_the_robot_run_open_loop():
    clock = FakeClock()
    robot = one_joint_robot(clock=clock, faults=Faults(stale_prob=1.0))
    policy = LatencyPolicy(h=4, latency_s=0.0, state=("a",))
    # only the first frame is fresh enough to plan from (a frame up to plan_max_age_periods
    # old may legitimately start one, and whether its inference thread runs before the frame
    # goes stale would be a race between real threads and the fake clock)
    loop = make_loop(robot, policy, clock=clock, stop_after_s=0.3, plan_max_age_periods=0.5)
    report = loop.run()
    assert loop.executor.stats.inferences == 1  # only the cold start, from the fresh frame
    assert report.counts["obs_stale"] > 10 and loop.safety.interventions["hold"] > 0
    assert report.stop_reason.startswith("watchdog")


def test_dropped_observations_are_counted_and_the_loop_goes_on():
    clock = FakeClock()
    robot = one_joint_robot(clock=clock, faults=Faults(drop_prob=0.3, seed=1))
    report = make_loop(robot, ConstantPolicy(), mode="chunk", clock=clock, max_steps=60).run()
    assert report.steps == 60 and report.stop_reason == "max_steps"
    assert 5 < report.counts["obs_dropped"] < 35 and len(robot.sent) == 60


def test_the_log_never_blocks_the_loop(tmp_path):
    slow = []

    def sink(record):
        time.sleep(0.02)
        slow.append(record)

    log = AsyncLog(sink=sink, maxsize=5)
    clock = FakeClock()
    robot = one_joint_robot(clock=clock)
    t0 = time.perf_counter()
    report = make_loop(robot, ConstantPolicy(), mode="chunk", clock=clock, log=log, max_steps=300).run()
    elapsed = time.perf_counter() - t0
    log.close()
    assert report.steps == 300 and elapsed < 3.0  # 300 records at 20 ms each would take 6 s
    assert log.dropped > 0 and log.written + log.dropped == 300 and report.log_dropped > 0
    file_log = AsyncLog(tmp_path / "loop.jsonl")
    make_loop(one_joint_robot(clock=FakeClock()), ConstantPolicy(), mode="chunk", clock=FakeClock(),
              log=file_log, max_steps=20).run()
    file_log.close()

    lines = [json.loads(x) for x in (tmp_path / "loop.jsonl").read_text().splitlines()]
    assert len(lines) == 20 and lines[0]["k"] == 0 and lines[-1]["command"] == [pytest.approx(0.1)]


def test_a_robot_that_is_not_connected_is_refused():
    robot = one_joint_robot()
    robot.disconnect()

    with pytest.raises(RobotDisconnected, match="not connected"):
        make_loop(robot, ConstantPolicy(), mode="chunk", max_steps=2).run()
