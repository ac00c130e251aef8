"""Encoder probes for robot use, the parts without training code (``vptr probe`` runs them).

* :func:`linear_probe` -- ridge regression (closed form) of task-relevant state from frozen
  features, split into train / validation by *episode* (frames of one episode are strongly
  correlated: a per-frame split would score memorisation). The penalty is chosen by
  cross-validation over folds of training episodes, never on the validation episodes.
* :func:`invariance_ratio` -- how far features move when only the appearance changes
  (paired frames: the same simulator state rendered with another appearance draw),
  relative to how far they move between consecutive frames of an episode.
* :func:`collect_frames` -- those frames: scripted-expert episodes of a native task at the
  demonstrations' appearance, each observation re-rendered at other ``domain_shift``
  levels from the same physical state (``qpos``, ``qvel``, ``act``), with the targets
  (tool position, gripper opening, object positions) read from the simulator.

Everything here is numpy/torch and the simulator; nothing imports ``vptr.train``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vptr.errors import DataError

# Proprioceptive entries of the native arm's state that a policy must know from pixels or
# state (sim.native.embodiments.Arm.state_names); object positions come from the task's
# privileged state (every "<object>_pos_<axis>" entry of obs["environment_state"]).
TOOL_TARGETS = ("ee_x", "ee_y", "ee_z", "gripper_opening")
RIDGE_PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # x n (features scaled to unit RMS)


# --------------------------------------------------------------------------- linear probe


def episode_split(episodes: np.ndarray, val_fraction: float,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, validation) over frames; whole episodes go to one side (at
    least one episode each)."""
    ids = np.unique(episodes)
    if len(ids) < 2:
        raise DataError(f"a train/validation split by episode needs >= 2 episodes, got {len(ids)}")
    n_val = min(max(1, round(val_fraction * len(ids))), len(ids) - 1)
    val_ids = np.random.default_rng(seed).permutation(ids)[:n_val]
    val = np.isin(episodes, val_ids)
    return ~val, val


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Arrays centred by the *training* column means and divided by one scalar, the
    training RMS. One scale for all columns keeps the encoder's own feature geometry and
    keeps near-constant columns (ReLU units that rarely fire) from being blown up to
    dominate the validation frames, as per-column scaling does."""
    mean = train.mean(0)
    scale = float(np.sqrt(((train - mean) ** 2).mean()))
    scale = scale if scale > 0 else 1.0
    return [(a - mean) / scale for a in (train, *others)]


def ridge_path(x: np.ndarray, y: np.ndarray, penalties: Sequence[float]) -> list[np.ndarray]:
    """Closed-form ridge weights ``argmin |y - x w|^2 + lam n |w|^2`` for each penalty
    ``lam`` (x, y centred), from one thin SVD: ``w = V diag(s / (s^2 + lam n)) U^T y``
    (works for d > n as well as n > d)."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    n = len(x)
    return [vt.T @ ((s / (s * s + lam * n))[:, None] * uty) for lam in penalties]


def r2_scores(y_true: np.ndarray, y_pred: np.ndarray,
              baseline: np.ndarray | None = None) -> np.ndarray:
    """Coefficient of determination per column, ``1 - SS_res / SS_tot``, where SS_tot is
    about ``baseline`` (default: the true mean). Held-out scoring passes the *training*
    mean (out-of-sample R^2): the improvement over knowing only the training average,
    which stays meaningful when a target hardly varies within the validation episodes
    (a cube that sits still). NaN where SS_tot is 0."""
    ref = y_true.mean(0) if baseline is None else baseline
    ss_res = ((y_true - y_pred) ** 2).sum(0)
    ss_tot = ((y_true - ref) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)


def _fit_predict(x_tr, y_tr, x_te, penalties) -> list[np.ndarray]:
    x_tr, x_te = standardise(x_tr, x_te)
    y_mean = y_tr.mean(0)
    return [x_te @ w + y_mean for w in ridge_path(x_tr, y_tr - y_mean, penalties)]


