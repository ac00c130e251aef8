"""``vptr experiment``: a grid of pretraining x fine-tuning x seed cells, resumable, and
its summary (the V-PTR experiment; ../shared/specs/finetuning.md, "The V-PTR recipe").

The grid file (TOML, ``--config``) names the arms and the shared settings::

    name = "vptr_sim"
    pretrainings = ["none", "icvf", "tdjepa"]   # "none": train end to end from scratch
    agents = ["qc", "flowbc"]
    seeds = [0, 1, 2]
    eval_env = "vptr/Lift-v0"
    eval_episodes = 50
    test_seed = 300000                          # test episodes: reset seeds 300000, ...
    eval_shifts = [0.3, 0.6]                    # and the same episodes at these visual shifts
    [video]            # sim.generate.VideoDataConfig values (the action-free video)
    [robot]            # sim.generate.RobotDataConfig values (the robot demonstrations)
    [pretrain]         # PretrainConfig values shared by every pretraining arm
    [pretrain_arms.icvf]   # per arm (objective = the arm's name unless given)
    [finetune]         # FinetuneConfig values shared by every fine-tuning cell
    [finetune_agents.qc]   # per agent
    [finetune_arms.none]   # per pretraining arm ("none" trains its trunk unless told)
    [prior]            # optional: RobotDataConfig values of the prior data (V-PTR phases 2-3)
    prior_fraction = 0.9   # share of prior chunks in every phase-3 batch
    prior_fraction_arms = {vip = 0.1}   # optional: an arm's own share, over prior_fraction
    [prior_finetune]   # FinetuneConfig values of the phase-2 runs (over [finetune])

Cells: ``pretrain/<arm>/seed<k>`` (a ``vptr pretrain`` run) and
``finetune/<arm>/<agent>/seed<k>`` (a ``vptr finetune`` run on the target demos, then a test
evaluation on ``eval_episodes`` episodes from ``test_seed``, the policy conditioned on the
target's task; with ``eval_shifts``, the same episodes again at each visual shift level,
added to done cells by a rerun without retraining). Without ``[prior]`` a fine-tuning cell
starts from the pretraining's encoder. With it the grid follows V-PTR's phases:
``prior/<arm>/<agent>/seed<k>`` (phase 2: multi-task fine-tuning on the prior data of other
tasks — ``[prior]`` values over ``[robot]``'s, e.g. ``tasks`` and ``episodes_per_task`` —
from the pretrained trunk), and the fine-tuning cell (phase 3) starts every network from
that run (``--init.run``) and mixes prior and target data in every batch (``--prior.data``,
``--prior.fraction``). A cell's key hashes its config and the key of the cell it starts
from, so a changed pretraining or phase 2 reruns what depends on it. Each cell works in its
own directory and writes ``cell.json`` when it is done; a rerun skips done cells and resumes
interrupted ones (the runs resume from their last checkpoint), so the grid can be filled
over several sittings and on several machines sharing the folder (a cell being run holds a
lock file; ``--cells`` picks a subset, ``--max-cells`` stops after that many). The summary
step gathers the done cells into ``summary.csv`` (one row per cell and seed), ``summary.md``
(per-seed and pooled Wilson 95 % intervals, and the paired difference of each pretraining
against ``none`` under the same agent with Newcombe's interval), ``summary.json`` and
``summary.png`` (bars with pooled intervals)."""

from __future__ import annotations

import copy
import csv
import fnmatch
import functools
import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vptr.config import helpfield
from vptr.errors import ConfigError, DataError
from vptr.files import atomic_write_text

