"""Pretraining objectives on action-free video, as pure loss functions.

Each objective module provides a typed config dataclass, ``create(cfg, encoder) -> nets``
(every ``nets`` has the image encoder at ``nets.encoder``), a pure
``loss_fn(nets, target_nets, batch, cfg) -> (loss, metrics)`` with metrics named
``<objective>/<name>`` (detached tensors) and ``value_fn(nets, obs, goal, intent=None)`` giving
V(s, g) for diagnostics (call it under ``torch.no_grad()``).

The training loop owns the optimizer step, the target network (``common.make_target``,
updated with ``common.ema_update(target, nets, cfg.target_rate)`` after each step; objectives
with ``cfg.target_rate == 0`` take ``target_nets=None``) and logging. Objectives without
trainable parameters (``none``) are recognised with ``common.is_trainable(nets)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from vptr.errors import unknown
from vptr.pretrain import icvf, none, tcn, tdjepa, vip


class Objective(NamedTuple):
    config_cls: type
    create: Callable[..., Any]
    loss_fn: Callable[..., Any]
    value_fn: Callable[..., Any]


OBJECTIVES: dict[str, Objective] = {
    "icvf": Objective(icvf.ICVFConfig, icvf.create, icvf.loss_fn, icvf.value),
    "tdjepa": Objective(tdjepa.TDJEPAConfig, tdjepa.create, tdjepa.loss_fn, tdjepa.value),
    "tcn": Objective(tcn.TCNConfig, tcn.create, tcn.loss_fn, tcn.value),
    "vip": Objective(vip.VIPConfig, vip.create, vip.loss_fn, vip.value),
    "none": Objective(none.NoneConfig, none.create, none.loss_fn, none.value),
}


def get_objective(name: str) -> Objective:
    """The registry entry for ``name``; unknown names raise a ConfigError listing choices."""
    if name not in OBJECTIVES:
        raise unknown("pretraining objective", name, OBJECTIVES)
    return OBJECTIVES[name]


__all__ = ["OBJECTIVES", "Objective", "get_objective"]
