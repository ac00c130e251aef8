"""Real-Time Chunking (Black, Galliker, Levine 2025, arXiv 2506.07339): inpainting the
next action chunk on the still-pending actions of the current one.

Flow convention (ours, as in the paper): ``x_tau = tau * x_1 + (1 - tau) * x_0``, noise
``x_0`` at tau = 0, data ``x_1`` at tau = 1; the policy's velocity field
``v(x_tau, tau) ~ x_1 - x_0`` is integrated with ``n`` Euler steps.

* :func:`prefix_weights` -- the soft mask of eq. 5: 1 on the ``d`` actions that will
  execute before the new chunk lands (frozen), decaying to 0 over the rest of the
  overlap with the pending actions, 0 beyond.
* :func:`hold_padded` -- the prefix target at full chunk length: the pending actions,
  then the last pending action held (never zeros: a zero in normalised space decodes to
  the dataset mean, a seam toward a neutral pose).
* :func:`guided_sample` -- Euler integration with ΠGDM guidance (paper eq. 2-4): at each
  step the velocity gets ``min(beta, (1 - tau) / (tau * r_tau^2)) * J^T diag(W) (Y - x1_hat)``
  where ``x1_hat = x + (1 - tau) v(x)`` is the predicted clean chunk, ``J`` its Jacobian
  in ``x`` (one vector-Jacobian product by autograd) and
  ``r_tau^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from vptr.errors import ConfigError

Schedule = Literal["exp", "linear", "ones", "zeros"]


def prefix_weights(h: int, frozen: int, overlap: int, schedule: Schedule = "exp") -> np.ndarray:
    """Weights (h,) of the prefix: 1 for i < ``frozen``; for ``frozen <= i < overlap``
    ``c_i = (overlap - i) / (overlap - frozen + 1)`` mapped by the schedule (paper eq. 5:
    ``"exp"`` -> ``c_i (e^c_i - 1) / (e - 1)``, ``"linear"`` -> ``c_i``, ``"ones"`` -> 1,
    ``"zeros"`` -> 0); 0 for i >= ``overlap``. ``overlap`` is the number of pending
    actions (raised to ``frozen`` if smaller: those steps are frozen to the held action)."""
    if not 0 <= frozen <= h:
        raise ConfigError(f"rtc: frozen steps must be in [0, {h}], got {frozen}")
    overlap = min(max(overlap, frozen), h)
    w = np.zeros(h, dtype=np.float64)
    w[:frozen] = 1.0
    i = np.arange(frozen, overlap)
    c = (overlap - i) / (overlap - frozen + 1)
    if schedule == "exp":
        w[frozen:overlap] = c * np.expm1(c) / (math.e - 1)
    elif schedule == "linear":
        w[frozen:overlap] = c
    elif schedule == "ones":
        w[frozen:overlap] = 1.0
    elif schedule != "zeros":
        raise ConfigError(f"rtc: schedule must be exp, linear, ones or zeros, got {schedule!r}")
    return w


def hold_padded(pending: np.ndarray, h: int) -> np.ndarray:
    """The pending actions (L, Da) as an (h, Da) target: truncated, or padded by
    repeating the last pending action."""
    pending = np.asarray(pending, dtype=np.float64)
    if pending.ndim != 2 or len(pending) == 0:
        raise ConfigError(f"rtc: the prefix needs at least one pending action (L, Da), got {pending.shape}")
    if len(pending) >= h:
        return pending[:h].copy()
    pad = np.repeat(pending[-1:], h - len(pending), axis=0)
    return np.concatenate([pending, pad])


def guidance_weight(tau: float, max_weight: float) -> float:
    """``min(beta, (1 - tau) / (tau r_tau^2))`` (paper eq. 4); beta at tau = 0."""
    if tau <= 0.0:
        return max_weight
    r2 = (1 - tau) ** 2 / (tau ** 2 + (1 - tau) ** 2)
    return min(max_weight, (1 - tau) / (tau * r2))


def guided_sample(velocity: Callable[[torch.Tensor, float], torch.Tensor], noise: torch.Tensor,
                  steps: int, prefix: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                  max_guidance_weight: float = 5.0) -> torch.Tensor:
    """Integrate ``velocity`` from ``noise`` (..., h, Da) over ``steps`` Euler steps,
    guided toward ``prefix`` (same shape) with per-step ``weights`` (h,); without a
    prefix this is the plain flow sampler."""
    if steps < 1:
        raise ConfigError(f"rtc: steps must be >= 1, got {steps}")
    x = noise
    dt = 1.0 / steps
    for k in range(steps):
        tau = k * dt
        if prefix is None or weights is None:
            with torch.no_grad():
                v = velocity(x, tau)
        else:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                vg = velocity(xg, tau)
                x1_hat = xg + (1.0 - tau) * vg
                err = (prefix - x1_hat) * weights[..., :, None]
                (vjp,) = torch.autograd.grad(x1_hat, xg, grad_outputs=err.detach())
            v = vg.detach() + guidance_weight(tau, max_guidance_weight) * vjp
        x = (x + dt * v).detach()
    return x