def choose_penalty(x: np.ndarray, y: np.ndarray, episodes: np.ndarray,
                   penalties: Sequence[float], folds: int = 3) -> float:
    """The penalty with the lowest squared error over ``folds`` folds of whole episodes
    (targets standardised, so every target weighs the same)."""
    ids = np.unique(episodes)
    folds = min(folds, len(ids))
    if folds < 2 or len(penalties) == 1:
        return float(penalties[0])
    sd = y.std(0)
    y = (y - y.mean(0)) / np.where(sd > 0, sd, 1.0)
    err = np.zeros(len(penalties))
    for k in range(folds):
        held = np.isin(episodes, ids[k::folds])
        for i, pred in enumerate(_fit_predict(x[~held], y[~held], x[held], penalties)):
            err[i] += ((y[held] - pred) ** 2).sum()
    return float(penalties[int(np.argmin(err))])


def linear_probe(features: np.ndarray, targets: np.ndarray, episodes: np.ndarray,
                 names: Sequence[str], val_fraction: float = 0.3, seed: int = 0,
                 penalties: Sequence[float] = RIDGE_PENALTIES) -> dict:
    """Validation R^2 per target (out of sample: against the training mean) of a ridge
    regression from ``features`` (N, F) to ``targets`` (N, M); train and validation frames
    come from different episodes."""
    x = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64)
    if len(x) != len(y) or len(x) != len(episodes):
        raise DataError(f"linear probe: {len(x)} feature rows, {len(y)} target rows and "
                        f"{len(episodes)} episode ids")
    train, val = episode_split(np.asarray(episodes), val_fraction, seed)
    lam = choose_penalty(x[train], y[train], np.asarray(episodes)[train], penalties)
    pred = _fit_predict(x[train], y[train], x[val], [lam])[0]
    r2 = r2_scores(y[val], pred, baseline=y[train].mean(0))
    return {"r2": {n: float(v) for n, v in zip(names, r2)},
            "r2_mean": float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan"),
            "penalty": lam, "train_frames": int(train.sum()), "val_frames": int(val.sum()),
            "train_episodes": int(len(np.unique(np.asarray(episodes)[train]))),
            "val_episodes": int(len(np.unique(np.asarray(episodes)[val])))}


# --------------------------------------------------------------------------- invariance


def consecutive_pairs(episodes: np.ndarray) -> np.ndarray:
    """Indices i with frame i + 1 in the same episode (frames are in time order)."""
    episodes = np.asarray(episodes)
    return np.flatnonzero(episodes[:-1] == episodes[1:])


def invariance_ratio(base: np.ndarray, shifted: np.ndarray, episodes: np.ndarray) -> dict:
    """Mean feature distance between paired frames (same state, other appearance) over the
    mean distance between consecutive frames of the base episodes. 0: appearance does not
    move the features; 1: an appearance change moves them as much as one control step."""
    base = np.asarray(base, np.float64)
    shifted = np.asarray(shifted, np.float64)
    if base.shape != shifted.shape:
        raise DataError(f"invariance: paired features differ in shape {base.shape} vs "
                        f"{shifted.shape}")
    i = consecutive_pairs(episodes)
    if len(i) == 0:
        raise DataError("invariance: no two consecutive frames of one episode")
    paired = float(np.linalg.norm(shifted - base, axis=1).mean())
    step = float(np.linalg.norm(base[i + 1] - base[i], axis=1).mean())
    return {"ratio": paired / step if step > 0 else float("nan"), "paired_distance": paired,
            "step_distance": step}


# --------------------------------------------------------------------------- features


