"""A target robot dataset joined with prior datasets of other tasks (V-PTR's phase 3).

V-PTR (Bhateja et al. 2023, Sec. 4) fine-tunes on the target task's few demonstrations while
every batch keeps drawing from the multi-task prior data (90 % prior / 10 % target). Here the
datasets are joined into one :class:`~vptr.data.robot.RobotDataset` (target episodes first,
then each prior dataset's) whose ``part`` marks each episode 0 (target) or 1 (prior); the
chunk sampler (:class:`~vptr.data.chunk_sampler.ChunkSampler`) draws each batch's share of
prior chunks from the prior episodes (:func:`prior_count`).

Decisions:

* **Task vocabulary** by task *string*: the target's tasks first (a one-task target is task 0,
  what ``vptr eval`` uses by default), then the prior datasets' new tasks in their order;
  every episode's ``task_index`` is renumbered into it, so the same instruction is the same
  task in every dataset and the target's task has its own index.
* **Normalisation statistics** are those of the joined rows (``RobotDataset.stats`` over
  target and prior together): the policy trains on both, and the action box must hold every
  action it is asked to imitate.
* **Compatibility** is checked before anything is built (:func:`check_compatible`): rate,
  action and state widths and names, cameras and image sizes. A feature named by position in
  either dataset (``environment_state_0`` ..., ``key[0]`` ...: a layout that varies by task,
  as in a multi-task native dataset's object state) is compared by width only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from vptr.data.robot import RobotDataset
from vptr.errors import ConfigError, DataError

TARGET, PRIOR = 0, 1


def check_compatible(target: RobotDataset, other: RobotDataset) -> None:
    """Refuse ``other`` (a prior dataset) if it cannot be mixed with ``target``: one line
    naming the prior dataset and the first mismatch."""
    problem = first_mismatch(target, other)
    if problem:
        raise DataError(f"{other.source}: cannot be mixed with the target dataset "
                        f"{target.source}: {problem}")


def first_mismatch(target: RobotDataset, other: RobotDataset) -> str:
    """The first difference that makes ``other`` unusable next to ``target`` ('' = none)."""
    if not math.isclose(target.fps, other.fps, rel_tol=1e-6):
        return f"recorded at {other.fps:g} fps, the target at {target.fps:g} fps"
    for role, a, b in (("action", target.action, other.action),
                       ("state", target.state, other.state)):
        wa, wb = _width(a), _width(b)
        if wa != wb:
            return f"{role} has {wb} values per row, the target's {wa}"
    if target.state_widths != other.state_widths:
        return f"state features' widths {other.state_widths}, the target's {target.state_widths}"
    for key in sorted(set(target.feature_names) | set(other.feature_names)):
        if key == "state":  # compared feature by feature (its parts have their own keys)
            continue
        na, nb = target.feature_names.get(key), other.feature_names.get(key)
        if na is None or nb is None:
            return f"feature {key!r} is read from only one of the datasets"
        if na != nb and not (positional(na) or positional(nb)):
            diff = next((i for i, (x, y) in enumerate(zip(na, nb)) if x != y), None)
            if diff is None:
                return f"feature {key!r} has {len(nb)} entries, the target's {len(na)}"
            return (f"feature {key!r} names its entry {diff} {nb[diff]!r}, the target "
                    f"{na[diff]!r}")
    if set(target.cameras) != set(other.cameras):
        return (f"cameras {sorted(other.cameras) or 'none'}, the target's "
                f"{sorted(target.cameras) or 'none'}")
    for cam in target.cameras:
        sa, sb = target.cameras[cam].image_size, other.cameras[cam].image_size
        if tuple(sa) != tuple(sb):
            return (f"camera {cam!r} images are {sb[0]}x{sb[1]}, the target's {sa[0]}x{sa[1]} "
                    "(set --source.frames.image-size to read both at one size)")
    return ""


def _width(x: np.ndarray | None) -> int:
    return 0 if x is None else int(x.shape[1])


_POSITION = re.compile(r"^(.*?)(?:_(\d+)|\[(\d+)\])$")


def positional(names: Sequence[str]) -> bool:
    """True for names that only count positions: ``<stem>_0, <stem>_1, ...`` or
    ``<stem>[0], <stem>[1], ...`` (one stem, indices 0..n-1)."""
    stems, idx = set(), []
    for n in names:
        m = _POSITION.match(n)
        if m is None:
            return False
        stems.add(m.group(1))
        idx.append(int(m.group(2) if m.group(2) is not None else m.group(3)))
    return bool(names) and len(stems) == 1 and idx == list(range(len(names)))


def task_vocabulary(datasets: Sequence[RobotDataset]) -> list[str]:
    """Task strings of every dataset, first seen first (the target is ``datasets[0]``)."""
    return list(dict.fromkeys(t for ds in datasets for t in ds.tasks))


def renumber_tasks(ds: RobotDataset, vocabulary: list[str]) -> np.ndarray:
    """(E,) each episode's task as an index into ``vocabulary`` (by task string)."""
    index = np.asarray(ds.task_index, dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= len(ds.tasks)):
        raise DataError(f"{ds.source}: task index {int(index.max())} but only "
                        f"{len(ds.tasks)} task strings in the metadata")
    mapping = np.array([vocabulary.index(t) for t in ds.tasks], dtype=np.int64)
    return mapping[index] if index.size else index


