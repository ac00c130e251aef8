"""Decoupled Q-chunking (DQC; Li, Park, Levine 2025, arXiv 2512.10926).

The critic backs up over a long chunk of H actions, the policy acts in short chunks of
h ≤ H (spec: finetuning.md, algorithm 5). With A_H = a_{t:t+H} and A_h = a_{t:t+h}
(its first h actions), all from the dataset:

* chunk critic  ``Q_c(s, A_H) ← R^H + γ^H m V̄(s_{t+H})``  (squared error);
* distilled critic ``Q_a(s, A_h) ← Q̄_c(s, A_H)`` with an upper expectile κ_d: Q_a learns
  the optimistic value of the best dataset extension of the partial chunk;
* value ``V(s) ← Q̄_a(s, A_h)`` with an upper expectile κ_b (an implicit, in-sample
  maximisation over short chunks, as IQL's);
* policy: flow BC on h-step chunks; acting is best-of-N under Q_a.

Choices: Q_c, Q_a and V share one observation encoder (one image pass per observation
for the three critics); their Polyak target (encoder included) provides Q̄_c, Q̄_a and
V̄. Losses are squared errors on real-valued returns (the reference uses sigmoid values
with BCE for 0/1 goal rewards; our sparse rewards are not of that kind after the chunk
sum). With H = h the distillation is the identity map in expectation and the agent is QC
with an implicit backup.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vptr.config import helpfield
from vptr.errors import ConfigError
from vptr.finetune.common import (
    AgentNets,
    CriticAgentConfig,
    TrunkFactory,
    actions_of,
    chunk_target,
    make_obs_encoder,
    make_policy,
)
from vptr.finetune.nets import (
    DataSpec,
    EnsembleMLP,
    ObsEncoder,
    act_best_of_n,
    expectile_loss,
    flow_matching_loss,
)


@dataclass(frozen=True)
class DQCConfig(CriticAgentConfig):
    backup_horizon: int = helpfield(25, "H: actions per chunk-critic backup (H >= chunk)")
    distill_expectile: float = helpfield(0.8, "κ_d: upper expectile of Q_a toward Q_c")
    value_expectile: float = helpfield(0.9, "κ_b: upper expectile of V toward Q_a")
    act_samples: int = helpfield(32, "best-of-N candidates under Q_a when acting")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backup_horizon < self.chunk:
            raise ConfigError(f"backup_horizon ({self.backup_horizon}) must be >= chunk "
                              f"({self.chunk})")
        for name in ("distill_expectile", "value_expectile"):
            if not 0.5 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0.5, 1), got {getattr(self, name)}")

    def sample_horizon(self) -> int:
        return self.backup_horizon


class Critics(nn.Module):
    """Q_c (long chunks), Q_a (short chunks) and V on one observation encoder."""

    def __init__(self, cfg: DQCConfig, spec: DataSpec, encoder: ObsEncoder):
        super().__init__()
        self.encoder = encoder
        da, f = spec.action_dim, encoder.out_dim
        self.q_chunk = EnsembleMLP(cfg.critic_heads, f + cfg.backup_horizon * da, cfg.hidden)
        self.q_action = EnsembleMLP(cfg.critic_heads, f + cfg.chunk * da, cfg.hidden)
        self.v = EnsembleMLP(1, f, cfg.hidden)

    def qc(self, z, a):
        return self.q_chunk(torch.cat([z, a.flatten(1)], -1))

    def qa(self, z, a):
        return self.q_action(torch.cat([z, a.flatten(1)], -1))

    def value(self, z):
        return self.v(z)[0]

    def score(self, z, a):
        """Q_a: the critic used for best-of-N selection."""
        return self.qa(z, a)

    def score_candidates(self, z, candidates):
        """Q_a of N candidate chunks (B, N, h, Da) per observation: (K, B * N)."""
        return self.q_action.of_candidates(z, candidates)


class DQCNets(AgentNets):
    def __init__(self, cfg: DQCConfig, spec: DataSpec, trunks: TrunkFactory):
        super().__init__(spec)
        self.policy = make_policy(cfg, spec, trunks)
        self.critics = Critics(cfg, spec, make_obs_encoder(cfg, spec, trunks))


def create(cfg: DQCConfig, spec: DataSpec, trunks: TrunkFactory) -> DQCNets:
    return DQCNets(cfg, spec, trunks)


def target_of(nets: DQCNets) -> nn.Module:
    return nets.critics


def distill_loss(q_action: torch.Tensor, q_chunk_target: torch.Tensor,
                 kappa: float) -> torch.Tensor:
    """Upper-expectile regression of Q_a (K, B) toward Q̄_c (B,): its minimiser over the
    dataset extensions of a partial chunk is their κ-expectile (→ max as κ → 1)."""
    return expectile_loss(q_chunk_target - q_action, kappa).mean()


def loss_fn(nets: DQCNets, target: Critics, batch: dict[str, torch.Tensor], cfg: DQCConfig):
    long, _ = actions_of(nets, batch)
    short, short_mask = actions_of(nets, batch, cfg.chunk)
    c = nets.critics
    with torch.no_grad():
        zt = target.encoder(batch, "obs")
        y_c = chunk_target(batch, cfg.discount, cfg.backup_horizon,
                           target.value(target.encoder(batch, "next_obs")))
        qc_bar = target.qc(zt, long).mean(0)
        qa_bar = target.qa(zt, short).mean(0)
    z = c.encoder(batch, "obs")
    qc = c.qc(z, long)
    chunk_loss = (qc - y_c).square().mean()
    qa = c.qa(z, short)
    d_loss = distill_loss(qa, qc_bar, cfg.distill_expectile)
    v = c.value(z)
    value_loss = expectile_loss(qa_bar - v, cfg.value_expectile).mean()
    actor_loss = flow_matching_loss(nets.policy.flow, nets.policy.encoder(batch, "obs"),
                                    short, short_mask)
    loss = chunk_loss + d_loss + value_loss + actor_loss
    return loss, {"loss": loss.detach(), "critic/chunk_loss": chunk_loss.detach(),
                  "critic/distill_loss": d_loss.detach(), "value/loss": value_loss.detach(),
                  "critic/q_chunk": qc.detach().mean(), "critic/q_action": qa.detach().mean(),
                  "value/v": v.detach().mean(), "actor/bc_loss": actor_loss.detach()}


def ranker(nets: DQCNets):
    """Best-of-N ranks short chunks under the distilled Q_a."""
    return nets.critics.encoder, nets.critics.q_action


@torch.no_grad()
def act(nets: DQCNets, batch: dict[str, torch.Tensor], cfg: DQCConfig,
        samples: int | None = None) -> torch.Tensor:
    """Best-of-N short chunks (B, h, Da) under Q_a, normalised units."""
    return act_best_of_n(nets.policy, nets.critics, batch, samples or cfg.act_samples,
                         cfg.flow_steps)
