"""The chunk-policy protocol the runtime executes, and the policy <-> robot contract.

A chunk policy maps a packed observation to ``h`` actions (one per control period, in
the robot's action units)::

    policy(obs: dict[str, np.ndarray]) -> np.ndarray  # (h, Da)

with ``obs`` keyed as in a LeRobotDataset (``observation.state``: float32 (Ds,) in
``io.state_names`` order; ``observation.images.<camera>``: uint8 (H, W, C)). A flow
policy can also inpaint (Real-Time Chunking, :mod:`vptr.runtime.rtc`)::

    policy.sample(obs, prefix=None, prefix_weights=None, max_guidance_weight=5.0) -> (h, Da)

where ``prefix`` (h, Da, robot units) holds the actions to stay close to and
``prefix_weights`` (h,) how strongly (1 frozen ... 0 free). The artifact loader builds
objects of this shape; tests use :mod:`vptr.runtime.reference`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from robots.base import Robot
from vptr.errors import ConfigError

STATE_KEY = "observation.state"
IMAGE_PREFIX = "observation.images."


@dataclasses.dataclass(frozen=True)
class PolicyIO:
    """What a policy reads and writes: names, camera shapes, chunk size h, rate."""

    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    chunk_size: int
    cameras: tuple[tuple[str, tuple[int, int, int]], ...] = ()
    rate_hz: float | None = None  # the rate of the training data (None: not declared)

    def __post_init__(self) -> None:
        cams = tuple(self.cameras.items()) if isinstance(self.cameras, Mapping) else tuple(self.cameras)
        object.__setattr__(self, "cameras", tuple((c, tuple(int(s) for s in shape)) for c, shape in cams))
        object.__setattr__(self, "state_names", tuple(self.state_names))
        object.__setattr__(self, "action_names", tuple(self.action_names))
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ConfigError(f"policy: chunk_size must be an integer >= 1, got {self.chunk_size!r}")
        if not self.action_names:
            raise ConfigError("policy: action_names must not be empty")


@runtime_checkable
class ChunkPolicy(Protocol):
    io: PolicyIO

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...


@runtime_checkable
class FlowChunkPolicy(ChunkPolicy, Protocol):
    def sample(self, obs: dict[str, np.ndarray], prefix: np.ndarray | None = None,
               prefix_weights: np.ndarray | None = None,
               max_guidance_weight: float = 5.0) -> np.ndarray: ...


def mismatches(io: PolicyIO, robot: Robot, rate_hz: float | None = None) -> list[str]:
    """Every way ``robot`` (at the loop rate ``rate_hz``) cannot serve ``io``."""
    spec = robot.spec
    obs = robot.observation_features
    out = []
    for name in io.state_names:
        if name not in obs:
            out.append(f"state {name!r}: the robot has no such observation")
        elif isinstance(obs[name], tuple):
            out.append(f"state {name!r}: the robot's {name!r} is a camera {obs[name]}, not a scalar")
    for cam, shape in io.cameras:
        have = obs.get(cam)
        if have is None:
            out.append(f"camera {cam!r}: the robot has no such camera")
        elif not isinstance(have, tuple) or tuple(have) != tuple(shape):
            out.append(f"camera {cam!r}: the policy expects {tuple(shape)}, the robot gives {have}")
    robot_actions = spec.action.names
    missing = [a for a in io.action_names if a not in robot_actions]
    unused = [a for a in robot_actions if a not in io.action_names]
    if missing:
        out.append(f"actions {missing}: the robot has no such actions")
    if unused:
        out.append(f"actions {unused}: the robot needs them but the policy does not produce them")
    if rate_hz is not None and io.rate_hz is not None and abs(rate_hz - io.rate_hz) > 1e-6:
        out.append(f"rate: the policy was trained at {io.rate_hz:g} Hz, the loop runs at {rate_hz:g} Hz "
                   "(a chunk then spans a different time than in training)")
    return out


def check_compatible(io: PolicyIO, robot: Robot, rate_hz: float | None = None) -> None:
    """Raise a ConfigError listing every mismatch between the policy and the robot."""
    bad = mismatches(io, robot, rate_hz)
    if bad:
        raise ConfigError(f"the policy does not match robot {robot.name!r} ({len(bad)} mismatches):\n  - "
                          + "\n  - ".join(bad))


def pack_observation(obs: Mapping[str, Any], io: PolicyIO) -> dict[str, np.ndarray]:
    """A robot observation -> the policy's dataset-style keys (no copies of images)."""
    out = {STATE_KEY: np.array([float(obs[n]) for n in io.state_names], dtype=np.float32)}
    for cam, _ in io.cameras:
        out[IMAGE_PREFIX + cam] = np.asarray(obs[cam])
    return out


def action_permutation(io: PolicyIO, robot: Robot) -> np.ndarray:
    """Index array that reorders a policy action vector into the robot's action order."""
    return np.array([io.action_names.index(n) for n in robot.spec.action.names], dtype=np.int64)
