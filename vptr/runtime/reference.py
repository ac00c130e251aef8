"""A flow chunk policy whose velocity field is exact: a reference for tests and benchmarks.

Chunks are Gaussian around a mean ``mu(obs)`` (h, Da) with, per action dimension, the
time covariance ``K = s_o^2 11^T + s_r^2 r r^T + s_w^2 I`` (a random offset, a random
ramp ``r_i = i / (h - 1)`` and a little white noise): smooth trajectories, like
demonstrations, whose offset the guidance can move. For ``x_tau = tau x_1 + (1 - tau) x_0``
the posterior mean is ``E[x_1 | x_tau] = mu + K_tau (x_tau - tau mu)`` with
``K_tau = tau K (tau^2 K + (1 - tau)^2 I)^-1``, and the marginal velocity is
``v = (E[x_1 | x_tau] - x_tau) / (1 - tau)``, so sampling, guidance and their Jacobians
are those of a real flow policy without training one. ``latency_s`` simulates inference
time: a call takes at least that long in all (it sleeps for what the sampling left).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from vptr.runtime.policy import PolicyIO
from vptr.runtime.rtc import guided_sample


class GaussianChunkFlow:
    """See the module docstring. ``mean(obs)`` returns the chunk mean (h, Da)."""

    def __init__(self, io: PolicyIO, mean: Callable[[dict], np.ndarray], offset_std: float = 0.5,
                 ramp_std: float = 0.1, white_std: float = 0.01, steps: int = 10, seed: int = 0,
                 latency_s: float = 0.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.io = io
        self.mean = mean
        self.steps = steps
        self.latency_s = latency_s
        self._sleep = sleep
        self._gen = torch.Generator().manual_seed(seed)
        h = io.chunk_size
        ones = np.ones(h)
        ramp = np.arange(h) / max(h - 1, 1)
        k = offset_std ** 2 * np.outer(ones, ones) + ramp_std ** 2 * np.outer(ramp, ramp) \
            + white_std ** 2 * np.eye(h)
        lam, u = np.linalg.eigh(k)
        self._lam = torch.tensor(lam, dtype=torch.float64)
        self._u = torch.tensor(u, dtype=torch.float64)
        self.calls = 0
        self.prefixes: list[tuple[np.ndarray | None, np.ndarray | None]] = []

    def _velocity(self, mu: torch.Tensor) -> Callable[[torch.Tensor, float], torch.Tensor]:
        lam, u = self._lam, self._u

        def v(x: torch.Tensor, tau: float) -> torch.Tensor:
            gain = tau * lam / (tau ** 2 * lam + (1 - tau) ** 2)
            e = mu + u @ (gain[:, None] * (u.T @ (x - tau * mu)))
            return (e - x) / (1 - tau)

        return v

    def sample(self, obs: dict[str, np.ndarray], prefix: np.ndarray | None = None,
               prefix_weights: np.ndarray | None = None, max_guidance_weight: float = 5.0) -> np.ndarray:
        self.calls += 1
        self.prefixes.append((None if prefix is None else np.array(prefix),
                              None if prefix_weights is None else np.array(prefix_weights)))
        t0 = time.perf_counter()
        mu = torch.as_tensor(np.asarray(self.mean(obs), dtype=np.float64))
        noise = torch.randn(mu.shape, generator=self._gen, dtype=torch.float64)
        y = None if prefix is None else torch.as_tensor(np.asarray(prefix, dtype=np.float64))
        w = None if prefix_weights is None else torch.as_tensor(np.asarray(prefix_weights, np.float64))
        x = guided_sample(self._velocity(mu), noise, self.steps, y, w, max_guidance_weight)
        rest = self.latency_s - (time.perf_counter() - t0)
        if rest > 0:
            self._sleep(rest)
        return x.numpy()

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.sample(obs)
