"""Chunked flow-matching behaviour cloning: the QC policy with no critic (the baseline
every comparison includes; spec: finetuning.md, algorithm 4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vptr.finetune.common import AgentConfig, AgentNets, TrunkFactory, actions_of, make_policy
from vptr.finetune.nets import DataSpec, euler_sample, flow_matching_loss


@dataclass(frozen=True)
class FlowBCConfig(AgentConfig):
    """Chunked flow BC (same policy network and defaults as QC)."""


class FlowBCNets(AgentNets):
    def __init__(self, cfg: FlowBCConfig, spec: DataSpec, trunks: TrunkFactory):
        super().__init__(spec)
        self.policy = make_policy(cfg, spec, trunks)


def create(cfg: FlowBCConfig, spec: DataSpec, trunks: TrunkFactory) -> FlowBCNets:
    return FlowBCNets(cfg, spec, trunks)


def target_of(nets: FlowBCNets) -> None:
    return None


def loss_fn(nets: FlowBCNets, target, batch: dict[str, torch.Tensor], cfg: FlowBCConfig):
    actions, mask = actions_of(nets, batch)
    loss = flow_matching_loss(nets.policy.flow, nets.policy.encoder(batch, "obs"), actions, mask)
    return loss, {"loss": loss.detach(), "actor/bc_loss": loss.detach()}


def ranker(nets: FlowBCNets) -> None:
    """One plain sample: nothing ranks."""
    return None


@torch.no_grad()
def act(nets: FlowBCNets, batch: dict[str, torch.Tensor], cfg: FlowBCConfig,
        samples: int | None = None) -> torch.Tensor:
    """One flow sample per observation (B, h, Da), normalised units."""
    return euler_sample(nets.policy.flow, nets.policy.encoder(batch, "obs"), cfg.flow_steps)
