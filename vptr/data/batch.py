"""The pretraining batch contract between ``vptr.data`` and ``vptr.pretrain``, declared once,
and frame stacking, shared by the sampler (training) and the value diagnostics (evaluation)
so that the two can never stack frames differently.

A batch of B samples with frame stack S holds

- images, uint8 (B, 3*S, H, W), channels-first, frames stacked oldest..newest, under
  :data:`IMAGE_KEYS`;
- for each image key the int64 (B,) frame-store row of its newest frame, under
  :data:`INDEX_KEYS` (so objectives can encode each distinct frame once and decide
  "reached" by index, never by pixels);
- bool (B,) ``goal_reached`` (obs_index == goal_index) and ``intent_reached``, and
  ``near_valid`` / ``far_valid``: whether the time-contrastive ``near_obs`` / ``far_obs``
  exist for that sample (:func:`vptr.data.sampling.sample_near_far_times`);
- int64 (B,) ``traj_index`` (position in the store), ``t``, ``traj_len``.
"""

from __future__ import annotations

import numpy as np

# image key -> frame-index key, in the order the sampler gathers frames
INDEX_KEYS: dict[str, str] = {
    "obs": "obs_index",
    "next_obs": "next_obs_index",
    "goal": "goal_index",
    "intent": "intent_index",
    "future_obs": "future_index",
    "initial_obs": "initial_index",
    "final_obs": "final_index",
    "near_obs": "near_index",
    "far_obs": "far_index",
}
IMAGE_KEYS: tuple[str, ...] = tuple(INDEX_KEYS)
FLAG_KEYS: tuple[str, ...] = ("goal_reached", "intent_reached", "near_valid", "far_valid")
POSITION_KEYS: tuple[str, ...] = ("traj_index", "t", "traj_len")
INT_KEYS: tuple[str, ...] = (*INDEX_KEYS.values(), *POSITION_KEYS)


def stack_times(t: np.ndarray, stack: int) -> np.ndarray:
    """Times (n, stack) of the frames stacked for time ``t``: t-stack+1 .. t, oldest first.

    Times before the trajectory start repeat its first frame (as frame-stacking wrappers do
    at reset), so a stack never mixes two trajectories.
    """
    back = np.arange(stack - 1, -1, -1)
    return np.maximum(np.asarray(t)[:, None] - back[None, :], 0)


def stack_frames(frames: np.ndarray, stack: int) -> np.ndarray:
    """One trajectory's frames (T, H, W, 3) uint8 -> (T, 3*stack, H, W) as in a batch."""
    chw = np.ascontiguousarray(np.asarray(frames).transpose(0, 3, 1, 2))
    if stack == 1:
        return chw
    rows = stack_times(np.arange(len(frames)), stack)  # (T, S)
    return chw[rows].reshape(len(frames), 3 * stack, *chw.shape[2:])
