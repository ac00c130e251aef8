"""Batches of action chunks from a :class:`~vptr.data.robot.RobotDataset`, reproducible by step.

Batch ``step`` depends only on (seed, rank, step), as for pretraining batches. Chunk starts
are drawn uniformly over :func:`vptr.data.chunks.valid_starts`; the chunk size ``h`` and the
discount come from the agent's config (declared once there) and are passed in.

Keys (B = batch size, S = frame stack, cameras by their dataset key ``<cam>``):

- ``obs.<cam>``, ``next_obs.<cam>``: uint8 (B, 3*S, H, W) at s_t and s_{t+h} (frames stacked
  oldest..newest within the episode, as in pretraining: :func:`vptr.data.batch.stack_times`);
- ``state``, ``next_state``: float32 (B, Ds) when the dataset has a state;
- ``actions``: float32 (B, h, Da), padded past a terminal with the last real action;
  ``action_mask``: bool (B, h);
- ``chunk_reward``: float32 (B,) Σ_k γ^k r_{t+k} over the valid steps; ``bootstrap_mask``:
  float32 (B,) m (0 when a terminal lies inside the chunk);
- ``task_index``: int64 (B,); ``episode``, ``t``: int64 (B,); ``step``: int64 (B,) the
  batch's training step (agents with phases read it);
- ``mc_return``: float32 (B,) the discounted return-to-go Σ_k γ^k r_{t+k} to the episode's
  end: exact for episodes ending in a terminal, ``-inf`` (unknown) for truncated ones;
- ``obs_row``, ``next_row``: int64 (B,) dataset rows of s_t and s_{t+h} (frozen encoders
  look their cached embeddings up by row).

``images=False`` leaves the camera images out (the embeddings of a frozen encoder replace
them).

``prior_fraction`` > 0 (a target joined with prior data, :func:`vptr.data.mixture.join`):
each batch draws :func:`~vptr.data.mixture.prior_count` chunks (``prior_fraction`` x batch
size on average) uniformly from the prior episodes' starts and the rest from the target's,
prior chunks first; still a function of (seed, rank, step) only.
"""

from __future__ import annotations

import numpy as np
import torch

from vptr.data.augment import shift_numpy
from vptr.data.batch import stack_times
from vptr.data.chunks import chunk_index, chunk_returns, valid_starts
from vptr.data.mixture import PRIOR, TARGET, prior_count
from vptr.data.robot import RobotDataset
from vptr.errors import ConfigError, DataError


