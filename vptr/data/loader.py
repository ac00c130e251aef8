"""Pretraining batches from a :class:`~vptr.data.cache.FrameStore`, reproducible by step.

Batch ``step`` depends only on (seed, rank, step): its random generator is
``np.random.default_rng([seed, rank, step])``. Loader worker ``w`` of ``W`` produces steps
``start + w, start + w + W, ...`` and the DataLoader returns workers' batches round-robin,
so the sequence is ``start, start+1, ...`` whatever the number of workers, and a resumed run
continues exactly where it stopped by passing its step as ``start_step``. ``rank`` gives each
DDP process its own stream.

Batches follow the batch contract of :mod:`vptr.data.batch`.

With ``SamplerConfig.shift_pad > 0`` every image gets its own random shift (a stacked
frame shifts as a whole; keys and samples independently), as DrQ / the ICVF release do;
``color_jitter > 0`` then jitters each image's colours likewise (one draw per stack). The
image tensors of a batch are views of one buffer, as are its integers and its flags (three
transfers from a worker, not one per key).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vptr.data.augment import color_jitter_numpy, jitter_factors, shift_numpy
from vptr.data.batch import FLAG_KEYS, IMAGE_KEYS, INT_KEYS
from vptr.data.cache import FrameStore
from vptr.data.config import SamplerConfig
from vptr.data.sampling import NEAR_WINDOW, sample_index_batch
from vptr.errors import DataError


class PretrainSampler:
    """Draws batches following the batch contract from ``store``; ``near_window`` is the
    window of the time-contrastive near frame (the tcn objective's ``positive_window``)."""

    def __init__(self, store: FrameStore, cfg: SamplerConfig | None = None, seed: int = 0,
                 rank: int = 0, near_window: int = NEAR_WINDOW):
        if len(store) == 0:
            raise DataError(f"{store.path}: the frame store has no trajectories to sample")
        if near_window < 1:
            raise ValueError(f"near_window must be >= 1, got {near_window}")
        self.store = store
        self.cfg = cfg or SamplerConfig()
        self.seed = int(seed)
        self.rank = int(rank)
        self.near_window = int(near_window)

    def rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, int(step)])

    def sample_indices(self, batch_size: int, step: int) -> dict[str, np.ndarray]:
        """Indices only (no pixels) of batch ``step``; see sampling.sample_index_batch."""
        return sample_index_batch(self.rng(step), self.store.offsets, self.store.lengths,
                                  self.cfg, batch_size, self.near_window)

    def sample(self, batch_size: int, step: int) -> dict[str, torch.Tensor]:
        """Batch number ``step`` (same seed, rank and step -> identical batch)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        rng = self.rng(step)
        idx = sample_index_batch(rng, self.store.offsets, self.store.lengths, self.cfg,
                                 batch_size, self.near_window)
        rows = idx["rows"]  # (K, B, S)
        k, b, s = rows.shape
        # Read each distinct frame once, in file order, and make it channels-first in numpy
        # (a uint8 permute-copy in torch is ~4x slower on CPU, measured).
        uniq, inverse = np.unique(rows.reshape(-1), return_inverse=True)
        chw = np.ascontiguousarray(np.asarray(self.store.frames[uniq]).transpose(0, 3, 1, 2))
        h, w = chw.shape[2:]
        images = chw[inverse].reshape(k * b, s * 3, h, w)  # stack: oldest..newest channels
        if self.cfg.shift_pad:
            pad = self.cfg.shift_pad
            images = shift_numpy(images, rng.integers(0, 2 * pad + 1, size=(k * b, 2)), pad)
        if self.cfg.color_jitter:
            images = color_jitter_numpy(images, jitter_factors(rng, k * b, self.cfg.color_jitter))
        images = torch.from_numpy(images).view(k, b, s * 3, h, w)
        batch = {key: images[i] for i, key in enumerate(IMAGE_KEYS)}
        # Integers and flags likewise share one buffer each: a worker hands every storage
        # over through its own file descriptor, ~2-3 ms of the training process's time each.
        ints = torch.from_numpy(np.stack([np.asarray(idx[k], dtype=np.int64) for k in INT_KEYS]))
        flags = torch.from_numpy(np.stack([np.asarray(idx[k], dtype=bool) for k in FLAG_KEYS]))
        batch.update(zip(INT_KEYS, ints))
        batch.update(zip(FLAG_KEYS, flags))
        return batch


class BatchStream(IterableDataset):
    """Whole batches ``start_step, start_step+1, ...`` (``num_steps`` of them, or forever)."""

    def __init__(self, sampler, batch_size: int, start_step: int = 0,
                 num_steps: int | None = None):
        super().__init__()
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.start_step = int(start_step)
        self.num_steps = num_steps

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        stop = None if self.num_steps is None else self.start_step + self.num_steps
        step = self.start_step + wid
        while stop is None or step < stop:
            yield self.sampler.sample(self.batch_size, step)
            step += nw


def make_loader(store: FrameStore, cfg: SamplerConfig | None, batch_size: int, seed: int = 0,
                start_step: int = 0, num_workers: int = 0, num_steps: int | None = None,
                rank: int = 0, pin_memory: bool = False,
                multiprocessing_context: str | None = None,
                near_window: int = NEAR_WINDOW) -> DataLoader:
    """A DataLoader of pretraining batches (already batched: ``batch_size=None``).

    Batches arrive in step order ``start_step, start_step+1, ...`` (``num_steps`` of them, or
    forever), identical to ``PretrainSampler(store, cfg, seed, rank, near_window)
    .sample(batch_size, step)`` for any ``num_workers``. Workers share the memory-mapped
    frames through the OS page cache (a pickled store carries only its index).
    ``multiprocessing_context`` is passed to the DataLoader (default: the platform's, fork
    on Linux). ``near_window``: see :class:`PretrainSampler`.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    return stream_loader(PretrainSampler(store, cfg, seed, rank, near_window), batch_size,
                         start_step, num_workers, num_steps, pin_memory,
                         multiprocessing_context)


def stream_loader(sampler, batch_size: int, start_step: int = 0, num_workers: int = 0,
                  num_steps: int | None = None, pin_memory: bool = False,
                  multiprocessing_context: str | None = None) -> DataLoader:
    """A DataLoader over ``sampler.sample(batch_size, step)`` for steps ``start_step, ...``
    in order, for any number of workers (any sampler with that method: pretraining's,
    :class:`~vptr.data.chunk_sampler.ChunkSampler`)."""
    stream = BatchStream(sampler, batch_size, start_step, num_steps)
    extra = {"persistent_workers": True, "prefetch_factor": 2} if num_workers > 0 else {}
    if num_workers > 0 and multiprocessing_context is not None:
        extra["multiprocessing_context"] = multiprocessing_context
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      **extra)
