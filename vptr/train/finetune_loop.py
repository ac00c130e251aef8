"""``vptr finetune``: chunked offline RL on a robot dataset, from pretrained or new encoders.

The loop is the pretraining loop's shape on the same core (:mod:`vptr.train.core`):
sample -> step -> log -> checkpoint -> evaluate. Agents are pure losses in
:mod:`vptr.finetune`; evaluation in simulation is ``sim.evaluate`` on the acting wrapper of
:mod:`vptr.finetune.policy`.

Run directory ``<out_dir>/<run_name>``: ``config.json``, ``history.json``, ``checkpoints/``,
``tb/``, ``normalization.json`` (state/action statistics of the dataset, also inside the
weights), ``policy/`` (the policy folder, :func:`vptr.finetune.policy.save_policy`) and
``eval/`` (reports and videos of the evaluations during and after training).

Encoders (``--encoder.*``): a new trunk (``init=""``), the ``encoder/`` of a ``vptr
pretrain`` run (``init=<run dir or encoder dir>``), or a timm model; ``mode`` ``finetune``
(trained with the agent), ``scaled`` (trained at ``lr_scale`` x the learning rate) or
``frozen`` (not trained; each dataset row is embedded once before training and batches
carry the embeddings instead of images — no random shift then).

V-PTR's phases (spec: finetuning.md, "The V-PTR recipe"): phase 2 is a run on a multi-task
prior dataset (``--data prior``: the agents condition on the task embedding); phase 3 fine-tunes
on the target demos with ``--prior.data prior [...]`` mixed into every batch
(``--prior.fraction``, V-PTR: 0.9) and ``--init.run <phase-2 run>``. The joined data, their
task vocabulary (by task string, the target's first) and normalisation statistics (over the
joined rows) are described in :mod:`vptr.data.mixture`.

``--init.run DIR`` starts *every* network (trunks, heads, critics, policy, the target critic)
from the latest checkpoint of an earlier ``vptr finetune`` run; the optimizer starts afresh,
and the normalisers are refitted to this run's data (stored in ``normalization.json``). The
agent and the architecture must match (refused, naming the difference); the task embedding
is re-indexed by task string (rows of tasks the earlier run knew are copied, new tasks start
fresh). The trunk architecture is the earlier run's, so ``--encoder.init`` (a pretrained
trunk) cannot be combined with it: the earlier run already holds the trunk it was given.

Evaluation in simulation conditions a multi-task policy on ``eval_task``, by default the
evaluation environment's own instruction when the data have it, else the target dataset's
first task (:func:`vptr.evaluate.default_task`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vptr import runs
from vptr.config import config_hash, helpfield, to_dict
from vptr.data.mixture import target_tasks
from vptr.data.robot import RobotDataset, RobotSourceConfig
from vptr.errors import ConfigError, DataError
from vptr.files import atomic_write_text
from vptr.finetune import AGENTS, Agent, get_agent
from vptr.finetune.nets import DataSpec
from vptr.finetune.policy import save_policy, sim_policy
from vptr.train import checkpoint, core, distributed

AgentName = Literal[tuple(AGENTS)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class EncoderOptions:
    """Which image trunk the critic and the policy start from, and whether it trains."""

    name: str = helpfield("impala_small", "trunk architecture (impala, impala_small, "
                                          "timm:<model>) when init is empty")
    init: str = helpfield("", "a `vptr pretrain` run directory or exported encoder/ folder "
                              "to start from ('' = random init)")
    mode: Literal["finetune", "scaled", "frozen"] = helpfield(
        "finetune", "finetune: trained with the agent; scaled: at lr_scale x lr; frozen: "
                    "not trained, embeddings computed once")
    lr_scale: float = helpfield(0.1, "learning-rate factor of the trunk in mode=scaled")
    weights: str = helpfield("", "local weights file of a timm trunk (never downloaded)")
    channels_last: bool = helpfield(True, "channels-last memory format")

    def __post_init__(self) -> None:
        if not 0.0 < self.lr_scale <= 1.0:
            raise ConfigError(f"encoder.lr_scale must be in (0, 1], got {self.lr_scale}")


@dataclass(frozen=True)
class PriorOptions:
    """Prior robot data of other tasks mixed into every batch (V-PTR's phase 3)."""

    data: tuple[str, ...] = helpfield((), "prior datasets (LeRobot folders or robomimic files, "
                                          "read with the same --source options) joined to "
                                          "--data; empty = target data only")
    fraction: float = helpfield(0.9, "share of every batch drawn from the prior data "
                                     "(V-PTR: 0.9)")

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"prior.fraction must be in (0, 1), got {self.fraction}")
        if len(set(self.data)) != len(self.data):
            raise ConfigError(f"prior.data names a dataset twice: {list(self.data)}")