CELL_FILE = "cell.json"
REPO = Path(__file__).resolve().parents[1]
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class ExperimentConfig:
    """Run (or resume) an experiment grid and summarise it."""

    name: str = helpfield("vptr_sim", "experiment name (its folder under --out-dir)")
    out_dir: Path = helpfield(Path("runs/experiments"), "where experiments are written")
    pretrainings: tuple[str, ...] = helpfield(("none", "icvf"), "pretraining arms ('none': "
                                                                 "fine-tune from scratch)")
    pretrain_only: tuple[str, ...] = helpfield((), "pretraining arms (of pretrainings) that "
                                                   "get pretraining cells and their value "
                                                   "curves but no fine-tuning (e.g. ablations "
                                                   "of an objective)")
    agents: tuple[str, ...] = helpfield(("qc",), "fine-tuning agents")
    seeds: tuple[int, ...] = helpfield((0,), "seeds (each pretraining and fine-tuning cell)")
    eval_env: str = helpfield("vptr/Lift-v0", "environment of the test evaluation")
    eval_episodes: int = helpfield(50, "test episodes per fine-tuning cell")
    eval_shifts: tuple[float, ...] = helpfield((), "visual shift levels (0-1, native envs) of "
                                                   "more test evaluations of every fine-tuning "
                                                   "cell, on the same episodes (the probe's: "
                                                   "0.3 0.6); added to done cells on a rerun")
    test_seed: int = helpfield(300_000, "reset seed of the first test episode (no choice may "
                                        "look at these: validation uses other seeds)")
    video: dict = field(default_factory=dict, metadata={"help": "TOML table: VideoDataConfig"})
    robot: dict = field(default_factory=dict, metadata={"help": "TOML table: RobotDataConfig"})
    pretrain: dict = field(default_factory=dict, metadata={"help": "TOML table: shared "
                                                                   "PretrainConfig values"})
    pretrain_arms: dict = field(default_factory=dict, metadata={"help": "TOML tables: per-arm "
                                                                        "PretrainConfig values"})
    finetune: dict = field(default_factory=dict, metadata={"help": "TOML table: shared "
                                                                   "FinetuneConfig values"})
    finetune_agents: dict = field(default_factory=dict, metadata={"help": "TOML tables: "
                                                                          "per-agent values"})
    finetune_arms: dict = field(default_factory=dict, metadata={
        "help": "TOML tables: per-pretraining-arm FinetuneConfig values, over [finetune] and "
                "[finetune_agents] (e.g. [finetune_arms.none] for the scratch arm); 'none' "
                "trains its trunk (encoder.mode = finetune), of the pretrained arms' "
                "architecture, unless its table says otherwise"})
    prior: dict = field(default_factory=dict, metadata={
        "help": "TOML table: RobotDataConfig values of the prior data of other tasks (over "
                "[robot]'s); empty = no V-PTR phases 2-3"})
    prior_fraction: float = helpfield(0.9, "share of prior chunks in every batch of the "
                                           "target fine-tuning (V-PTR: 0.9)")
    prior_fraction_arms: dict = field(default_factory=dict, metadata={
        "help": "TOML table: a pretraining arm's own share of prior chunks, over "
                "prior_fraction (e.g. {vip = 0.1}); choose it on validation episodes"})
    prior_finetune: dict = field(default_factory=dict, metadata={
        "help": "TOML table: FinetuneConfig values of the phase-2 (prior data) runs, over "
                "[finetune] and [finetune_agents]"})
    value_sets: dict = field(default_factory=dict, metadata={
        "help": "TOML tables [value_sets.<name>]: VideoDataConfig values (over [video]'s) of "
                "held-out video on which every pretraining cell's value is scored (vptr "
                "evaluate-values: Spearman, spread, V at the goal, against -pixel L2 and "
                "untrained networks); added to done cells by a rerun without retraining"})
    value_episodes: int = helpfield(25, "held-out episodes per value set")
    value_untrained_seeds: int = helpfield(5, "untrained-network seeds of the value baseline")
    data_dir: Path | None = helpfield(None, "generated-data cache (default: $VPTR_DATA_DIR or "
                                            "./data)")
    results_dir: Path | None = helpfield(None, "a folder (e.g. in the repository) that keeps a "
                                               "small record of every finished cell (its test "
                                               "outcomes, walls, key): a grid continued on a "
                                               "machine without the cells folder skips the "
                                               "cells recorded there and summarises them")
    cells: tuple[str, ...] = helpfield((), "run only cells whose id matches one of these "
                                           "patterns (e.g. 'finetune/icvf/*')")
    max_cells: int = helpfield(0, "stop after running this many cells (0 = all)")
    summary_only: bool = helpfield(False, "only gather the done cells into the summary")
    progress: bool = helpfield(True, "progress bars of the runs")

    def __post_init__(self) -> None:
        if not self.pretrainings or not self.agents or not self.seeds:
            raise ConfigError("pretrainings, agents and seeds must each name at least one")
        for what in ("pretrainings", "agents", "seeds"):
            values = getattr(self, what)
            if len(set(values)) != len(values):
                raise ConfigError(f"{what}: repeated entries in {list(values)}")
        if self.eval_episodes < 1 or self.max_cells < 0:
            raise ConfigError("eval_episodes must be >= 1 and max_cells >= 0")
        if any(not 0.0 < x <= 1.0 for x in self.eval_shifts) or len(set(self.eval_shifts)) != len(
                self.eval_shifts):
            raise ConfigError(f"eval_shifts: distinct levels in (0, 1], got {list(self.eval_shifts)}")
        for name in ("video", "robot", "pretrain", "pretrain_arms", "finetune", "finetune_agents",
                     "finetune_arms", "prior", "prior_finetune", "value_sets",
                     "prior_fraction_arms"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name}: expected a TOML table")
        if not set(self.pretrain_only) <= set(self.pretrainings) - {"none"}:
            raise ConfigError(f"pretrain_only: {list(self.pretrain_only)} must be pretraining "
                              f"arms of pretrainings other than 'none'")
        if self.value_episodes < 1 or self.value_untrained_seeds < 0:
            raise ConfigError("value_episodes must be >= 1 and value_untrained_seeds >= 0")
        for name in ("pretrain_arms", "finetune_agents", "finetune_arms",
                     "value_sets"):  # --config flattens
            object.__setattr__(self, name, _by_arm(getattr(self, name), name))
        for name in ("pretrain_arms", "finetune_arms"):
            unknown = set(getattr(self, name)) - set(self.pretrainings)
            if unknown:
                raise ConfigError(f"{name}: {sorted(unknown)} are not in pretrainings")
        unknown = set(self.finetune_agents) - set(self.agents)
        if unknown:
            raise ConfigError(f"finetune_agents: {sorted(unknown)} are not in agents")
        if not 0.0 < self.prior_fraction < 1.0:
            raise ConfigError(f"prior_fraction must be in (0, 1), got {self.prior_fraction}")
        unknown = set(self.prior_fraction_arms) - set(self.pretrainings)
        if unknown:
            raise ConfigError(f"prior_fraction_arms: {sorted(unknown)} are not in pretrainings")
        for arm, x in self.prior_fraction_arms.items():
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.0 < x < 1.0:
                raise ConfigError(f"prior_fraction_arms.{arm} must be a number in (0, 1), "
                                  f"got {x!r}")
        if self.prior_fraction_arms and not self.prior:
            raise ConfigError("prior_fraction_arms: needs a [prior] table (V-PTR's phases)")
        if self.prior_finetune and not self.prior:
            raise ConfigError("prior_finetune: configures phase 2, which needs a [prior] table")
        if self.prior:
            tasks = set(_as_tuple(self.prior.get("tasks", ())))
            target = set(_as_tuple(self.robot.get("tasks", ("vptr/Lift-v0",))))
            if len(tasks) < 2 and not target <= tasks:
                raise ConfigError(f"prior.tasks: give two or more tasks, got {sorted(tasks)} "
                                  "(a one-task phase 2 has no task embedding for the target's "
                                  "task to join)")

    @property
    def phases(self) -> bool:
        """V-PTR's phases 2-3 (prior data) are in the grid."""
        return bool(self.prior)

    @property
    def root(self) -> Path:
        return Path(self.out_dir) / self.name


def _as_tuple(v: Any) -> tuple:
    return (v,) if isinstance(v, str) else tuple(v)


def _by_arm(d: dict, what: str) -> dict[str, dict]:
    """``{"qc.qc.batch_size": 8}`` or ``{"qc": {"qc.batch_size": 8}}`` -> per-arm tables."""
    from vptr.config import flatten

    out: dict[str, dict] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.setdefault(k, {}).update(flatten(v))
            continue
        arm, _, rest = k.partition(".")
        if not rest:
            raise ConfigError(f"{what}.{k}: expected a table [{what}.{k}]")
        out.setdefault(arm, {})[rest] = v
    return out


# --------------------------------------------------------------------------- cells


