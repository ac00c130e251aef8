"""``vptr pretrain``: TD pretraining of an image encoder and value on action-free video.

The loop owns what the pure objectives (``vptr.pretrain``) do not: the optimizer step,
the Polyak target update, AMP / ``torch.compile`` on GPU, DistributedDataParallel under
``torchrun``, logging (progress bar + TensorBoard), periodic checkpoints and resume, value
diagnostics on held-out video, and the export of the encoder.

Run directory ``<out_dir>/<run_name>``::

    config.json                 the full resolved config
    checkpoints/step_XXXXXXX/   weights, optimizer, RNG, data position (see checkpoint.py)
    tb/                         TensorBoard event files
    encoder/                    model.safetensors + config.json (the downstream encoder)
    values/                     value-curve PNGs and report.json (diagnostics)

Resuming is automatic: rerunning the same command continues from the newest complete
checkpoint (data position included), so a killed run loses at most ``checkpoint_every``
steps. In ``--deterministic`` mode on CPU a resumed run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vptr.config import config_hash, helpfield, to_dict
from vptr.data.config import SamplerConfig, VideoSourceConfig
from vptr.errors import ConfigError, DataError
from vptr.pretrain.icvf import ICVFConfig
from vptr.pretrain.none import NoneConfig
from vptr.pretrain.tcn import TCNConfig
from vptr.pretrain.tdjepa import TDJEPAConfig
from vptr.pretrain.vip import VIPConfig
from vptr.train import checkpoint, distributed

OBJECTIVE_NAMES = ("icvf", "tdjepa", "tcn", "vip", "none")


@dataclass
class PretrainConfig:
    """TD pretraining on action-free video (defaults: the ICVF release image setting)."""

    data: str = helpfield("", "video source: folder of videos (+ manifest.csv), frame-folder "
                              "manifest.csv, or LeRobot dataset directory (required)")
    eval_data: tuple[str, ...] = helpfield(
        (), "held-out video sources for value diagnostics, as name=path or path")
    val_fraction: float = helpfield(0.0, "also hold out this fraction of `data` trajectories "
                                         "for diagnostics (named 'val')")
    objective: Literal["icvf", "tdjepa", "tcn", "vip", "none"] = helpfield(
        "icvf", "pretraining objective")
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
    amp: Literal["off", "bf16", "fp16"] = helpfield("off", "mixed precision on GPU")
    compile: bool = helpfield(False, "torch.compile the loss (GPU; slow to start on CPU)")
    deterministic: bool = helpfield(False, "deterministic algorithms (exact resume on CPU)")
    threads: int = helpfield(0, "torch intra-op threads; 0 = torch's default")
    progress: bool = helpfield(True, "show a progress bar")
    source: VideoSourceConfig = field(default_factory=VideoSourceConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    icvf: ICVFConfig = field(default_factory=ICVFConfig)
    tdjepa: TDJEPAConfig = field(default_factory=TDJEPAConfig)
    tcn: TCNConfig = field(default_factory=TCNConfig)
    vip: VIPConfig = field(default_factory=VIPConfig)
    none: NoneConfig = field(default_factory=NoneConfig)

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("data: a video source is required (--data PATH)")
        if self.objective not in OBJECTIVE_NAMES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVE_NAMES)}, "
                              f"got {self.objective!r}")
        for name in ("steps", "log_every", "checkpoint_every", "eval_episodes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("batch_size", "eval_every", "num_workers", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr < 0 or not math.isfinite(self.lr):
            raise ConfigError(f"lr must be >= 0, got {self.lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        distributed.check_device(self.device)
        if self.amp != "off" and not self.device.startswith(("cuda", "auto")):
            raise ConfigError(f"amp={self.amp} needs a GPU device, got device={self.device}")
        parse_eval_data(self.eval_data)

    @property
    def objective_cfg(self) -> Any:
        return getattr(self, self.objective)

    def resolved_batch_size(self) -> int:
        return self.batch_size or self.objective_cfg.batch_size

    def resolved_lr(self) -> float:
        return self.lr or getattr(self.objective_cfg, "lr", 3e-4)

    def run_dir(self) -> Path:
        others = tuple(o for o in OBJECTIVE_NAMES if o != self.objective)
        name = self.run_name or (f"{self.objective}-{self.encoder.replace(':', '_')}-"
                                 f"{config_hash(self, exclude=_NOT_IN_HASH + others)}")
        return Path(self.out_dir) / name


# options that do not change what is learned (so changing them resumes the same run)
_NOT_IN_HASH = ("out_dir", "run_name", "log_every", "checkpoint_every", "eval_every",
                "eval_episodes", "eval_data", "num_workers", "progress", "threads", "steps",
                "device", "compile", "source.progress", "source.decode_workers",
                "source.decode_pool", "source.cache_dir", "source.rebuild_cache")


def parse_eval_data(specs: tuple[str, ...]) -> dict[str, str]:
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


# ----------------------------------------------------------------------------- pieces


class LossModule(nn.Module):
    """Wraps ``loss_fn(nets, target_nets, batch, cfg)`` as a module so that
    DistributedDataParallel sees a forward (its gradient hooks need one) and
    ``torch.compile`` has one graph. The target network is deliberately not a submodule
    (DDP must not see it as trainable, and ``.to()`` does not move it: build the target
    after moving ``nets``)."""

    def __init__(self, nets: nn.Module, target: nn.Module | None, loss_fn, cfg: Any):
        super().__init__()
        self.nets = nets
        self._target = [target]  # hidden from .parameters()
        self.loss_fn = loss_fn
        self.cfg = cfg

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.loss_fn(self.nets, self._target[0], batch, self.cfg)


def build_nets(cfg: PretrainConfig, image_size: int) -> tuple[nn.Module, Any]:
    """Encoder + objective networks, as configured (deterministic given the torch seed)."""
    from vptr.nets.encoders import make_encoder
    from vptr.pretrain import get_objective

    objective = get_objective(cfg.objective)
    kw: dict[str, Any] = {"channels_last": cfg.channels_last}
    if cfg.encoder_weights:
        kw["weights"] = cfg.encoder_weights
    encoder = make_encoder(cfg.encoder, 3 * cfg.sampler.frame_stack, image_size, **kw)
    return objective.create(cfg.objective_cfg, encoder), objective


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _autocast(cfg: PretrainConfig, device: torch.device):
    if cfg.amp == "off" or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def open_eval_sets(cfg: PretrainConfig) -> dict[str, Any]:
    from vptr.data import open_video_source

    return {name: open_video_source(path, cfg.source)
            for name, path in parse_eval_data(cfg.eval_data).items()}


def eval_trajectories(store, n: int) -> list[np.ndarray]:
    """The first ``n`` trajectories (deterministic) as arrays."""
    return [np.asarray(store.trajectory(i)) for i in range(min(n, len(store)))]


def value_callable(objective, nets: nn.Module, device: torch.device):
    def value(obs: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return objective.value_fn(nets, obs.to(device), goal.to(device)).float().cpu()

    return value


def value_gamma(cfg: PretrainConfig) -> float:
    """The discount the value is trained with (for the true-value range in diagnostics)."""
    return float(getattr(cfg.objective_cfg, "discount", getattr(cfg.objective_cfg, "gamma", 0.99)))


@torch.no_grad()
def run_diagnostics(cfg: PretrainConfig, objective, nets: nn.Module, eval_sets: dict,
                    device: torch.device, out: Path, step: int, writer=None) -> dict[str, Any]:
    """Value curves + Spearman / spread on each held-out set; PNG per set; effective rank."""
    from vptr.diagnostics.values import (
        effective_rank,
        evaluate_values,
        plot_value_curves,
        stack_frames,
    )

    was_training = nets.training
    nets.eval()
    gamma = value_gamma(cfg)
    stack = cfg.sampler.frame_stack
    results: dict[str, Any] = {}
    for name, store in eval_sets.items():
        trajs = eval_trajectories(store, cfg.eval_episodes)
        rep = evaluate_values(cfg.objective, value_callable(objective, nets, device), trajs,
                              gamma, stack)
        frames = torch.from_numpy(np.concatenate([stack_frames(t, stack) for t in trajs]))
        feats = torch.cat([nets.encoder(frames[i:i + 256].to(device)).float().cpu()
                           for i in range(0, len(frames), 256)])
        erank = effective_rank(feats)
        plot_value_curves([rep], [len(t) for t in trajs], gamma,
                          out / f"{name}_step{step:07d}.png", f"{name} @ step {step}")
        results[name] = {"spearman": rep.spearman, "spread": rep.spread,
                         "goal_value": rep.goal_value, "value_std": rep.value_std,
                         "inverted": rep.inverted, "feature_effective_rank": erank,
                         "feature_dim": int(feats.shape[1])}
        if writer is not None:
            for k, v in results[name].items():
                writer.add_scalar(f"eval_{name}/{k}", v, step)
        if rep.inverted > 0.5:
            print(f"WARNING: {name}: the value curve is INVERTED on {rep.inverted:.0%} of "
                  "held-out episodes (V decreases towards the goal)")
        elif abs(rep.spread) < 0.02:
            print(f"WARNING: {name}: the value is nearly FLAT along episodes (spread "
                  f"{rep.spread:+.3f} of the true range): collapse?")
    if was_training:
        nets.train()
    return results


def export_encoder(cfg: PretrainConfig, nets: nn.Module, image_size: int, step: int,
                   run_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """``<run>/encoder/{model.safetensors, config.json}``: the downstream encoder contract."""
    out = run_dir / "encoder"
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save_weights(out / "model.safetensors", {"": nets.encoder})
    meta = {"format": "vptr-encoder/1", "encoder": cfg.encoder,
            "in_channels": 3 * cfg.sampler.frame_stack, "frame_stack": cfg.sampler.frame_stack,
            "image_size": image_size, "out_dim": int(nets.encoder.out_dim),
            "objective": cfg.objective, "step": step, "input": "uint8 RGB (B, 3*stack, H, W)",
            **(extra or {})}
    checkpoint.atomic_write_text(out / "config.json", json.dumps(meta, indent=2))
    return out


# ----------------------------------------------------------------------------- loop


def train(cfg: PretrainConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) pretraining. ``stop_after`` ends early after that many steps of this
    invocation without a final checkpoint (used by tests to simulate a crash)."""
    from vptr.data import make_loader, open_video_source
    from vptr.pretrain.common import ema_update, is_trainable, make_target

    info = distributed.init(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    run_dir = cfg.run_dir()
    if info.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        except OSError as e:
            raise DataError(f"{run_dir}: cannot write the run directory ({e.strerror})") from None

    # Data: rank 0 decodes into the cache first, the others then open it.
    if info.is_main:
        store = open_video_source(cfg.data, cfg.source)
    distributed.barrier(info)
    if not info.is_main:
        store = open_video_source(cfg.data, cfg.source)
    train_store, eval_sets = store, {}
    if cfg.val_fraction > 0:
        train_store, val_store = store.split(cfg.val_fraction, seed=cfg.seed)
        eval_sets["val"] = val_store
    if info.is_main:
        eval_sets.update(open_eval_sets(cfg))
    # every rank must take the same branches around barriers: decide from the config
    has_eval = bool(cfg.eval_data) or cfg.val_fraction > 0
    image_size = int(train_store.image_size[0])

    _seed_all(cfg.seed)
    nets, objective = build_nets(cfg, image_size)
    nets.to(info.device)
    target = make_target(nets) if cfg.objective_cfg.target_rate > 0 else None
    if info.rank:  # same initial weights everywhere, independent random draws per rank
        torch.manual_seed(cfg.seed + 7919 * info.rank)
    trainable = is_trainable(nets)
    batch_size = cfg.resolved_batch_size()
    opt = None
    if trainable:
        eps = getattr(cfg.objective_cfg, "adam_eps", 1e-8)
        opt = torch.optim.Adam([p for p in nets.parameters() if p.requires_grad],
                               lr=cfg.resolved_lr(), eps=eps)
    module: nn.Module = LossModule(nets, target, objective.loss_fn, cfg.objective_cfg)
    if info.enabled and trainable:
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = DDP(module, device_ids=[info.device] if info.device.type == "cuda" else None)
    if cfg.compile:
        module = torch.compile(module)
    use_scaler = cfg.amp == "fp16" and info.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    modules = {"nets": nets} | ({"target": target} if target is not None else {})
    # everything with state_dict()/load_state_dict() that a resume needs besides weights
    optimizers: dict[str, Any] = {"adam": opt} if opt is not None else {}
    if scaler is not None:
        optimizers["grad_scaler"] = scaler
    latest = checkpoint.latest(run_dir)
    state = checkpoint.load(latest, modules, optimizers, restore_rng=False) if latest else {}
    start = int(state.get("data_step", 0))
    # Create the batch iterator before restoring the RNG state: the DataLoader iterator
    # draws a seed from the global RNG, and the uninterrupted run drew it at step 0.
    batches = iter(make_loader(train_store, cfg.sampler, batch_size, seed=cfg.seed,
                               start_step=start, num_workers=cfg.num_workers, rank=info.rank))
    if latest is not None:
        checkpoint.load_rng(latest, offset=info.rank)
        if info.is_main:
            print(f"resuming {run_dir} from {latest.name} (step {start})")

    writer = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start if start else None)
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=start, desc=f"pretrain {cfg.objective}", unit="step",
               disable=not (cfg.progress and info.is_main), dynamic_ncols=True,
               mininterval=0.2 if sys.stderr.isatty() else 30.0)  # logs: a line per 30 s
    rate = float(cfg.objective_cfg.target_rate)
    step, t0, metrics_acc, n_acc = start, time.time(), {}, 0
    diagnostics: dict[str, Any] = {}
    # (step, mean loss since the previous log), continued across resumes
    history: list[tuple[int, float]] = _read_history(run_dir, start) if info.is_main else []
    try:
        while step < cfg.steps:
            if stop_after is not None and step - start >= stop_after:
                return {"step": step, "stopped": True, "run_dir": str(run_dir),
                        "history": history}
            batch = _to_device(next(batches), info.device)
            with _autocast(cfg, info.device):
                loss, metrics = module(batch)
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                if target is not None:
                    ema_update(target, nets, rate)
            step += 1
            for k, v in metrics.items():
                metrics_acc[k] = metrics_acc.get(k, 0.0) + float(v)
            n_acc += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                means = distributed.mean_across(info, {k: v / n_acc for k, v in metrics_acc.items()})
                elapsed = time.time() - t0
                means["perf/steps_per_s"] = n_acc / max(elapsed, 1e-9)
                means["perf/frames_per_s"] = means["perf/steps_per_s"] * batch_size * info.world_size
                if writer is not None:
                    for k, v in means.items():
                        writer.add_scalar(k, v, step)
                loss_key = f"{cfg.objective}/loss"
                history.append((step, means.get(loss_key, float("nan"))))
                bar.set_postfix(loss=f"{means.get(loss_key, 0.0):.4g}",
                                sps=f"{means['perf/steps_per_s']:.2f}")
                metrics_acc, n_acc, t0 = {}, 0, time.time()
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                _checkpoint(info, run_dir, step, modules, optimizers, cfg)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps and has_eval:
                if info.is_main:
                    diagnostics = run_diagnostics(cfg, objective, nets, eval_sets, info.device,
                                                  run_dir / "values", step, writer)
                distributed.barrier(info)
        if step > start:  # a rerun of a finished run has nothing new to save
            _checkpoint(info, run_dir, step, modules, optimizers, cfg)
        result: dict[str, Any] = {"step": step, "run_dir": str(run_dir), "history": history}
        if info.is_main:
            (run_dir / "history.json").write_text(json.dumps(history))
            if eval_sets:
                diagnostics = run_diagnostics(cfg, objective, nets, eval_sets, info.device,
                                              run_dir / "values", step, writer)
                (run_dir / "values" / "report.json").write_text(json.dumps(
                    {"step": step, "sets": diagnostics}, indent=2))
            export_encoder(cfg, nets, image_size, step, run_dir)
            result["diagnostics"] = diagnostics
        distributed.barrier(info)
        return result
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        del batches  # stops loader workers before the process group goes away
        distributed.shutdown(info)


def _read_history(run_dir: Path, start: int) -> list[tuple[int, float]]:
    try:
        old = json.loads((run_dir / "history.json").read_text())
    except (OSError, ValueError):
        return []
    return [(int(s), float(v)) for s, v in old if int(s) <= start]


def _checkpoint(info, run_dir, step, modules, optimizers, cfg) -> None:
    if info.is_main:
        checkpoint.save(run_dir, step, modules, optimizers,
                        {"data_step": step, "objective": cfg.objective, "encoder": cfg.encoder})
    distributed.barrier(info)


def run(cfg: PretrainConfig) -> int:
    """CLI entry point."""
    result = train(cfg)
    if "diagnostics" not in result:
        return 0
    print(f"\nrun: {result['run_dir']}  (step {result['step']})")
    for name, d in result["diagnostics"].items():
        print(f"  {name:<10} Spearman(V,t) {d['spearman']:+.3f}  spread {d['spread']:+.3f}  "
              f"V(goal,goal) {d['goal_value']:+.3f}  eff.rank {d['feature_effective_rank']:.1f}"
              f"/{d['feature_dim']}")
    print(f"  encoder exported to {Path(result['run_dir']) / 'encoder'}")
    return 0
