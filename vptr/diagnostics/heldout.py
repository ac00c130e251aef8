"""Scoring a pretrained value on held-out video sets: shared by ``vptr pretrain`` (periodic
diagnostics) and ``vptr evaluate-values``, so both compute every number the same way.

Reads runs through :mod:`vptr.runs` and builds networks through the objective registry;
imports nothing from ``vptr.train``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vptr import runs
from vptr.config import build_config
from vptr.data.batch import stack_frames
from vptr.data.config import VideoSourceConfig
from vptr.diagnostics.values import ValueFn, effective_rank, evaluate_values, plot_value_curves
from vptr.errors import ConfigError, DataError
from vptr.pretrain import Objective, build_model, get_objective

# The true discounted time-to-goal range that the spread is measured against needs a γ; an
# objective whose value has no discount (tcn, none) is scored at this one.
UNDISCOUNTED_SCORING_GAMMA = 0.99


def parse_eval_data(specs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``("hand=path", "path2")`` -> ``{"hand": "path", "<name of path2>": "path2"}``."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name or spec, spec
        if not name or not path:
            raise ConfigError(f"eval_data: expected name=path or path, got {spec!r}")
        if name in out:
            raise ConfigError(f"eval_data: name {name!r} given twice")
        out[name] = path
    return out


def open_eval_sets(specs: tuple[str, ...], source: VideoSourceConfig) -> dict[str, Any]:
    """Each held-out source opened as a frame store (decoded into the cache once)."""
    from vptr.data import open_video_source

    return {name: open_video_source(path, source)
            for name, path in parse_eval_data(specs).items()}


def eval_trajectories(store, n: int) -> list[np.ndarray]:
    """The first ``n`` trajectories (deterministic) as arrays."""
    return [np.asarray(store.trajectory(i)) for i in range(min(n, len(store)))]


def scoring_gamma(objective: Objective, objective_cfg: Any) -> float:
    """γ of the true time-to-goal range the value is compared with."""
    gamma = objective.value_discount(objective_cfg)
    return UNDISCOUNTED_SCORING_GAMMA if gamma is None else gamma


def value_callable(objective: Objective, nets: nn.Module, device: torch.device) -> ValueFn:
    def value(obs: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return objective.value_fn(nets, obs.to(device), goal.to(device)).float().cpu()

    return value


@torch.no_grad()
def encoder_features(encoder: nn.Module, trajs: list[np.ndarray], stack: int,
                     device: torch.device, batch: int = 256) -> torch.Tensor:
    frames = torch.from_numpy(np.concatenate([stack_frames(t, stack) for t in trajs]))
    return torch.cat([encoder(frames[i:i + batch].to(device)).float().cpu()
                      for i in range(0, len(frames), batch)])


@torch.no_grad()
def score_sets(objective: Objective, objective_cfg: Any, nets: nn.Module,
               eval_sets: dict[str, Any], *, frame_stack: int, episodes: int,
               device: torch.device, out: Path, step: int, log=print) -> dict[str, Any]:
    """Value curves, Spearman / spread / V(goal) and the features' effective rank on each
    held-out set; one PNG per set in ``out``. Returns ``{set: {metric: value}}``."""
    was_training = nets.training
    nets.eval()
    gamma = scoring_gamma(objective, objective_cfg)
    results: dict[str, Any] = {}
    for name, store in eval_sets.items():
        trajs = eval_trajectories(store, episodes)
        rep = evaluate_values(objective.name, value_callable(objective, nets, device), trajs,
                              gamma, frame_stack)
        feats = encoder_features(nets.encoder, trajs, frame_stack, device)
        plot_value_curves([rep], [len(t) for t in trajs], gamma,
                          out / f"{name}_step{step:07d}.png", f"{name} @ step {step}")
        results[name] = {"spearman": rep.spearman, "spread": rep.spread,
                         "goal_value": rep.goal_value, "value_std": rep.value_std,
                         "inverted": rep.inverted,
                         "feature_effective_rank": effective_rank(feats),
                         "feature_dim": int(feats.shape[1])}
        if rep.inverted > 0.5:
            log(f"WARNING: {name}: the value curve is INVERTED on {rep.inverted:.0%} of "
                "held-out episodes (V decreases towards the goal)")
        elif abs(rep.spread) < 0.02:
            log(f"WARNING: {name}: the value is nearly FLAT along episodes (spread "
                f"{rep.spread:+.3f} of the true range): collapse?")
    if was_training:
        nets.train()
    return results


@dataclass
class PretrainedRun:
    """A pretraining run read back from its directory (newest complete checkpoint)."""

    path: Path
    config: dict[str, Any]  # config.json as written by the run
    objective: Objective
    objective_cfg: Any
    source: VideoSourceConfig
    frame_stack: int
    step: int
    nets: nn.Module

    @property
    def image_size(self) -> int:
        return self.source.image_size

    @property
    def eval_data(self) -> tuple[str, ...]:
        return tuple(self.config.get("eval_data", ()))

    def build(self) -> nn.Module:
        """The run's networks, freshly initialised from the current torch seed."""
        return _build(self.config, self.objective, self.objective_cfg, self.frame_stack,
                      self.image_size)


def load_pretrained(run: str | Path) -> PretrainedRun:
    """Read a ``vptr pretrain`` run: its config, and its networks with the weights of the
    newest complete checkpoint (in eval mode)."""
    from vptr.nets.weights import load_modules

    run = Path(run)
    values = runs.read_config(run, "pretraining run")
    where = str(run / runs.CONFIG)
    try:
        objective = get_objective(values["objective"])
        objective_cfg = build_config(objective.config_cls, values.get(objective.name, {}),
                                     where=f"{where}: {objective.name}")
        source = build_config(VideoSourceConfig, values.get("source", {}),
                              where=f"{where}: source")
        frame_stack = int(values.get("sampler", {}).get("frame_stack", 1))
    except (KeyError, ConfigError) as e:
        raise DataError(f"{where}: not a pretraining run config ({e})") from None
    latest = runs.latest_checkpoint(run)
    if latest is None:
        raise DataError(f"{run}: has no complete checkpoint yet")
    nets = _build(values, objective, objective_cfg, frame_stack, source.image_size)
    load_modules(latest / runs.WEIGHTS, {"nets": nets})
    return PretrainedRun(run, values, objective, objective_cfg, source, frame_stack,
                         int(runs.read_state(latest)["step"]), nets.eval())


def _build(config: dict[str, Any], objective: Objective, objective_cfg: Any, frame_stack: int,
           image_size: int) -> nn.Module:
    return build_model(objective.name, objective_cfg, config["encoder"], frame_stack,
                       image_size, channels_last=bool(config.get("channels_last", True)),
                       encoder_weights=config.get("encoder_weights", ""))