@dataclass
class Cell:
    id: str
    kind: str  # "pretrain", "prior" (V-PTR phase 2) or "finetune"
    arm: str
    seed: int
    agent: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # the run's resolved values
    needs: str = ""  # id of the cell whose result this one reads
    after: str = ""  # key of that cell (part of this cell's key)
    data: dict[str, str] = field(default_factory=dict)  # data path -> what the data are

    @property
    def key(self) -> str:
        """A hash of the run config (each dataset's path replaced by its generation config,
        so that the key is the same on any machine and in any --data-dir) and of the key of
        the cell it starts from."""
        config = _replace_paths(self.config, self.data)
        doc: Any = config if not self.after else {"config": config, "after": self.after}
        text = json.dumps(doc, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def _replace_paths(value: Any, data: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _replace_paths(v, data) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace_paths(v, data) for v in value]
    return data.get(value, value) if isinstance(value, str) else value


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def with_base_file(values: dict) -> dict:
    """``config = "file.toml"`` in a table: that file's values under the table's own."""
    from vptr.config import flatten, load_toml

    values = flatten(values)  # dotted keys throughout (tables and dotted keys both allowed)
    base = values.pop("config", None)
    if base is None:
        return values
    path = Path(base)
    if not path.is_absolute() and not path.exists() and (REPO / path).exists():
        path = REPO / path  # "configs/..." from anywhere, not only the repository root
    return {**flatten(load_toml(path)), **values}


def pretrain_values(cfg: ExperimentConfig, arm: str) -> dict[str, Any]:
    """A pretraining arm's run values: [pretrain], then [pretrain_arms.<arm>] (and the files
    they name)."""
    return with_base_file(_merge(cfg.pretrain, cfg.pretrain_arms.get(arm, {})))


def finetune_values(cfg: ExperimentConfig, arm: str, agent: str,
                    phase2: bool = False) -> dict[str, Any]:
    """A fine-tuning cell's run values: [finetune], then [finetune_agents.<agent>], then
    (phase 2) [prior_finetune], then [finetune_arms.<arm>]. ``none`` is end-to-end training
    from a random trunk: its trunk trains at the full learning rate whatever
    ``encoder.mode`` the pretrained arms use (a frozen or 0.1x-lr random trunk would be a
    handicapped baseline, not scratch), unless its own table sets the mode."""
    from vptr.config import flatten
    from vptr.train.finetune_loop import EncoderOptions

    layers = [cfg.finetune, cfg.finetune_agents.get(agent, {})]
    if phase2:
        layers.append(cfg.prior_finetune)
    if arm == "none":
        layers.append({"encoder.mode": "finetune"})
        trunk = pretrained_trunk(cfg)
        if trunk and trunk != EncoderOptions.name:  # scratch trains the architecture the
            layers.append({"encoder.name": trunk})  # pretrained arms start from
    layers.append(cfg.finetune_arms.get(arm, {}))
    values: dict[str, Any] = {}
    for layer in layers:  # dotted keys, so that a table and a dotted key name the same value
        values.update(flatten(copy.deepcopy(layer)))
    return with_base_file(values)


def prior_fraction(cfg: ExperimentConfig, arm: str) -> float:
    """The share of prior chunks in an arm's target batches: its own, else the grid's."""
    return float(cfg.prior_fraction_arms.get(arm, cfg.prior_fraction))


def pretrained_trunk(cfg: ExperimentConfig) -> str:
    """The trunk architecture every fine-tuned pretraining arm shares ('' when the grid has
    none). The scratch arm trains the same architecture: a scratch baseline on another trunk
    would compare architectures, not pretraining. Arms on different trunks are rejected
    unless [finetune_arms.none] names the scratch trunk itself."""
    from vptr.train.pretrain_loop import PretrainOptions

    names = {}
    for arm in cfg.pretrainings:
        if arm == "none" or arm in cfg.pretrain_only:
            continue
        names[arm] = str(pretrain_values(cfg, arm).get("encoder", PretrainOptions.encoder))
    if len(set(names.values())) > 1 and "none" in cfg.pretrainings and \
            "encoder.name" not in cfg.finetune_arms.get("none", {}):
        raise ConfigError(f"pretraining arms use different trunks ({names}): name the scratch "
                          f"arm's in [finetune_arms.none] \"encoder.name\"")
    return next(iter(names.values()), "")


def data_tokens(cfg: ExperimentConfig, video: Path | None, robot: Path | None,
                prior: Path | None) -> dict[str, str]:
    """What each dataset path stands for in the cells' keys: its name and a hash of its
    generation config (not where it is stored, nor which machine made it)."""
    from vptr.data.pins import generation_config

    out = {}
    for name, path, c in zip(("video", "robot", "prior"), (video, robot, prior),
                             data_configs(cfg)):
        if path is not None and c is not None:
            text = json.dumps(generation_config(c), sort_keys=True)
            out[str(path)] = f"<{name} data {hashlib.sha256(text.encode()).hexdigest()[:10]}>"
    return out


def plan(cfg: ExperimentConfig, video: Path | None = Path("@video"),
         robot: Path | None = Path("@robot"), prior: Path | None = Path("@prior")) -> list[Cell]:
    """Every cell of the grid in run order (pretrainings, then phase 2, then the target
    fine-tuning), with its run config and the key of the cell it starts from. The data
    paths are where the data are on this machine; the keys do not depend on them."""
    cells: list[Cell] = []
    for arm in cfg.pretrainings:
        if arm == "none":
            continue
        values = pretrain_values(cfg, arm)
        values.setdefault("objective", arm)
        for seed in cfg.seeds:
            cells.append(Cell(f"pretrain/{arm}/seed{seed}", "pretrain", arm, seed,
                              config=_merge(values, {"data": str(video), "seed": seed})))
    tuned = [a for a in cfg.pretrainings if a not in cfg.pretrain_only]
    for arm in tuned if cfg.phases else ():
        for agent in cfg.agents:
            values = finetune_values(cfg, arm, agent, phase2=True)
            for seed in cfg.seeds:  # the prior tasks only: no evaluation on the target here
                needs = "" if arm == "none" else f"pretrain/{arm}/seed{seed}"
                cells.append(Cell(f"prior/{arm}/{agent}/seed{seed}", "prior", arm, seed, agent,
                                  _merge(values, {"data": str(prior), "agent": agent,
                                                  "seed": seed, "eval_env": ""}), needs))
    for arm in tuned:
        for agent in cfg.agents:
            values = finetune_values(cfg, arm, agent)
            if cfg.phases:
                values = _merge(values, {"prior.data": [str(prior)],
                                         "prior.fraction": prior_fraction(cfg, arm)})
            for seed in cfg.seeds:
                needs = (f"prior/{arm}/{agent}/seed{seed}" if cfg.phases else
                         "" if arm == "none" else f"pretrain/{arm}/seed{seed}")
                cells.append(Cell(f"finetune/{arm}/{agent}/seed{seed}", "finetune", arm, seed,
                                  agent, _merge(values, {"data": str(robot), "agent": agent,
                                                         "seed": seed}), needs))
    tokens = data_tokens(cfg, video, robot, prior)
    keys: dict[str, str] = {}
    for cell in cells:  # run order: a cell's dependency comes before it
        cell.data = tokens
        cell.after = keys[cell.needs] if cell.needs else ""
        keys[cell.id] = cell.key
    return cells


def selected(cfg: ExperimentConfig, cell: Cell) -> bool:
    return not cfg.cells or any(fnmatch.fnmatch(cell.id, p) for p in cfg.cells)


def cell_dir(cfg: ExperimentConfig, cell: Cell) -> Path:
    return cfg.root / "cells" / cell.id


def read_cell(cfg: ExperimentConfig, cell: Cell) -> dict[str, Any] | None:
    """The cell's record if it is done with the current config (else None)."""
    return _read_record(cell_dir(cfg, cell) / CELL_FILE, cell)


def results_file(cfg: ExperimentConfig, cell: Cell) -> Path | None:
    return Path(cfg.results_dir) / f"{cell.id}.json" if cfg.results_dir else None


def read_result(cfg: ExperimentConfig, cell: Cell) -> dict[str, Any] | None:
    """The cell's record in the results folder if it is done with the current config."""
    path = results_file(cfg, cell)
    return _read_record(path, cell) if path is not None else None


def write_result(cfg: ExperimentConfig, cell: Cell, record: dict[str, Any]) -> None:
    """Keep a finished cell's record in the results folder (small: no weights), with the
    commit and machine that produced it."""
    path = results_file(cfg, cell)
    if path is None:
        return
    from sim.generate import sim_code_fingerprint

    doc = {**record, "produced_by": {"commit": _git_commit(), "host": socket.gethostname(),
                                     "cpu": _cpu_model(), "sim_code": sim_code_fingerprint()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1, default=str))


@functools.lru_cache(maxsize=1)
def _git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _read_record(path: Path, cell: Cell) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if doc.get("status") == "done" and doc.get("key") == cell.key else None


class CellLock:
    """``<cell>/.lock`` (host and pid) held while a cell runs; a lock left by a dead
    process on this host is taken over, one held elsewhere makes the cell wait."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self.held = False

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()}:{os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return True
        return False

    def _stale(self) -> bool:
        try:
            host, _, pid = self.path.read_text().partition(":")
        except OSError:
            return True
        if host != socket.gethostname():
            return False  # another machine's: cannot tell, leave it
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            return True
        except PermissionError:
            return False
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


# --------------------------------------------------------------------------- running


def run_pretrain_cell(cfg: ExperimentConfig, cell: Cell, folder: Path, deps: dict) -> dict:
    from vptr.config import build_config
    from vptr.train.pretrain_loop import PretrainConfig, train

    values = _merge(cell.config, {"out_dir": str(folder / "runs"), "run_name": cell.key,
                                  "progress": cfg.progress, "source.progress": cfg.progress})
    result = train(build_config(PretrainConfig, values, where=cell.id))
    return {"run_dir": result["run_dir"], "step": result.get("step")}


def start_from(cell: Cell, deps: dict) -> dict[str, Any]:
    """What a fine-tuning run starts from: a phase-2 run (every network) or a pretraining
    run (the trunk)."""
    if not cell.needs:
        return {}
    run_dir = deps[cell.needs]["run_dir"]
    return {"init.run": run_dir} if cell.needs.startswith("prior/") else {"encoder.init": run_dir}


def finetune_run(cfg: ExperimentConfig, cell: Cell, folder: Path, deps: dict) -> dict:
    from vptr.config import build_config
    from vptr.train.finetune_loop import FinetuneConfig, train

    over: dict[str, Any] = {"out_dir": str(folder / "runs"), "run_name": cell.key,
                            "progress": cfg.progress, "source.frames.progress": cfg.progress,
                            **start_from(cell, deps)}
    return train(build_config(FinetuneConfig, _merge(cell.config, over), where=cell.id))


def run_prior_cell(cfg: ExperimentConfig, cell: Cell, folder: Path, deps: dict) -> dict:
    result = finetune_run(cfg, cell, folder, deps)
    return {"run_dir": result["run_dir"], "step": result.get("step")}


def shift_key(shift: float) -> str:
    return f"{shift:g}"


def test_eval(cfg: ExperimentConfig, run_dir: str, folder: Path,
              shift: float | None = None) -> dict:
    """The test evaluation of a fine-tuned policy: ``eval_episodes`` episodes from
    ``test_seed``, at the env's own appearance or (``shift``) at that visual shift."""
    from sim.evaluate import evaluate
    from vptr.evaluate import policy_task
    from vptr.runtime.artifact import SimPolicy

    folder_policy = Path(run_dir) / "policy"
    policy = SimPolicy(folder_policy, task=policy_task(folder_policy, cfg.eval_env, ""))
    kwargs = policy.env_kwargs() | ({} if shift is None else {"domain_shift": shift})
    name = "test_eval.json" if shift is None else f"test_eval_shift{shift_key(shift)}.json"
    t = time.time()
    report = evaluate(policy, cfg.eval_env, episodes=cfg.eval_episodes, seed=cfg.test_seed,
                      env_kwargs=kwargs, report_path=folder / name, progress=False)
    return {"success_rate": report["success_rate"], "success_ci95": report["success_ci95"],
            "episodes": report["episodes"],
            "successes": [bool(e["success"]) for e in report["per_episode"]],
            "episode_seeds": [int(e["seed"]) for e in report["per_episode"]],
            "task": policy.task_index, "eval_s": time.time() - t}


def missing_shifts(cfg: ExperimentConfig, result: dict) -> list[float]:
    have = result.get("shifted", {})
    return [x for x in cfg.eval_shifts if shift_key(x) not in have]


def add_shifted_evals(cfg: ExperimentConfig, result: dict, folder: Path) -> dict:
    """``result`` with a test evaluation at every ``eval_shifts`` level it lacks."""
    shifted = dict(result.get("shifted", {}))
    for x in missing_shifts(cfg, result):
        ev = test_eval(cfg, result["run_dir"], folder, x)
        shifted[shift_key(x)] = {k: ev[k] for k in ("success_rate", "success_ci95", "episodes",
                                                     "successes", "episode_seeds", "eval_s")}
    return {**result, "shifted": shifted}


def run_finetune_cell(cfg: ExperimentConfig, cell: Cell, folder: Path, deps: dict) -> dict:
    result = finetune_run(cfg, cell, folder, deps)
    out = {"run_dir": result["run_dir"], "step": result.get("step"),
           **test_eval(cfg, result["run_dir"], folder)}
    return add_shifted_evals(cfg, out, folder)


RUNNERS: dict[str, Callable[..., dict]] = {"pretrain": run_pretrain_cell,
                                           "prior": run_prior_cell,
                                           "finetune": run_finetune_cell}


def missing_value_sets(result: dict, sets: dict[str, Path]) -> list[str]:
    return [n for n in sets if n not in result.get("values", {})]


def add_value_curves(cfg: ExperimentConfig, result: dict, folder: Path,
                     sets: dict[str, Path]) -> dict:
    """``result`` (a pretraining cell's) with the value-curve numbers of every held-out set
    it lacks (``vptr evaluate-values`` on its run: the trained value, -pixel L2 and
    untrained networks of the same architecture)."""
    from vptr.diagnostics.evaluate import EvaluateValuesConfig, evaluate_run

    todo = missing_value_sets(result, sets)
    if not todo:
        return result
    ecfg = EvaluateValuesConfig(run=Path(result["run_dir"]),
                                eval_data=tuple(f"{n}={sets[n]}" for n in todo),
                                episodes=cfg.value_episodes,
                                untrained_seeds=cfg.value_untrained_seeds,
                                out_dir=folder / "values")
    report = evaluate_run(ecfg, log=lambda m: None)
    values = dict(result.get("values", {}))
    numbers = ("spearman", "spearman_std", "spread", "goal_value")
    for name, got in report["sets"].items():
        methods = list(got["methods"].items())  # trained, -pixel L2, untrained s0, s1, ...
        pick = lambda m: {k: m[k] for k in numbers}
        values[name] = {"episodes": got["episodes"], "trained": pick(methods[0][1]),
                        "pixel_l2": pick(methods[1][1]),
                        "untrained": [pick(m) for _, m in methods[2:]],
                        "untrained_best_spearman": got["untrained_best_spearman"]}
    return {**result, "values": values}


def run_cells(cfg: ExperimentConfig, cells: list[Cell], log: Callable[[str], None] = print,
              value_sets: dict[str, Path] | None = None) -> dict:
    """Run the selected cells that are not done; returns counts of what happened.

    A cell is done when its folder holds its record (and its runs), or when the results
    folder holds its record: then it is not run again unless a cell still to run starts
    from its runs and they are not on this machine (they are made again first)."""
    sets = value_sets or {}
    done = {c.id: read_cell(cfg, c) for c in cells}
    kept = {c.id: read_result(cfg, c) for c in cells}
    for cell in cells:  # a record made before the results folder was given: keep it there
        if done[cell.id] is not None and kept[cell.id] is None and cfg.results_dir:
            write_result(cfg, cell, done[cell.id])
            kept[cell.id] = done[cell.id]
    by_id = {c.id: c for c in cells}
    needed: set[str] = set()  # cells whose runs a cell still to run starts from
    for cell in cells:
        if selected(cfg, cell) and done[cell.id] is None and kept[cell.id] is None:
            up = by_id.get(cell.needs)
            while up is not None and done[up.id] is None:
                needed.add(up.id)
                up = by_id.get(up.needs)
    counts = {"done_before": 0, "ran": 0, "locked": 0, "blocked": 0, "evaluated": 0,
              "kept": 0}
    for i, cell in enumerate(cells):
        if not selected(cfg, cell):
            continue
        tag = f"[{i + 1}/{len(cells)}] {cell.id}"
        if done[cell.id] is not None:
            counts["done_before"] += 1
            if (cell.kind == "finetune" and missing_shifts(cfg, done[cell.id]["result"])) or (
                    cell.kind == "pretrain" and missing_value_sets(done[cell.id]["result"], sets)):
                done[cell.id] = add_missing_evals(cfg, cell, done[cell.id], i, len(cells), log,
                                                  sets)
                counts["evaluated"] += 1
            continue
        if kept[cell.id] is not None and cell.id not in needed:
            counts["done_before"] += 1
            counts["kept"] += 1
            if cell.kind == "finetune" and missing_shifts(cfg, kept[cell.id]["result"]):
                log(f"{tag}: done (results folder) but its policy is not on this machine: "
                    f"no test evaluation at shift "
                    f"{', '.join(map(shift_key, missing_shifts(cfg, kept[cell.id]['result'])))}")
            if cell.kind == "pretrain" and missing_value_sets(kept[cell.id]["result"], sets):
                log(f"{tag}: done (results folder) but its run is not on this machine: no "
                    f"value curves on {', '.join(missing_value_sets(kept[cell.id]['result'], sets))}")
            continue
        if cfg.max_cells and counts["ran"] >= cfg.max_cells:
            break
        if cell.needs and done.get(cell.needs) is None:
            log(f"{tag}: waiting for {cell.needs}")
            counts["blocked"] += 1
            continue
        folder = cell_dir(cfg, cell)
        lock = CellLock(folder)
        if not lock.acquire():
            log(f"{tag}: running elsewhere ({lock.path}), skipped")
            counts["locked"] += 1
            continue
        try:
            again = (" again: a cell still to run starts from its runs, which are not on this "
                     "machine (its earlier record is replaced)" if kept[cell.id] else "")
            log(f"{tag}: running{again}")
            t = time.time()
            deps = {cell.needs: done[cell.needs]["result"]} if cell.needs else {}
            result = RUNNERS[cell.kind](cfg, cell, folder, deps)
            if cell.kind == "pretrain" and sets:
                result = add_value_curves(cfg, result, folder, sets)
            record = {"id": cell.id, "status": "done", "key": cell.key, "kind": cell.kind,
                      "arm": cell.arm, "agent": cell.agent, "seed": cell.seed,
                      "wall_s": round(time.time() - t, 3), "config": cell.config,
                      "result": result}
            atomic_write_text(folder / CELL_FILE, json.dumps(record, indent=2, default=str))
            write_result(cfg, cell, record)
            done[cell.id] = record
            counts["ran"] += 1
            msg = f"  done in {record['wall_s']:.0f}s"
            if "success_rate" in result:
                msg += f": test success {100 * result['success_rate']:.0f}%"
            log(msg)
        finally:
            lock.release()
    return counts


def add_missing_evals(cfg: ExperimentConfig, cell: Cell, record: dict, i: int, n: int,
                      log: Callable[[str], None], sets: dict[str, Path] | None = None) -> dict:
    """A done cell given the evaluations it lacks (a grid whose ``eval_shifts`` or
    ``value_sets`` grew): a fine-tuning cell's policy is tested at the new shifts, a
    pretraining cell's value scored on the new sets; nothing is retrained."""
    from vptr.files import atomic_write_text

    folder = cell_dir(cfg, cell)
    lock = CellLock(folder)
    if not lock.acquire():
        return record
    try:
        if cell.kind == "pretrain":
            log(f"[{i + 1}/{n}] {cell.id}: value curves on "
                f"{', '.join(missing_value_sets(record['result'], sets or {}))}")
            result = add_value_curves(cfg, record["result"], folder, sets or {})
        else:
            todo = ", ".join(shift_key(x) for x in missing_shifts(cfg, record["result"]))
            log(f"[{i + 1}/{n}] {cell.id}: test evaluation at shift {todo}")
            result = add_shifted_evals(cfg, record["result"], folder)
        record = {**record, "result": result}
        atomic_write_text(folder / CELL_FILE, json.dumps(record, indent=2, default=str))
        write_result(cfg, cell, record)
        return record
    finally:
        lock.release()


# --------------------------------------------------------------------------- statistics


def wilson(k: int, n: int) -> tuple[float, float]:
    from sim.evaluate import wilson_interval

    return wilson_interval(k, n)


def newcombe_paired(a: int, b: int, c: int, d: int) -> tuple[float, float, float]:
    """Difference p1 - p2 of paired proportions and its 95 % interval (Newcombe 1998,
    method 10: Wilson limits of each rate combined with the continuity-corrected
    correlation phi).
    a: both succeed, b: only 1, c: only 2, d: neither."""
    n = a + b + c + d
    if n == 0:
        raise DataError("paired difference of zero pairs")
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n)
    l2, u2 = wilson(a + c, n)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    ad_bc = a * d - b * c  # Newcombe's continuity-corrected correlation: shrink a positive one
    corrected = ad_bc - n / 2 if ad_bc > n / 2 else (ad_bc if ad_bc < 0 else 0.0)
    phi = corrected / math.sqrt(denom) if denom > 0 else 0.0
    delta = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    eps = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    diff = p1 - p2
    return diff, max(-1.0, diff - delta), min(1.0, diff + eps)


