"""Time-contrastive baseline: InfoNCE between a frame and a nearby future frame.

TCN (Sermanet et al. 2018) as used for R3M's temporal term (Nair et al. 2022, §3.2): an
anchor frame s = x_t is pulled towards a positive x_{t+j} a few steps later (the batch's
``future_obs``, j ~ Geometric(1 - gamma_future)) and pushed away from the other samples'
frames, which act as negatives. With B samples the loss is B-way cross-entropy over
``sim(e(s_i), e(x⁺_j)) / temperature``; the similarity is R3M's negative L2 distance or
cosine. Negatives that are literally the positive's or the anchor's frame (same global
frame index) are masked out: they are not negatives.

Value for diagnostics: V(s, g) = -‖e(s) - e(g)‖ (negative embedding distance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vptr.config import helpfield
from vptr.errors import ConfigError
from vptr.pretrain.common import Batch, encode_unique, neg_l2, require_keys, scalar_metrics

PREFIX = "tcn"


@dataclass
class TCNConfig:
    embed_dim: int = helpfield(128, "linear embedding size on the trunk (0: trunk features)")
    similarity: Literal["neg_l2", "cosine"] = helpfield("neg_l2", "InfoNCE similarity "
                                                        "(R3M: negative L2 distance)")
    temperature: float = helpfield(1.0, "InfoNCE temperature (try 0.1 with cosine)")
    dedup: bool = helpfield(True, "encode each distinct frame once (by *_index keys)")
    lr: float = helpfield(1e-4, "Adam learning rate (R3M / VIP)")
    adam_eps: float = helpfield(1e-8, "Adam epsilon")
    batch_size: int = helpfield(64, "batch size (= 1 positive + B-1 negatives per anchor)")

    def __post_init__(self) -> None:
        if self.embed_dim < 0:
            raise ConfigError(f"tcn.embed_dim must be >= 0, got {self.embed_dim}")
        if self.similarity not in ("neg_l2", "cosine"):
            raise ConfigError(f"tcn.similarity must be neg_l2 or cosine, got {self.similarity!r}")
        if self.temperature <= 0:
            raise ConfigError(f"tcn.temperature must be > 0, got {self.temperature}")
        if self.lr <= 0 or self.adam_eps <= 0 or self.batch_size < 2:
            raise ConfigError("tcn: lr and adam_eps must be > 0 and batch_size >= 2 "
                              f"(negatives come from the batch), got {self.lr}, "
                              f"{self.adam_eps}, {self.batch_size}")


class EmbeddingNets(nn.Module):
    """Image encoder + optional linear embedding (shared by TCN and VIP)."""

    def __init__(self, encoder: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, embed_dim) if embed_dim > 0 else nn.Identity()
        self.out_dim = embed_dim if embed_dim > 0 else encoder.out_dim

    def embed_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


def create(cfg: TCNConfig, encoder: nn.Module) -> EmbeddingNets:
    return EmbeddingNets(encoder, cfg.embed_dim)


def pairwise_similarity(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, B) similarities sim(a_i, b_j)."""
    if kind == "cosine":
        return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    return -torch.cdist(a, b)


def loss_fn(nets: EmbeddingNets, target_nets: nn.Module | None, batch: Batch,
            cfg: TCNConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """InfoNCE; ``target_nets`` is accepted for the common signature and not used."""
    require_keys(batch, ("obs", "future_obs"), PREFIX)
    f = encode_unique(nets.encoder, batch, ("obs", "future_obs"), cfg.dedup)
    anchor, positive = nets.embed_features(f["obs"]), nets.embed_features(f["future_obs"])
    logits = pairwise_similarity(anchor, positive, cfg.similarity) / cfg.temperature
    if "future_index" in batch and "obs_index" in batch:
        fut, obs = batch["future_index"], batch["obs_index"]
        same = (fut[None, :] == fut[:, None]) | (fut[None, :] == obs[:, None])
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, labels)

    with torch.no_grad():
        pos = logits.diagonal()
        finite_off = torch.isfinite(logits) & ~torch.eye(len(labels), dtype=torch.bool,
                                                         device=logits.device)
        metrics = scalar_metrics(
            PREFIX, loss=loss,
            accuracy=(logits.argmax(1) == labels).float().mean(),
            pos_logit=pos.mean(),
            neg_logit=logits[finite_off].mean() if finite_off.any() else torch.zeros(()),
        )
    return loss, metrics


def value(nets: EmbeddingNets, obs: torch.Tensor, goal: torch.Tensor,
          intent: torch.Tensor | None = None) -> torch.Tensor:
    """V(s, g) = -‖e(s) - e(g)‖; ``intent`` is not used by this objective."""
    if intent is not None:
        raise ConfigError("tcn.value has no intention argument (the embedding is goal-only)")
    e_s, e_g = nets(torch.cat([obs, goal])).split(obs.shape[0])
    return neg_l2(e_s, e_g)