@dataclass(frozen=True)
class InitOptions:
    """Where every network starts from."""

    run: str = helpfield("", "an earlier `vptr finetune` run: all its networks (trunks, heads, "
                             "critics, policy) from its latest checkpoint ('' = new networks)")


@dataclass(frozen=True)
class FinetuneOptions:
    """The options of every fine-tuning run; :class:`FinetuneConfig` adds one section per
    registered agent (``--qc.target-samples``, ...)."""

    data: str = helpfield("", "robot dataset: LeRobotDataset v3.0 folder or robomimic "
                              ".hdf5 file (required)")
    agent: AgentName = helpfield("qc", "agent: " + "; ".join(f"{a.name}: {a.summary}"
                                                            for a in AGENTS.values()))
    steps: int = helpfield(5000, "optimizer steps")
    frame_stack: int = helpfield(1, "stacked camera frames per observation")
    shift_pad: int = helpfield(4, "random-shift augmentation pad in pixels (0 = off)")
    seed: int = helpfield(0, "seed of initialisation and data sampling")
    out_dir: Path = helpfield(Path("runs/finetune"), "parent directory of runs")
    run_name: str = helpfield("", "run directory name; empty = <agent>-<config hash>")
    eval_env: str = helpfield("", "environment id for evaluation in simulation ('' = none)")
    eval_every: int = helpfield(0, "steps between evaluations; 0 = only at the end")
    eval_episodes: int = helpfield(20, "episodes per evaluation")
    eval_workers: int = helpfield(0, "evaluation environment processes (0 = in-process)")
    eval_seed: int = helpfield(100_000, "reset seed of the first evaluation episode")
    eval_task: str = helpfield("", "task string a multi-task policy is evaluated on ('' = the "
                                   "eval env's instruction if the data have it, else the "
                                   "target dataset's first task)")
    videos: int = helpfield(2, "episodes filmed (mp4) at the final evaluation")
    log_every: int = helpfield(50, "steps between TensorBoard scalars")
    checkpoint_every: int = helpfield(500, "steps between checkpoints")
    num_workers: int = helpfield(0, "data-loader worker processes")
    device: str = helpfield("auto", "auto, cpu, cuda or cuda:N")
    amp: Literal["off", "bf16", "fp16"] = helpfield("off", core.AMP_HELP)
    compile: bool = helpfield(False, "torch.compile the loss (GPU)")
    deterministic: bool = helpfield(False, "deterministic algorithms (exact resume on CPU)")
    threads: int = helpfield(0, "torch intra-op threads; 0 = torch's default")
    progress: bool = helpfield(True, "show a progress bar")
    source: RobotSourceConfig = field(default_factory=RobotSourceConfig, metadata={
        "help": "which dataset features are read, and how"})
    encoder: EncoderOptions = field(default_factory=EncoderOptions, metadata={
        "help": "image trunk: initialisation and training mode"})
    prior: PriorOptions = field(default_factory=PriorOptions, metadata={
        "help": "prior data of other tasks mixed into every batch (V-PTR phase 3)"})
    init: InitOptions = field(default_factory=InitOptions, metadata={
        "help": "start every network from an earlier run (V-PTR phase 3 from phase 2)"})

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("data: a robot dataset is required (--data PATH)")
        for name in ("steps", "log_every", "checkpoint_every", "eval_episodes",
                     "frame_stack"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("eval_every", "eval_workers", "num_workers", "threads", "shift_pad",
                     "videos"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.data in self.prior.data:
            raise ConfigError(f"prior.data: {self.data} is the target dataset (--data) itself")
        if self.init.run and (self.encoder.init or self.encoder.weights):
            raise ConfigError("init.run starts every network, the trunks included, from an "
                              "earlier run; drop --encoder.init/--encoder.weights (that run "
                              "already holds the trunk it started from)")
        if self.encoder.mode == "frozen" and self.shift_pad:
            raise ConfigError("shift_pad: a frozen encoder's embeddings are computed once, "
                              "without augmentation; set --shift-pad 0")
        if self.eval_env:
            import sim

            if self.eval_env not in sim.ENV_IDS:
                from vptr.errors import unknown

                raise unknown("eval_env", self.eval_env, sim.ENV_IDS)
        distributed.check_device(self.device)
        core.check_amp(self.amp, self.device)

    @property
    def agent_cfg(self) -> Any:
        return getattr(self, self.agent)

    def run_dir(self) -> Path:
        others = tuple(a for a in AGENTS if a != self.agent)
        # options at their defaults leave the hash (and so the run names) of older runs as
        # they were before the options existed
        unset = tuple(k for k, v in (("prior", PriorOptions()), ("init", InitOptions()))
                      if getattr(self, k) == v)
        exclude = _NOT_IN_HASH + others + unset
        name = self.run_name or f"{self.agent}-{config_hash(self, exclude=exclude)}"
        return Path(self.out_dir) / name


FinetuneConfig = dataclasses.make_dataclass(
    "FinetuneConfig",
    [(a.name, a.config_cls, field(default_factory=a.config_cls, metadata={"help": a.summary}))
     for a in AGENTS.values()],
    bases=(FinetuneOptions,), frozen=True,
    namespace={"__doc__": "Chunked offline RL fine-tuning on a robot dataset.",
               "__module__": __name__})

_NOT_IN_HASH = ("out_dir", "run_name", "log_every", "checkpoint_every", "eval_every",
                "eval_episodes", "eval_workers", "eval_env", "eval_seed", "eval_task", "videos",
                "num_workers", "progress", "threads", "steps", "device", "compile",
                "source.frames.progress", "source.frames.decode_workers",
                "source.frames.decode_pool", "source.frames.cache_dir",
                "source.frames.rebuild_cache")


# ----------------------------------------------------------------------------- loop


def train(cfg: FinetuneConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) fine-tuning; ``stop_after`` simulates a crash after that many steps."""
    from vptr.data.chunk_sampler import ChunkSampler
    from vptr.data.loader import stream_loader

    agent, acfg = get_agent(cfg.agent), cfg.agent_cfg
    with core.session(cfg.device, cfg.threads, cfg.deterministic, cfg.amp, cfg.compile) as s:
        ds = open_data(cfg, s)
        eval_task(cfg, ds)  # a task the data do not have fails now, not after training
        spec, trunks = data_spec(cfg, ds), trunk_factory(cfg, ds)
        nets, step_fn, embed = build_training(cfg, agent, spec, trunks, ds, s)
        with core.run_directory(cfg.run_dir(), to_dict(cfg), s) as run_dir:
            atomic_write_text(run_dir / "normalization.json", json.dumps(ds.stats(), indent=2))
            ckpt = core.Checkpointer(run_dir, s, checkpointed_modules(nets, step_fn),
                                     step_fn.state, {"agent": cfg.agent, "tasks": ds.tasks,
                                                     "encoder": encoder_name(cfg)})
            start, history = ckpt.restore()
            sampler = ChunkSampler(ds, acfg.sample_horizon(), acfg.discount, cfg.frame_stack,
                                   cfg.shift_pad, cfg.seed, s.dist.rank, images=embed is None,
                                   prior_fraction=cfg.prior.fraction if cfg.prior.data else 0.0)
            batches = s.closing(core.BatchIterator(stream_loader(
                sampler, acfg.batch_size, start, cfg.num_workers)))
            ckpt.restore_rng()
            if start and s.is_main:
                print(f"resuming {run_dir} from {ckpt.latest.name} (step {start})")
            log = s.closing(core.TrainLog(run_dir, s, start, cfg.steps, cfg.log_every, "loss",
                                          history, f"finetune {cfg.agent}", acfg.batch_size,
                                          cfg.progress))
            for step in range(start + 1, cfg.steps + 1):
                if stop_after is not None and step - start > stop_after:
                    return {"step": step - 1, "stopped": True, "run_dir": str(run_dir)}
                log.record(step, step_fn(with_embeddings(next(batches), embed)))
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    ckpt.save(step, log.history)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                    with checkpoint.rng_preserved():
                        evaluate_now(cfg, nets, ds, s, run_dir, step, log)
            end = max(start, cfg.steps)
            if end > start:
                ckpt.save(end, log.history)
            return finish(cfg, nets, ds, s, run_dir, end, log)


# ----------------------------------------------------------------------------- pieces


def open_data(cfg: FinetuneConfig, s: core.Session | None = None) -> RobotDataset:
    """The dataset, validated (before the run directory exists: bad data creates nothing),
    joined with the prior datasets when there are any (:func:`vptr.data.mixture.join`).
    Rank 0 decodes the images into the frame cache first; the other ranks then open it."""
    from vptr.data.mixture import join
    from vptr.data.robot import open_robot_dataset

    if s is not None and not s.is_main:
        s.barrier()
    ds = open_robot_dataset(cfg.data, cfg.source)
    priors = [open_robot_dataset(p, cfg.source) for p in cfg.prior.data]
    if s is not None and s.is_main:
        s.barrier()
    if ds.state is None and not ds.cameras:
        raise DataError(f"{cfg.data}: neither a state nor a camera feature to learn from")
    return join(ds, priors) if priors else ds


def data_spec(cfg: FinetuneConfig, ds: RobotDataset) -> DataSpec:
    cams = tuple(ds.cameras)
    size = int(next(iter(ds.cameras.values())).image_size[0]) if cams else 0
    return DataSpec(action_dim=int(ds.action.shape[1]), horizon=int(cfg.agent_cfg.chunk),
                    state_dim=0 if ds.state is None else int(ds.state.shape[1]),
                    cameras=cams, image_size=size, frame_stack=cfg.frame_stack,
                    num_tasks=max(len(ds.tasks), int(ds.task_index.max()) + 1))


def trunk_factory(cfg: FinetuneConfig, ds: RobotDataset):
    """camera -> trunk factory: new trunks, copies of a pretrained one, or (frozen) one
    shared, untrainable trunk."""
    spec = data_spec(cfg, ds)
    if not spec.cameras:
        return dict
    base = pretrained_trunk(cfg, spec) if cfg.encoder.init else None
    if base is None:  # a new trunk (with init.run: the earlier run's architecture, loaded later)
        core.seed_everything(cfg.seed)
        kw = {"weights": cfg.encoder.weights} if cfg.encoder.weights else {}
        from vptr.nets.encoders import make_encoder

        base = make_encoder(encoder_name(cfg), 3 * spec.frame_stack, spec.image_size,
                            channels_last=cfg.encoder.channels_last, **kw)
    if cfg.encoder.mode == "frozen":
        base.requires_grad_(False).eval()
        return lambda: dict.fromkeys(spec.cameras, base)
    return lambda: {c: copy.deepcopy(base) for c in spec.cameras}


def pretrained_trunk(cfg: FinetuneConfig, spec: DataSpec) -> nn.Module:
    """The exported encoder of a pretraining run, checked against the data."""
    from vptr.nets.weights import load_encoder, read_encoder_config

    folder = encoder_folder(cfg)
    meta = read_encoder_config(folder)
    problems = []
    if int(meta["in_channels"]) != 3 * spec.frame_stack:
        problems.append(f"in_channels {meta['in_channels']} (frame stack "
                        f"{meta.get('frame_stack')}) vs the run's 3 x {spec.frame_stack}")
    if int(meta["image_size"]) != spec.image_size:
        problems.append(f"image_size {meta['image_size']} vs the dataset's {spec.image_size}")
    if problems:
        raise ConfigError(f"{folder}: the pretrained encoder does not fit: "
                          + "; ".join(problems))
    enc, _ = load_encoder(folder, channels_last=cfg.encoder.channels_last)
    return enc.train()


def encoder_folder(cfg: FinetuneConfig) -> Path:
    """``--encoder.init``: a pretraining run (its ``encoder/``) or an exported encoder."""
    folder = Path(cfg.encoder.init)
    return folder / runs.ENCODER if (folder / runs.ENCODER).is_dir() else folder


def encoder_name(cfg: FinetuneConfig) -> str:
    """The trunk architecture: the earlier run's (init.run), the pretrained encoder's
    (encoder.init), else encoder.name."""
    if cfg.init.run:
        from vptr.train.warm_start import trunk_name

        return trunk_name(cfg.init.run)
    if cfg.encoder.init:
        from vptr.nets.weights import read_encoder_config

        return str(read_encoder_config(encoder_folder(cfg))["encoder"])
    return cfg.encoder.name


def build_training(cfg: FinetuneConfig, agent: Agent, spec: DataSpec, trunks, ds: RobotDataset,
                   s: core.Session):
    """(nets, TrainStep, frozen embeddings or None); same initial weights on every rank."""
    core.seed_everything(cfg.seed)
    acfg = cfg.agent_cfg
    nets = agent.create(acfg, spec, trunks)
    stats = ds.stats()
    fit_normalizers(nets, stats)
    nets = nets.to(s.device)
    part = agent.target_of(nets)
    target = core.make_target(part) if part is not None else None
    if cfg.init.run:
        from vptr.train.warm_start import load_run_weights

        modules = {"nets": nets} | ({"target": target} if target is not None else {})
        state = load_run_weights(cfg.init.run, modules, cfg.agent, ds.tasks, to_dict(cfg))
        if s.is_main:
            print(f"every network starts from {cfg.init.run} (step {state.get('step')})")
        fit_normalizers(nets, stats)  # this run's data; the target copies the online buffers
        if target is not None:
            with torch.no_grad():
                for tb, ob in zip(target.buffers(), part.buffers(), strict=True):
                    tb.copy_(ob)
    s.seed_rank(cfg.seed)
    opt = core.adam(param_groups(cfg, nets), lr=acfg.lr, eps=acfg.adam_eps)
    targets = ((target, part, float(acfg.target_rate)),) if target is not None else ()
    module = core.LossModule(nets, target, agent.loss_fn, acfg)
    frozen = cfg.encoder.mode == "frozen" and bool(ds.cameras)
    embed = frozen_embeddings(cfg, nets, ds, s) if frozen else None
    return nets, core.TrainStep(module, s, opt, targets), embed


def fit_normalizers(nets: nn.Module, stats: dict[str, Any]) -> None:
    """Action and state normalisers from the (joined) dataset's statistics."""
    nets.action_norm.fit(stats["action"])
    for enc in encoders_of(nets):
        if enc.state_norm is not None:
            enc.state_norm.fit(stats["state"])


def encoders_of(nets: nn.Module) -> list[nn.Module]:
    from vptr.finetune.nets import ObsEncoder

    return [m for m in nets.modules() if isinstance(m, ObsEncoder)]


def param_groups(cfg: FinetuneConfig, nets: nn.Module) -> list[dict[str, Any]]:
    """Trainable parameters; the trunks at ``lr_scale`` x lr in mode=scaled."""
    trunk_ids = {id(p) for enc in encoders_of(nets) for p in enc.trunks.parameters()}
    params = [p for p in nets.parameters() if p.requires_grad]
    if cfg.encoder.mode != "scaled":
        return [{"params": params}]
    lr = cfg.agent_cfg.lr
    return [{"params": [p for p in params if id(p) not in trunk_ids]},
            {"params": [p for p in params if id(p) in trunk_ids], "lr": lr * cfg.encoder.lr_scale}]


@torch.no_grad()
def frozen_embeddings(cfg: FinetuneConfig, nets: nn.Module, ds: RobotDataset,
                      s: core.Session, batch: int = 256) -> torch.Tensor:
    """Trunk features (N, F) of every dataset row's stacked observation, computed once."""
    from tqdm.auto import tqdm

    from vptr.data.chunk_sampler import stacked_images

    enc = encoders_of(nets)[0]
    n = len(ds.action)
    rows_t = np.concatenate([np.arange(length) for length in ds.lengths])
    episode = np.repeat(np.arange(ds.num_episodes), ds.lengths)
    out = []
    for lo in tqdm(range(0, n, batch), desc="embedding frames (frozen encoder)",
                   disable=not (cfg.progress and s.is_main)):
        sl = slice(lo, min(lo + batch, n))
        imgs = {f"obs.{cam}": torch.from_numpy(stacked_images(
            ds, cam, episode[sl], rows_t[sl], cfg.frame_stack)).to(s.device)
            for cam in ds.cameras}
        out.append(enc.trunk_features(imgs, "obs"))
    return torch.cat(out)


def with_embeddings(batch: dict[str, torch.Tensor], embed: torch.Tensor | None):
    if embed is not None:
        batch["obs_emb"] = embed[batch["obs_row"].to(embed.device)]
        batch["next_obs_emb"] = embed[batch["next_row"].to(embed.device)]
    return batch


def checkpointed_modules(nets: nn.Module, step_fn: core.TrainStep) -> dict[str, nn.Module]:
    targets = [t for t, _, _ in step_fn.targets]
    return {"nets": nets} | ({"target": targets[0]} if targets else {})


def policy_meta(cfg: FinetuneConfig, ds: RobotDataset, step: int) -> dict[str, Any]:
    return {"state_features": list(cfg.source.state_keys), "state_widths": ds.state_widths,
            "state_names": {k: ds.feature_names.get(k, []) for k in cfg.source.state_keys},
            "encoder": encoder_name(cfg), "channels_last": cfg.encoder.channels_last,
            "fps": ds.fps, "tasks": ds.tasks, "action_names": ds.feature_names.get(
                cfg.source.action_key, []),
            "provenance": {"dataset": str(cfg.data), "step": step, "seed": cfg.seed,
                           "encoder_init": cfg.encoder.init, "encoder_mode": cfg.encoder.mode,
                           "target_tasks": target_tasks(ds),
                           **({"prior_data": list(cfg.prior.data),
                               "prior_fraction": cfg.prior.fraction} if cfg.prior.data else {}),
                           **({"init_run": cfg.init.run} if cfg.init.run else {})}}


def eval_task(cfg: FinetuneConfig, ds: RobotDataset) -> str | int:
    """The task a multi-task policy is evaluated on (``eval_task``, else
    :func:`vptr.evaluate.default_task`)."""
    from vptr.evaluate import default_task

    if cfg.eval_task:
        if cfg.eval_task not in ds.tasks:
            raise ConfigError(f"eval_task {cfg.eval_task!r} is not a task of the data "
                              f"(tasks: {ds.tasks})")
        return cfg.eval_task
    return default_task(ds.tasks, cfg.eval_env, target_tasks(ds)) if cfg.eval_env else 0


def acting_policy(cfg: FinetuneConfig, nets: nn.Module, ds: RobotDataset,
                  step: int):
    return sim_policy(cfg.agent, cfg.agent_cfg, nets, policy_meta(cfg, ds, step),
                      task=eval_task(cfg, ds))


def evaluate_now(cfg: FinetuneConfig, nets: nn.Module, ds: RobotDataset, s: core.Session,
                 run_dir: Path, step: int, log: core.TrainLog, videos: int = 0):
    """Success rate in simulation (rank 0), logged to TensorBoard; None without eval_env."""
    result = None
    if cfg.eval_env and s.is_main:
        from sim.evaluate import evaluate

        was_training = nets.training
        policy = acting_policy(cfg, nets, ds, step)
        result = evaluate(policy, cfg.eval_env, episodes=cfg.eval_episodes,
                          seed=cfg.eval_seed, env_kwargs=policy.env_kwargs(videos > 0),
                          num_workers=cfg.eval_workers,
                          video_dir=run_dir / "eval" / "videos" if videos else None,
                          videos=videos, report_path=run_dir / "eval" / f"step_{step:07d}.json",
                          progress=False)
        nets.train(was_training)
        log.scalars({"success_rate": result["success_rate"],
                     "return": result["return_mean"], "length": result["length_mean"]},
                    step, prefix="eval/")
    s.barrier()
    return result


def finish(cfg: FinetuneConfig, nets: nn.Module, ds: RobotDataset, s: core.Session,
           run_dir: Path, step: int, log: core.TrainLog) -> dict[str, Any]:
    result: dict[str, Any] = {"step": step, "run_dir": str(run_dir)}
    if s.is_main:
        core.write_history(run_dir, log.history)
        save_policy(run_dir / "policy", cfg.agent, cfg.agent_cfg, nets,
                    policy_meta(cfg, ds, step))
        result["policy"] = str(run_dir / "policy")
    result["eval"] = evaluate_now(cfg, nets, ds, s, run_dir, step, log, videos=cfg.videos)
    return result


def run(cfg: FinetuneConfig) -> int:
    """CLI entry point."""
    result = train(cfg)
    if "policy" not in result:
        return 0
    print(f"\nrun: {result['run_dir']}  (step {result['step']})")
    print(f"  policy saved to {result['policy']}")
    ev = result.get("eval")
    if ev:
        lo, hi = ev["success_ci95"]
        print(f"  {cfg.eval_env}: success {100 * ev['success_rate']:.1f}% "
              f"[{100 * lo:.1f}, {100 * hi:.1f}] over {ev['episodes']} episodes, "
              f"return {ev['return_mean']:.2f}, length {ev['length_mean']:.1f}")
    return 0


