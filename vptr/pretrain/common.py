"""Pieces shared by the pretraining objectives (STYLE rule 2: only what two or more need).

Batch contract (produced by ``vptr.data``): images are uint8 ``(B, 3*S, H, W)`` under the
keys of :data:`INDEX_KEYS`, each with an int64 global frame index ``<name>_index`` so an
objective can encode each distinct frame once and decide "reached" by index, not pixels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vptr.errors import DataError

Batch = Mapping[str, torch.Tensor]

# image key -> frame-index key (the batch contract between vptr.data and vptr.pretrain)
INDEX_KEYS: dict[str, str] = {
    "obs": "obs_index",
    "next_obs": "next_obs_index",
    "goal": "goal_index",
    "intent": "intent_index",
    "future_obs": "future_index",
    "initial_obs": "initial_index",
    "final_obs": "final_index",
}


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


def make_target(nets: nn.Module) -> nn.Module:
    """A frozen copy of ``nets`` for Polyak-averaged targets (kept in sync by ema_update)."""
    target = copy.deepcopy(nets)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, rate: float) -> None:
    """Polyak averaging ``θ̄ <- (1 - rate) θ̄ + rate θ`` over every parameter.

    As in the ICVF release (``jaxrl_m.common.target_update``) the whole network, image
    encoder included, is averaged. Buffers (e.g. BatchNorm running statistics) are copied,
    not averaged: they are statistics of the online network, not learned weights.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"EMA rate must be in [0, 1], got {rate}")
    t_params = list(target.parameters())
    o_params = list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError("ema_update: target and online networks differ in structure")
    if t_params:
        torch._foreach_lerp_(t_params, o_params, rate)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)


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


def is_trainable(nets: nn.Module) -> bool:
    """False for objectives without trainable parameters (``none``): skip the optimizer."""
    return any(p.requires_grad for p in nets.parameters())


def scalar_metrics(prefix: str, **values: torch.Tensor | float) -> dict[str, torch.Tensor | float]:
    """Metrics named ``<prefix>/<name>``; tensors detached so logging never holds graphs."""
    return {f"{prefix}/{k}": v.detach() if isinstance(v, torch.Tensor) else v
            for k, v in values.items()}
