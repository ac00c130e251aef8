"""Pieces shared by the pretraining objectives (STYLE rule 2: only what two or more need).

Batches follow the contract declared in :mod:`vptr.data.batch`: uint8 images
``(B, 3*S, H, W)``, each with an int64 global frame index (:data:`INDEX_KEYS`) so an
objective can encode each distinct frame once and decide "reached" by index, not pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vptr.data.batch import INDEX_KEYS
from vptr.errors import DataError

Batch = Mapping[str, torch.Tensor]


def require_keys(batch: Batch, keys: Iterable[str], objective: str) -> None:
    """Raise a DataError naming every key the objective needs but the batch lacks."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise DataError(f"{objective}: pretraining batch is missing key(s) "
                        f"{', '.join(missing)} (has: {', '.join(sorted(batch))})")


def first_occurrences(batch: Batch, keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For the images under ``keys`` concatenated in that order: (position of the first
    occurrence of each distinct frame, by ``<key>_index``; inverse map from every position to
    its distinct frame), or None when the batch lacks an index key."""
    if not all(INDEX_KEYS.get(k) in batch for k in keys):
        return None
    idx = torch.cat([batch[INDEX_KEYS[k]].reshape(-1) for k in keys])
    uniq, inverse = torch.unique(idx, return_inverse=True)
    positions = torch.arange(idx.numel(), device=idx.device)
    first = torch.full((uniq.numel(),), idx.numel(), dtype=positions.dtype, device=idx.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return first, inverse


def _dedup_plan(batch: Batch, keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`first_occurrences`, or None when every frame is distinct (nothing to save)."""
    plan = first_occurrences(batch, keys)
    if plan is None or plan[0].numel() == plan[1].numel():
        return None
    return plan


def encode_unique(encoder: nn.Module, batch: Batch, keys: Sequence[str],
                  dedup: bool = True) -> dict[str, torch.Tensor]:
    """Encode the images under ``keys`` in ONE encoder forward; return ``{key: (B, D)}``.

    Pixel encoders dominate the step time, so the images are concatenated into a single
    forward, and with ``dedup`` every distinct frame (by its ``<key>_index``) is encoded
    once and gathered back: goal == obs 20 % of the time and intent == goal 50 % with the
    ICVF sampling defaults. If augmentation made two copies of one frame differ, the copy
    that appears first (in ``keys`` order, then batch order) is the one encoded, so a
    reached goal sees exactly the pixels of the observation. Without all index keys the
    images are encoded as given.
    """
    keys = list(dict.fromkeys(keys))
    require_keys(batch, keys, "encode_unique")
    sizes = [batch[k].shape[0] for k in keys]
    images = torch.cat([batch[k] for k in keys])
    plan = _dedup_plan(batch, keys) if dedup else None
    if plan is None:
        feats = encoder(images)
    else:
        first, inverse = plan
        feats = encoder(images[first])[inverse]
    return dict(zip(keys, torch.split(feats, sizes), strict=True))


def expectile_weight(adv: torch.Tensor, expectile: float) -> torch.Tensor:
    """τ where the advantage is >= 0, else 1 - τ (ICVF ``expectile_loss`` weighting)."""
    hi, lo = adv.new_tensor(expectile), adv.new_tensor(1.0 - expectile)
    return torch.where(adv >= 0, hi, lo)


def project_sphere(x: torch.Tensor) -> torch.Tensor:
    """Rescale rows to norm √d (TD-JEPA / FB convention for features and intentions)."""
    return math.sqrt(x.shape[-1]) * F.normalize(x, dim=-1)


def orth_loss(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthonormality regulariser ``-mean diag(EEᵀ) + ½ Σ_{i≠j} (EEᵀ)²_ij / (B(B-1))``.

    Returns (loss, diagonal term, off-diagonal term). From TD-JEPA / FB: its minimiser
    over the batch is E Eᵀ ∝ I, so features keep full rank (anti-collapse).
    """
    b = e.shape[0]
    if b < 2:
        raise DataError("the orthonormality regulariser needs a batch of at least 2")
    gram = e @ e.T
    diag = -gram.diagonal().mean()
    off = gram - torch.diag_embed(gram.diagonal())
    offdiag = 0.5 * off.pow(2).sum() / (b * (b - 1))
    return diag + offdiag, diag, offdiag


def neg_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """-‖a - b‖₂ per row: the VIP / R3M value and similarity."""
    return -torch.linalg.vector_norm(a - b, dim=-1)


def scalar_metrics(prefix: str, **values: torch.Tensor | float) -> dict[str, torch.Tensor | float]:
    """Metrics named ``<prefix>/<name>``; tensors detached so logging never holds graphs."""
    return {f"{prefix}/{k}": v.detach() if isinstance(v, torch.Tensor) else v
            for k, v in values.items()}
