"""Pretraining objectives on action-free video, as pure loss functions, and their registry.

Each objective module provides a typed config dataclass, ``create(cfg, encoder) -> nets``
(every ``nets`` has the image encoder at ``nets.encoder``), a pure
``loss_fn(nets, target_nets, batch, cfg) -> (loss, metrics)`` with metrics named
``<objective>/<name>`` (detached tensors) and ``value(nets, obs, goal, intent=None)`` giving
V(s, g) for diagnostics (call it under ``torch.no_grad()``).

:data:`OBJECTIVES` is the one list of objectives: the ``--objective`` choices, the
per-objective config sections of ``vptr pretrain`` (``--icvf.expectile ...``) and their help
come from it. Each entry declares what the training loop must provide:

* ``trains``: whether there is anything to optimise; if so the config has ``lr``,
  ``adam_eps`` and ``batch_size`` (every config has ``batch_size``);
* ``target_network``: whether ``loss_fn`` takes a Polyak-averaged copy of ``nets``; if so
  the config has ``target_rate`` (otherwise ``loss_fn`` gets ``target_nets=None``);
* ``discount``: whether the value is discounted; if so the config has ``discount``, and
  value diagnostics compare V with the true discounted time-to-goal at that γ;
* ``positive_window``: whether the config has ``positive_window``, the window of the
  sampler's time-contrastive ``near_obs`` (otherwise the sampler's default window).

The training loop owns the optimizer step, the target update and logging.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from vptr.data.sampling import NEAR_WINDOW
from vptr.errors import unknown
from vptr.pretrain import icvf, none, tcn, tdjepa, vip


@dataclass(frozen=True)
class Objective:
    name: str
    summary: str  # one line, shown by --help
    config_cls: type
    create: Callable[[Any, nn.Module], nn.Module]
    loss_fn: Callable[..., Any]
    value_fn: Callable[..., Any]
    trains: bool = True
    target_network: bool = False
    discount: bool = False
    positive_window: bool = False

    def value_discount(self, cfg: Any) -> float | None:
        """γ of this objective's value (None: the value is not discounted)."""
        return float(cfg.discount) if self.discount else None

    def near_window(self, cfg: Any) -> int:
        """Window of the sampler's ``near_obs`` for this objective's runs."""
        return int(cfg.positive_window) if self.positive_window else NEAR_WINDOW


def _entries(*objectives: Objective) -> dict[str, Objective]:
    return {o.name: o for o in objectives}


OBJECTIVES: dict[str, Objective] = _entries(
    Objective("icvf", "intention-conditioned value functions (Ghosh et al. 2023)",
              icvf.ICVFConfig, icvf.create, icvf.loss_fn, icvf.value,
              target_network=True, discount=True),
    Objective("tdjepa", "intention-conditioned, action-free TD-JEPA (this project's design)",
              tdjepa.TDJEPAConfig, tdjepa.create, tdjepa.loss_fn, tdjepa.value,
              target_network=True, discount=True),
    Objective("tcn", "time-contrastive InfoNCE baseline (TCN / R3M's temporal term)",
              tcn.TCNConfig, tcn.create, tcn.loss_fn, tcn.value, positive_window=True),
    Objective("vip", "value-implicit pretraining baseline (Ma et al. 2023)",
              vip.VIPConfig, vip.create, vip.loss_fn, vip.value, discount=True),
    Objective("none", "no pretraining: the random-init encoder, frozen (baseline)",
              none.NoneConfig, none.create, none.loss_fn, none.value, trains=False),
)


def get_objective(name: str) -> Objective:
    """The registry entry for ``name``; unknown names raise a ConfigError listing choices."""
    if name not in OBJECTIVES:
        raise unknown("pretraining objective", name, OBJECTIVES)
    return OBJECTIVES[name]


def build_model(objective: str, objective_cfg: Any, encoder: str, frame_stack: int,
                image_size: int, channels_last: bool = True,
                encoder_weights: str = "") -> nn.Module:
    """Encoder + the objective's networks (deterministic given the torch seed)."""
    from vptr.nets.encoders import make_encoder

    kw: dict[str, Any] = {"channels_last": channels_last}
    if encoder_weights:
        kw["weights"] = encoder_weights
    enc = make_encoder(encoder, 3 * frame_stack, image_size, **kw)
    return get_objective(objective).create(objective_cfg, enc)


__all__ = ["OBJECTIVES", "Objective", "build_model", "get_objective"]
