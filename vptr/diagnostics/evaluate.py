"""``vptr evaluate-values``: one script that scores a pretraining run and its baselines.

For each held-out video set (e.g. the video embodiment and the robot arm, which never
appears in the training video) it evaluates V(s_t, g = final frame) for

* the trained model of a run (its latest checkpoint),
* negative pixel L2 distance to the goal frame,
* the same network untrained, for several seeds,

with the same numbers (Spearman rho, spread against the true discounted time-to-goal
range, V at the goal, collapse and inversion flags), prints one table per set, and
writes ``eval_<set>.png`` (value curves side by side) and ``eval.json`` into
``--out-dir`` (default ``<run>/values``; the run itself may be read-only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vptr.config import helpfield
from vptr.diagnostics.heldout import (
    eval_trajectories,
    load_pretrained,
    parse_eval_data,
    scoring_gamma,
    value_callable,
)
from vptr.errors import ConfigError
from vptr.files import atomic_write_text, ensure_dir


@dataclass(frozen=True)
class EvaluateValuesConfig:
    run: Path = helpfield(Path(""), "pretraining run directory (holds config.json and "
                                    "checkpoints/) (required)")
    eval_data: tuple[str, ...] = helpfield(
        (), "held-out video sources as name=path or path; empty = the run's eval_data")
    episodes: int = helpfield(16, "held-out trajectories per set")
    untrained_seeds: int = helpfield(5, "seeds of the untrained-network baseline")
    out_dir: Path | None = helpfield(None, "where the PNGs and eval.json go (default: "
                                           "<run>/values)")
    device: str = helpfield("cpu", "device for evaluation")

    def __post_init__(self) -> None:
        if not str(self.run) or str(self.run) == ".":
            raise ConfigError("run: a pretraining run directory is required (--run DIR)")
        if self.episodes <= 0 or self.untrained_seeds < 0:
            raise ConfigError("episodes must be > 0 and untrained_seeds >= 0")
        parse_eval_data(self.eval_data)


def evaluate_run(cfg: EvaluateValuesConfig, log=print) -> dict[str, Any]:
    from vptr.data import open_video_source
    from vptr.diagnostics.table import format_table
    from vptr.diagnostics.values import (
        ValueReport,
        evaluate_values,
        pixel_l2_value,
        plot_value_curves,
    )

    run = load_pretrained(cfg.run)
    sets = parse_eval_data(cfg.eval_data or run.eval_data)
    if not sets:
        raise ConfigError("eval_data: no held-out sets given and the run has none")
    out_dir = ensure_dir(cfg.out_dir or Path(cfg.run) / "values", "output directory")
    device = torch.device(cfg.device)
    nets = run.nets.to(device)
    objective, stack, step = run.objective, run.frame_stack, run.step
    gamma = scoring_gamma(objective, run.objective_cfg)
    untrained = []
    for seed in range(cfg.untrained_seeds):
        torch.manual_seed(1000 + seed)
        untrained.append(run.build().to(device).eval())
    results: dict[str, Any] = {"run": str(cfg.run), "step": step, "objective": objective.name,
                               "encoder": run.config["encoder"], "gamma": gamma, "sets": {}}
    written = []
    for name, path in sets.items():
        store = open_video_source(path, run.source)
        trajs = eval_trajectories(store, cfg.episodes)
        reports = [evaluate_values(f"{objective.name} (step {step})",
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
        written.append(plot_value_curves(reports + seeds[:1], lengths, gamma,
                                         out_dir / f"eval_{name}.png",
                                         f"{name}: V(s_t, g = last frame), held-out"))
        results["sets"][name] = {
            "episodes": len(trajs),
            "methods": {r.name: {"spearman": r.spearman, "spearman_std": r.spearman_std,
                                 "spread": r.spread, "goal_value": r.goal_value,
                                 "value_std": r.value_std, "inverted": r.inverted}
                        for r in reports + seeds},
            "untrained_best_spearman": best_untrained,
            "verdict": verdict,
        }
    atomic_write_text(out_dir / "eval.json", json.dumps(results, indent=2))
    log(f"\nwrote {out_dir / 'eval.json'}, " + ", ".join(p.name for p in written))
    return results


def run(cfg: EvaluateValuesConfig) -> int:
    evaluate_run(cfg)
    return 0
