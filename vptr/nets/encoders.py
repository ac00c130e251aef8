"""Image encoders: one registry, one interface.

Every encoder is an :class:`ImageEncoder`: ``forward(x)`` takes images ``(B, C, H, W)`` with
``C = 3 * frame_stack`` (frames stacked oldest..newest along channels), either ``uint8`` in
[0, 255] (divided by 255 here) or float already in [0, 1], and returns ``(B, out_dim)``
features. ``channels_last=True`` (the default) keeps weights and activations in NHWC, which
was measured 2.4x faster for the Impala CNN on the project's CPUs (spec "Observed in a CPU
prototype").

Entries:

* ``impala`` — the Impala CNN of the ICVF release (``jaxrl_m/vision/impala.py``,
  MIT-licensed; re-implemented here, not copied): stacks of (conv3x3 -> max-pool 3x3
  stride 2 "SAME" -> ``num_blocks`` residual blocks of relu-conv-relu-conv-add), widths
  (16, 32, 32), a final ReLU and a flatten. Xavier-uniform conv weights, zero biases, as
  in the release. 64x64 input -> 8x8x32 = 2048 features.
* ``impala_small`` — (8, 16, 16) channels and one residual block per stack: the same
  structure at about a tenth of the compute, for CI and quick experiments.
* ``timm:<name>`` — any timm backbone, created with ``pretrained=False``, ``num_classes=0``
  and ``in_chans=C`` (nothing is ever downloaded). ``weights=<file>`` loads a *local*
  ``.safetensors`` / ``.pth`` state dict (``torch.load(weights_only=True)``); a 3-channel
  stem is adapted to ``C`` channels with timm's ``adapt_input_conv``.
* ``<trunk>+head:<w1>-<w2>...[:final][:ln][:sphere][:act=<name>]`` — a trunk followed by an
  MLP head of those widths (:func:`vptr.nets.mlp.make_mlp`; ``final``: activation after the
  last layer, ``ln``: LayerNorm after each activation, ``sphere``: rows rescaled to norm
  √d). This is how a pretraining objective's state feature φ(s) (e.g. ICVF's φ, TD-JEPA's
  φ head) is exported as an encoder (``vptr.pretrain.export_features``): the name alone
  rebuilds it, so fine-tuning and exported policies take it like any trunk.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vptr.errors import ConfigError, DataError, UnknownNameError, unknown

TIMM_PREFIX = "timm:"


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


class ImageEncoder(nn.Module):
    """Base class: input checking, uint8 -> [0, 1] and memory format, then ``features``."""

    out_dim: int

    def __init__(self, in_channels: int, image_size: int | Sequence[int],
                 channels_last: bool = True) -> None:
        super().__init__()
        if in_channels <= 0:
            raise ConfigError(f"encoder in_channels must be positive, got {in_channels}")
        self.in_channels = int(in_channels)
        self.image_size = _pair(image_size)
        if min(self.image_size) <= 0:
            raise ConfigError(f"encoder image_size must be positive, got {image_size}")
        self.channels_last = bool(channels_last)

    def _finish_init(self) -> None:
        """Call at the end of a subclass ``__init__`` (weights exist by then)."""
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise DataError(f"encoder expects images (B, {self.in_channels}, H, W) "
                            f"(3 channels per stacked frame), got shape {tuple(x.shape)}")
        if self.channels_last:
            # Converting the uint8 tensor first is 4x less memory traffic than converting
            # the float copy; the float conversion below preserves the layout.
            x = x.contiguous(memory_format=torch.channels_last)
        if x.dtype == torch.uint8:  # to the weights' dtype (float32 unless .double()/.half())
            dtype = next(self.parameters(), torch.empty(0)).dtype
            return x.to(dtype).div_(255.0)
        if not x.is_floating_point():
            raise DataError(f"encoder expects uint8 or float images, got {x.dtype}")
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.prepare(x))


# ----------------------------------------------------------------------------- Impala


def max_pool_same(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """3x3 / stride-2 max-pool with XLA "SAME" padding, as in the ICVF release (Flax).

    "SAME" gives ceil(n / 2) outputs and pads the *end* of even sizes (windows start at
    pixel 0) but both sides of odd sizes. torch's symmetric ``padding=1`` would shift every
    window one pixel up-left for even sizes. ``ceil_mode`` with no padding on even sides
    reproduces "SAME" exactly without an explicit -inf pad (which cost 2x in this layer);
    tests compare against the explicit pad.
    """
    if (kernel, stride) != (3, 2):
        raise ValueError("max_pool_same is written for the Impala 3x3 / stride-2 pool")
    h, w = (int(n) for n in x.shape[-2:])  # constants when traced (TorchScript / ONNX)
    return F.max_pool2d(x, kernel, stride, padding=(h % 2, w % 2), ceil_mode=True)


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1)
    nn.init.xavier_uniform_(conv.weight)  # release: nn.initializers.xavier_uniform()
    nn.init.zeros_(conv.bias)
    return conv


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))) — pre-activation, no normalisation (Impala)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = _conv3x3(channels, channels)
        self.conv1 = _conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ImpalaStack(nn.Module):
    def __init__(self, cin: int, cout: int, num_blocks: int) -> None:
        super().__init__()
        self.conv = _conv3x3(cin, cout)
        self.blocks = nn.Sequential(*(ResidualBlock(cout) for _ in range(num_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(max_pool_same(self.conv(x)))


class ImpalaEncoder(ImageEncoder):
    """Impala CNN as configured in the ICVF release (image experiments, 64x64 input)."""

    def __init__(self, in_channels: int, image_size: int | Sequence[int],
                 stack_sizes: Sequence[int] = (16, 32, 32), num_blocks: int = 2,
                 channels_last: bool = True) -> None:
        super().__init__(in_channels, image_size, channels_last)
        stack_sizes = tuple(int(c) for c in stack_sizes)
        if not stack_sizes or min(stack_sizes) <= 0 or num_blocks < 0:
            raise ConfigError(f"impala encoder: stack_sizes must be positive widths and "
                              f"num_blocks >= 0, got {stack_sizes}, {num_blocks}")
        stacks, cin = [], self.in_channels
        for cout in stack_sizes:
            stacks.append(ImpalaStack(cin, cout, num_blocks))
            cin = cout
        self.stacks = nn.Sequential(*stacks)
        h, w = self.image_size
        for _ in stack_sizes:  # each stack halves the size, rounding up ("SAME")
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.out_dim = stack_sizes[-1] * h * w
        self._finish_init()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # flatten() copies an NHWC tensor into NCHW order, so features are laid out the
        # same whatever the memory format (checkpoints stay interchangeable).
        return F.relu(self.stacks(x)).flatten(1)


# ----------------------------------------------------------------------------- timm


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` or ``.pt/.pth/.bin`` file (no pickle code)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: encoder weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    # safetensors, pickle (code refused by weights_only), zip and EOF errors all mean the
    # same to the user: this file cannot be used.
    except Exception as e:
        raise DataError(f"{path}: cannot read encoder weights ({type(e).__name__}: {e})") from None
    # Training checkpoints often nest the weights one level down.
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


class TimmEncoder(ImageEncoder):
    """A timm backbone without classifier (``num_classes=0`` -> pooled features)."""

    def __init__(self, model_name: str, in_channels: int, image_size: int | Sequence[int],
                 weights: str | Path | None = None, normalize: bool = True,
                 channels_last: bool = True, **timm_kwargs: Any) -> None:
        super().__init__(in_channels, image_size, channels_last)
        import timm

        if not timm.is_model(model_name):
            close = difflib.get_close_matches(model_name, timm.list_models(), n=5)
            hint = f"; did you mean: {', '.join(close)}" if close else ""
            raise UnknownNameError(f"unknown timm model {model_name!r}{hint} "
                                   f"(see timm.list_models())")
        try:
            self.model = timm.create_model(model_name, pretrained=False, num_classes=0,
                                           in_chans=self.in_channels, **timm_kwargs)
        except TypeError as e:
            raise ConfigError(f"encoder timm:{model_name}: bad option(s) {timm_kwargs} "
                              f"({e})") from None
        self.model_name = model_name
        if weights is not None:
            self._load_weights(Path(weights))
        # ImageNet-style normalisation with the model's own statistics, repeated for every
        # stacked frame: needed for ImageNet weights, a harmless affine map otherwise.
        self.normalize = bool(normalize)
        cfg = getattr(self.model, "pretrained_cfg", {}) or {}
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        reps = math.ceil(self.in_channels / mean.numel())
        self.register_buffer("mean", mean.repeat(reps)[: self.in_channels].view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", std.repeat(reps)[: self.in_channels].view(1, -1, 1, 1),
                             persistent=False)
        self._finish_init()
        self.out_dim = self._probe_out_dim()

    def _load_weights(self, path: Path) -> None:
        from timm.models import adapt_input_conv

        state = load_state_dict_file(path)
        cfg = getattr(self.model, "pretrained_cfg", {}) or {}
        own = self.model.state_dict()
        classifier = cfg.get("classifier")
        classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
        state = {k: v for k, v in state.items()
                 if not any(k == c or k.startswith(c + ".") for c in classifiers) or k in own}
        first_conv = cfg.get("first_conv")
        for conv in (first_conv,) if isinstance(first_conv, str) else tuple(first_conv or ()):
            key = conv + ".weight"
            if key in state and key in own and state[key].shape[1] != own[key].shape[1]:
                state[key] = adapt_input_conv(self.in_channels, state[key],
                                              base_chans=state[key].shape[1])
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise DataError(f"{path}: weights do not fit timm:{self.model_name} ({e})") from None
        if missing or unexpected:
            raise DataError(f"{path}: weights do not fit timm:{self.model_name} "
                            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")

    def _probe_out_dim(self) -> int:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            dummy = torch.zeros(1, self.in_channels, *self.image_size)
            out = self.features(self.prepare(dummy))
        self.train(was_training)
        if out.ndim != 2:
            raise ConfigError(f"encoder timm:{self.model_name} returns features of shape "
                              f"{tuple(out.shape)}, expected (B, D); pick a model with pooling")
        return int(out.shape[1])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = (x - self.mean) / self.std
        return self.model(x)


# ----------------------------------------------------------------------------- heads

HEAD_MARK = "+head:"


@dataclass(frozen=True)
class HeadSpec:
    """The MLP head of a ``<trunk>+head:...`` encoder name."""

    widths: tuple[int, ...]
    activate_final: bool = False
    layer_norm: bool = False
    sphere: bool = False
    activation: str = "relu"

    @classmethod
    def parse(cls, text: str, name: str) -> HeadSpec:
        widths, *flags = text.split(":")
        try:
            dims = tuple(int(w) for w in widths.split("-"))
        except ValueError:
            dims = ()
        if not dims or any(d <= 0 for d in dims):
            raise ConfigError(f"encoder {name!r}: head widths must be positive integers "
                              f"joined by '-' (e.g. +head:256-256), got {widths!r}")
        kw: dict[str, Any] = {}
        for flag in flags:
            if flag in ("final", "ln", "sphere"):
                kw[{"final": "activate_final", "ln": "layer_norm"}.get(flag, flag)] = True
            elif flag.startswith("act="):
                kw["activation"] = flag[4:]
            else:
                raise ConfigError(f"encoder {name!r}: unknown head flag {flag!r} (final, ln, "
                                  "sphere, act=<name>)")
        return cls(dims, **kw)

    def text(self) -> str:
        flags = [f for f, on in (("final", self.activate_final), ("ln", self.layer_norm),
                                 ("sphere", self.sphere)) if on]
        if self.activation != "relu":
            flags.append(f"act={self.activation}")
        return ":".join(["-".join(map(str, self.widths)), *flags])


def head_encoder_name(trunk: str, spec: HeadSpec) -> str:
    return f"{trunk}{HEAD_MARK}{spec.text()}"


class HeadEncoder(ImageEncoder):
    """A trunk and an MLP head on its features: ``trunk.*`` and ``head.*`` weights."""

    def __init__(self, trunk: ImageEncoder, spec: HeadSpec) -> None:
        from vptr.nets.mlp import make_mlp

        super().__init__(trunk.in_channels, trunk.image_size, trunk.channels_last)
        self.trunk = trunk
        self.spec = spec
        self.head = make_mlp(int(trunk.out_dim), spec.widths, activation=spec.activation,
                             activate_final=spec.activate_final, layer_norm=spec.layer_norm)
        self.out_dim = spec.widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.trunk(x))
        return math.sqrt(y.shape[-1]) * F.normalize(y, dim=-1) if self.spec.sphere else y


# ----------------------------------------------------------------------------- registry

EncoderFactory = Callable[..., ImageEncoder]

ENCODERS: dict[str, EncoderFactory] = {
    "impala": ImpalaEncoder,
    "impala_small": functools.partial(ImpalaEncoder, stack_sizes=(8, 16, 16), num_blocks=1),
}


def encoder_names() -> list[str]:
    return [*ENCODERS, TIMM_PREFIX + "<name>"]


def make_encoder(name: str, in_channels: int, image_size: int | Sequence[int],
                 **kw: Any) -> ImageEncoder:
    """Build encoder ``name`` for ``in_channels``-channel images of ``image_size`` pixels.

    ``kw`` are encoder options (e.g. ``channels_last``, ``stack_sizes``; for timm models
    ``weights``, ``normalize`` and any ``timm.create_model`` keyword).
    """
    if HEAD_MARK in name:
        trunk, _, head = name.partition(HEAD_MARK)
        return HeadEncoder(make_encoder(trunk, in_channels, image_size, **kw),
                           HeadSpec.parse(head, name))
    if name.startswith(TIMM_PREFIX):
        return TimmEncoder(name[len(TIMM_PREFIX):], in_channels, image_size, **kw)
    if name not in ENCODERS:
        raise unknown("encoder", name, encoder_names())
    factory = ENCODERS[name]
    try:
        inspect.signature(factory).bind(in_channels, image_size, **kw)
    except TypeError:
        params = [p for p in inspect.signature(factory).parameters
                  if p not in ("in_channels", "image_size")]
        raise ConfigError(f"encoder {name!r}: unknown option(s) "
                          f"{', '.join(sorted(set(kw) - set(params)))}; valid: "
                          f"{', '.join(params)}") from None
    return factory(in_channels, image_size, **kw)
