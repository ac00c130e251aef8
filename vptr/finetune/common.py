"""What every fine-tuning agent shares: the base config, the networks container and the
pieces of the losses that more than one agent uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vptr.config import helpfield
from vptr.errors import ConfigError
from vptr.finetune.nets import DataSpec, FlowPolicy, Normalizer, ObsEncoder, PolicyNet

# camera -> image trunk, a fresh one per call (each network gets its own copy)
TrunkFactory = Callable[[], dict[str, nn.Module]]


@dataclass(frozen=True)
class AgentConfig:
    """Options every agent has (defaults: chosen for 2 CPU cores; the QC paper's in
    brackets where they differ — see benchmarks/RESULTS.md for the measured costs)."""

    chunk: int = helpfield(5, "action chunk length h the policy outputs and executes (QC: 5 "
                              "at 20 Hz); the sampler, networks and executor derive from it")
    discount: float = helpfield(0.99, "per-step discount γ (a chunk is discounted by γ^h)")
    batch_size: int = helpfield(128, "batch size per process [QC paper: 256]")
    lr: float = helpfield(3e-4, "Adam learning rate")
    adam_eps: float = helpfield(1e-8, "Adam epsilon")
    hidden: tuple[int, ...] = helpfield((256, 256, 256, 256), "MLP widths of policy and "
                                                              "critics [QC paper: 4 x 512]")
    feature_dim: int = helpfield(256, "width of the image head (Dense -> LayerNorm -> tanh)")
    task_dim: int = helpfield(16, "task-embedding width (multi-task data)")
    flow_steps: int = helpfield(5, "Euler steps of the flow policy [QC paper: 10]")
    act_samples: int = helpfield(1, "best-of-N samples when acting (1 = plain policy sample)")

    def __post_init__(self) -> None:
        for name in ("chunk", "batch_size", "feature_dim", "task_dim", "flow_steps",
                     "act_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.discount <= 1.0:
            raise ConfigError(f"discount must be in [0, 1], got {self.discount}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"hidden must be positive widths, got {self.hidden}")

    def sample_horizon(self) -> int:
        """How many actions a training sample holds (DQC's backup horizon is longer)."""
        return self.chunk


@dataclass(frozen=True)
class CriticAgentConfig(AgentConfig):
    """Options of the agents with a critic ensemble and its Polyak-averaged target."""

    critic_heads: int = helpfield(2, "critic ensemble size")
    target_rate: float = helpfield(0.005, "Polyak rate of the target critic")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.critic_heads < 1:
            raise ConfigError(f"critic_heads must be >= 1, got {self.critic_heads}")
        if not 0.0 < self.target_rate <= 1.0:
            raise ConfigError(f"target_rate must be in (0, 1], got {self.target_rate}")


class AgentNets(nn.Module):
    """An agent's networks; ``action_norm`` maps dataset actions to [-1, 1] and back.

    Subclasses add ``policy`` (:class:`PolicyNet`) and their critics."""

    policy: PolicyNet

    def __init__(self, spec: DataSpec):
        super().__init__()
        self.spec = spec
        self.action_norm = Normalizer(spec.action_dim, "minmax")


def make_obs_encoder(cfg: AgentConfig, spec: DataSpec, trunks: TrunkFactory) -> ObsEncoder:
    return ObsEncoder(spec, trunks() if spec.cameras else None, cfg.feature_dim, cfg.task_dim)


def make_policy(cfg: AgentConfig, spec: DataSpec, trunks: TrunkFactory) -> PolicyNet:
    enc = make_obs_encoder(cfg, spec, trunks)
    return PolicyNet(enc, FlowPolicy(enc.out_dim, cfg.chunk, spec.action_dim, cfg.hidden))


def share(trunks: TrunkFactory) -> TrunkFactory:
    """A factory that hands every network the same trunks (built once)."""
    shared = trunks()
    return lambda: shared


def with_trunk_features(encoder: ObsEncoder, batch: dict[str, torch.Tensor],
                        prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The batch with ``<prefix>_emb`` = the (shared) image trunk's features, computed once
    for every head that reads them: ``obs`` with gradients, any other prefix without.
    Features already there (a frozen encoder's cached embeddings) are kept."""
    if not encoder.cameras:
        return batch
    out = dict(batch)
    for prefix in prefixes:
        if f"{prefix}_emb" in out:
            continue
        with torch.set_grad_enabled(torch.is_grad_enabled() and prefix == "obs"):
            out[f"{prefix}_emb"] = encoder.trunk_features(batch, prefix)
    return out


def chunk_target(batch: dict[str, torch.Tensor], discount: float, horizon: int,
                 next_value: torch.Tensor) -> torch.Tensor:
    """``R^h + γ^h · m · V'``: the TD target of a chunk (spec: "Chunks")."""
    return batch["chunk_reward"] + (discount ** horizon) * batch["bootstrap_mask"] * next_value


def aggregate(q: torch.Tensor, how: str) -> torch.Tensor:
    """Ensemble (K, B) -> (B): mean (QC's default) or min (clipped double Q)."""
    return q.mean(0) if how == "mean" else q.min(0).values


def actions_of(nets: AgentNets, batch: dict[str, torch.Tensor],
               horizon: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised action chunks (B, h, Da) and their mask (B, h), cut to ``horizon``."""
    a, m = nets.action_norm(batch["actions"]), batch["action_mask"]
    if horizon is not None:
        a, m = a[:, :horizon], m[:, :horizon]
    return a, m
