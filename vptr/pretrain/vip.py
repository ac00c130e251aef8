"""VIP: value-implicit pretraining (Ma et al., ICLR 2023).

The value is a distance in embedding space, V(s, g) = -‖φ(s) - φ(g)‖₂, trained with the
dual of KL-regularised offline goal-conditioned RL (paper eq. 6; release
``vip/trainer.py``)::

    L = (1 - γ) E[-V(s_0, g)] + log E[exp(-(r(s, g) + γ V(s', g) - V(s, g)))]

with r(s, g) = 0 if s is g else -1, so the usual term is exp(V(s, g) + 1 - γ V(s', g)).
γ = 0.98. The first term pulls the trajectory's first frame towards its goal; the second
(a soft-max of TD errors) pushes intermediate frames apart.

Sampling — the release draws a random sub-segment [start, end] of a video, uses
x_start as s_0, x_end as g and (x_k, x_{k+1}) with start <= k < end, so r is always -1
there. With this project's batch contract we use the trajectory's ``initial_obs`` as s_0 and
``final_obs`` as g (spec), and (``obs``, ``next_obs``) anywhere in the trajectory; r is 0 when
``obs`` is the final frame (decided by index). Optional shuffled negatives
(``num_negatives``) and L1/L2 embedding penalties follow the release (both off by default
there). ``log E[exp(.)]`` is computed as ``logsumexp - log N`` (the release adds 1e-8 inside
the log instead; the difference is below float precision for realistic losses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vptr.config import helpfield
from vptr.errors import ConfigError
from vptr.pretrain.common import Batch, encode_unique, neg_l2, require_keys, scalar_metrics
from vptr.pretrain.tcn import EmbeddingNets

PREFIX = "vip"


@dataclass
class VIPConfig:
    embed_dim: int = helpfield(1024, "linear embedding size on the trunk (release 1024; "
                               "0: trunk features)")
    discount: float = helpfield(0.98, "γ (release 0.98)")
    num_negatives: int = helpfield(0, "extra shuffled (s, s') pairs per sample (release 0)")
    l1_weight: float = helpfield(0.0, "L1 penalty on embeddings (release 0)")
    l2_weight: float = helpfield(0.0, "L2 penalty on embeddings (release 0)")
    dedup: bool = helpfield(True, "encode each distinct frame once (by *_index keys)")
    lr: float = helpfield(1e-4, "Adam learning rate (release)")
    adam_eps: float = helpfield(1e-8, "Adam epsilon")
    batch_size: int = helpfield(64, "batch size (release 32; 64 to match ICVF's budget)")

    def __post_init__(self) -> None:
        if self.embed_dim < 0:
            raise ConfigError(f"vip.embed_dim must be >= 0, got {self.embed_dim}")
        if not 0.0 <= self.discount < 1.0:
            raise ConfigError(f"vip.discount must be in [0, 1), got {self.discount}")
        if self.num_negatives < 0 or self.l1_weight < 0 or self.l2_weight < 0:
            raise ConfigError("vip.num_negatives, l1_weight and l2_weight must be >= 0")
        if self.lr <= 0 or self.adam_eps <= 0 or self.batch_size < 1:
            raise ConfigError(f"vip: lr and adam_eps must be > 0 and batch_size >= 1, got "
                              f"{self.lr}, {self.adam_eps}, {self.batch_size}")


def create(cfg: VIPConfig, encoder: nn.Module) -> EmbeddingNets:
    return EmbeddingNets(encoder, cfg.embed_dim)


def _log_mean_exp(x: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(x, dim=0) - math.log(x.shape[0])


def loss_fn(nets: EmbeddingNets, target_nets: nn.Module | None, batch: Batch,
            cfg: VIPConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """VIP loss; ``target_nets`` is accepted for the common signature and not used."""
    require_keys(batch, ("initial_obs", "final_obs", "obs", "next_obs", "obs_index",
                         "final_index"), PREFIX)
    keys = ("initial_obs", "final_obs", "obs", "next_obs")
    f = encode_unique(nets.encoder, batch, keys, cfg.dedup)
    e0, eg, es, es1 = (nets.embed_features(f[k]) for k in keys)
    reward = (batch["obs_index"] == batch["final_index"]).to(e0.dtype) - 1.0
    v0, vs, vs1 = neg_l2(e0, eg), neg_l2(es, eg), neg_l2(es1, eg)
    attract = (1 - cfg.discount) * -v0.mean()
    repel = _log_mean_exp(-(reward + cfg.discount * vs1 - vs))
    loss = attract + repel
    if cfg.num_negatives > 0:
        # release: shuffle (s, s') across the batch against the fixed goal, reward -1
        n = es.shape[0]
        perms = torch.stack([torch.randperm(n, device=es.device) for _ in range(cfg.num_negatives)])
        vs_neg = neg_l2(es[perms], eg[None])
        vs1_neg = neg_l2(es1[perms], eg[None])
        loss = loss + _log_mean_exp((-(-1.0 + cfg.discount * vs1_neg - vs_neg)).reshape(-1))
    embeddings = torch.cat([e0, eg, es, es1])
    if cfg.l1_weight > 0:
        loss = loss + cfg.l1_weight * embeddings.abs().sum(-1).mean()
    if cfg.l2_weight > 0:
        loss = loss + cfg.l2_weight * embeddings.norm(dim=-1).mean()

    with torch.no_grad():
        metrics = scalar_metrics(PREFIX, loss=loss, attract=attract, repel=repel,
                                 v0_mean=v0.mean(), v_mean=vs.mean(),
                                 embed_norm=embeddings.norm(dim=-1).mean(),
                                 reward_mean=reward.mean())
    return loss, metrics


def value(nets: EmbeddingNets, obs: torch.Tensor, goal: torch.Tensor,
          intent: torch.Tensor | None = None) -> torch.Tensor:
    """V(s, g) = -‖φ(s) - φ(g)‖; ``intent`` is not used by this objective."""
    if intent is not None:
        raise ConfigError("vip.value has no intention argument (the value is goal-only)")
    e_s, e_g = nets(torch.cat([obs, goal])).split(obs.shape[0])
    return neg_l2(e_s, e_g)
