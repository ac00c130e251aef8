"""``vptr pretrain``: TD pretraining of an image encoder and value on action-free video.

The loop reads like the algorithm (sample -> loss -> step -> log -> checkpoint -> evaluate);
the pure objectives are in ``vptr.pretrain``, everything else is the shared training core
(:mod:`vptr.train.core`: set-up, the optimizer step with the Polyak target, AMP /
``torch.compile``, DistributedDataParallel under ``torchrun``, checkpoints and resume,
progress bar and TensorBoard), the held-out value scoring is ``vptr.diagnostics``.

Run directory ``<out_dir>/<run_name>`` (layout: :mod:`vptr.runs`): ``config.json``,
``history.json``, ``checkpoints/``, ``tb/``, ``encoder/`` (the downstream encoder,
:func:`vptr.nets.weights.export_encoder`) and ``values/`` (value-curve PNGs, report.json).

Resuming is automatic: rerunning the same command continues from the newest complete
checkpoint (data position and loss history included), so a killed run loses at most
``checkpoint_every`` steps. In ``--deterministic`` mode on CPU a resumed run ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from vptr import runs
from vptr.config import config_hash, helpfield, to_dict
from vptr.data.config import SamplerConfig, VideoSourceConfig
from vptr.diagnostics.heldout import open_eval_sets, parse_eval_data, score_sets
from vptr.errors import ConfigError
from vptr.files import atomic_write_text
from vptr.nets.weights import export_encoder
from vptr.pretrain import OBJECTIVES, Objective, build_model, get_objective
from vptr.train import checkpoint, core, distributed

ObjectiveName = Literal[tuple(OBJECTIVES)]  # type: ignore[valid-type]


@dataclass
class PretrainOptions:
    """The options of every pretraining run; :class:`PretrainConfig` adds one section per
    registered objective (``--icvf.expectile``, ...)."""

    data: str = helpfield("", "video source: folder of videos (+ manifest.csv), frame-folder "
                              "manifest.csv, or LeRobot dataset directory (required)")
    eval_data: tuple[str, ...] = helpfield(
        (), "held-out video sources for value diagnostics, as name=path or path")
    val_fraction: float = helpfield(0.0, "also hold out this fraction of `data` trajectories "
                                         "for diagnostics (named 'val')")
    objective: ObjectiveName = helpfield(
        "icvf", "pretraining objective: " + "; ".join(f"{o.name}: {o.summary}"
                                                      for o in OBJECTIVES.values()))
    encoder: str = helpfield("impala", "image encoder: impala, impala_small, ... or "
                                       "timm:<model name>")
    encoder_weights: str = helpfield("", "local weights file for a timm encoder (never "
                                         "downloaded)")
    channels_last: bool = helpfield(True, "channels-last memory format (2.4x faster on CPU "
                                          "for the Impala CNN)")
    steps: int = helpfield(20000, "optimizer steps")
    batch_size: int = helpfield(0, "batch size per process; 0 = the objective's default")
    lr: float = helpfield(0.0, "learning rate; 0 = the objective's default")
    seed: int = helpfield(0, "seed of initialisation and data sampling")
    out_dir: Path = helpfield(Path("runs/pretrain"), "parent directory of runs")
    run_name: str = helpfield("", "run directory name; empty = <objective>-<encoder>-<config "
                                  "hash> (the same config resumes the same run)")
    log_every: int = helpfield(25, "steps between TensorBoard scalars")
    checkpoint_every: int = helpfield(250, "steps between checkpoints")
    eval_every: int = helpfield(0, "steps between value diagnostics; 0 = only at the end")
    eval_episodes: int = helpfield(8, "held-out trajectories per eval set in diagnostics")
    num_workers: int = helpfield(1, "data-loader worker processes (0 = sample in the "
                                    "training process)")
    device: str = helpfield("auto", "auto, cpu, cuda or cuda:N")
    amp: Literal["off", "bf16", "fp16"] = helpfield("off", core.AMP_HELP)
    compile: bool = helpfield(False, "torch.compile the loss (GPU; slow to start on CPU)")
    deterministic: bool = helpfield(False, "deterministic algorithms (exact resume on CPU)")
    threads: int = helpfield(0, "torch intra-op threads; 0 = torch's default")
    progress: bool = helpfield(True, "show a progress bar")
    source: VideoSourceConfig = field(default_factory=VideoSourceConfig, metadata={
        "help": "decoding, resampling, resizing and caching of the video"})
    sampler: SamplerConfig = field(default_factory=SamplerConfig, metadata={
        "help": "how batches are drawn from the decoded frames"})

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("data: a video source is required (--data PATH)")
        objective = get_objective(self.objective)
        for name in ("steps", "log_every", "checkpoint_every", "eval_episodes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("batch_size", "eval_every", "num_workers", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr < 0 or not math.isfinite(self.lr):
            raise ConfigError(f"lr must be >= 0, got {self.lr}")
        if self.lr and not objective.trains:
            raise ConfigError(f"lr: objective {self.objective} trains nothing")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        distributed.check_device(self.device)
        core.check_amp(self.amp, self.device)
        parse_eval_data(self.eval_data)

    @property
    def objective_cfg(self) -> Any:
        """The config section of the chosen objective."""
        return getattr(self, self.objective)

    def resolved_batch_size(self) -> int:
        return self.batch_size or self.objective_cfg.batch_size

    def resolved_lr(self) -> float:
        """The learning rate (objectives that train declare ``lr`` in their section)."""
        return self.lr or self.objective_cfg.lr

    def run_dir(self) -> Path:
        others = tuple(o for o in OBJECTIVES if o != self.objective)
        digest = config_hash(self, exclude=_NOT_IN_HASH + others, omit_when=_HASHED_WHEN_SET)
        name = self.run_name or f"{self.objective}-{self.encoder.replace(':', '_')}-{digest}"
        return Path(self.out_dir) / name


# One config section per registered objective, named after it: adding an objective to the
# registry adds its options to `vptr pretrain`.
PretrainConfig = dataclasses.make_dataclass(
    "PretrainConfig",
    [(o.name, o.config_cls, field(default_factory=o.config_cls,
                                  metadata={"help": o.summary}))
     for o in OBJECTIVES.values()],
    bases=(PretrainOptions,),
    namespace={"__doc__": "TD pretraining on action-free video (defaults: the ICVF release "
                          "image setting).", "__module__": __name__})

# options that do not change what is learned (so changing them resumes the same run)
_NOT_IN_HASH = ("out_dir", "run_name", "log_every", "checkpoint_every", "eval_every",
                "eval_episodes", "eval_data", "num_workers", "progress", "threads", "steps",
                "device", "compile", "source.progress", "source.decode_workers",
                "source.decode_pool", "source.cache_dir", "source.rebuild_cache")


# options added after runs existed, with their "off" value: hashed only when set, so a run
# started before the option existed keeps its directory and resumes
_HASHED_WHEN_SET = {"sampler.color_jitter": 0.0}


# ----------------------------------------------------------------------------- loop


def train(cfg: PretrainConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) pretraining. ``stop_after`` ends early after that many steps of this
    invocation without a final checkpoint (used by tests to simulate a crash)."""
    from vptr.data import make_loader

    objective = get_objective(cfg.objective)
    with core.session(cfg.device, cfg.threads, cfg.deterministic, cfg.amp, cfg.compile) as s:
        train_store, eval_sets = open_data(cfg, s)
        image_size = int(train_store.image_size[0])
        nets, step_fn = build_training(cfg, objective, image_size, s)
        with core.run_directory(cfg.run_dir(), to_dict(cfg), s) as run_dir:
            ckpt = core.Checkpointer(run_dir, s, checkpointed_modules(nets, step_fn),
                                     step_fn.state, {"objective": cfg.objective,
                                                     "encoder": cfg.encoder})
            start, history = ckpt.restore()
            batches = s.closing(core.BatchIterator(make_loader(
                train_store, cfg.sampler, cfg.resolved_batch_size(), seed=cfg.seed,
                start_step=start, num_workers=cfg.num_workers, rank=s.dist.rank,
                near_window=objective.near_window(cfg.objective_cfg))))
            ckpt.restore_rng()
            if start and s.is_main:
                print(f"resuming {run_dir} from {ckpt.latest.name} (step {start})")
            log = s.closing(core.TrainLog(
                run_dir, s, start, cfg.steps, cfg.log_every, f"{cfg.objective}/loss", history,
                f"pretrain {cfg.objective}", cfg.resolved_batch_size(), cfg.progress))
            for step in range(start + 1, cfg.steps + 1):
                if stop_after is not None and step - start > stop_after:
                    return {"step": step - 1, "stopped": True, "run_dir": str(run_dir),
                            "history": log.history}
                log.record(step, step_fn(next(batches)))
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    ckpt.save(step, log.history)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps \
                        and has_eval(cfg):
                    if s.is_main:
                        with checkpoint.rng_preserved():
                            diagnose(cfg, objective, nets, eval_sets, s, run_dir, step, log)
                    s.barrier()
            end = max(start, cfg.steps)
            if end > start:  # a rerun of a finished run has nothing new to save
                ckpt.save(end, log.history)
            return finish(cfg, objective, nets, eval_sets, s, run_dir, end, image_size, log)


