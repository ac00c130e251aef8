"""Value diagnostics on held-out video: does V(s_t, g = last frame) track time-to-goal?

For each held-out trajectory x_0..x_T we evaluate V(x_t, g = x_T) and report

* ``spearman``: Spearman's rho between V(x_t, g) and t (the VIP / V-PTR value-curve number);
* ``spread``: (V(x_T, g) - V(x_0, g)) / true range, where the true value of the ICVF
  reward (-1 per step until the goal, 0 at the goal) is the negative discounted
  time-to-goal ``V*(t) = -(1 - gamma^(T - t)) / (1 - gamma)``, so the true range is
  ``(1 - gamma^T) / (1 - gamma)``. A collapsed value (near-constant along the episode,
  the failure seen in CPU prototypes) has spread ~ 0 even when rho looks good;
* ``goal_value``: V(x_T, g = x_T), which should be ~0 for an ICVF-style value,
  reported next to the true ``-V*(0)`` scale;
* ``inverted``: the fraction of trajectories whose rho is negative (flag loudly).

Every number is computed the same way for the trained model and for the baselines
(negative pixel L2 distance to the goal frame; untrained networks over several seeds)
so they can be compared in one table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from scipy.stats import spearmanr

from vptr.data.batch import stack_frames

# value(obs, goal) -> V: obs/goal uint8 (N, C, H, W) tensors, returns float (N,)
ValueFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def true_values(length: int, gamma: float) -> np.ndarray:
    """Negative discounted time-to-goal V*(t) for t = 0..T with T = length - 1."""
    steps_to_goal = np.arange(length - 1, -1, -1, dtype=np.float64)
    return -(1.0 - gamma**steps_to_goal) / (1.0 - gamma)


@torch.no_grad()
def trajectory_values(value: ValueFn, frames: np.ndarray, stack: int = 1,
                      batch: int = 256) -> np.ndarray:
    """V(x_t, g = x_T) for every t of one trajectory."""
    obs = torch.from_numpy(stack_frames(frames, stack))
    goal = obs[-1:].expand_as(obs)
    out = [value(obs[i:i + batch], goal[i:i + batch]).float().cpu() for i in range(0, len(obs), batch)]
    return torch.cat(out).numpy().astype(np.float64)


@dataclass
class ValueReport:
    name: str
    spearman: float  # mean over trajectories
    spearman_std: float
    spread: float  # mean (V(s_T) - V(s_0)) / true range
    goal_value: float  # mean V(s_T, g = s_T)
    value_std: float  # mean within-trajectory std of V (collapse detector)
    inverted: float  # fraction of trajectories with rho < 0
    true_range: float
    curves: list[np.ndarray]

    def row(self) -> list[str]:
        return [self.name, f"{self.spearman:+.3f} ± {self.spearman_std:.3f}",
                f"{self.spread:+.3f}", f"{self.goal_value:+.3f}", f"{self.value_std:.3g}",
                f"{self.inverted:.0%}"]

    HEADERS: ClassVar[list[str]] = ["method", "Spearman(V, t)", "spread / true range", "V(goal, goal)",
               "std of V along ep.", "inverted"]


def evaluate_values(name: str, value: ValueFn, trajectories: Sequence[np.ndarray],
                    gamma: float, stack: int = 1) -> ValueReport:
    rhos, spreads, goals, stds, curves, ranges = [], [], [], [], [], []
    trajectories = [t for t in trajectories if len(t) >= 2]  # a 1-frame one has no range
    if not trajectories:
        raise ValueError(f"{name}: no held-out trajectory has 2 or more frames")
    for frames in trajectories:
        v = trajectory_values(value, frames, stack)
        curves.append(v)
        t = np.arange(len(v))
        rho = spearmanr(v, t).statistic if np.ptp(v) > 0 else 0.0
        rhos.append(0.0 if np.isnan(rho) else float(rho))
        true_range = (1.0 - gamma ** (len(v) - 1)) / (1.0 - gamma)
        ranges.append(true_range)
        spreads.append((v[-1] - v[0]) / true_range)
        goals.append(v[-1])
        stds.append(v.std())
    rhos_a = np.asarray(rhos)
    return ValueReport(name, float(rhos_a.mean()), float(rhos_a.std()), float(np.mean(spreads)),
                       float(np.mean(goals)), float(np.mean(stds)), float((rhos_a < 0).mean()),
                       float(np.mean(ranges)), curves)


def pixel_l2_value(obs: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Baseline: negative L2 distance in pixel space (in [0, 1] units) to the goal frame."""
    diff = obs.float().div(255) - goal.float().div(255)
    return -diff.flatten(1).norm(dim=1)


def plot_value_curves(reports: Sequence[ValueReport], trajectories_lengths: Sequence[int],
                      gamma: float, path: Path, title: str, max_curves: int = 4) -> Path:
    """One panel per method: V(s_t, g = last frame) along held-out episodes, each curve
    min-max normalised to [0, 1] so methods with different scales compare by shape,
    with the true (normalised) discounted time-to-goal as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(reports)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), squeeze=False)
    for ax, rep in zip(axes[0], reports):
        for k, v in enumerate(rep.curves[:max_curves]):
            span = np.ptp(v)
            norm = (v - v.min()) / span if span > 0 else np.zeros_like(v)
            ax.plot(norm, color=f"C{k}", lw=1.4)
            true = true_values(len(v), gamma)
            ax.plot((true - true.min()) / np.ptp(true), color=f"C{k}", lw=0.8, ls="--")
        ax.set_title(f"{rep.name}\nρ={rep.spearman:+.2f} spread={rep.spread:+.2f}", fontsize=8)
        ax.set_xlabel("t (frames)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("V(s_t, g=last) (normalised)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def effective_rank(features: torch.Tensor, eps: float = 1e-12) -> float:
    """Roy & Vetterli effective rank exp(H(p)) of the singular values of centred features
    (B, D); 1 = total collapse, D = full rank."""
    x = features.float() - features.float().mean(0, keepdim=True)
    s = torch.linalg.svdvals(x)
    p = s / (s.sum() + eps)
    entropy = -(p * torch.log(p + eps)).sum()
    return float(torch.exp(entropy))
