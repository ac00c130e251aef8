"""``vptr evaluate-values``: one script that scores a pretraining run and its baselines.

For each held-out video set (e.g. the video embodiment and the robot arm, which never
appears in the training video) it evaluates V(s_t, g = final frame) for

* the trained model of a run (its latest checkpoint),
* negative pixel L2 distance to the goal frame,
* the same network untrained, for several seeds,

with the same numbers (Spearman rho, spread against the true discounted time-to-goal
range, V at the goal, collapse and inversion flags), prints one table per set, and
writes ``<run>/values/eval_<set>.png`` (value curves side by side) and
``<run>/values/eval.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vptr.config import build_config, helpfield
from vptr.errors import ConfigError, DataError


@dataclass(frozen=True)
class EvaluateValuesConfig:
    run: Path = helpfield(Path(""), "pretraining run directory (holds config.json and "
                                    "checkpoints/) (required)")
    eval_data: tuple[str, ...] = helpfield(
        (), "held-out video sources as name=path or path; empty = the run's eval_data")
    episodes: int = helpfield(16, "held-out trajectories per set")
    untrained_seeds: int = helpfield(5, "seeds of the untrained-network baseline")
    device: str = helpfield("cpu", "device for evaluation")

    def __post_init__(self) -> None:
        if not str(self.run) or str(self.run) == ".":
            raise ConfigError("run: a pretraining run directory is required (--run DIR)")
        if self.episodes <= 0 or self.untrained_seeds < 0:
            raise ConfigError("episodes must be > 0 and untrained_seeds >= 0")


def load_run(run: Path):
    """(PretrainConfig, nets with the newest checkpoint's weights, objective, step)."""
    from vptr.train import checkpoint
    from vptr.train.pretrain import PretrainConfig, build_nets

    try:
        values = json.loads((Path(run) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{run}: not a pretraining run (config.json: {e})") from None
    cfg = build_config(PretrainConfig, values, where=str(Path(run) / "config.json"))
    latest = checkpoint.latest(run)
    if latest is None:
        raise DataError(f"{run}: has no complete checkpoint yet")
    nets, objective = build_nets(cfg, cfg.source.size)
    state = checkpoint.load(latest, {"nets": nets}, restore_rng=False)
    return cfg, nets.eval(), objective, int(state["step"]), cfg.source.size


def evaluate_run(cfg: EvaluateValuesConfig, log=print) -> dict[str, Any]:
    from vptr.data import open_video_source
    from vptr.diagnostics.table import format_table
    from vptr.diagnostics.values import (
        ValueReport,
        evaluate_values,
        pixel_l2_value,
        plot_value_curves,
    )
    from vptr.train.pretrain import (
        _seed_all,
        build_nets,
        eval_trajectories,
        parse_eval_data,
        value_callable,
        value_gamma,
    )

    pcfg, nets, objective, step, image_size = load_run(cfg.run)
    device = torch.device(cfg.device)
    nets.to(device)
    sets = parse_eval_data(cfg.eval_data or pcfg.eval_data)
    if not sets:
        raise ConfigError("eval_data: no held-out sets given and the run has none")
    gamma = value_gamma(pcfg)
    stack = pcfg.sampler.frame_stack
    untrained = []
    for seed in range(cfg.untrained_seeds):
        _seed_all(1000 + seed)
        net, _ = build_nets(pcfg, image_size)
        untrained.append(net.to(device).eval())
    out_dir = Path(cfg.run) / "values"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"run": str(cfg.run), "step": step, "objective": pcfg.objective,
                               "encoder": pcfg.encoder, "gamma": gamma, "sets": {}}
    for name, path in sets.items():
        store = open_video_source(path, pcfg.source)
        trajs = eval_trajectories(store, cfg.episodes)
        reports = [evaluate_values(f"{pcfg.objective} (step {step})",
                                   value_callable(objective, nets, device), trajs, gamma, stack),
                   evaluate_values("-pixel L2", pixel_l2_value, trajs, gamma, stack)]
        seeds = [evaluate_values(f"untrained s{k}", value_callable(objective, net, device),
                                 trajs, gamma, stack) for k, net in enumerate(untrained)]
        rows = [r.row() for r in reports + seeds]

        lengths = [len(t) for t in trajs]
        log(f"\n{name}: {len(trajs)} held-out episodes from {path} (lengths "
            f"{min(lengths)}-{max(lengths)}, gamma {gamma}, true range "
            f"{reports[0].true_range:.1f})")
        log(format_table(ValueReport.HEADERS, rows))
        best_untrained = max((s.spearman for s in seeds), default=float("nan"))
        trained = reports[0]
        verdict = {
            "beats_pixel_l2": trained.spearman > reports[1].spearman,
            "beats_every_untrained_seed": bool(seeds) and trained.spearman > best_untrained,
            "spread_ok_25pct": trained.spread >= 0.25,
        }
        log("  " + ", ".join(f"{k}={v}" for k, v in verdict.items()))
        plot_value_curves(reports + seeds[:1], lengths, gamma, out_dir / f"eval_{name}.png",
                          f"{name}: V(s_t, g = last frame), held-out")
        results["sets"][name] = {
            "episodes": len(trajs),
            "methods": {r.name: {"spearman": r.spearman, "spearman_std": r.spearman_std,
                                 "spread": r.spread, "goal_value": r.goal_value,
                                 "value_std": r.value_std, "inverted": r.inverted}
                        for r in reports + seeds},
            "untrained_best_spearman": best_untrained,
            "verdict": verdict,
        }
    (out_dir / "eval.json").write_text(json.dumps(results, indent=2))
    log(f"\nwrote {out_dir / 'eval.json'} and eval_<set>.png")
    return results


def run(cfg: EvaluateValuesConfig) -> int:
    evaluate_run(cfg)
    return 0
