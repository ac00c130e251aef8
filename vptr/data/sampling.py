"""Index sampling for TD pretraining on video: pure numpy functions of (rng, lengths, config).

Trajectory ``i`` occupies rows ``offsets[i] .. offsets[i] + lengths[i] - 1`` of the frame
store. A sample is a time ``t`` in a trajectory plus the frames the objectives need:

- next frame ``t + k`` (frame skip k), future frame ``t + j`` with j >= 1 geometric or
  uniform, all clipped at the trajectory end;
- outcome ``s+`` and intention ``s_z``, each drawn as in the ICVF release (Ghosh et al.
  2023, dibyaghosh/icvf_release ``GCSDataset.sample_goals``): the current frame with
  p_currgoal, a frame of the same trajectory uniform on [t, end] with p_trajgoal, a uniform
  frame of the whole dataset with p_randomgoal; then ``s+ = s_z`` with p_samegoal;
- the first and last frame of the trajectory (VIP's s_0 and goal; Ma et al. 2023, Sec. 4);
- a time-contrastive pair: a near frame a few steps after ``t`` and a far frame of the same
  trajectory farther from ``t`` than the near one (TCN / R3M's temporal term, Nair et al.
  2022, Sec. 3.2; :func:`sample_near_far_times`).

"Reached" is decided by frame index, never by pixels (spec: pretraining.md, Sampling).
"""

from __future__ import annotations

import numpy as np

from vptr.data.batch import IMAGE_KEYS, INDEX_KEYS, stack_times
from vptr.data.config import SamplerConfig
from vptr.errors import ConfigError

GOAL_CURRENT, GOAL_TRAJECTORY, GOAL_RANDOM = 0, 1, 2
# default window k of the near frame t+1 .. t+k ("a few steps later"; the tcn objective's
# positive_window overrides it)
NEAR_WINDOW = 3


def sample_frames(rng: np.random.Generator, lengths: np.ndarray, n: int) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    """(trajectory, time) of ``n`` frames drawn uniformly over all frames of the dataset.

    Uniform over frames (not trajectories), as the ICVF release draws dataset indices, so a
    long video contributes in proportion to its length.
    """
    ends = np.cumsum(lengths)
    flat = rng.integers(0, ends[-1], size=n)
    traj = np.searchsorted(ends, flat, side="right")
    return traj, flat - (ends[traj] - lengths[traj])


