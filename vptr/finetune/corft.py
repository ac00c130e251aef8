"""CO-RFT-style chunked offline RL (after Huang et al. 2025, arXiv 2508.02219).

No reference code exists; the choices below follow the paper's outline (spec:
finetuning.md, algorithm 3) and are ours:

1. **Imitation first.** For the first ``bc_steps`` updates only the flow policy's BC loss
   moves the policy (the critic already trains).
2. **A critic over every prefix of the chunk.** ``Q_k(s, a_{t:t+k})`` for k = 1..h from one
   ensemble MLP whose input is the chunk with the actions after k zeroed plus a one-hot
   of k (h evaluations batched together). All prefixes estimate the same quantity — the
   chunk's return when the rest of the chunk follows the data — so the targets are a
   backup along the chunk: ``Q_k ← Q̄_{k+1}(s, a_{t:t+k+1})`` for k < h (in-sample, the
   dataset's next action) and ``Q_h ← R^h + γ^h m min_j Q̄_{h,j}(s_{t+h}, Â')`` with Â' one
   sample of the current policy (TD3-style clipped double Q).
3. **Monte-Carlo lower bound (Cal-QL's idea).** Targets are raised to at least the
   dataset's discounted return-to-go ``G_t`` where it is a true lower bound (episodes that
   end in a terminal); the sampler provides ``mc_return`` (−inf where unknown).
4. **BC-regularised policy (TD3+BC).** After the imitation phase the policy loss is
   ``BC + α · (−Q_h(s, π(s)) / mean|Q_h|)`` with π(s) an Euler sample differentiated
   through its steps; the critic's weights are held fixed in that term.
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
from vptr.finetune.nets import DataSpec, EnsembleMLP, ObsEncoder, euler_sample, flow_matching_loss


@dataclass(frozen=True)
class CORFTConfig(CriticAgentConfig):
    bc_steps: int = helpfield(1000, "imitation-only policy updates before the RL term")
    alpha: float = helpfield(2.5, "weight of the normalised Q term in the policy loss")
    mc_lower_bound: bool = helpfield(True, "raise targets to the Monte-Carlo return-to-go")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bc_steps < 0 or self.alpha < 0:
            raise ConfigError("bc_steps and alpha must be >= 0")


class PrefixCritic(nn.Module):
    """``Q_k(s, a_{:k})`` for every prefix k = 1..h: output (K, B, h)."""

    def __init__(self, cfg: CORFTConfig, spec: DataSpec, encoder: ObsEncoder):
        super().__init__()
        self.encoder, self.h = encoder, cfg.chunk
        self.heads = EnsembleMLP(cfg.critic_heads,
                                 encoder.out_dim + cfg.chunk * spec.action_dim + cfg.chunk,
                                 cfg.hidden)

    @staticmethod
    def inputs(z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(B*h, F + h*Da + h): row (b, k) holds z, a_{:k+1} (later actions zeroed), one-hot k."""
        b, h = actions.shape[:2]
        keep = torch.tril(torch.ones(h, h, device=z.device, dtype=z.dtype))  # row k: a_{:k+1}
        masked = actions[:, None] * keep[None, :, :, None]  # (B, k, h, Da)
        onehot = torch.eye(h, device=z.device, dtype=z.dtype).expand(b, h, h)
        x = torch.cat([z[:, None].expand(b, h, -1), masked.flatten(2), onehot], -1)
        return x.flatten(0, 1)

    def prefixes(self, z: torch.Tensor, actions: torch.Tensor,
                 fixed: bool = False) -> torch.Tensor:
        """(K, B, h); ``fixed``: the heads' weights as constants (gradient to the actions)."""
        y = self.heads(self.inputs(z, actions), fixed)
        return y.unflatten(1, (actions.shape[0], actions.shape[1]))

    def score(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q of the whole chunk (K, B)."""
        return self.prefixes(z, actions)[..., -1]


class CORFTNets(AgentNets):
    def __init__(self, cfg: CORFTConfig, spec: DataSpec, trunks: TrunkFactory):
        super().__init__(spec)
        self.policy = make_policy(cfg, spec, trunks)
        self.q = PrefixCritic(cfg, spec, make_obs_encoder(cfg, spec, trunks))


def create(cfg: CORFTConfig, spec: DataSpec, trunks: TrunkFactory) -> CORFTNets:
    return CORFTNets(cfg, spec, trunks)


def target_of(nets: CORFTNets) -> nn.Module:
    return nets.q


@torch.no_grad()
def prefix_targets(nets: CORFTNets, target: PrefixCritic, batch: dict[str, torch.Tensor],
                   actions: torch.Tensor, cfg: CORFTConfig) -> torch.Tensor:
    """(B, h) targets: Q̄_{k+1}(s, a_{:k+1}) for k < h, the chunk TD target for k = h,
    each raised to the MC lower bound when asked."""
    z_next = nets.policy.encoder(batch, "next_obs")
    a_next = euler_sample(nets.policy.flow, z_next, cfg.flow_steps)
    zt_next = target.encoder(batch, "next_obs")
    y_h = chunk_target(batch, cfg.discount, cfg.chunk,
                       target.score(zt_next, a_next).min(0).values)
    inner = target.prefixes(target.encoder(batch, "obs"), actions).min(0).values[:, 1:]
    y = torch.cat([inner, y_h[:, None]], dim=1)
    if cfg.mc_lower_bound and "mc_return" in batch:
        y = torch.maximum(y, batch["mc_return"][:, None])
    return y


def loss_fn(nets: CORFTNets, target: PrefixCritic, batch: dict[str, torch.Tensor],
            cfg: CORFTConfig):
    actions, mask = actions_of(nets, batch)
    y = prefix_targets(nets, target, batch, actions, cfg)
    zq = nets.q.encoder(batch, "obs")
    q = nets.q.prefixes(zq, actions)  # (K, B, h)
    critic_loss = (q - y[None]).square().mean()
    zp = nets.policy.encoder(batch, "obs")
    bc = flow_matching_loss(nets.policy.flow, zp, actions, mask)
    rl_on = (batch["step"] > cfg.bc_steps).to(bc.dtype).mean() if "step" in batch else 1.0
    q_term = torch.zeros((), device=bc.device)
    if cfg.alpha > 0 and float(rl_on) > 0:
        # TD3+BC: Q_h(s, π(s)) differentiated through the Euler steps into the policy only
        a_pi = euler_sample(nets.policy.flow, zp, cfg.flow_steps)
        q_pi = nets.q.prefixes(zq.detach(), a_pi, fixed=True)
        q_pi = q_pi[..., -1].mean(0)
        q_term = -cfg.alpha * q_pi.mean() / q_pi.abs().mean().detach().clamp_min(1e-6)
    actor_loss = bc + rl_on * q_term
    loss = critic_loss + actor_loss
    return loss, {"loss": loss.detach(), "critic/loss": critic_loss.detach(),
                  "critic/q": q[..., -1].detach().mean(), "critic/target": y[:, -1].mean(),
                  "actor/bc_loss": bc.detach(), "actor/q_term": q_term.detach()}


def ranker(nets: CORFTNets) -> None:
    """One (critic-trained) policy sample: nothing ranks."""
    return None


@torch.no_grad()
def act(nets: CORFTNets, batch: dict[str, torch.Tensor], cfg: CORFTConfig,
        samples: int | None = None) -> torch.Tensor:
    """One policy sample (B, h, Da), normalised units."""
    return euler_sample(nets.policy.flow, nets.policy.encoder(batch, "obs"), cfg.flow_steps)

