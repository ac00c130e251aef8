"""Checkpoints that survive SIGKILL: weights (safetensors), optimizer, RNG, data position.

Layout of a run directory::

    <run>/checkpoints/step_0000500/{model.safetensors, optimizer.pt, rng.pt, state.json}
    <run>/checkpoints/latest            (text: name of the newest complete checkpoint)

A checkpoint is written into a temporary directory and renamed into place, and
``latest`` is replaced atomically afterwards, so a run killed at any instant resumes
from the last *complete* checkpoint. ``.pt`` files hold only tensors and plain
containers and are read with ``torch.load(weights_only=True)`` (never arbitrary pickle).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vptr.errors import DataError


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def state_dict_to_safetensors(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Flatten named modules into one tensor dict (``<module>.<param>``, or ``<param>`` for
    the name ""), contiguous, on the CPU."""
    out = {}
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        for k, v in module.state_dict().items():
            out[prefix + k] = v.detach().to("cpu").contiguous().clone()
    return out


def save_weights(path: Path, modules: dict[str, torch.nn.Module]) -> None:
    """Write modules' weights to a safetensors file atomically."""
    tmp = Path(path).with_name(Path(path).name + f".tmp{os.getpid()}")
    save_file(state_dict_to_safetensors(modules), str(tmp))
    os.replace(tmp, path)


def load_modules(path: Path, modules: dict[str, torch.nn.Module], strict: bool = True) -> None:
    tensors = load_file(str(path))
    for name, module in modules.items():
        prefix = name + "."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            missing, unexpected = module.load_state_dict(sd, strict=strict)
        except RuntimeError as e:  # shape mismatches: the model options changed
            first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln),
                         str(e).splitlines()[0])
            raise DataError(f"{path}: weights do not fit the {name} built from the current "
                            f"config ({first}); the checkpoint was written with other model "
                            f"options — use the run's own config or a new run directory") from None
        if strict and (missing or unexpected):
            raise DataError(f"{path}: weights do not match {name} "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


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


def save(run_dir: Path, step: int, modules: dict[str, torch.nn.Module],
         optimizers: dict[str, torch.optim.Optimizer], state: dict[str, Any],
         keep: int = 3) -> Path:
    """Write checkpoint ``step`` atomically and keep the newest ``keep`` of them."""
    ckdir = Path(run_dir) / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    for stale in ckdir.glob(".step_*.tmp*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step_{step:07d}"
    final = ckdir / name
    tmp = ckdir / f".{name}.tmp{os.getpid()}"
    tmp.mkdir()
    save_file(state_dict_to_safetensors(modules), str(tmp / "model.safetensors"))
    torch.save({k: o.state_dict() for k, o in optimizers.items()}, tmp / "optimizer.pt")
    # numpy/python RNG states are tuples of plain values: fine for weights_only loading
    torch.save(_rng_to_plain(rng_state()), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2, default=str))
    if final.exists():  # move the old copy aside first: `final` never goes missing
        old = ckdir / f".{name}.tmp{os.getpid()}-old"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    atomic_write_text(ckdir / "latest", name)
    for old in sorted(p for p in ckdir.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    ckdir = Path(run_dir) / "checkpoints"
    try:
        path = ckdir / (ckdir / "latest").read_text().strip()
        if (path / "state.json").exists():
            return path
    except OSError:
        pass
    # no pointer, or it names a missing checkpoint: the newest complete one
    complete = sorted(p for p in ckdir.glob("step_*") if (p / "state.json").exists())
    return complete[-1] if complete else None


def load(path: Path, modules: dict[str, torch.nn.Module],
         optimizers: dict[str, torch.optim.Optimizer] | None = None,
         restore_rng: bool = True, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Restore modules (and optimizers, RNG) from a checkpoint; returns its state.json."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable checkpoint ({e})") from None
    load_modules(path / "model.safetensors", modules)
    if optimizers:
        opt_states = torch.load(path / "optimizer.pt", map_location=map_location, weights_only=True)
        for k, opt in optimizers.items():
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