# ----------------------------------------------------------------------------- pieces


def has_eval(cfg: PretrainConfig) -> bool:
    """Whether there are held-out sets. Every rank takes the same branches around barriers,
    so this is decided from the config (the sets themselves exist on rank 0 only)."""
    return bool(cfg.eval_data) or cfg.val_fraction > 0


def open_data(cfg: PretrainConfig, s: core.Session) -> tuple[Any, dict[str, Any]]:
    """(training frame store, held-out sets). Rank 0 decodes into the cache first, the
    others then open it. Opened before the run directory exists: bad data creates nothing."""
    from vptr.data import open_video_source

    if s.is_main:
        store = open_video_source(cfg.data, cfg.source)
    s.barrier()
    if not s.is_main:
        store = open_video_source(cfg.data, cfg.source)
    eval_sets: dict[str, Any] = {}
    if cfg.val_fraction > 0:
        store, eval_sets["val"] = store.split(cfg.val_fraction, seed=cfg.seed)
    if s.is_main:
        eval_sets.update(open_eval_sets(cfg.eval_data, cfg.source))
    return store, eval_sets


def build_nets(cfg: PretrainConfig, image_size: int) -> nn.Module:
    """Encoder + objective networks, as configured (deterministic given the torch seed)."""
    return build_model(cfg.objective, cfg.objective_cfg, cfg.encoder, cfg.sampler.frame_stack,
                       image_size, cfg.channels_last, cfg.encoder_weights)


