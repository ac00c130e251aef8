"""Time-contrastive baseline (TCN / R3M's temporal term): InfoNCE, near frames attract.

TCN (Sermanet et al. 2018) as used for R3M's time-contrastive term (Nair et al. 2022, §3.2;
released ``r3m/trainer.py``): the embedding e of a frame should be closer to frames a few
steps away in the same video than to frames farther away in it, and than to other videos'
frames. Negatives from other videos alone are solved by recognising a video's appearance
(spec: pretraining.md, Baselines), hence the same-video far negative.

Sampling (:func:`vptr.data.sampling.sample_near_far_times`), per sample i of trajectory
τ_i with T frames: the anchor a_i = ``obs`` at time t (uniform over the dataset's frames);
the positive n_i = ``near_obs`` at t + d, d uniform on {1, ..., min(k, T-1-t)} with k =
``positive_window``; the same-video negative f_i = ``far_obs`` uniform on the frames after
the positive, or, when the positive is the last frame, on the frames before t - d, so
|far - t| > d always. An anchor at the last frame has no positive (``near_valid`` False):
its row is left out of the loss. A video too short for a far frame (``far_valid`` False)
contributes no same-video negative.

Loss, with s(x, y) = sim(e(x), e(y)) / temperature (sim: R3M's negative L2 distance, or
cosine) and 1[·] the flags above::

    L_i = -log  exp s(a_i, n_i) / ( exp s(a_i, n_i) + 1[far_valid_i] exp s(a_i, f_i)
                 + Σ_{j : τ_j ≠ τ_i} ( 1[near_valid_j] exp s(a_i, n_j)
                                      + 1[far_valid_j] exp s(a_i, f_j) ) )

averaged over the rows with near_valid_i (a missing frame is a placeholder, never used).
Other samples of the same video are no negatives: they may be closer in time than the
positive. With ``same_video_negative = false`` every f term is dropped. R3M adds the mirrored
term (the anchor after the positive, the negative before both) and contrasts with other
videos' frames of the anchor's role; here anchors are uniform over all frames and the
similarity is symmetric, so one direction is kept, and the other videos' negatives are the
near and far frames the batch encodes anyway.

``positive = "future"`` keeps the earlier behaviour: the positive is the batch's
``future_obs`` (j ~ Geometric(1 - sampler.future_gamma), clipped at the video end: with the
default γ = 0.99 about 86 % of those positives are the final frame on the quickstart video),
the negatives are the other samples' positives, and only candidates that are literally the
anchor's or the positive's frame (same global index) are masked.

Value for diagnostics: V(s, g) = -‖e(s) - e(g)‖ (negative embedding distance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vptr.config import helpfield
from vptr.data.sampling import NEAR_WINDOW
from vptr.errors import ConfigError
from vptr.pretrain.common import Batch, encode_unique, neg_l2, require_keys, scalar_metrics

PREFIX = "tcn"


@dataclass
class TCNConfig:
    embed_dim: int = helpfield(128, "linear embedding size on the trunk (0: trunk features)")
    similarity: Literal["neg_l2", "cosine"] = helpfield("neg_l2", "InfoNCE similarity "
                                                        "(R3M: negative L2 distance)")
    temperature: float = helpfield(1.0, "InfoNCE temperature (try 0.1 with cosine)")
    positive: Literal["near", "future"] = helpfield(
        "near", "the anchor's positive: near: a frame 1..positive_window steps later (R3M / "
                "TCN); future: the batch's future_obs (sampler.future_dist, the earlier "
                "behaviour: mostly the final frame with the geometric default)")
    positive_window: int = helpfield(NEAR_WINDOW, "k: the near positive is t+1..t+k, the "
                                                  "window truncated at the video end")
    same_video_negative: bool = helpfield(
        True, "also contrast each anchor with a frame of its own video farther from it than "
              "the positive (R3M); needs positive = near")
    dedup: bool = helpfield(True, "encode each distinct frame once (by *_index keys)")
    lr: float = helpfield(1e-4, "Adam learning rate (R3M / VIP)")
    adam_eps: float = helpfield(1e-8, "Adam epsilon")
    batch_size: int = helpfield(64, "batch size (other videos' frames are the negatives)")

    def __post_init__(self) -> None:
        if self.embed_dim < 0:
            raise ConfigError(f"tcn.embed_dim must be >= 0, got {self.embed_dim}")
        if self.similarity not in ("neg_l2", "cosine"):
            raise ConfigError(f"tcn.similarity must be neg_l2 or cosine, got {self.similarity!r}")
        if self.temperature <= 0:
            raise ConfigError(f"tcn.temperature must be > 0, got {self.temperature}")
        if self.positive not in ("near", "future"):
            raise ConfigError(f"tcn.positive must be near or future, got {self.positive!r}")
        if self.positive_window < 1:
            raise ConfigError(f"tcn.positive_window must be >= 1, got {self.positive_window}")
        if self.same_video_negative and self.positive != "near":
            raise ConfigError("tcn.same_video_negative needs tcn.positive = near (the far "
                              "frame is sampled beyond the near positive); set "
                              "same_video_negative = false with positive = future")
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
    """(A, C) similarities sim(a_i, b_j)."""
    if kind == "cosine":
        return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    return -torch.cdist(a, b)


def near_candidates(batch: Batch, same_video_negative: bool
                    ) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor]:
    """R3M-style candidates: (image keys of the candidate columns, (B, C) bool "is a
    candidate of anchor i", (B,) rows in the loss).

    Columns are the B near frames, then (with ``same_video_negative``) the B far frames;
    anchor i's label is column i. Its negatives are every column of another trajectory and
    its own far frame; invalid frames (``near_valid`` / ``far_valid`` False) are never used.
    """
    traj, near_ok = batch["traj_index"], batch["near_valid"].bool()
    b = traj.shape[0]
    own = torch.eye(b, dtype=torch.bool, device=traj.device)
    other_video = traj[:, None] != traj[None, :]
    cols = [own | (other_video & near_ok[None, :])]
    keys: tuple[str, ...] = ("near_obs",)
    if same_video_negative:
        far_ok = batch["far_valid"].bool()
        cols.append((own | other_video) & far_ok[None, :])
        keys = ("near_obs", "far_obs")
    return keys, torch.cat(cols, dim=1), near_ok


def future_candidates(batch: Batch) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor]:
    """The earlier candidates (``positive = "future"``), same return as
    :func:`near_candidates`: every sample's future frame except those that are literally
    anchor i's frame or its positive's (same global index); every row counts."""
    fut = batch["future_obs"]
    b = fut.shape[0]
    keep = torch.ones((b, b), dtype=torch.bool, device=fut.device)
    if "future_index" in batch and "obs_index" in batch:
        f, o = batch["future_index"], batch["obs_index"]
        keep = ~((f[None, :] == f[:, None]) | (f[None, :] == o[:, None]))
        keep.fill_diagonal_(True)
    return ("future_obs",), keep, torch.ones(b, dtype=torch.bool, device=fut.device)


def required_keys(cfg: TCNConfig) -> tuple[str, ...]:
    if cfg.positive == "future":
        return ("obs", "future_obs")
    far = ("far_obs", "far_valid") if cfg.same_video_negative else ()
    return ("obs", "near_obs", "near_valid", "traj_index", *far)


def loss_fn(nets: EmbeddingNets, target_nets: nn.Module | None, batch: Batch,
            cfg: TCNConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """InfoNCE (module docstring); ``target_nets`` is accepted for the common signature and
    not used."""
    require_keys(batch, required_keys(cfg), PREFIX)
    if cfg.positive == "near":
        keys, candidate, rows = near_candidates(batch, cfg.same_video_negative)
    else:
        keys, candidate, rows = future_candidates(batch)
    f = encode_unique(nets.encoder, batch, ("obs", *keys), cfg.dedup)
    anchor = nets.embed_features(f["obs"])
    columns = nets.embed_features(torch.cat([f[k] for k in keys]))
    logits = pairwise_similarity(anchor, columns, cfg.similarity) / cfg.temperature
    logits = logits.masked_fill(~candidate, float("-inf"))
    b = anchor.shape[0]
    labels = torch.arange(b, device=logits.device)
    per_row = F.cross_entropy(logits, labels, reduction="none")
    weight = rows.to(per_row.dtype)
    n_rows = weight.sum().clamp(min=1.0)
    loss = (per_row * weight).sum() / n_rows

    with torch.no_grad():
        pos = logits.diagonal()
        negative = candidate.clone()
        negative[labels, labels] = False
        negative &= rows[:, None]
        correct = ((logits.argmax(1) == labels) & rows).sum() / n_rows
        metrics = scalar_metrics(
            PREFIX, loss=loss, accuracy=correct,
            pos_logit=(pos * weight).sum() / n_rows,
            neg_logit=logits[negative].mean() if negative.any() else torch.zeros(()),
            valid_rows=weight.mean())
        if "far_obs" in keys:
            # R3M's "aligned": the anchor is closer to its positive than to its far frame
            far_rows = rows & batch["far_valid"].bool()
            far_logit = logits[labels, b + labels]
            ordered = ((pos > far_logit) & far_rows).sum() / far_rows.sum().clamp(min=1)
            metrics[f"{PREFIX}/ordered"] = ordered
    return loss, metrics


def value(nets: EmbeddingNets, obs: torch.Tensor, goal: torch.Tensor,
          intent: torch.Tensor | None = None) -> torch.Tensor:
    """V(s, g) = -‖e(s) - e(g)‖; ``intent`` is not used by this objective."""
    if intent is not None:
        raise ConfigError("tcn.value has no intention argument (the embedding is goal-only)")
    e_s, e_g = nets(torch.cat([obs, goal])).split(obs.shape[0])
    return neg_l2(e_s, e_g)