@torch.no_grad()
def encode(encoder: torch.nn.Module, images: np.ndarray, episodes: np.ndarray, stack: int,
           batch: int = 256) -> np.ndarray:
    """Features (N, F) of frames (N, H, W, 3) uint8 in episode order; each frame stacked
    with its ``stack - 1`` predecessors of the same episode (the first frame repeated)."""
    from vptr.data.batch import stack_frames

    episodes = np.asarray(episodes)
    starts = np.flatnonzero(np.r_[True, episodes[1:] != episodes[:-1]])
    chunks = np.split(np.asarray(images), starts[1:])
    x = torch.from_numpy(np.concatenate([stack_frames(c, stack) for c in chunks]))
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = [encoder(x[i:i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)]
    encoder.train(was_training)
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------- frames


@dataclass
class ProbeFrames:
    """Frames of scripted-expert episodes, in time order, and what they show."""

    images: np.ndarray  # (N, H, W, 3) uint8 at the base appearance
    episodes: np.ndarray  # (N,) episode index
    targets: np.ndarray  # (N, M) float64
    target_names: list[str]
    seeds: list[int]
    shifted: dict[float, np.ndarray] = field(default_factory=dict)  # shift -> (N, H, W, 3)


def target_columns(state_names: Sequence[str], env_state_names: Sequence[str]
                   ) -> tuple[list[int], list[int], list[str]]:
    """(state indices, environment-state indices, names) of the probe's targets."""
    st = [state_names.index(n) for n in TOOL_TARGETS if n in state_names]
    env = [i for i, n in enumerate(env_state_names)
           if "_pos_" in n and n.rsplit("_", 1)[-1] in ("x", "y", "z")]
    return st, env, [state_names[i] for i in st] + [env_state_names[i] for i in env]


def copy_physics(src, dst) -> None:
    """Put ``dst`` (another instance of the same scene) in ``src``'s physical state."""
    import mujoco

    dst.data.qpos[:] = src.data.qpos
    dst.data.qvel[:] = src.data.qvel
    dst.data.act[:] = src.data.act
    mujoco.mj_forward(dst.model, dst.data)


def collect_frames(task: str, seeds: Sequence[int], image_size: int, shifts: Sequence[float],
                   noise: float = 0.1, base_shift: float = 0.0, camera: str = "front"
                   ) -> ProbeFrames:
    """Expert episodes of native ``task`` at ``base_shift`` (reset seeds ``seeds``), every
    observation also rendered at each of ``shifts``: a second environment reset with the
    same seed (same object layout, its own appearance draw for that shift) is put in the
    same physical state and renders the front camera."""
    import sim

    base = sim.make(task, image_size=image_size, cameras=(camera,), environment_state=True,
                    domain_shift=base_shift)
    twins = {s: sim.make(task, image_size=image_size, render_images=False,
                         render_mode="rgb_array", domain_shift=s) for s in shifts}
    try:
        u = base.unwrapped
        st, env, names = target_columns(list(u.state_names), list(u.environment_state_names))
        if camera != "front":
            raise DataError(f"{task}: paired frames are rendered from the front camera only")
        images, episodes, targets = [], [], []
        shifted: dict[float, list[np.ndarray]] = {s: [] for s in shifts}
        for k, seed in enumerate(seeds):
            for twin in twins.values():
                twin.reset(seed=int(seed))
            for obs in _expert_observations(base, noise, int(seed)):
                images.append(obs["pixels"][camera])
                episodes.append(k)
                targets.append(np.r_[obs["state"][st], obs["environment_state"][env]])
                for s, twin in twins.items():
                    copy_physics(u, twin.unwrapped)
                    shifted[s].append(twin.render())
    finally:
        base.close()
        for twin in twins.values():
            twin.close()
    return ProbeFrames(np.stack(images), np.asarray(episodes), np.asarray(targets, np.float64),
                       names, [int(s) for s in seeds],
                       {s: np.stack(v) for s, v in shifted.items()})


def _expert_observations(env, noise: float, seed: int):
    """Every observation of one scripted-expert episode, the final one included."""
    import sim

    expert = sim.make_expert(env, noise=noise, seed=seed)
    obs, _ = env.reset(seed=seed)
    expert.reset()
    yield obs
    done = False
    while not done:
        obs, _r, terminated, truncated, _info = env.step(expert.act(obs))
        done = terminated or truncated
        yield obs
