"""Hand-built pretraining batches following the vptr.data -> vptr.pretrain contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vptr.data.batch import INDEX_KEYS
from vptr.data.sampling import sample_near_far_times


class FlatEncoder(nn.Module):
    """Parameter-free encoder: uint8 pixels / 255, flattened (so hand computations are easy)."""

    def __init__(self, in_channels: int, h: int, w: int) -> None:
        super().__init__()
        self.out_dim = in_channels * h * w
        self.calls: list[int] = []
        # a buffer so that .double() switches the output dtype like a real network
        self.register_buffer("dtype_marker", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return (x.to(self.dtype_marker.dtype) / 255.0).flatten(1)


def build_batch(indices: dict[str, list[int]], frames: torch.Tensor,
                traj_len: int = 10) -> dict[str, torch.Tensor]:
    """A batch whose images are looked up by global frame index in ``frames`` (N, C, H, W).

    Equal indices therefore mean identical pixels, as from a real frame store. Unless given
    under ``near_valid`` / ``far_valid``, the time-contrastive flags follow the sampler's
    rule that a missing frame repeats the one before it: near_valid = near != obs,
    far_valid = far != near.
    """
    batch: dict[str, torch.Tensor] = {}
    for key, index_key in INDEX_KEYS.items():
        if index_key in indices:
            idx = torch.tensor(indices[index_key], dtype=torch.int64)
            batch[index_key] = idx
            batch[key] = frames[idx]
    n = len(indices["obs_index"])
    if "goal_index" in batch:
        batch["goal_reached"] = batch["obs_index"] == batch["goal_index"]
    if "intent_index" in batch:
        batch["intent_reached"] = batch["obs_index"] == batch["intent_index"]
    for flag, (key, before) in {"near_valid": ("near_index", "obs_index"),
                                "far_valid": ("far_index", "near_index")}.items():
        if flag in indices:
            batch[flag] = torch.tensor(indices[flag], dtype=torch.bool)
        elif key in batch:
            batch[flag] = batch[key] != batch[before]
    batch["traj_index"] = batch["obs_index"] // traj_len
    batch["t"] = batch["obs_index"] % traj_len
    batch["traj_len"] = torch.full((n,), traj_len, dtype=torch.int64)
    return batch


@pytest.fixture
def frames() -> torch.Tensor:
    """40 random uint8 frames (4 trajectories of 10), 3 x 2 x 2 pixels."""
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, 256, (40, 3, 2, 2), dtype=torch.uint8, generator=g)


@pytest.fixture
def flat_encoder():
    return FlatEncoder


@pytest.fixture
def make_batch():
    return build_batch


def random_indices(batch_size: int, traj_len: int = 10, n_traj: int = 4,
                   seed: int = 0) -> dict[str, list[int]]:
    """ICVF-style sampling: goal/intent current (20 %), same trajectory (50 %), random (30 %),
    intent == goal half the time; next/future clipped at the trajectory end; near/far frames
    from the real sampler (window 3)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, list[int]] = {k: [] for k in INDEX_KEYS.values()}

    def sample_goal(traj: int, t: int) -> int:
        u = torch.rand((), generator=g).item()
        if u < 0.2:
            return traj * traj_len + t
        if u < 0.7:
            return traj * traj_len + int(torch.randint(t, traj_len, (), generator=g))
        return int(torch.randint(0, n_traj * traj_len, (), generator=g))

    for _ in range(batch_size):
        traj = int(torch.randint(0, n_traj, (), generator=g))
        t = int(torch.randint(0, traj_len, (), generator=g))
        base = traj * traj_len
        out["obs_index"].append(base + t)
        out["next_obs_index"].append(base + min(t + 1, traj_len - 1))
        goal = sample_goal(traj, t)
        intent = sample_goal(traj, t)
        if torch.rand((), generator=g).item() < 0.5:
            goal = intent
        out["goal_index"].append(goal)
        out["intent_index"].append(intent)
        out["future_index"].append(base + min(t + 1 + int(torch.randint(0, 3, (), generator=g)),
                                              traj_len - 1))
        out["initial_index"].append(base)
        out["final_index"].append(base + traj_len - 1)
    obs = np.asarray(out["obs_index"])
    near, far, _, _ = sample_near_far_times(np.random.default_rng(seed), obs % traj_len,
                                            np.full(batch_size, traj_len), 3)
    base = obs - obs % traj_len
    out["near_index"], out["far_index"] = (base + near).tolist(), (base + far).tolist()
    return out


@pytest.fixture
def sample_indices():
    return random_indices


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Every test here runs on one intra-op thread (see tests/conftest.py)."""
    yield
