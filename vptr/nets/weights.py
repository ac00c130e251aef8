"""Weight files: safetensors save/load of named modules, and the exported-encoder folder.

Nothing here imports training code, and nothing is unpickled, so a runtime (export,
deployment, a fine-tuning run loading a pretrained encoder) reads weights with torch,
safetensors and this module only.

Exported encoder (written by ``vptr pretrain`` as ``<run>/encoder/``)::

    model.safetensors   the encoder's state dict (keys without a prefix)
    config.json         {"format": "vptr-encoder/1", "encoder": name, "in_channels",
                         "frame_stack", "image_size", "out_dim", "channels_last", "input",
                         and provenance such as "objective" and "step"}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vptr.errors import DataError
from vptr.files import atomic_write_text, read_json_object

ENCODER_FORMAT = "vptr-encoder/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def state_dict_to_safetensors(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Flatten named modules into one tensor dict (``<module>.<param>``, or ``<param>`` for
    the name ""), contiguous, on the CPU."""
    out = {}
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        for k, v in module.state_dict().items():
            out[prefix + k] = v.detach().to("cpu").contiguous().clone()
    return out


def save_weights(path: str | os.PathLike, modules: dict[str, torch.nn.Module]) -> None:
    """Write modules' weights to a safetensors file atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(state_dict_to_safetensors(modules), str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing or corrupt file is a DataError."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: weights file not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable safetensors file ({e})") from None


def load_modules(path: str | os.PathLike, modules: dict[str, torch.nn.Module],
                 strict: bool = True) -> None:
    """Load weights written by :func:`save_weights` into the same named modules."""
    tensors = read_weights(path)
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            missing, unexpected = module.load_state_dict(sd, strict=strict)
        except RuntimeError as e:  # shape mismatches: the model options changed
            first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln),
                         str(e).splitlines()[0])
            raise DataError(f"{path}: weights do not fit the {name or 'model'} built from the "
                            f"current config ({first}); the checkpoint was written with other "
                            f"model options — use the run's own config or a new run "
                            f"directory") from None
        if strict and (missing or unexpected):
            raise DataError(f"{path}: weights do not match {name or 'the model'} "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def export_encoder(out: str | os.PathLike, encoder: torch.nn.Module, name: str,
                   frame_stack: int, image_size: int, channels_last: bool = True,
                   **provenance: Any) -> Path:
    """Write ``out/{model.safetensors, config.json}`` for :func:`load_encoder`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / WEIGHTS_FILE, {"": encoder})
    meta = {"format": ENCODER_FORMAT, "encoder": name, "in_channels": 3 * frame_stack,
            "frame_stack": frame_stack, "image_size": image_size,
            "out_dim": int(encoder.out_dim), "channels_last": channels_last,
            "input": "uint8 RGB (B, 3*stack, H, W)", **provenance}
    atomic_write_text(out / CONFIG_FILE, json.dumps(meta, indent=2))
    return out


def read_encoder_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of an exported encoder, checked for the fields a loader needs."""
    path = Path(folder) / CONFIG_FILE
    meta = read_json_object(folder, CONFIG_FILE, "an exported encoder")
    if meta.get("format") != ENCODER_FORMAT:
        raise DataError(f"{path}: not a {ENCODER_FORMAT} encoder config "
                        f"(format {meta.get('format')!r})")
    missing = [k for k in ("encoder", "in_channels", "image_size", "out_dim") if k not in meta]
    if missing:
        raise DataError(f"{path}: missing field(s) {', '.join(missing)}")
    return meta


def load_encoder(folder: str | os.PathLike, **kw: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(encoder with the exported weights, its config) from a folder written by
    :func:`export_encoder`; ``kw`` override encoder options (e.g. ``channels_last``)."""
    from vptr.nets.encoders import make_encoder

    meta = read_encoder_config(folder)
    options = {"channels_last": bool(meta.get("channels_last", True)), **kw}
    encoder = make_encoder(meta["encoder"], int(meta["in_channels"]), int(meta["image_size"]),
                           **options)
    load_modules(Path(folder) / WEIGHTS_FILE, {"": encoder})
    if int(encoder.out_dim) != int(meta["out_dim"]):
        raise DataError(f"{folder}: encoder gives {encoder.out_dim} features, the config says "
                        f"{meta['out_dim']}")
    return encoder.eval(), meta