class ChunkSampler:
    """Draws chunk batches of size ``h`` from ``ds``."""

    def __init__(self, ds: RobotDataset, h: int, discount: float, frame_stack: int = 1,
                 shift_pad: int = 0, seed: int = 0, rank: int = 0, images: bool = True,
                 prior_fraction: float = 0.0):
        self.ds, self.h, self.discount = ds, int(h), float(discount)
        self.images = bool(images)
        self.frame_stack, self.shift_pad = int(frame_stack), int(shift_pad)
        self.seed, self.rank = int(seed), int(rank)
        self.episode, self.t = valid_starts(ds.lengths, ds.terminal, self.h)
        if len(self.t) == 0:
            raise DataError(f"{ds.source}: no chunk of {self.h} steps has a TD target (every "
                            f"episode is truncated and shorter than h + 1 rows)")
        self.returns_to_go = returns_to_go(ds.reward, ds.offsets, ds.lengths, ds.terminal,
                                           self.discount)
        self.prior_fraction = float(prior_fraction)
        self.pools = mixture_pools(ds, self.episode, self.h) if self.prior_fraction else None

    def __len__(self) -> int:
        return len(self.t)

    def sample(self, batch_size: int, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, int(step)])
        if self.pools is None:
            pick = rng.integers(0, len(self.t), size=batch_size)
        else:
            prior, target = self.pools
            n = prior_count(rng, batch_size, self.prior_fraction)
            pick = np.concatenate([prior[rng.integers(0, len(prior), size=n)],
                                   target[rng.integers(0, len(target), size=batch_size - n)]])
        out = self.batch(self.episode[pick], self.t[pick], rng)
        out["step"] = torch.full((batch_size,), int(step), dtype=torch.int64)
        return out

    def batch(self, episode: np.ndarray, t: np.ndarray,
              rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """The batch of the chunks starting at (episode, t)."""
        ds = self.ds
        idx = chunk_index(ds.offsets, ds.lengths, ds.terminal, episode, t, self.h)
        next_t = idx.next_row - ds.offsets[episode]
        out: dict[str, torch.Tensor] = {
            "actions": torch.from_numpy(ds.action[idx.action_rows]),
            "action_mask": torch.from_numpy(idx.action_mask),
            "chunk_reward": torch.from_numpy(chunk_returns(
                ds.reward[idx.action_rows], idx.action_mask, self.discount).astype(np.float32)),
            "bootstrap_mask": torch.from_numpy(idx.bootstrap_mask),
            "task_index": torch.from_numpy(ds.task_index[episode]),
            "episode": torch.from_numpy(np.asarray(episode, dtype=np.int64)),
            "t": torch.from_numpy(np.asarray(t, dtype=np.int64)),
            "mc_return": torch.from_numpy(self.returns_to_go[idx.obs_row]),
            "obs_row": torch.from_numpy(idx.obs_row),
            "next_row": torch.from_numpy(idx.next_row),
        }
        if ds.state is not None:
            out["state"] = torch.from_numpy(ds.state[idx.obs_row])
            out["next_state"] = torch.from_numpy(ds.state[idx.next_row])
        for cam in ds.cameras if self.images else ():
            for key, times in (("obs", t), ("next_obs", next_t)):
                out[f"{key}.{cam}"] = self._images(cam, episode, times, rng)
        return out

    def _images(self, cam: str, episode: np.ndarray, t: np.ndarray,
                rng: np.random.Generator | None) -> torch.Tensor:
        chw = stacked_images(self.ds, cam, episode, t, self.frame_stack)
        if self.shift_pad and rng is not None:
            pad = self.shift_pad
            chw = shift_numpy(chw, rng.integers(0, 2 * pad + 1, size=(len(chw), 2)), pad)
        return torch.from_numpy(chw)


def mixture_pools(ds: RobotDataset, episode: np.ndarray, h: int) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """(prior, target): positions in the valid starts of the prior and target episodes."""
    if ds.part is None:
        raise ConfigError("prior_fraction > 0 needs a target joined with prior data")
    part = ds.part[episode]
    prior, target = np.flatnonzero(part == PRIOR), np.flatnonzero(part == TARGET)
    for name, pool in (("prior", prior), ("target", target)):
        if len(pool) == 0:
            raise DataError(f"{ds.source}: the {name} data have no chunk of {h} steps with a TD "
                            "target")
    return prior, target


def stacked_images(ds: RobotDataset, cam: str, episode: np.ndarray, t: np.ndarray,
                   frame_stack: int) -> np.ndarray:
    """uint8 (B, 3*S, H, W) of ``cam`` at times ``t`` of ``episode``, frames stacked
    oldest..newest within the episode (:func:`vptr.data.batch.stack_times`)."""
    rows = ds.offsets[episode][:, None] + stack_times(t, frame_stack)  # (B, S)
    frames = ds.images(cam, rows.reshape(-1))  # (B*S, H, W, 3)
    b, s = rows.shape
    h, w = frames.shape[1:3]
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2)).reshape(b, s * 3, h, w)

def returns_to_go(reward: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                  terminal: np.ndarray, gamma: float) -> np.ndarray:
    """float32 (N,) ``G_t = Σ_{k≥0} γ^k r_{t+k}`` within each episode; ``-inf`` for every
    row of a truncated episode (what comes after its last row is unknown)."""
    out = np.empty(len(reward), dtype=np.float64)
    for o, n, term in zip(offsets, lengths, terminal):
        g, r = 0.0, reward[o:o + n]
        for i in range(n - 1, -1, -1):
            g = float(r[i]) + gamma * g
            out[o + i] = g
        if not term:
            out[o:o + n] = -np.inf
    return out.astype(np.float32)
