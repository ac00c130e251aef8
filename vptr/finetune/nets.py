"""Losses and training-only networks of the fine-tuning agents; the networks they act
with live in :mod:`vptr.nets.policy` (shared with the deployment runtime) and are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from vptr.nets.policy import (
    DataSpec,
    EnsembleLinear,
    EnsembleMLP,
    FlowPolicy,
    Normalizer,
    ObsEncoder,
    PolicyNet,
    QNet,
    act_best_of_n,
    best_of_n,
    euler_sample,
    sample_candidates,
)

__all__ = ["DataSpec", "EnsembleLinear", "EnsembleMLP", "FlowPolicy", "Normalizer", "ObsEncoder",
           "PolicyNet", "QNet", "VNet", "act_best_of_n", "best_of_n", "euler_sample",
           "expectile_loss", "flow_matching_loss", "masked_mean", "sample_candidates"]


def flow_matching_loss(policy: FlowPolicy, z: torch.Tensor, actions: torch.Tensor,
                       mask: torch.Tensor | None = None,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """``‖v(z, x_u, u) − (A − x_0)‖²`` with ``x_u = (1−u) x_0 + u A``, u ~ U(0, 1).

    ``actions`` (B, h, Da) normalised; ``mask`` (B, h) bool drops padded steps past a
    terminal; ``weights`` (B,) per-sample weights (advantage-weighted regression).
    """
    a = rearrange(actions, "b h d -> b (h d)")
    x0 = torch.randn_like(a)
    u = torch.rand(a.shape[0], device=a.device, dtype=a.dtype)
    xu = (1 - u[:, None]) * x0 + u[:, None] * a
    err = (policy(z, xu, u) - (a - x0)).square()
    err = rearrange(err, "b (h d) -> b h d", h=actions.shape[1])
    if mask is None:
        mask = torch.ones(actions.shape[:2], dtype=torch.bool, device=a.device)
    m = mask.to(err.dtype)[..., None].expand_as(err)
    per_sample = (err * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1.0)
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()


class VNet(nn.Module):
    """``V(s)``: encoder + one LayerNorm MLP (a 1-member ensemble), output (B,)."""

    def __init__(self, encoder: ObsEncoder, hidden: Sequence[int]):
        super().__init__()
        self.encoder = encoder
        self.head = EnsembleMLP(1, encoder.out_dim, hidden)

    def score(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)[0]


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """``|τ − 1(diff < 0)| · diff²`` (IQL's asymmetric L2), elementwise."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return weight * diff.square()


def masked_mean(x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return x.mean()
    return (x * weights).sum() / weights.sum().clamp_min(1.0)
