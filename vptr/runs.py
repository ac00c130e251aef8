"""The layout of a run directory, and reading it without any training code.

Training (``vptr.train``) writes run directories; diagnostics, export and later stages
read them through this module only::

    <run>/config.json                    the full resolved config of the run
    <run>/history.json                   [(step, mean loss since the previous log), ...]
    <run>/checkpoints/step_XXXXXXX/      model.safetensors, optimizer.pt, rng.pt, state.json
    <run>/checkpoints/latest             text: name of the newest complete checkpoint
    <run>/tb/                            TensorBoard event files
    <run>/encoder/                       exported encoder (vptr.nets.weights)
    <run>/values/                        value diagnostics (PNGs, report.json)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vptr.errors import DataError
from vptr.files import read_json_object

CONFIG = "config.json"
HISTORY = "history.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE = "state.json"
WEIGHTS = "model.safetensors"
ENCODER = "encoder"
TENSORBOARD = "tb"
VALUES = "values"


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def latest_checkpoint(run: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    ckdir = Path(run) / CHECKPOINTS
    try:
        path = ckdir / (ckdir / LATEST).read_text().strip()
        if (path / STATE).exists():
            return path
    except OSError:
        pass
    # no pointer, or it names a missing checkpoint: the newest complete one
    complete = sorted(p for p in ckdir.glob("step_*") if (p / STATE).exists())
    return complete[-1] if complete else None


def read_config(run: str | os.PathLike, kind: str = "run") -> dict[str, Any]:
    """The ``config.json`` of a run as a dict; a folder that is not a run is a DataError."""
    return read_json_object(run, CONFIG, f"a {kind} directory")


def read_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint (its step and the loop's position)."""
    try:
        return json.loads((Path(checkpoint) / STATE).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{checkpoint}: not a readable checkpoint ({e})") from None