# --------------------------------------------------------------------------- summary


def levels(cfg: ExperimentConfig) -> list[float]:
    """Visual shift levels of the test evaluations: 0 (the env's own appearance) first."""
    return [0.0, *cfg.eval_shifts]


def evaluations(result: dict, shift: float) -> dict | None:
    """A fine-tuning cell's test evaluation at ``shift`` (0: the main one), if it has it."""
    return result if shift == 0.0 else result.get("shifted", {}).get(shift_key(shift))


def best_record(cfg: ExperimentConfig, cell: Cell) -> dict[str, Any] | None:
    """The cell's record in its folder or in the results folder, whichever has more test
    evaluations (a results-folder record is all a fresh machine has)."""
    found = [r for r in (read_cell(cfg, cell), read_result(cfg, cell)) if r is not None]
    return max(found, key=lambda r: len(r.get("result", {}).get("shifted", {})), default=None)


def summarize(cfg: ExperimentConfig, cells: list[Cell]) -> dict[str, Any]:
    """Write summary.{csv,md,json,png} from the done fine-tuning cells."""
    rows, outcomes = [], {}
    records = {c.id: r for c in cells if (r := best_record(cfg, c)) is not None}  # read once
    walls = {cid: r["wall_s"] for cid, r in records.items()}
    by_id = {c.id: c for c in cells}
    for cell in cells:
        rec = records.get(cell.id)
        if cell.kind != "finetune" or rec is None:
            continue
        for shift in levels(cfg):
            res = evaluations(rec["result"], shift)
            if res is None:
                continue
            k, n = sum(res["successes"]), len(res["successes"])
            lo, hi = wilson(k, n)
            rows.append({"pretraining": cell.arm, "agent": cell.agent, "seed": cell.seed,
                         "shift": shift, "episodes": n, "successes": k, "success_rate": k / n,
                         "ci_low": lo, "ci_high": hi, "finetune_wall_s": rec["wall_s"],
                         **upstream_walls(cell, by_id, walls)})
            outcomes[(cell.arm, cell.agent, cell.seed, shift)] = dict(
                zip(res["episode_seeds"], res["successes"]))
    pooled = []
    for shift in levels(cfg):
        for arm in cfg.pretrainings:
            for agent in cfg.agents:
                mine = [r for r in rows if r["pretraining"] == arm and r["agent"] == agent
                        and r["shift"] == shift]
                if not mine:
                    continue
                k, n = sum(r["successes"] for r in mine), sum(r["episodes"] for r in mine)
                lo, hi = wilson(k, n)
                entry = {"pretraining": arm, "agent": agent, "shift": shift,
                         "seeds": len(mine), "episodes": n, "success_rate": k / n,
                         "ci_low": lo, "ci_high": hi}
                if arm != "none":
                    entry["vs_none"] = paired_vs_none(outcomes, arm, agent, cfg.seeds, shift)
                pooled.append(entry)
    values = value_table(cfg, [(c, records[c.id]) for c in cells
                               if c.kind == "pretrain" and c.id in records])
    root = cfg.root
    root.mkdir(parents=True, exist_ok=True)
    write_csv(root / "summary.csv", rows)
    atomic_write_text(root / "summary.json", json.dumps(
        {"cells": rows, "pooled": pooled, "values": values}, indent=2))
    atomic_write_text(root / "summary.md", markdown(cfg, rows, pooled)
                      + values_markdown(cfg, values))
    if pooled:
        bar_chart(root / "summary.png", pooled, cfg)
    return {"cells": rows, "pooled": pooled, "values": values}


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def value_table(cfg: ExperimentConfig, done: list[tuple[Cell, dict]]) -> list[dict]:
    """Per pretraining arm and held-out set: the trained value's Spearman(V, t), spread and
    V(goal) as mean and s.d. over the arm's seeds, with the seeds' untrained networks (best
    of their seeds) and -pixel L2 (the same episodes for every cell)."""
    out = []
    for arm in cfg.pretrainings:
        recs = [(c.seed, r["result"]["values"]) for c, r in done
                if c.arm == arm and r["result"].get("values")]
        for name in cfg.value_sets:
            got = [(seed, v[name]) for seed, v in recs if name in v]
            if not got:
                continue
            row: dict[str, Any] = {"pretraining": arm, "set": name, "seeds": [s for s, _ in got],
                                   "episodes": got[0][1]["episodes"]}
            for what in ("spearman", "spread", "goal_value"):
                row[what], row[f"{what}_sd"] = _mean_sd([v["trained"][what] for _, v in got])
            row["untrained_best_spearman"], _ = _mean_sd(
                [v["untrained_best_spearman"] for _, v in got])
            row["pixel_l2_spearman"] = got[0][1]["pixel_l2"]["spearman"]
            out.append(row)
    return out


