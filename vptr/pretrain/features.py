"""A pretraining run's state feature φ(s) as an exported encoder.

V-PTR and ICVF read downstream features from the image trunk; the objectives also learn a
state representation on top of it (ICVF: φ of the first value head, the s-side of
V(s, s+, z) = φ(s)ᵀ T(z) ψ(s+); TD-JEPA: the φ head, projected to the √d sphere). This
module writes that composition — trunk, then head — as an ordinary exported encoder whose
name (``<trunk>+head:...``, :class:`vptr.nets.encoders.HeadSpec`) rebuilds it, so that
``vptr finetune --encoder.init`` and ``vptr probe`` take φ like any trunk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from vptr.errors import ConfigError


def _icvf(nets: nn.Module, cfg: Any):
    from vptr.nets.encoders import HeadSpec

    return (HeadSpec(tuple(cfg.hidden_dims), activate_final=True, layer_norm=cfg.layer_norm),
            nets.heads[0].phi)


def _tdjepa(nets: nn.Module, cfg: Any):
    from vptr.nets.encoders import HeadSpec

    return (HeadSpec((*cfg.head_hidden_dims, cfg.phi_dim), layer_norm=True, sphere=True),
            nets.phi_head)


#: objective -> (nets, objective config) -> (head spec, the head module of ``nets``)
FEATURE_HEADS: dict[str, Callable[[nn.Module, Any], tuple[Any, nn.Module]]] = {
    "icvf": _icvf, "tdjepa": _tdjepa}


def feature_encoder(run: Any) -> nn.Module:
    """The trunk + φ head of a loaded run (:func:`vptr.diagnostics.heldout.load_pretrained`)
    as a :class:`vptr.nets.encoders.HeadEncoder` built from its name, weights copied."""
    from vptr.nets.encoders import head_encoder_name, make_encoder

    name = run.objective.name
    if name not in FEATURE_HEADS:
        raise ConfigError(f"{run.path}: a {name} run has no state-feature head φ to export "
                          f"(objectives with one: {', '.join(FEATURE_HEADS)}); probe its "
                          "trunk instead")
    spec, head = FEATURE_HEADS[name](run.nets, run.objective_cfg)
    trunk = run.nets.encoder
    enc = make_encoder(head_encoder_name(run.config["encoder"], spec), trunk.in_channels,
                       trunk.image_size, channels_last=trunk.channels_last)
    enc.trunk.load_state_dict(trunk.state_dict())
    enc.head.load_state_dict(head.state_dict())
    return enc.eval()


def export_features(run_dir: str | Path, out: str | Path) -> Path:
    """Write the run's φ encoder (newest checkpoint) to ``out`` (an exported-encoder
    folder: ``model.safetensors`` + ``config.json``)."""
    from vptr.diagnostics.heldout import load_pretrained
    from vptr.nets.weights import export_encoder

    run = load_pretrained(run_dir)
    from vptr.nets.encoders import head_encoder_name

    enc = feature_encoder(run)
    name = head_encoder_name(run.config["encoder"], enc.spec)
    return export_encoder(out, enc, name, run.frame_stack, run.image_size, enc.channels_last,
                          objective=run.objective.name, step=run.step, features="phi",
                          run=str(Path(run_dir).resolve()))
