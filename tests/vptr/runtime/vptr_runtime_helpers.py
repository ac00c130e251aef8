"""Small policies for the runtime tests (imported by the test modules next to this file)."""

import threading
import time

import numpy as np

from vptr.runtime.policy import PolicyIO
from vptr.runtime.reference import GaussianChunkFlow

OBS = {"observation.state": np.zeros(1, np.float32)}


def io(h: int = 8, names=("a",), state=("x",), rate_hz=None) -> PolicyIO:
    return PolicyIO(state_names=state, action_names=tuple(names), chunk_size=h, rate_hz=rate_hz)


class CountingPolicy:
    """Chunk k (k = 0, 1, ...) is ``1000 k + [0, 1, ..., h-1]``: every action names its
    chunk and its index, so tests can tell exactly which action was executed."""

    def __init__(self, h: int = 8, dim: int = 1, first_call_s: float = 0.0) -> None:
        self.io = io(h, names=tuple(f"a{i}" for i in range(dim)))
        self.h, self.dim, self.calls = h, dim, 0
        self.first_call_s = first_call_s

    def __call__(self, obs):
        k = self.calls
        self.calls += 1
        if k == 0 and self.first_call_s:
            threading.Event().wait(self.first_call_s)
        return np.repeat((1000.0 * k + np.arange(self.h))[:, None], self.dim, axis=1)


def disagreeing_flow(h: int = 16, offset: float = 0.5, slope: float = 0.01, steps: int = 10,
                     latency_s: float = 0.0, seed: int = 0, state=("x",)) -> GaussianChunkFlow:
    """A flow policy whose consecutive chunks disagree: the mean alternates between
    +offset and -offset (a 2 * offset jump at every seam without inpainting)."""
    calls = [0]

    def mean(obs):
        calls[0] += 1
        return np.full((h, 1), offset * (-1) ** calls[0]) + slope * np.arange(h)[:, None]

    return GaussianChunkFlow(io(h, state=state), mean, offset_std=offset, ramp_std=0.02, white_std=0.002,
                             steps=steps, latency_s=latency_s, seed=seed)


class LatencyPolicy(CountingPolicy):
    """:class:`CountingPolicy` (scaled by 1e-3) whose calls take ``latency_s`` in all."""

    def __init__(self, h: int, latency_s: float, state=("x",)) -> None:
        super().__init__(h=h)
        self.io = io(h, names=("a",), state=state)
        self.latency_s = latency_s

    def __call__(self, obs):
        t0 = time.perf_counter()
        out = super().__call__(obs) * 1e-3
        time.sleep(max(0.0, self.latency_s - (time.perf_counter() - t0)))
        return out


class StallingPolicy:
    """Answers the first call, then blocks until released (an inference that hangs)."""

    def __init__(self, h: int = 4) -> None:
        self.io = io(h, names=("a",), state=("a",))
        self.h = h
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, obs):
        self.calls += 1
        if self.calls > 1:
            self.release.wait(30)
        return np.full((self.h, 1), 0.01 * self.calls)


def one_joint_robot(rate: float = 50.0, clock=None, faults=None, robot_cls=None):
    """A connected mock robot with one absolute joint ``a`` in [-5, 5]."""
    from robots.base import ActionSpec, RobotSpec
    from robots.mock import Faults, MockRobot

    spec = RobotSpec(state_names=("a",), rate_hz=rate,
                     action=ActionSpec(names=("a",), low=(-5.0,), high=(5.0,), max_step=(5.0,)))
    kw = {} if clock is None else {"clock": clock.now, "sleep": clock.sleep}
    robot = (robot_cls or MockRobot)(spec=spec, faults=faults or Faults(), **kw)
    robot.connect()
    return robot
