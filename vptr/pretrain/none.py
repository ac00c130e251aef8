"""No pretraining: the randomly initialised encoder, frozen (baseline "random init").

``loss_fn`` returns a constant 0 that carries no gradient and ``create`` freezes every
parameter; the registry declares the objective untrained (``trains=False``), so the
training loop builds no optimizer. The value is the VIP form on the
untrained features, V(s, g) = -‖f(s) - f(g)‖, a baseline next to pixel L2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vptr.config import helpfield
from vptr.errors import ConfigError
from vptr.pretrain.common import Batch, neg_l2, scalar_metrics

PREFIX = "none"


@dataclass
class NoneConfig:
    batch_size: int = helpfield(64, "batch size (only to keep the data pipeline identical)")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"none.batch_size must be >= 1, got {self.batch_size}")


class FrozenEncoder(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.requires_grad_(False)


def create(cfg: NoneConfig, encoder: nn.Module) -> FrozenEncoder:
    return FrozenEncoder(encoder)


def loss_fn(nets: FrozenEncoder, target_nets: nn.Module | None, batch: Batch,
            cfg: NoneConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    device = next(iter(batch.values())).device if batch else torch.device("cpu")
    loss = torch.zeros((), device=device)
    return loss, scalar_metrics(PREFIX, loss=loss)


def value(nets: FrozenEncoder, obs: torch.Tensor, goal: torch.Tensor,
          intent: torch.Tensor | None = None) -> torch.Tensor:
    """V(s, g) = -‖f(s) - f(g)‖ with the untrained encoder features f."""
    if intent is not None:
        raise ConfigError("none.value has no intention argument")
    f_s, f_g = nets.encoder(torch.cat([obs, goal])).split(obs.shape[0])
    return neg_l2(f_s, f_g)
