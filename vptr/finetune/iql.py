"""Chunked implicit Q-learning (IQL, Kostrikov et al. 2022, over action chunks): the
in-sample baseline (spec: finetuning.md, algorithm 2).

* value: ``L_V = |τ − 1(u < 0)| u²``, ``u = min_k Q̄_k(s, A) − V(s)`` (expectile τ);
* critic: ``(Q_k(s, A) − (R^h + γ^h m V(s_{t+h})))²`` — only dataset chunks are ever
  evaluated, no policy sample enters the target;
* policy: advantage-weighted flow matching, weights ``exp(β (Q̄ − V))`` clipped at 100.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
    QNet,
    VNet,
    act_best_of_n,
    expectile_loss,
    flow_matching_loss,
)


@dataclass(frozen=True)
class IQLConfig(CriticAgentConfig):
    expectile: float = helpfield(0.8, "value expectile τ (0.7-0.9)")
    beta: float = helpfield(3.0, "advantage temperature β of the policy weights (3-10)")
    max_weight: float = helpfield(100.0, "clip of the advantage weights")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.5 <= self.expectile < 1.0:
            raise ConfigError(f"expectile must be in [0.5, 1), got {self.expectile}")
        if self.beta < 0 or self.max_weight <= 0:
            raise ConfigError("beta must be >= 0 and max_weight > 0")


class IQLNets(AgentNets):
    def __init__(self, cfg: IQLConfig, spec: DataSpec, trunks: TrunkFactory):
        super().__init__(spec)
        self.policy = make_policy(cfg, spec, trunks)
        self.q = QNet(make_obs_encoder(cfg, spec, trunks), cfg.chunk, spec.action_dim,
                      cfg.critic_heads, cfg.hidden)
        self.v = VNet(make_obs_encoder(cfg, spec, trunks), cfg.hidden)


def create(cfg: IQLConfig, spec: DataSpec, trunks: TrunkFactory) -> IQLNets:
    return IQLNets(cfg, spec, trunks)


def target_of(nets: IQLNets) -> torch.nn.Module:
    return nets.q


def advantage_weights(adv: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    return torch.exp(beta * adv).clamp(max=max_weight)


def loss_fn(nets: IQLNets, target_q: QNet, batch: dict[str, torch.Tensor], cfg: IQLConfig):
    actions, mask = actions_of(nets, batch)
    with torch.no_grad():
        q_bar = target_q.score(target_q.encoder(batch, "obs"), actions).min(0).values
        y = chunk_target(batch, cfg.discount, cfg.chunk,
                         nets.v.score(nets.v.encoder(batch, "next_obs")))
    v = nets.v.score(nets.v.encoder(batch, "obs"))
    value_loss = expectile_loss(q_bar - v, cfg.expectile).mean()
    q = nets.q.score(nets.q.encoder(batch, "obs"), actions)
    critic_loss = (q - y).square().mean()
    w = advantage_weights(q_bar - v.detach(), cfg.beta, cfg.max_weight)
    actor_loss = flow_matching_loss(nets.policy.flow, nets.policy.encoder(batch, "obs"),
                                    actions, mask, weights=w)
    loss = value_loss + critic_loss + actor_loss
    return loss, {"loss": loss.detach(), "value/loss": value_loss.detach(),
                  "value/v": v.detach().mean(), "critic/loss": critic_loss.detach(),
                  "critic/q": q.detach().mean(), "actor/awr_loss": actor_loss.detach(),
                  "actor/weight": w.mean()}


def ranker(nets: IQLNets):
    """Best-of-N (``act_samples`` > 1) ranks candidates under Q."""
    return nets.q.encoder, nets.q.heads


@torch.no_grad()
def act(nets: IQLNets, batch: dict[str, torch.Tensor], cfg: IQLConfig,
        samples: int | None = None) -> torch.Tensor:
    """A policy sample (best-of-N under Q when ``act_samples`` > 1), normalised units."""
    return act_best_of_n(nets.policy, nets.q, batch, samples or cfg.act_samples,
                         cfg.flow_steps)