def values_markdown(cfg: ExperimentConfig, values: list[dict]) -> str:
    if not values:
        return ""
    sets = [n for n in cfg.value_sets if any(v["set"] == n for v in values)]
    f = lambda x, sd, n: f"{x:+.2f} ± {sd:.2f}" if n > 1 else f"{x:+.2f}"
    out = ["", "## Value curves of the pretraining cells (held-out video)", "",
           f"Spearman(V, t) / spread over the true discounted time-to-goal range / V(goal, goal) "
           f"of each pretraining's value on {values[0]['episodes']} held-out episodes per set, "
           f"mean ± s.d. over the seeds; 'untrained' is the best of "
           f"{cfg.value_untrained_seeds} untrained networks of the same architecture (mean over "
           f"the cells).", "",
           "| pretraining | seeds | " + " | ".join(f"{n}: rho / spread / V(g,g)" for n in sets)
           + " |", "|---|---|" + "---|" * len(sets)]
    arms = [a for a in cfg.pretrainings if any(v["pretraining"] == a for v in values)]
    by = {(v["pretraining"], v["set"]): v for v in values}
    for arm in arms:
        cells, seeds = [], set()
        for n in sets:
            v = by.get((arm, n))
            if v is None:
                cells.append("-")
                continue
            k = len(v["seeds"])
            seeds.update(v["seeds"])
            cells.append(f"{f(v['spearman'], v['spearman_sd'], k)} / "
                         f"{f(v['spread'], v['spread_sd'], k)} / {v['goal_value']:+.2f}")
        out.append(f"| {arm} | {len(seeds)} | " + " | ".join(cells) + " |")
    for arm in arms:
        out.append(f"| untrained {arm} network | - | " + " | ".join(
            f"{by[(arm, n)]['untrained_best_spearman']:+.2f}" if (arm, n) in by else "-"
            for n in sets) + " |")
    first = {n: next(v for v in values if v["set"] == n) for n in sets}
    out.append("| -pixel L2 | - | " + " | ".join(
        f"{first[n]['pixel_l2_spearman']:+.2f}" for n in sets) + " |")
    return "\n".join(out) + "\n"