def sample_goals(rng: np.random.Generator, traj: np.ndarray, t: np.ndarray,
                 lengths: np.ndarray, probs: tuple[float, float, float]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ICVF goal sampling: (goal trajectory, goal time, kind) for samples at (traj, t).

    kind is GOAL_CURRENT / GOAL_TRAJECTORY / GOAL_RANDOM with probabilities ``probs``.
    Trajectory goals are uniform on the integers [t, T-1] (the spec's "between t and the
    trajectory end"), so they can equal t itself.
    """
    n = len(t)
    kind = rng.choice(3, size=n, p=np.asarray(probs, dtype=np.float64))
    end = lengths[traj] - 1
    traj_goal_t = t + np.floor(rng.random(n) * (end - t + 1)).astype(np.int64)
    rand_traj, rand_t = sample_frames(rng, lengths, n)
    goal_traj = np.where(kind == GOAL_RANDOM, rand_traj, traj)
    goal_t = np.select([kind == GOAL_CURRENT, kind == GOAL_TRAJECTORY], [t, traj_goal_t], rand_t)
    return goal_traj, goal_t, kind


def sample_future_offsets(rng: np.random.Generator, n: int, gamma: float) -> np.ndarray:
    """j ~ Geometric(1 - gamma) on {1, 2, ...} (mean 1/(1-gamma)), before clipping.

    The discounted state-occupancy of successor features / TD-JEPA puts weight
    (1-gamma) gamma^(j-1) on the frame j steps ahead.
    """
    return rng.geometric(1.0 - gamma, size=n).astype(np.int64)


def sample_future_times(rng: np.random.Generator, t: np.ndarray, traj_len: np.ndarray,
                        cfg: SamplerConfig) -> np.ndarray:
    """Time of the future frame: t + j (j >= 1), clipped to the last frame."""
    last = traj_len - 1
    if cfg.future_dist == "uniform":
        span = np.maximum(last - t, 1)
        j = 1 + np.floor(rng.random(len(t)) * span).astype(np.int64)
    else:
        j = sample_future_offsets(rng, len(t), cfg.future_gamma)
    return np.minimum(t + j, last)


def sample_near_far_times(rng: np.random.Generator, t: np.ndarray, traj_len: np.ndarray,
                          window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Time-contrastive frames for anchors at time ``t``: (near_t, far_t, near_valid, far_valid).

    - near: ``t + d``, d uniform on {1, ..., min(window, T-1-t)}: the window is truncated at
      the trajectory end rather than the offset clipped, so no probability piles up on the
      last frame. An anchor at the last frame has no later frame: near = t, near_valid False.
    - far: uniform on the frames after the near one, near+1 .. T-1 (R3M samples its third
      frame beyond its second). When the near frame is the last one, uniform on the frames
      before the anchor farther from it than the near one, 0 .. t-d-1. Either way
      |far - t| > |near - t| = d. When neither side has such a frame (the anchor is the last
      frame, or the trajectory is too short) far = near and far_valid is False.

    Every time is inside its trajectory; the flags say which frames an objective may use.
    """
    if window < 1:
        raise ConfigError(f"the near-frame window must be >= 1, got {window}")
    t = np.asarray(t, dtype=np.int64)
    last = np.asarray(traj_len, dtype=np.int64) - 1
    room = np.minimum(window, last - t)
    near_valid = room >= 1
    d = 1 + np.floor(rng.random(len(t)) * np.maximum(room, 1)).astype(np.int64)
    near_t = np.where(near_valid, t + d, t)
    after = last - near_t  # frames strictly after the near one
    before = np.where(near_valid, t - (near_t - t), 0)  # frames 0 .. t-d-1
    u = rng.random(len(t))
    far_after = near_t + 1 + np.floor(u * np.maximum(after, 1)).astype(np.int64)
    far_before = np.floor(u * np.maximum(before, 1)).astype(np.int64)
    far_valid = near_valid & ((after > 0) | (before > 0))
    far_t = np.where(after > 0, far_after, np.where(far_valid, far_before, near_t))
    return near_t, far_t, near_valid, far_valid


def stack_rows(offsets: np.ndarray, traj: np.ndarray, t: np.ndarray, stack: int) -> np.ndarray:
    """Frame-store rows (n, stack) of the frames stacked for (traj, t), oldest first
    (:func:`vptr.data.batch.stack_times`)."""
    return offsets[traj][:, None] + stack_times(t, stack)


def sample_index_batch(rng: np.random.Generator, offsets: np.ndarray, lengths: np.ndarray,
                       cfg: SamplerConfig, n: int,
                       near_window: int = NEAR_WINDOW) -> dict[str, np.ndarray]:
    """All indices of one batch of ``n`` samples (no pixels).

    Returns, besides the batch-contract index keys (``obs_index``, ...), ``traj_index``,
    ``t``, ``traj_len``, ``goal_reached``/``intent_reached``, ``near_valid``/``far_valid``,
    ``goal_kind``/``intent_kind`` and ``rows``: frame-store rows (len(IMAGE_KEYS), n,
    frame_stack) to gather images from. ``near_window`` is the window of the near frame
    (:func:`sample_near_far_times`).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    traj, t = sample_frames(rng, lengths, n)
    traj_len = lengths[traj]
    last = traj_len - 1
    next_t = np.minimum(t + cfg.frame_skip, last)
    future_t = sample_future_times(rng, t, traj_len, cfg)
    goal_traj, goal_t, goal_kind = sample_goals(rng, traj, t, lengths, cfg.goal_probs)
    int_traj, int_t, int_kind = sample_goals(rng, traj, t, lengths, cfg.intent_probs)
    same = rng.random(n) < cfg.p_samegoal
    goal_traj = np.where(same, int_traj, goal_traj)
    goal_t = np.where(same, int_t, goal_t)
    goal_kind = np.where(same, int_kind, goal_kind)
    # drawn last, so the other frames of a batch are those drawn before these keys existed
    near_t, far_t, near_valid, far_valid = sample_near_far_times(rng, t, traj_len, near_window)
    zeros = np.zeros_like(t)
    where = {"obs": (traj, t), "next_obs": (traj, next_t), "goal": (goal_traj, goal_t),
             "intent": (int_traj, int_t), "future_obs": (traj, future_t),
             "initial_obs": (traj, zeros), "final_obs": (traj, last),
             "near_obs": (traj, near_t), "far_obs": (traj, far_t)}
    out: dict[str, np.ndarray] = {}
    rows = np.empty((len(IMAGE_KEYS), n, cfg.frame_stack), dtype=np.int64)
    for i, key in enumerate(IMAGE_KEYS):
        tr, tt = where[key]
        rows[i] = stack_rows(offsets, tr, tt, cfg.frame_stack)
        out[INDEX_KEYS[key]] = offsets[tr] + tt
    out["goal_reached"] = out["obs_index"] == out["goal_index"]
    out["intent_reached"] = out["obs_index"] == out["intent_index"]
    out["near_valid"], out["far_valid"] = near_valid, far_valid
    out.update(traj_index=traj, t=t, traj_len=traj_len, goal_kind=goal_kind,
               intent_kind=int_kind, rows=rows)
    return out


def split_trajectories(n: int, val_fraction: float, seed: int = 0,
                       shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) trajectory ids; val has round(n * val_fraction) of them.

    ``shuffle``: val is a seeded random subset (``np.random.default_rng(seed)``
    permutation); otherwise the last trajectories. With 0 < val_fraction and n >= 2 both
    sides get at least one trajectory. Ids are returned sorted.
    """
    if not (0.0 <= val_fraction < 1.0):
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    return np.sort(order[:n - n_val]), np.sort(order[n - n_val:])