def build_training(cfg: PretrainConfig, objective: Objective, image_size: int,
                   s: core.Session) -> tuple[nn.Module, core.TrainStep]:
    """Networks (same initial weights on every rank), EMA target, optimizer and step."""
    core.seed_everything(cfg.seed)
    nets = build_nets(cfg, image_size).to(s.device)
    ocfg = cfg.objective_cfg
    target = core.make_target(nets) if objective.target_network else None
    s.seed_rank(cfg.seed)
    opt = None
    if objective.trains:
        opt = core.adam([p for p in nets.parameters() if p.requires_grad],
                        lr=cfg.resolved_lr(), eps=ocfg.adam_eps)
    targets = ((target, nets, float(ocfg.target_rate)),) if target is not None else ()
    module = core.LossModule(nets, target, objective.loss_fn, ocfg)
    return nets, core.TrainStep(module, s, opt, targets)


def checkpointed_modules(nets: nn.Module, step_fn: core.TrainStep) -> dict[str, nn.Module]:
    """The weights a checkpoint holds: the networks and their EMA target, if any."""
    targets = [t for t, _, _ in step_fn.targets]
    return {"nets": nets} | ({"target": targets[0]} if targets else {})


def diagnose(cfg: PretrainConfig, objective: Objective, nets: nn.Module,
             eval_sets: dict[str, Any], s: core.Session, run_dir: Path, step: int,
             log: core.TrainLog) -> dict[str, Any]:
    """Value diagnostics on the held-out sets (rank 0), also logged to TensorBoard."""
    results = score_sets(objective, cfg.objective_cfg, nets, eval_sets,
                         frame_stack=cfg.sampler.frame_stack, episodes=cfg.eval_episodes,
                         device=s.device, out=run_dir / runs.VALUES, step=step)
    for name, metrics in results.items():
        log.scalars(metrics, step, prefix=f"eval_{name}/")
    return results


def finish(cfg: PretrainConfig, objective: Objective, nets: nn.Module,
           eval_sets: dict[str, Any], s: core.Session, run_dir: Path, step: int,
           image_size: int, log: core.TrainLog) -> dict[str, Any]:
    """Final diagnostics and report, the exported encoder (rank 0)."""
    result: dict[str, Any] = {"step": step, "run_dir": str(run_dir), "history": log.history}
    if s.is_main:
        core.write_history(run_dir, log.history)
        if eval_sets:
            result["diagnostics"] = diagnose(cfg, objective, nets, eval_sets, s, run_dir,
                                             step, log)
            atomic_write_text(run_dir / runs.VALUES / "report.json", json.dumps(
                {"step": step, "sets": result["diagnostics"]}, indent=2))
        else:
            result["diagnostics"] = {}
        export_encoder(run_dir / runs.ENCODER, nets.encoder, cfg.encoder,
                       cfg.sampler.frame_stack, image_size, cfg.channels_last,
                       objective=cfg.objective, step=step)
    s.barrier()
    return result


def run(cfg: PretrainConfig) -> int:
    """CLI entry point."""
    result = train(cfg)
    if "diagnostics" not in result:  # the other ranks of a torchrun job
        return 0
    print(f"\nrun: {result['run_dir']}  (step {result['step']})")
    for name, d in result["diagnostics"].items():
        print(f"  {name:<10} Spearman(V,t) {d['spearman']:+.3f}  spread {d['spread']:+.3f}  "
              f"V(goal,goal) {d['goal_value']:+.3f}  eff.rank {d['feature_effective_rank']:.1f}"
              f"/{d['feature_dim']}")
    print(f"  encoder exported to {Path(result['run_dir']) / runs.ENCODER}")
    return 0