def upstream_walls(cell: Cell, by_id: dict[str, Cell], walls: dict[str, float]
                   ) -> dict[str, float]:
    """Wall seconds of the cells a fine-tuning cell starts from, by kind."""
    out = {"prior_wall_s": 0.0, "pretrain_wall_s": 0.0}
    up = by_id.get(cell.needs)
    while up is not None:
        out[f"{up.kind}_wall_s"] += walls.get(up.id, 0.0)
        up = by_id.get(up.needs)
    return out


def paired_vs_none(outcomes: dict, arm: str, agent: str, seeds,
                   shift: float = 0.0) -> dict[str, Any] | None:
    """Pairs of (arm, none) outcomes on the same seed and test episode (at the same shift),
    pooled over seeds."""
    a = b = c = d = 0
    for seed in seeds:
        mine = outcomes.get((arm, agent, seed, shift))
        base = outcomes.get(("none", agent, seed, shift))
        if mine is None or base is None:
            continue
        for ep in set(mine) & set(base):
            x, y = mine[ep], base[ep]
            a += x and y
            b += x and not y
            c += y and not x
            d += not x and not y
    if a + b + c + d == 0:
        return None
    diff, lo, hi = newcombe_paired(a, b, c, d)
    return {"pairs": a + b + c + d, "difference": diff, "ci_low": lo, "ci_high": hi,
            "only_pretrained": b, "only_none": c}


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = ["pretraining", "agent", "seed", "shift", "episodes", "successes", "success_rate", "ci_low",
              "ci_high", "finetune_wall_s", "prior_wall_s", "pretrain_wall_s"]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    os.replace(tmp, path)