class JoinedFrames:
    """The frame stores of one camera in several datasets, read as one by row."""

    def __init__(self, stores: Sequence[Any], rows: Sequence[int]):
        self.stores = list(stores)
        self.starts = np.cumsum([0, *rows])[:-1].astype(np.int64)
        self.image_size = tuple(self.stores[0].image_size)

    @property
    def frames(self) -> JoinedFrames:
        return self

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        flat = rows.reshape(-1)
        part = np.searchsorted(self.starts, flat, side="right") - 1
        h, w = self.image_size
        out = np.empty((len(flat), h, w, 3), np.uint8)
        for p in np.unique(part):
            sel = part == p
            out[sel] = np.asarray(self.stores[p].frames[flat[sel] - self.starts[p]])
        return out.reshape(*rows.shape, h, w, 3)


def join(target: RobotDataset, priors: Sequence[RobotDataset]) -> RobotDataset:
    """One dataset: the target's episodes, then each prior dataset's (checked compatible),
    tasks renumbered into one vocabulary (target first), ``part`` 0 / 1 per episode."""
    if not priors:
        raise ConfigError("join: no prior dataset given")
    for p in priors:
        check_compatible(target, p)
    parts = [target, *priors]
    vocab = task_vocabulary(parts)
    lengths = np.concatenate([d.lengths for d in parts])
    rows = [len(d.action) for d in parts]

    def cat(name: str) -> np.ndarray | None:
        xs = [getattr(d, name) for d in parts]
        return None if xs[0] is None else np.concatenate(xs)

    return RobotDataset(
        source=" + ".join(d.source for d in parts), fps=target.fps,
        offsets=np.cumsum(lengths) - lengths, lengths=lengths,
        terminal=np.concatenate([d.terminal for d in parts]),
        task_index=np.concatenate([renumber_tasks(d, vocab) for d in parts]), tasks=vocab,
        state=cat("state"), action=cat("action"), reward=cat("reward"), done=cat("done"),
        success=cat("success") if all(d.success is not None for d in parts) else None,
        cameras={c: JoinedFrames([d.cameras[c] for d in parts], rows) for c in target.cameras},
        feature_names=dict(target.feature_names), state_widths=list(target.state_widths),
        part=np.repeat(np.array([TARGET] + [PRIOR] * len(priors), np.int8),
                       [d.num_episodes for d in parts]))


def target_tasks(ds: RobotDataset) -> list[str]:
    """The task strings of the target's episodes (all of them for an unjoined dataset)."""
    index = ds.task_index if ds.part is None else ds.task_index[ds.part == TARGET]
    return [ds.tasks[i] for i in sorted(set(np.asarray(index).tolist()))]


def prior_count(rng: np.random.Generator, batch_size: int, fraction: float) -> int:
    """How many of a batch's chunks come from the prior data: ``fraction`` x batch size,
    its fractional part rounded up with that probability (so the share is exact on average
    for any batch size)."""
    expected = fraction * batch_size
    base = math.floor(expected)
    return int(base + (rng.random() < expected - base))
