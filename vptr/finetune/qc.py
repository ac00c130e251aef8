"""Q-chunking with best-of-N sampling (QC; Li, Zhou, Levine 2025).

A critic ``Q(s, A)`` over whole action chunks ``A = a_{t:t+h}`` (K LayerNorm MLP heads) is
trained by chunked TD (spec: finetuning.md, "Chunks")::

    y = R^h + γ^h · m · mean_k Q̄_k(s_{t+h}, Â'),   Â' = argmax_{i≤N} Q̄(s_{t+h}, A^i),
    A^i ~ π_β(· | s_{t+h})

and the behaviour policy π_β is a flow-matching chunk policy trained by BC only (no Q
gradient reaches it). Acting uses the same best-of-N selection under the online critic.

Choices: candidates in the target are ranked by the *target* critic that then scores the
winner (the reference ranks with the online critic): one critic pass fewer per update,
and each next observation is encoded once per network, not once per candidate. ``N = 1``
is exactly a plain policy sample (tested).

``shared_trunk`` (the default) gives critic and policy one image trunk, run once per
observation and update: on ``obs`` with gradients (the TD loss and the BC loss both train
it) and on ``next_obs`` without; the target critic's head reads the online trunk's
features of ``next_obs``, as DrQ-v2's target critic does. Each keeps its own head
(Dense -> LayerNorm -> tanh). Separate trunks (``--no-qc.shared-trunk``) cost two trunk
passes with gradients and two without per update, and two per acting step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from vptr.config import helpfield
from vptr.errors import ConfigError
from vptr.finetune.common import (
    AgentNets,
    CriticAgentConfig,
    TrunkFactory,
    actions_of,
    aggregate,
    chunk_target,
    make_obs_encoder,
    make_policy,
    share,
    with_trunk_features,
)
from vptr.finetune.nets import (
    DataSpec,
    QNet,
    act_best_of_n,
    best_of_n,
    flow_matching_loss,
    sample_candidates,
)


@dataclass(frozen=True)
class QCConfig(CriticAgentConfig):
    """QC best-of-N (defaults for 2 CPU cores; paper: N 32, 4 x 512, batch 256)."""

    target_samples: int = helpfield(8, "best-of-N candidates in the TD target [paper: 32]")
    act_samples: int = helpfield(8, "best-of-N candidates when acting [paper: 32; 8 was as "
                                    "good on validation episodes and keeps a 64x64 policy "
                                    "under 10 ms p99 on 2 cores; `vptr eval/deploy "
                                    "--act-samples` changes it per run]")
    q_agg: Literal["mean", "min"] = helpfield("mean", "ensemble aggregation in the target")
    shared_trunk: bool = helpfield(True, "one image trunk for critic and policy, run once "
                                         "per observation (each keeps its own head)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_samples < 1:
            raise ConfigError(f"target_samples must be >= 1, got {self.target_samples}")


class QCNets(AgentNets):
    def __init__(self, cfg: QCConfig, spec: DataSpec, trunks: TrunkFactory):
        super().__init__(spec)
        if cfg.shared_trunk:
            trunks = share(trunks)
        self.policy = make_policy(cfg, spec, trunks)
        self.q = QNet(make_obs_encoder(cfg, spec, trunks), cfg.chunk, spec.action_dim,
                      cfg.critic_heads, cfg.hidden)


def create(cfg: QCConfig, spec: DataSpec, trunks: TrunkFactory) -> QCNets:
    return QCNets(cfg, spec, trunks)


def target_of(nets: QCNets) -> torch.nn.Module:
    return nets.q


@torch.no_grad()
def td_target(nets: QCNets, target_q: QNet, batch: dict[str, torch.Tensor],
              cfg: QCConfig) -> torch.Tensor:
    """``R^h + γ^h m mean_k Q̄_k(s', Â')`` with Â' the best of N policy samples at s'."""
    if cfg.shared_trunk:  # the target critic's head reads the online trunk's features
        batch = with_trunk_features(nets.q.encoder, batch, ("next_obs",))
    zp = nets.policy.encoder(batch, "next_obs")
    zt = target_q.encoder(batch, "next_obs")
    cands = sample_candidates(nets.policy, zp, cfg.target_samples, cfg.flow_steps)
    best = best_of_n(target_q, zt, cands)
    return chunk_target(batch, cfg.discount, cfg.chunk,
                        aggregate(target_q.score(zt, best), cfg.q_agg))


def loss_fn(nets: QCNets, target_q: QNet, batch: dict[str, torch.Tensor], cfg: QCConfig):
    if cfg.shared_trunk:
        batch = with_trunk_features(nets.q.encoder, batch, ("obs", "next_obs"))
    actions, mask = actions_of(nets, batch)
    y = td_target(nets, target_q, batch, cfg)
    q = nets.q.score(nets.q.encoder(batch, "obs"), actions)  # (K, B)
    critic_loss = (q - y).square().mean()
    actor_loss = flow_matching_loss(nets.policy.flow, nets.policy.encoder(batch, "obs"),
                                    actions, mask)
    loss = critic_loss + actor_loss
    return loss, {"loss": loss.detach(), "critic/loss": critic_loss.detach(),
                  "critic/q": q.detach().mean(), "critic/target": y.mean(),
                  "actor/bc_loss": actor_loss.detach()}


def ranker(nets: QCNets):
    """Best-of-N ranks candidates under Q (its encoder and ensemble)."""
    return nets.q.encoder, nets.q.heads


@torch.no_grad()
def act(nets: QCNets, batch: dict[str, torch.Tensor], cfg: QCConfig,
        samples: int | None = None) -> torch.Tensor:
    """Best-of-N chunks (B, h, Da), normalised units."""
    if cfg.shared_trunk:
        batch = with_trunk_features(nets.q.encoder, batch, ("obs",))
    return act_best_of_n(nets.policy, nets.q, batch, samples or cfg.act_samples,
                         cfg.flow_steps)