def markdown(cfg: ExperimentConfig, rows: list[dict], pooled: list[dict]) -> str:
    pct = lambda x: f"{100 * x:.1f}"
    prior_tasks = ", ".join(_as_tuple(cfg.prior.get("tasks", ())))
    phases = (f"V-PTR phases: multi-task offline RL on prior data ({prior_tasks}), then the "
              f"target with {100 * cfg.prior_fraction:g} % prior chunks per batch"
              + "".join(f" ({arm}: {100 * x:g} %)" for arm, x in cfg.prior_fraction_arms.items())
              if cfg.phases else "Fine-tuned on the target demos from the pretrained trunk")
    shifts = (f" Visual shift 0 is the env's own appearance; {', '.join(map(shift_key, cfg.eval_shifts))}"
              " are the same test episodes rendered at that domain shift."
              if cfg.eval_shifts else "")
    out = [f"# {cfg.name}: test success on {cfg.eval_env} (episodes from reset seed "
           f"{cfg.test_seed})", "", f"{phases}.{shifts}", "",
           "| pretraining | agent | shift | seeds | episodes | success % | "
           "95 % CI (pooled) | per seed % [95 % CI] | vs none: difference [95 % CI] |",
           "|---|---|---|---|---|---|---|---|---|"]
    for p in pooled:
        per = "; ".join(f"{pct(r['success_rate'])} [{pct(r['ci_low'])}, {pct(r['ci_high'])}]"
                        for r in rows if r["pretraining"] == p["pretraining"]
                        and r["agent"] == p["agent"] and r["shift"] == p["shift"])
        vs = p.get("vs_none")
        diff = (f"{100 * vs['difference']:+.1f} [{100 * vs['ci_low']:+.1f}, "
                f"{100 * vs['ci_high']:+.1f}] ({vs['pairs']} pairs)") if vs else "-"
        out.append(f"| {p['pretraining']} | {p['agent']} | {shift_key(p['shift'])} | "
                   f"{p['seeds']} | {p['episodes']} | {pct(p['success_rate'])} | "
                   f"{pct(p['ci_low'])}-{pct(p['ci_high'])} | {per} | {diff} |")
    walls = [r["finetune_wall_s"] + r["prior_wall_s"] + r["pretrain_wall_s"] for r in rows
             if r["shift"] == 0.0]
    if walls:
        what = "pretraining + phase 2 on prior data + " if cfg.phases else "pretraining + "
        out += ["", f"Wall time per cell ({what}fine-tuning + test evaluation): "
                    f"{min(walls):.0f}-{max(walls):.0f} s."]
    return "\n".join(out) + "\n"


