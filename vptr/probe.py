"""``vptr probe``: does an encoder help a robot? Minutes-scale probes, each number next to
a random init of the same architecture and end-to-end training from scratch (issue 12;
../shared/specs/finetuning.md, "Calibration").

Probes (``--probes``):

* ``imitation`` -- chunked flow BC (``vptr finetune --agent flowbc``) on K scripted-expert
  demonstrations of each native task, with the encoder frozen and fine-tuned, against a
  frozen random init and end-to-end training from scratch; each policy evaluated at the
  demonstrations' appearance (domain shift 0) and at each ``--shifts`` level. Success per
  seed and pooled over seeds with Wilson 95 % intervals, and the paired difference
  (same seed, same episode) against the baseline with Newcombe's interval.
* ``linear`` -- ridge regression of tool position, gripper opening and object positions
  from frozen features (:func:`vptr.diagnostics.probes.linear_probe`), validation R^2 on
  held-out episodes.
* ``invariance`` -- feature change on paired frames (same simulator state, another
  appearance draw at each shift level) over the change between consecutive frames.
* ``values`` -- the value-curve numbers of ``vptr evaluate-values`` when the encoder comes
  from a pretraining run with held-out video (skipped, with the reason, otherwise).

Seeds: demonstrations use the generator's reset seeds 0..K-1; evaluation episodes come
from the ``--split`` range (val: from 100000, test: from 300000; ``vptr finetune``
evaluates on 100000+ and ``vptr experiment`` tests on 300000+), the linear and invariance
frames from 50000 further on in the same range. Choose on ``val``; report ``test``.

Output (``--out``, default ``runs/probe/<encoder>-<hash>``): ``report.json`` and
``report.md`` (also printed). Work is kept in cells (``--cells-dir``, default
``runs/probe/cells``, or ``<out>/cells`` when ``--out`` is given): one folder per training
run or probe, with a ``cell.json`` once done. A rerun skips done cells and an interrupted
fine-tuning run resumes from its last checkpoint; a cell whose training was done for another
evaluation (``--split test`` after ``val``) only evaluates that policy; the random-init and
scratch cells do not
depend on the probed encoder, so probes sharing a cells folder train them once (one probe
at a time per cells folder: cells are not locked).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vptr.config import config_hash, helpfield, to_dict
from vptr.errors import ConfigError, DataError

PROBES = ("imitation", "linear", "invariance", "values")
SPLIT_SEEDS = {"val": 100_000, "test": 300_000}  # first evaluation reset seed of each split
FRAME_SEED_OFFSET = 50_000  # linear / invariance episodes: split seed + 50000 + i
DEFAULT_IMAGE_SIZE = 32  # random and timm encoders (reduced scale)
CHECKPOINT_EVERY = 500
MIN_AV1_SIZE = 32
CELL_FILE = "cell.json"
DEMO_FORMATS = {"robomimic": "robomimic HDF5, frames as rendered",
                "lerobot": "LeRobotDataset, frames as video"}
PROBE_DIR = Path("runs/probe")
# arm id -> (label, baseline arm id of the paired comparison)
ARMS = {"encoder-frozen": ("encoder frozen", "random-frozen"),
        "encoder-finetuned": ("encoder fine-tuned", "scratch"),
        "random-frozen": ("random init frozen", ""),
        "scratch": ("scratch (random init, end to end)", "")}
ARM_MODES = ("frozen", "finetuned")


@dataclass(frozen=True)
class ProbeConfig:
    """Score an encoder for robot use against a random init and training from scratch."""

    encoder: str = helpfield("", "the encoder: a `vptr pretrain` run, an exported encoder/ "
                                 "folder, 'random' (a random init of --arch) or timm:<model> "
                                 "(pretrained with --weights FILE) (required)")
    features: Literal["trunk", "phi"] = helpfield(
        "trunk", "which features of a pretraining run: trunk (its exported encoder) or phi "
                 "(the objective's state feature φ(s) on top of the trunk: ICVF, TD-JEPA; the "
                 "random and scratch arms then have the trunk + head architecture too)")
    arch: str = helpfield("impala_small", "architecture of --encoder random")
    weights: str = helpfield("", "local weights file of a timm:<model> encoder (never "
                                 "downloaded)")
    image_size: int = helpfield(0, "camera image size; 0 = the encoder's own (random and "
                                   f"timm: {DEFAULT_IMAGE_SIZE})")
    tasks: tuple[str, ...] = helpfield(("vptr/Lift-v0",), "native tasks")
    demos: tuple[int, ...] = helpfield((10, 25), "numbers of demonstrations K")
    shifts: tuple[float, ...] = helpfield((0.3, 0.6), "visual shift levels of the evaluation "
                                                      "(besides the demos' appearance, 0)")
    seeds: tuple[int, ...] = helpfield((0, 1, 2), "training seeds of every imitation cell")
    episodes: int = helpfield(30, "evaluation episodes per seed and shift level")
    steps: int = helpfield(3000, "BC updates per imitation run (chosen on validation "
                                 "episodes: 1,500 left scratch BC ~10 points lower)")
    batch_size: int = helpfield(64, "BC batch size")
    lr: float = helpfield(3e-4, "BC learning rate")
    finetune_mode: Literal["finetune", "scaled"] = helpfield(
        "finetune", "how the encoder fine-tuned arm trains the trunk: finetune (full lr) or "
                    "scaled (lr x --lr-scale); scratch always trains it at the full lr")
    lr_scale: float = helpfield(0.1, "trunk learning-rate factor of finetune_mode=scaled")
    shift_pad: int = helpfield(2, "random-shift augmentation of the fine-tuned arms (frozen "
                                  "arms: none, their embeddings are cached)")
    noise: float = helpfield(0.1, "expert action noise of demonstrations and probe episodes")
    demo_format: Literal["robomimic", "lerobot"] = helpfield(
        "robomimic", "how the demonstrations are stored: robomimic (HDF5, frames exactly as "
                     "rendered, what evaluation sees) or lerobot (mp4 video: at 32x32 the "
                     "codec's loss cost flow BC ~17 points of success)")
    frame_episodes: int = helpfield(30, "expert episodes whose frames the linear and "
                                        "invariance probes read")
    val_fraction: float = helpfield(0.3, "share of those episodes the linear probe is "
                                         "scored on")
    value_episodes: int = helpfield(16, "held-out videos per set of the value probe")
    split: Literal["val", "test"] = helpfield(
        "val", "evaluation seeds: val (from 100000, for choices) or test (from 300000, for "
               "reported numbers)")
    probes: tuple[str, ...] = helpfield(PROBES, "probes to run: " + ", ".join(PROBES))
    arms: tuple[str, ...] = helpfield(ARM_MODES, "imitation arms: frozen (the encoder and a "
                                                 "random init, frozen: minutes) and/or "
                                                 "finetuned (the encoder fine-tuned and "
                                                 "scratch: several times longer)")
    out: Path | None = helpfield(None, "report folder (default runs/probe/<encoder>-<hash>)")
    cells_dir: Path | None = helpfield(None, "training runs and probe results, reused when "
                                             "done (default runs/probe/cells, or <out>/cells "
                                             "with --out); the baselines are shared by every "
                                             "encoder probed with one folder")
    data_dir: Path | None = helpfield(None, "demonstration cache (default: $VPTR_DATA_DIR or "
                                            "./data)")
    eval_workers: int = helpfield(0, "evaluation environment processes (0 = in-process)")
    device: str = helpfield("cpu", "cpu, cuda or cuda:N")
    threads: int = helpfield(0, "torch intra-op threads; 0 = torch's default")
    progress: bool = helpfield(True, "show a progress bar")

    def __post_init__(self) -> None:
        if not self.encoder:
            raise ConfigError("encoder: which encoder to probe (--encoder RUN_OR_DIR|random|"
                              "timm:<model>)")
        if self.features == "phi" and (self.encoder == "random"
                                       or self.encoder.startswith("timm:")):
            raise ConfigError("features: phi reads a pretraining run's φ head; give a `vptr "
                              "pretrain` run as --encoder")
        if self.weights and not self.encoder.startswith("timm:"):
            raise ConfigError("weights: only a timm:<model> encoder takes a weights file")
        if self.image_size and (self.image_size % 2 or not 16 <= self.image_size <= 512):
            raise ConfigError(f"image_size must be 0 or even in [16, 512], got {self.image_size}")
        if not self.arms or set(self.arms) - set(ARM_MODES):
            raise ConfigError(f"arms: choose from {', '.join(ARM_MODES)}, got {list(self.arms)}")
        bad = sorted(set(self.probes) - set(PROBES))
        if bad or not self.probes:
            raise ConfigError(f"probes: unknown {bad}; choose from {', '.join(PROBES)}")
        for name in ("demos", "seeds", "tasks", "shifts"):
            values = getattr(self, name)
            if len(set(values)) != len(values) or (not values and name != "shifts"):
                raise ConfigError(f"{name}: give distinct values, got {list(values)}")
        if min(self.demos) < 1 or max(self.demos) >= SPLIT_SEEDS["val"]:
            raise ConfigError(f"demos must be in [1, {SPLIT_SEEDS['val']}), got {self.demos}")
        if any(not 0.0 < s <= 1.0 for s in self.shifts):
            raise ConfigError(f"shifts must be in (0, 1], got {self.shifts}")
        for name in ("episodes", "steps", "batch_size", "value_episodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.frame_episodes < 2 or not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("frame_episodes must be >= 2 and val_fraction in (0, 1)")
        if self.lr <= 0 or not 0.0 < self.lr_scale <= 1.0 or self.noise < 0:
            raise ConfigError("lr must be > 0, lr_scale in (0, 1] and noise >= 0")
        if min(self.shift_pad, self.eval_workers, self.threads) < 0:
            raise ConfigError("shift_pad, eval_workers and threads must be >= 0")
        self._check_tasks()

    def _check_tasks(self) -> None:
        import sim
        from sim.native import ENV_SPECS

        for task in self.tasks:
            if task not in sim.ENV_IDS:
                from vptr.errors import unknown

                raise unknown("task", task, ENV_SPECS)
            if task not in ENV_SPECS:
                raise ConfigError(f"tasks: {task} is not a native task (the probes render "
                                  "paired frames with the native suite's appearance dial)")

    @property
    def eval_seed(self) -> int:
        return SPLIT_SEEDS[self.split]

    def frame_seeds(self) -> list[int]:
        start = self.eval_seed + FRAME_SEED_OFFSET
        return list(range(start, start + self.frame_episodes))


# --------------------------------------------------------------------------- the encoder


@dataclass(frozen=True)
class Encoder:
    """What ``--encoder`` names, resolved: how each arm builds its trunk."""

    label: str
    arch: str  # vptr.nets.encoders name (the random init and scratch use it too)
    image_size: int
    frame_stack: int = 1
    init: str = ""  # --encoder.init of the runs that start from it (exported encoder folder)
    weights: str = ""  # a timm model's local weights
    run: str = ""  # the pretraining run it comes from (value curves), if any
    is_random: bool = False  # the probed encoder is itself a random init
    sha256: str = ""  # of its weights file: a run that trained on invalidates done cells

    def arm_ids(self, modes: tuple[str, ...] = ARM_MODES) -> list[str]:
        """The imitation arms of ``modes`` (frozen: the encoder and a random init frozen;
        finetuned: the encoder fine-tuned and scratch)."""
        return [a for a in ARMS if not (self.is_random and a.startswith("encoder"))
                and _arm_mode(a) in modes]


def _arm_mode(arm: str) -> str:
    return "frozen" if arm.endswith("frozen") else "finetuned"


def resolve_encoder(cfg: ProbeConfig) -> Encoder:
    """``--encoder`` checked: a missing folder or an image size that does not fit is one
    error naming the file."""
    text = cfg.encoder
    size = cfg.image_size or DEFAULT_IMAGE_SIZE
    if text == "random":
        return Encoder(f"random {cfg.arch}", cfg.arch, size, is_random=True)
    if text.startswith("timm:"):
        if cfg.weights and not Path(cfg.weights).is_file():
            raise DataError(f"{cfg.weights}: weights file not found")
        label = f"{text} ({Path(cfg.weights).name})" if cfg.weights else f"{text} (random init)"
        return Encoder(label, text, size, weights=cfg.weights, is_random=not cfg.weights,
                       sha256=file_sha256(cfg.weights) if cfg.weights else "")
    if cfg.features == "phi":
        return _phi_encoder(cfg, Path(text))
    return _encoder_folder(cfg, Path(text))


def _phi_encoder(cfg: ProbeConfig, run: Path) -> Encoder:
    """A pretraining run's φ(s) (trunk + the objective's head), exported once into the cells
    folder (keyed by the run's newest weights) and probed like an exported encoder."""
    import dataclasses

    from vptr import runs
    from vptr.pretrain.features import export_features

    latest = runs.latest_checkpoint(run) if (run / runs.CHECKPOINTS).is_dir() else None
    if latest is None:
        raise DataError(f"{run}: --features phi needs a `vptr pretrain` run with a complete "
                        "checkpoint (an exported encoder/ folder holds the trunk only)")
    ident = file_sha256(latest / runs.WEIGHTS)[:12]
    folder = cells_root(cfg) / "encoders" / f"{run.name}-phi-{ident}"
    if not (folder / "config.json").exists():
        export_features(run, folder)
    enc = _encoder_folder(cfg, folder)
    return dataclasses.replace(enc, label=f"{run.name} φ ({enc.arch})", run=str(run))


def _encoder_folder(cfg: ProbeConfig, path: Path) -> Encoder:
    from vptr import runs
    from vptr.nets.weights import WEIGHTS_FILE, read_encoder_config

    if not path.exists():
        raise DataError(f"{path}: encoder not found (give a `vptr pretrain` run, its encoder/ "
                        "folder, 'random' or timm:<model>)")
    folder = path / runs.ENCODER if (path / runs.ENCODER).is_dir() else path
    meta = read_encoder_config(folder)
    size, channels = int(meta["image_size"]), int(meta["in_channels"])
    where = folder / "config.json"
    if cfg.image_size and cfg.image_size != size:
        raise ConfigError(f"{where}: the encoder takes {size}x{size} images, the probe was "
                          f"asked for --image-size {cfg.image_size} (0 = the encoder's own)")
    if size % 2 or not 16 <= size <= 512:
        raise ConfigError(f"{where}: the encoder takes {size}x{size} images; the simulator "
                          "renders even sizes from 16 to 512")
    if channels % 3:
        raise ConfigError(f"{where}: in_channels {channels} is not 3 x a frame stack")
    parent = folder.parent
    run = parent if (parent / runs.CHECKPOINTS).is_dir() and folder.name == runs.ENCODER else None
    name = (run or folder).name
    step = f", step {meta['step']}" if "step" in meta else ""
    return Encoder(f"{name} ({meta['encoder']}{step})", str(meta["encoder"]), size,
                   channels // 3, init=str(folder), run=str(run or ""),
                   sha256=file_sha256(folder / WEIGHTS_FILE))


def file_sha256(path: str | Path) -> str:
    from vptr.runtime.artifact import file_sha256 as sha

    try:
        return sha(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read the encoder weights ({e.strerror or e})") from None


# --------------------------------------------------------------------------- cells


@dataclass
class Cell:
    """One unit of work with a result that is stored once done (``<folder>/cell.json``)."""

    id: str
    config: dict[str, Any]  # everything the result depends on
    run: Callable[[Path], dict[str, Any]] = field(repr=False, default=lambda folder: {})

    @property
    def key(self) -> str:
        text = json.dumps(self.config, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def folder(self, cells_dir: Path) -> Path:
        return cells_dir / f"{self.id}-{self.key}"


def read_cell(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / CELL_FILE).read_text())["result"]
    except (OSError, ValueError, KeyError):
        return None


def run_cell(cell: Cell, cells_dir: Path) -> tuple[dict[str, Any], bool]:
    """(result, whether it was done before)."""
    from vptr.files import atomic_write_text

    folder = cell.folder(cells_dir)
    done = read_cell(folder)
    if done is not None:
        return done, True
    folder.mkdir(parents=True, exist_ok=True)
    start = time.time()
    result = cell.run(folder)
    record = {"id": cell.id, "key": cell.key, "config": cell.config,
              "wall_s": round(time.time() - start, 1), "result": result}
    atomic_write_text(folder / CELL_FILE, json.dumps(record, indent=2, default=str))
    return result, False


def demo_dataset(cfg: ProbeConfig, task: str, k: int, image_size: int) -> tuple[Path, dict]:
    """The first K successful-expert episodes (reset seeds 0..K-1), generated once and pinned
    in the cells folder (cells are keyed by data paths: the demos survive edits of sim/)."""
    from sim.generate import RobotDataConfig, cached, generate_robot, robot_dataset_path
    from vptr.config import config_hash
    from vptr.console import bars
    from vptr.data.pins import PINS_FILE, generation_config, pinned_dataset

    # SVT-AV1 (the default codec) dies of SIGFPE on small frames (sim.generate refuses
    # them); H.264 encodes small frames
    codec = "libsvtav1" if image_size >= MIN_AV1_SIZE else "h264"
    rcfg = RobotDataConfig(tasks=(task,), episodes_per_task=k, image_size=image_size,
                           keep_failures=False, noise=cfg.noise, seed=0, video_codec=codec,
                           format=cfg.demo_format, data_dir=cfg.data_dir)
    name = f"demos {_slug(task)} k{k} {image_size}px {config_hash(generation_config(rcfg))[:8]}"
    with bars(cfg.progress):
        path = pinned_dataset(cells_root(cfg) / PINS_FILE, name, rcfg, lambda: robot_dataset_path(
            generate_robot(rcfg, log=lambda m: None)[0], rcfg))
    folder = path.parent if path.is_file() else path
    record = cached(folder)
    if record is None:
        raise DataError(f"{folder}: no generation record (an incomplete dataset); delete it "
                        "to generate the demonstrations again")
    return path, record["stats"]


def finetune_values(cfg: ProbeConfig, enc: Encoder, arm: str, data: Path, seed: int) -> dict:
    """The ``vptr finetune`` options of one imitation run."""
    frozen = _arm_mode(arm) == "frozen"
    own = arm.startswith("encoder")
    return {"data": str(data), "agent": "flowbc", "steps": cfg.steps, "seed": seed,
            "frame_stack": enc.frame_stack, "shift_pad": 0 if frozen else cfg.shift_pad,
            "encoder.name": enc.arch, "encoder.init": enc.init if own else "",
            "encoder.weights": enc.weights if own else "",
            "encoder.mode": "frozen" if frozen else (cfg.finetune_mode if own else "finetune"),
            "encoder.lr_scale": cfg.lr_scale, "flowbc.batch_size": cfg.batch_size,
            "flowbc.lr": cfg.lr, "source.frames.image_size": enc.image_size,
            "source.frames.progress": False, "videos": 0}


def imitation_cell(cfg: ProbeConfig, enc: Encoder, task: str, k: int, arm: str, seed: int,
                   data: Path) -> Cell:
    values = finetune_values(cfg, enc, arm, data, seed)
    evaluation = {"task": task, "shifts": [0.0, *cfg.shifts], "episodes": cfg.episodes,
                  "seed": cfg.eval_seed}
    cell = Cell(f"imitation/{_slug(task)}/k{k}/{arm}/seed{seed}",
                {"finetune": values, "eval": evaluation,
                 "encoder_sha256": enc.sha256 if arm.startswith("encoder") else ""})
    cell.run = lambda folder: _train_and_evaluate(cfg, values, evaluation, folder,
                                                  trained_policy(cells_root(cfg), cell))
    return cell


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def trained_policy(cells_dir: Path, cell: Cell) -> Path | None:
    """The policy of a done imitation cell that trained this very run (same BC options and
    encoder weights) for another evaluation -- the other split, other shifts or episode
    counts: a test-split probe then evaluates the validation probe's policies, it does not
    train them again."""
    for path in sorted(cells_dir.glob(f"{cell.id}-*/{CELL_FILE}")):
        try:
            record = json.loads(path.read_text())
            done = record["config"]
            policy = Path(record["result"]["policy"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (_same(done.get("finetune"), cell.config["finetune"])
                and done.get("encoder_sha256") == cell.config["encoder_sha256"]
                and (policy / "policy.json").is_file()):
            return policy
    return None


def _train_and_evaluate(cfg: ProbeConfig, values: dict, evaluation: dict, folder: Path,
                        trained: Path | None = None) -> dict:
    from vptr.config import build_config
    from vptr.train.finetune_loop import FinetuneConfig, train

    if trained is not None:
        return {"policy": str(trained), "trained_in": str(trained.parent.parent),
                "eval": evaluate_policy(cfg, trained, evaluation)}

    run_values = {**values, "out_dir": str(folder), "run_name": "run", "progress": False,
                  "threads": cfg.threads, "device": cfg.device,
                  "checkpoint_every": min(CHECKPOINT_EVERY, cfg.steps),
                  "log_every": min(50, cfg.steps)}
    result = train(build_config(FinetuneConfig, run_values, where="vptr probe"))
    policy_dir = Path(result["run_dir"]) / "policy"
    return {"policy": str(policy_dir), "eval": evaluate_policy(cfg, policy_dir, evaluation)}


def evaluate_policy(cfg: ProbeConfig, policy_dir: Path, evaluation: dict) -> dict:
    """Per-episode successes of the policy at each shift level (same episode seeds)."""
    from sim.evaluate import evaluate
    from vptr.finetune.policy import load_policy

    policy = load_policy(policy_dir, device=cfg.device)
    out = {}
    for shift in evaluation["shifts"]:
        report = evaluate(policy, evaluation["task"], episodes=evaluation["episodes"],
                          seed=evaluation["seed"], num_workers=cfg.eval_workers,
                          envs_per_worker=min(10, evaluation["episodes"]),
                          env_kwargs={**policy.env_kwargs(), "domain_shift": shift},
                          progress=False)
        out[_key(shift)] = {"successes": [bool(e["success"]) for e in report["per_episode"]],
                            "episode_seeds": [int(e["seed"]) for e in report["per_episode"]]}
    return out


def frame_cell(cfg: ProbeConfig, enc: Encoder, task: str, trained: dict[str, list[str]]) -> Cell:
    """Linear and invariance probes of one task on the encoder, its random inits and the
    trunks the imitation runs trained (``trained``: name -> policy folders)."""
    from vptr.diagnostics.probes import RIDGE_PENALTIES

    wanted = [p for p in ("linear", "invariance") if p in cfg.probes]
    config = {"task": task, "encoder": to_dict(enc), "seeds": list(cfg.seeds),
              "frames": cfg.frame_seeds(), "shifts": list(cfg.shifts) if "invariance" in wanted
              else [], "noise": cfg.noise, "val_fraction": cfg.val_fraction,
              "penalties": list(RIDGE_PENALTIES), "probes": wanted, "trained": trained}
    cell = Cell(f"frames/{_slug(task)}", config)
    cell.run = lambda folder: frame_probes(cfg, enc, config)
    return cell


def frame_probes(cfg: ProbeConfig, enc: Encoder, config: dict) -> dict:
    from vptr.diagnostics.probes import collect_frames, encode, invariance_ratio, linear_probe

    frames = collect_frames(config["task"], config["frames"], enc.image_size,
                            config["shifts"], noise=cfg.noise)
    out: dict[str, Any] = {"targets": frames.target_names, "frames": int(len(frames.images)),
                           "episodes": len(frames.seeds), "encoders": {}}
    for name, trunks in probe_trunks(cfg, enc, config["trained"]).items():
        per_seed = []
        for trunk in trunks:
            feats = encode(trunk, frames.images, frames.episodes, enc.frame_stack)
            entry: dict[str, Any] = {}
            if "linear" in config["probes"]:
                entry["linear"] = linear_probe(feats, frames.targets, frames.episodes,
                                               frames.target_names, cfg.val_fraction)
            if "invariance" in config["probes"]:
                entry["invariance"] = {
                    _key(s): invariance_ratio(feats, encode(trunk, frames.shifted[s],
                                                            frames.episodes, enc.frame_stack),
                                              frames.episodes) for s in config["shifts"]}
            per_seed.append(entry)
        out["encoders"][name] = mean_over_seeds(per_seed)
    return out


def probe_trunks(cfg: ProbeConfig, enc: Encoder, trained: dict[str, list[str]]) -> dict:
    """name -> trunks (one per seed where seeds apply), in eval mode, on the device."""
    import torch

    from vptr.nets.encoders import make_encoder

    out: dict[str, list] = {}
    if not enc.is_random:
        out["encoder"] = [_load_own(enc)]
    randoms = []
    for seed in cfg.seeds:  # the init the random-frozen and scratch runs of this seed start from
        torch.manual_seed(seed)
        randoms.append(make_encoder(enc.arch, 3 * enc.frame_stack, enc.image_size))
    out["random init"] = randoms
    for name, folders in trained.items():
        out[name] = [policy_trunk(Path(f)) for f in folders]
    return {k: [t.to(cfg.device).eval() for t in v] for k, v in out.items()}


def _load_own(enc: Encoder):
    from vptr.nets.encoders import make_encoder
    from vptr.nets.weights import load_encoder

    if enc.init:
        return load_encoder(enc.init)[0]
    return make_encoder(enc.arch, 3 * enc.frame_stack, enc.image_size, weights=enc.weights)


def policy_trunk(policy_dir: Path):
    """The image trunk of a policy folder's flow policy (single camera)."""
    from vptr.runtime.artifact import load_artifact

    _, actor = load_artifact(policy_dir)
    return next(iter(actor.policy.encoder.trunks.values()))


def mean_over_seeds(per_seed: list[dict]) -> dict:
    """Seed means of the linear R^2 and invariance ratios, with the per-seed values."""
    import numpy as np

    out: dict[str, Any] = {"seeds": len(per_seed)}
    if "linear" in per_seed[0]:
        names = list(per_seed[0]["linear"]["r2"])
        out["linear"] = {
            "r2": {n: float(np.mean([p["linear"]["r2"][n] for p in per_seed])) for n in names},
            "r2_mean": float(np.mean([p["linear"]["r2_mean"] for p in per_seed])),
            "per_seed": [p["linear"] for p in per_seed]}
    if "invariance" in per_seed[0]:
        out["invariance"] = {s: {"ratio": float(np.mean([p["invariance"][s]["ratio"]
                                                         for p in per_seed])),
                                 "per_seed": [p["invariance"][s] for p in per_seed]}
                             for s in per_seed[0]["invariance"]}
    return out


def value_cell(cfg: ProbeConfig, enc: Encoder) -> Cell:
    config = {"run": enc.run, "episodes": cfg.value_episodes, "untrained": len(cfg.seeds),
              "encoder_sha256": enc.sha256}
    cell = Cell("values", config)
    cell.run = lambda folder: value_probe(cfg, enc, folder)
    return cell


def value_skip_reason(enc: Encoder) -> str:
    """Why the value probe cannot run on this encoder ('' if it can)."""
    from vptr import runs

    if not enc.run:
        return ("the encoder does not come from a `vptr pretrain` run (value curves need its "
                "value head)")
    if not runs.read_config(Path(enc.run)).get("eval_data"):
        return ("the pretraining run names no held-out video (eval_data); score it with "
                "`vptr evaluate-values --run RUN --eval-data NAME=PATH`")
    return ""


def value_probe(cfg: ProbeConfig, enc: Encoder, folder: Path) -> dict:
    """``vptr evaluate-values`` numbers: the trained value, -pixel L2 and untrained nets."""
    import numpy as np

    from vptr.diagnostics.evaluate import EvaluateValuesConfig, evaluate_run

    res = evaluate_run(EvaluateValuesConfig(run=Path(enc.run), episodes=cfg.value_episodes,
                                            untrained_seeds=len(cfg.seeds), out_dir=folder,
                                            device=cfg.device), log=lambda m: None)
    keys = ("spearman", "spread", "goal_value")
    sets = {}
    for name, s in res["sets"].items():
        methods = s["methods"]
        trained = next(iter(methods))
        untrained = [m for k, m in methods.items() if k.startswith("untrained")]
        sets[name] = {"episodes": s["episodes"], "trained": {k: methods[trained][k] for k in keys},
                      "pixel_l2": {k: methods["-pixel L2"][k] for k in keys},
                      "untrained_mean": {k: float(np.mean([m[k] for m in untrained]))
                                         for k in keys} if untrained else None}
    return {"step": res["step"], "objective": res["objective"], "gamma": res["gamma"],
            "sets": sets, "plots": str(folder)}


# --------------------------------------------------------------------------- statistics


def wilson(k: int, n: int) -> list[float]:
    from sim.evaluate import wilson_interval

    return list(wilson_interval(k, n))


def imitation_summary(cfg: ProbeConfig, enc: Encoder, results: dict, demos: dict) -> list[dict]:
    """One row per (task, K, arm, shift): per-seed and pooled success with Wilson 95 %
    intervals, and the paired difference against the arm's baseline."""
    rows = []
    for task in cfg.tasks:
        for k in cfg.demos:
            for arm in enc.arm_ids(cfg.arms):
                for shift in [0.0, *cfg.shifts]:
                    outcome = {s: results[(task, k, arm, s)]["eval"][_key(shift)]
                               for s in cfg.seeds if (task, k, arm, s) in results}
                    if outcome:
                        rows.append(_row(task, k, arm, shift, outcome, results, demos, cfg))
    return rows


def _row(task, k, arm, shift, outcome, results, demos, cfg) -> dict:
    per_seed = []
    for seed, ev in outcome.items():
        n, succ = len(ev["successes"]), sum(ev["successes"])
        per_seed.append({"seed": seed, "successes": succ, "episodes": n,
                         "success_rate": succ / n, "ci95": wilson(succ, n)})
    succ, n = sum(p["successes"] for p in per_seed), sum(p["episodes"] for p in per_seed)
    row = {"task": task, "demos": k, "demos_saved": demos[(task, k)], "arm": arm,
           "label": ARMS[arm][0], "shift": shift, "per_seed": per_seed,
           "pooled": {"successes": succ, "episodes": n, "success_rate": succ / n,
                      "ci95": wilson(succ, n)}}
    base = ARMS[arm][1]
    if base:
        other = {s: results[(task, k, base, s)]["eval"][_key(shift)]
                 for s in cfg.seeds if (task, k, base, s) in results}
        row["vs_baseline"] = paired_difference(outcome, other, base)
    return row


def paired_difference(mine: dict, base: dict, base_arm: str) -> dict | None:
    """Success difference against ``base_arm`` on the same seeds and episodes (Newcombe)."""
    from vptr.experiment import newcombe_paired

    a = b = c = d = 0
    for seed in set(mine) & set(base):
        x = dict(zip(mine[seed]["episode_seeds"], mine[seed]["successes"]))
        y = dict(zip(base[seed]["episode_seeds"], base[seed]["successes"]))
        for ep in set(x) & set(y):
            a += x[ep] and y[ep]
            b += x[ep] and not y[ep]
            c += y[ep] and not x[ep]
            d += not x[ep] and not y[ep]
    if a + b + c + d == 0:
        return None
    diff, lo, hi = newcombe_paired(a, b, c, d)
    return {"baseline": base_arm, "pairs": a + b + c + d, "difference": diff, "ci95": [lo, hi]}


# --------------------------------------------------------------------------- command


def _slug(task: str) -> str:
    return task.split("/")[-1].split("-v")[0].lower()


def _key(shift: float) -> str:
    return f"{float(shift):g}"


def cells_root(cfg: ProbeConfig) -> Path:
    if cfg.cells_dir is not None:
        return Path(cfg.cells_dir)
    return Path(cfg.out) / "cells" if cfg.out is not None else PROBE_DIR / "cells"


def report_root(cfg: ProbeConfig, enc: Encoder) -> Path:
    if cfg.out is not None:
        return Path(cfg.out)
    name = Path(cfg.encoder).name if enc.init else cfg.encoder.replace(":", "-")
    if cfg.encoder == "random":
        name = f"random-{cfg.arch}"
    ident = config_hash({"encoder": str(Path(enc.init).resolve()) if enc.init else cfg.encoder,
                         "arch": enc.arch, "weights": enc.weights, "size": enc.image_size})
    return PROBE_DIR / f"{name.replace('/', '-')}-{ident}"


def plan(cfg: ProbeConfig, enc: Encoder, demos: dict[tuple[str, int], Path]
         ) -> dict[tuple[str, int, str, int], Cell]:
    """The imitation cells, (task, K, arm, seed) -> cell, in run order."""
    if "imitation" not in cfg.probes:
        return {}
    return {(task, k, arm, seed): imitation_cell(cfg, enc, task, k, arm, seed, demos[(task, k)])
            for task in cfg.tasks for k in cfg.demos for seed in cfg.seeds
            for arm in enc.arm_ids(cfg.arms)}


def trained_trunks(cfg: ProbeConfig, enc: Encoder, results: dict) -> dict[str, list[str]]:
    """name -> policy folders of the imitation runs with the most demos, per task."""
    out: dict[str, dict[str, list[str]]] = {}
    k = max(cfg.demos)
    for task in cfg.tasks:
        mine = out.setdefault(task, {})
        for arm, name in (("scratch", f"scratch-trained (K={k})"),
                          ("encoder-finetuned", f"encoder fine-tuned (K={k})")):
            folders = [results[(task, k, arm, s)]["policy"] for s in cfg.seeds
                       if (task, k, arm, s) in results]
            if folders:
                mine[name] = folders
    return out


def run_probe(cfg: ProbeConfig, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) every probe; returns the report (also written to the folder)."""
    from tqdm.auto import tqdm

    from vptr.files import ensure_dir

    start = time.time()
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    enc = resolve_encoder(cfg)
    root = ensure_dir(report_root(cfg, enc), "report folder")
    cells_dir = ensure_dir(cells_root(cfg), "cells folder")
    split_note = (f"Split '{cfg.split}': evaluation episodes from reset seed {cfg.eval_seed}, "
                  f"probe frames from {cfg.frame_seeds()[0]}; demonstrations use seeds "
                  f"0..K-1 (stored as {DEMO_FORMATS[cfg.demo_format]})")
    log(f"vptr probe: {enc.label}; {split_note}; report folder {root}, cells {cells_dir}")
    notes = [] if not enc.is_random else [
        "The probed encoder is itself a random init: its rows are the random-init and "
        "scratch rows."]
    demos, kept = {}, {}
    if "imitation" in cfg.probes:
        for task in cfg.tasks:
            for k in cfg.demos:
                demos[(task, k)], stats = demo_dataset(cfg, task, k, enc.image_size)
                kept[(task, k)] = int(stats["episodes"])
                if kept[(task, k)] < k:
                    notes.append(f"{task}: the expert succeeded in {kept[(task, k)]} of the "
                                 f"first {k} episodes; the K={k} dataset holds those only")
    cells = plan(cfg, enc, demos)
    frames = any(p in cfg.probes for p in ("linear", "invariance"))
    skip = value_skip_reason(enc) if "values" in cfg.probes else ""
    values_runs = "values" in cfg.probes and not skip
    total = len(cells) + (len(cfg.tasks) if frames else 0) + int(values_runs)
    bar = tqdm(total=total, desc="vptr probe", unit="cell", dynamic_ncols=True,
               disable=not cfg.progress)
    try:
        report = _run_all(cfg, enc, (root, cells_dir), cells, frames, values_runs, skip, kept,
                          bar)
    finally:
        bar.close()
    report.update({"split_note": split_note, "notes": notes,
                   "wall_s": round(time.time() - start, 1)})
    write_report(root, report)
    return report


def _run_all(cfg, enc, folders, cells, frames, values_runs, skip, kept, bar) -> dict:
    from vptr.diagnostics.machine import describe

    root, cells_dir = folders
    counts = {"cells_run": 0, "cells_reused": 0}

    def step(cell: Cell) -> dict:
        bar.set_postfix_str(cell.id)
        result, before = run_cell(cell, cells_dir)
        counts["cells_reused" if before else "cells_run"] += 1
        bar.update(1)
        return result

    report: dict[str, Any] = {
        "format": "vptr-probe/1", "encoder": {**to_dict(enc), "given": cfg.encoder},
        "split": cfg.split, "eval_seed": cfg.eval_seed, "config": to_dict(cfg),
        "machine": describe(), "root": str(root), "cells_dir": str(cells_dir)}
    if values_runs:  # first: it is quick and its errors show early
        report["values"] = step(value_cell(cfg, enc))
    elif "values" in cfg.probes:
        report["values"] = {"skipped": skip}
    results = {key: step(cell) for key, cell in cells.items()}
    if cells:
        report["imitation"] = imitation_summary(cfg, enc, results, kept)
    if frames:
        trained = trained_trunks(cfg, enc, results)
        report["frames"] = {task: step(frame_cell(cfg, enc, task, trained.get(task, {})))
                            for task in cfg.tasks}
    report.update(counts)
    return report


def write_report(root: Path, report: dict) -> None:
    from vptr.diagnostics.probe_table import markdown
    from vptr.files import atomic_write_text

    atomic_write_text(root / "report.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(root / "report.md", markdown(report))


def run(cfg: ProbeConfig) -> int:
    """CLI entry point."""
    report = run_probe(cfg)
    root = Path(report["root"])
    print()
    print((root / "report.md").read_text())
    print(f"report: {root / 'report.json'}  table: {root / 'report.md'}")
    return 0
