"""Image augmentation of pretraining batches: random shift (DrQ, Kostrikov et al. 2021,
Sec. 3.1; ICVF release) and colour jitter (brightness, contrast, saturation).

Pad each image by ``pad`` pixels repeating the border ("edge"/replicate padding, as DrQ and
the ICVF release do), then crop back to H x W at a random offset in [0, 2*pad]^2. One offset
per sample: all channels of a stacked observation shift together; different samples (and
different batch keys) shift independently.

Two implementations of the same operation: on CPU a pad + per-sample slice copy (numpy; ~5x
faster than a gather for uint8 on CPU, measured), elsewhere one ``torch.gather`` over
clamped row/column indices (no Python loop on the GPU). Tests check they agree.

Colour jitter (:func:`color_jitter_numpy`) scales brightness, contrast and saturation of each
image by its own factors drawn from U(1 - s, 1 + s) (torchvision's ``ColorJitter`` ranges, in
a fixed order, without hue); the frames of a stacked observation share one draw, so only
appearance changes, never the motion between them.
"""

from __future__ import annotations

import numpy as np
import torch


def _check(shape: tuple[int, ...], pad: int) -> None:
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if len(shape) != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(shape)}")


def pad_edges(images: np.ndarray, pad: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C, H+2p, W+2p), border pixels repeated (like np.pad mode="edge")."""
    n, c, h, w = images.shape
    out = np.empty((n, c, h + 2 * pad, w + 2 * pad), images.dtype)
    out[:, :, pad:pad + h, pad:pad + w] = images
    out[:, :, :pad, pad:pad + w] = images[:, :, :1, :]
    out[:, :, pad + h:, pad:pad + w] = images[:, :, -1:, :]
    out[:, :, :, :pad] = out[:, :, :, pad:pad + 1]
    out[:, :, :, pad + w:] = out[:, :, :, pad + w - 1:pad + w]
    return out


def shift_numpy(images: np.ndarray, offsets: np.ndarray, pad: int) -> np.ndarray:
    """Crop sample i of the edge-padded ``images`` at ``offsets[i] = (dy, dx)`` in [0, 2p]."""
    _check(images.shape, pad)
    if pad == 0:
        return images.copy()
    h, w = images.shape[2:]
    padded = pad_edges(images, pad)
    out = np.empty_like(images)
    for i, (dy, dx) in enumerate(np.asarray(offsets).tolist()):
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out


def shift_gather(images: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Same as :func:`shift_numpy` for any device/dtype, as one gather."""
    _check(tuple(images.shape), pad)
    b, c, h, w = images.shape
    d = offsets.to(images.device) - pad
    rows = (torch.arange(h, device=images.device)[None, :] + d[:, :1]).clamp_(0, h - 1)
    cols = (torch.arange(w, device=images.device)[None, :] + d[:, 1:]).clamp_(0, w - 1)
    flat = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return images.reshape(b, c, h * w).gather(2, flat).reshape(b, c, h, w)


def random_shift(images: torch.Tensor, pad: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image of ``images`` (B, C, H, W) by up to ``pad`` pixels (new tensor).

    ``pad == 0`` returns ``images`` unchanged. ``generator`` (a CPU generator) makes the
    offsets reproducible.
    """
    _check(tuple(images.shape), pad)
    if pad == 0 or images.shape[0] == 0:
        return images
    offsets = torch.randint(0, 2 * pad + 1, (images.shape[0], 2), generator=generator)
    if images.device.type == "cpu" and images.dtype != torch.bfloat16 \
            and not images.requires_grad:
        return torch.from_numpy(shift_numpy(images.numpy(), offsets.numpy(), pad))
    return shift_gather(images, offsets, pad)


_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma, as torchvision


def jitter_factors(rng: np.random.Generator, n: int, strength: float) -> np.ndarray:
    """(n, 3) brightness, contrast and saturation factors, each U(1 - s, 1 + s)."""
    if not (0.0 <= strength < 1.0):
        raise ValueError(f"colour-jitter strength must be in [0, 1), got {strength}")
    return rng.uniform(1.0 - strength, 1.0 + strength, size=(n, 3)).astype(np.float32)


def color_jitter_numpy(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Brightness, then contrast, then saturation of uint8 RGB images (N, 3*S, H, W) (S
    stacked frames, oldest first) by ``factors`` (N, 3); a new uint8 array.

    brightness: ``x * b``; contrast: ``(x - mean gray of the frame) * c + mean gray``;
    saturation: ``(x - gray pixel) * s + gray pixel``; clipped to [0, 255] and rounded."""
    _check(images.shape, 0)
    n, c, h, w = images.shape
    if c % 3:
        raise ValueError(f"expected RGB frames stacked along channels, got {c} channels")
    f = np.asarray(factors, dtype=np.float32)
    if f.shape != (n, 3):
        raise ValueError(f"expected factors of shape ({n}, 3), got {f.shape}")
    x = images.reshape(n, c // 3, 3, h, w).astype(np.float32)
    x *= f[:, 0, None, None, None, None]
    np.clip(x, 0.0, 255.0, out=x)
    gray = np.einsum("nsc...,c->ns...", x, _GRAY)  # (n, S, H, W)
    mean = gray.mean(axis=(2, 3), keepdims=True)[:, :, None]
    x = (x - mean) * f[:, 1, None, None, None, None] + mean
    np.clip(x, 0.0, 255.0, out=x)
    gray = np.einsum("nsc...,c->ns...", x, _GRAY)[:, :, None]
    x = (x - gray) * f[:, 2, None, None, None, None] + gray
    np.clip(x, 0.0, 255.0, out=x)
    return np.rint(x).astype(np.uint8).reshape(n, c, h, w)
