"""Deployment runtime: chunk-policy protocol, safety filter, chunk executor, control loop.

Imports no training code (nothing from vptr.train, vptr.finetune, vptr.pretrain) and
never unpickles anything; the robots it drives come from :mod:`robots`.

    from robots.mock import MockRobot
    from vptr.runtime import (ControlLoop, ExecutorConfig, LoopConfig, SafetyFilter,
                              make_executor)

    robot = MockRobot(); robot.connect()
    loop = ControlLoop(robot, policy.io, make_executor(policy, ExecutorConfig(mode="rtc")),
                       SafetyFilter(robot.spec.action, rate_hz=50), LoopConfig(rate_hz=50))
    report = loop.run()
"""

from vptr.runtime.executor import ExecutorConfig, ExecutorStats, make_executor
from vptr.runtime.loop import ControlLoop, FakeClock, LoopConfig, LoopReport, RealClock
from vptr.runtime.policy import ChunkPolicy, FlowChunkPolicy, PolicyIO, check_compatible
from vptr.runtime.safety import SafetyFilter

__all__ = ["ChunkPolicy", "ControlLoop", "ExecutorConfig", "ExecutorStats", "FakeClock", "FlowChunkPolicy",
           "LoopConfig", "LoopReport", "PolicyIO", "RealClock", "SafetyFilter", "check_compatible",
           "make_executor"]
