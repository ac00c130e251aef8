"""Checkpoints that survive SIGKILL: weights (safetensors), optimizer, RNG, loop state.

Layout (:mod:`vptr.runs`)::

    <run>/checkpoints/step_0000500/{model.safetensors, optimizer.pt, rng.pt, state.json}
    <run>/checkpoints/latest            (text: name of the newest complete checkpoint)

A checkpoint is built in a temporary folder and renamed into place
(:func:`vptr.files.building`), and ``latest`` is replaced atomically afterwards, so a run
killed at any instant resumes from the last *complete* checkpoint. ``.pt`` files hold only
tensors and plain containers and are read with ``torch.load(weights_only=True)`` (never
arbitrary pickle).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from vptr import runs
from vptr.errors import DataError
from vptr.files import atomic_write_text, building
from vptr.nets.weights import load_modules, state_dict_to_safetensors

latest = runs.latest_checkpoint


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Run the block without touching the training's random streams (torch, CUDA, numpy,
    Python): what it draws is taken back after it. Periodic evaluation runs in one, so how
    often a run evaluates does not change what it learns (``eval_every`` is not part of a
    run's hash)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def save(run_dir: Path, step: int, modules: dict[str, torch.nn.Module],
         optimizers: dict[str, Any], state: dict[str, Any], keep: int = 3) -> Path:
    """Write checkpoint ``step`` atomically and keep the newest ``keep`` of them."""
    ckdir = Path(run_dir) / runs.CHECKPOINTS
    name = runs.checkpoint_name(step)
    with building(ckdir / name, "checkpoint directory") as tmp:
        save_file(state_dict_to_safetensors(modules), str(tmp / runs.WEIGHTS))
        torch.save({k: o.state_dict() for k, o in optimizers.items()}, tmp / "optimizer.pt")
        # numpy/python RNG states are tuples of plain values: fine for weights_only loading
        torch.save(_rng_to_plain(rng_state()), tmp / "rng.pt")
        (tmp / runs.STATE).write_text(json.dumps({"step": step, **state}, indent=2,
                                                 default=str))
    atomic_write_text(ckdir / runs.LATEST, name)
    for old in sorted(p for p in ckdir.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return ckdir / name


def _rng_to_plain(state: dict[str, Any]) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = state["numpy"]
    out = dict(state)
    out["numpy"] = {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                    "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
    version, internal, gauss = state["python"]
    out["python"] = {"version": version, "internal": list(internal), "gauss": gauss}
    return out


def _rng_from_plain(state: dict[str, Any]) -> dict[str, Any]:
    n = state["numpy"]
    p = state["python"]
    out = dict(state)
    out["numpy"] = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                    n["cached"])
    out["python"] = (p["version"], tuple(p["internal"]), p["gauss"])
    return out


def load(path: Path, modules: dict[str, torch.nn.Module],
         optimizers: dict[str, Any] | None = None,
         restore_rng: bool = True, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Restore modules (and optimizers, RNG) from a checkpoint; returns its state.json."""
    path = Path(path)
    state = runs.read_state(path)
    load_modules(path / runs.WEIGHTS, modules)
    if optimizers:
        opt_states = torch.load(path / "optimizer.pt", map_location=map_location,
                                weights_only=True)
        for k, opt in optimizers.items():
            if k not in opt_states:
                raise DataError(f"{path / 'optimizer.pt'}: no state for {k!r} (has "
                                f"{', '.join(opt_states) or 'none'}); the run was written by "
                                f"another version or with other options")
            opt.load_state_dict(opt_states[k])
    if restore_rng:
        load_rng(path)
    return state


def load_rng(path: Path, offset: int = 0) -> None:
    """Restore the RNG state saved with a checkpoint. ``offset`` > 0 (other ranks of a
    distributed run) then derives a distinct but deterministic torch stream."""
    set_rng_state(_rng_from_plain(torch.load(Path(path) / "rng.pt", weights_only=True)))
    if offset:
        torch.manual_seed(int(torch.randint(0, 2**62, (1,))) + offset)