def bar_chart(path: Path, pooled: list[dict], cfg: ExperimentConfig) -> None:
    """Pooled success with Wilson intervals: bars per pretraining and agent, one panel per
    visual shift level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in cfg.pretrainings if any(p["pretraining"] == a for p in pooled)]
    agents = [a for a in cfg.agents if any(p["agent"] == a for p in pooled)]
    shifts = [x for x in levels(cfg) if any(p["shift"] == x for p in pooled)]
    width = 0.8 / max(len(agents), 1)
    panel_w = 1.6 + 1.2 * len(arms) * max(len(agents), 1) * 0.6
    fig, axes = plt.subplots(1, len(shifts), figsize=(panel_w * len(shifts), 3.2),
                             squeeze=False, sharey=True)
    for ax, shift in zip(axes[0], shifts):
        for j, agent in enumerate(agents):
            xs, ys, lo, hi = [], [], [], []
            for i, arm in enumerate(arms):
                p = next((p for p in pooled if p["pretraining"] == arm and p["agent"] == agent
                          and p["shift"] == shift), None)
                if p is None:
                    continue
                xs.append(i + (j - (len(agents) - 1) / 2) * width)
                ys.append(100 * p["success_rate"])
                lo.append(100 * (p["success_rate"] - p["ci_low"]))
                hi.append(100 * (p["ci_high"] - p["success_rate"]))
            ax.bar(xs, ys, width=width * 0.95, yerr=[lo, hi], capsize=3, label=agent)
        ax.set_xticks(range(len(arms)), arms)
        ax.set_ylim(0, 100)
        ax.set_title(f"{cfg.name}: {cfg.eval_env}" + (f", visual shift {shift_key(shift)}"
                                                      if len(shifts) > 1 else ""), fontsize=9)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("test success % (pooled, Wilson 95 %)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- command


def data_configs(cfg: ExperimentConfig) -> tuple[Any, Any, Any]:
    """(video, robot, prior or None) generator configs; the prior data take [robot]'s
    values (image size, noise, cameras ...) under their own."""
    from sim.generate import RobotDataConfig, VideoDataConfig
    from vptr.config import build_config

    extra = {"data_dir": str(cfg.data_dir)} if cfg.data_dir else {}
    vcfg = build_config(VideoDataConfig, {**cfg.video, **extra}, where="video")
    rcfg = build_config(RobotDataConfig, {**cfg.robot, **extra}, where="robot")
    pcfg = (build_config(RobotDataConfig, {**cfg.robot, **cfg.prior, **extra}, where="prior")
            if cfg.phases else None)
    return vcfg, rcfg, pcfg


def prepare_data(cfg: ExperimentConfig, log: Callable[[str], None]
                 ) -> tuple[Path | None, Path, Path | None]:
    from sim.generate import generate_robot, generate_video, robot_dataset_path

    vcfg, rcfg, pcfg = data_configs(cfg)
    needs_video = any(a != "none" for a in cfg.pretrainings)
    from vptr.console import bars
    from vptr.data.pins import PINS_FILE, pinned_dataset

    quiet = lambda m: None
    pins = cfg.root / PINS_FILE  # the grid keeps its data across edits of sim/

    def robot_data(c) -> Path:
        return robot_dataset_path(generate_robot(c, log=quiet)[0], c)

    with bars(cfg.progress):
        video = (pinned_dataset(pins, "video", vcfg, lambda: generate_video(vcfg, log=quiet)[0],
                                log) if needs_video else None)
        robot = pinned_dataset(pins, "robot", rcfg, lambda: robot_data(rcfg), log)
        prior = (pinned_dataset(pins, "prior", pcfg, lambda: robot_data(pcfg), log)
                 if pcfg is not None else None)
    log(f"data: video {video}, robot {robot}" + (f", prior {prior}" if prior else ""))
    return video, robot, prior


def value_set_configs(cfg: ExperimentConfig) -> dict[str, Any]:
    """name -> VideoDataConfig of each held-out value set ([video]'s values under its own)."""
    from sim.generate import VideoDataConfig
    from vptr.config import build_config

    extra = {"data_dir": str(cfg.data_dir)} if cfg.data_dir else {}
    return {name: build_config(VideoDataConfig, {**cfg.video, **values, **extra},
                               where=f"value_sets.{name}")
            for name, values in cfg.value_sets.items()}


def prepare_value_sets(cfg: ExperimentConfig, log: Callable[[str], None]) -> dict[str, Path]:
    from sim.generate import generate_video
    from vptr.console import bars
    from vptr.data.pins import PINS_FILE, pinned_dataset

    out = {}
    with bars(cfg.progress):
        for name, vc in value_set_configs(cfg).items():
            out[name] = pinned_dataset(cfg.root / PINS_FILE, f"values_{name}", vc,
                                       lambda vc=vc: generate_video(vc, log=lambda m: None)[0],
                                       log)
    if out:
        log("value sets: " + ", ".join(f"{n} {p}" for n, p in out.items()))
    return out


def validate_cells(cells: list[Cell]) -> None:
    """Build every cell's run config before anything runs (a typo fails now, not in hour 3)."""
    from vptr.config import build_config
    from vptr.train.finetune_loop import FinetuneConfig
    from vptr.train.pretrain_loop import PretrainConfig

    for cell in cells:  # the runs they start from do not exist yet: a stand-in path
        cls = PretrainConfig if cell.kind == "pretrain" else FinetuneConfig
        values = {**cell.config, **start_from(cell, {cell.needs: {"run_dir": "<run>"}})}
        build_config(cls, values, where=cell.id)


def run(cfg: ExperimentConfig) -> int:
    if cfg.summary_only:
        data_configs(cfg)
        value_set_configs(cfg)
        cells = plan(cfg)  # the keys do not depend on where the data are
    else:
        validate_cells(plan(cfg))  # before any work
        data_configs(cfg)  # a bad [video], [robot] or [prior] table fails now
        value_set_configs(cfg)
        cfg.root.mkdir(parents=True, exist_ok=True)  # an unwritable --out-dir fails now
        video, robot, prior = prepare_data(cfg, print)
        sets = prepare_value_sets(cfg, print) if any(
            a != "none" for a in cfg.pretrainings) else {}
        cells = plan(cfg, video, robot, prior)
        counts = run_cells(cfg, cells, value_sets=sets)
        print(f"cells: {counts['ran']} run now, {counts['done_before']} done before"
              + (f" ({counts['kept']} from the results folder {cfg.results_dir})"
                 if counts["kept"] else "")
              + f", {counts['locked']} running elsewhere, {counts['blocked']} waiting for a "
              f"cell they start from"
              + (f"; {counts['evaluated']} done cells given their missing evaluations"
                 if counts["evaluated"] else ""))
    summary = summarize(cfg, cells)
    print(f"summary of {len(summary['cells'])} fine-tuning cells: {cfg.root / 'summary.md'}")
    print((cfg.root / "summary.md").read_text())
    return 0
