"""Action chunks for chunked offline RL: pure numpy functions of (episode layout, h, γ).

An episode ``e`` of a robot dataset occupies rows ``offsets[e] .. offsets[e] + lengths[e] - 1``;
row ``t`` holds the observation s_t, the action a_t and the reward r_t of the transition
s_t -> s_{t+1} (the LeRobot layout: ``next.reward`` and ``next.done`` describe the step
taken from row t). The episode either ends in a true *terminal* (success with termination,
a failure state: no value beyond it) or is *truncated* by a time limit (the state after
the last row still has a value, but the data holds no observation of it).

A chunk starting at row t is ``A_t = a_{t:t+h}`` with the chunk reward
``R_t = Σ_{k<h} γ^k r_{t+k}`` and the bootstrap ``γ^h · m · Q̄(s_{t+h}, ·)``
(spec: finetuning.md, "Chunks"; Q-chunking, Li et al. 2025). Unlike the reference code,
which drops every chunk that crosses an episode end (so the last h-1 states of each
episode never get a TD target), chunks are kept wherever a correct target exists:

* a chunk that stays inside the episode and whose next state s_{t+h} is stored: full
  chunk, ``m = 1`` (``m = 0`` if the episode's terminal is the chunk's last step);
* a chunk that runs past a *terminal*: the actions after the end are padding (the last
  real action repeated) with ``action_mask = False`` (masked in the BC loss), the reward
  sum stops at the terminal, ``m = 0``;
* a chunk whose next state would be past a *truncation* (t + h >= T for a truncated
  episode of T rows) has no stored bootstrap state and is dropped.

h is declared once by the caller (the agent's config) and passed to every function here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vptr.errors import ConfigError


def _check(lengths: np.ndarray, terminal: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.asarray(lengths, dtype=np.int64)
    terminal = np.asarray(terminal, dtype=bool)
    if h < 1:
        raise ConfigError(f"chunk size h must be >= 1, got {h}")
    if lengths.shape != terminal.shape or lengths.ndim != 1:
        raise ValueError(f"lengths {lengths.shape} and terminal {terminal.shape} must be 1-D "
                         "and of the same length (one entry per episode)")
    if lengths.size and lengths.min() < 1:
        raise ValueError("every episode needs at least one row")
    return lengths, terminal


def valid_starts(lengths: np.ndarray, terminal: np.ndarray, h: int) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """(episode, t) of every chunk start with a correct TD target, in row order.

    Terminal episodes of T rows: every t in [0, T). Truncated ones: t in [0, T - h), the
    starts whose next state s_{t+h} is a stored row.
    """
    lengths, terminal = _check(lengths, terminal, h)
    counts = np.where(terminal, lengths, np.maximum(lengths - h, 0))
    episode = np.repeat(np.arange(len(lengths)), counts)
    first = np.cumsum(counts) - counts  # position of each episode's first start
    t = np.arange(int(counts.sum())) - np.repeat(first, counts)
    return episode, t


@dataclass(frozen=True)
class ChunkIndex:
    """Rows to gather for chunks starting at (episode, t); all arrays have n rows."""

    obs_row: np.ndarray  # (n,) row of s_t
    action_rows: np.ndarray  # (n, h) rows of a_t .. a_{t+h-1}, clipped to the episode's last
    action_mask: np.ndarray  # (n, h) bool, False for padding past a terminal
    next_row: np.ndarray  # (n,) row of s_{t+h} (clipped; irrelevant where bootstrap_mask is 0)
    bootstrap_mask: np.ndarray  # (n,) float32 m: 0 if a terminal lies inside the chunk


def chunk_index(offsets: np.ndarray, lengths: np.ndarray, terminal: np.ndarray,
                episode: np.ndarray, t: np.ndarray, h: int) -> ChunkIndex:
    """The rows of the chunks starting at rows ``t`` of episodes ``episode``.

    Starts must come from :func:`valid_starts` (a truncated episode has no chunk whose next
    state is past its last row).
    """
    lengths, terminal = _check(lengths, terminal, h)
    offsets = np.asarray(offsets, dtype=np.int64)
    episode, t = np.asarray(episode, dtype=np.int64), np.asarray(t, dtype=np.int64)
    T = lengths[episode]
    term = terminal[episode]
    if np.any((t < 0) | (t >= T)) or np.any(~term & (t + h >= T)):
        raise ValueError("chunk starts outside the valid starts of their episodes")
    steps = t[:, None] + np.arange(h)[None, :]  # (n, h) times a_t .. a_{t+h-1}
    action_mask = steps < T[:, None]
    base = offsets[episode]
    action_rows = base[:, None] + np.minimum(steps, (T - 1)[:, None])
    # a terminal inside the chunk (at or before its last step): nothing to bootstrap
    ends_inside = term & (t + h >= T)
    next_row = base + np.minimum(t + h, T - 1)
    return ChunkIndex(base + t, action_rows, action_mask, next_row,
                      (~ends_inside).astype(np.float32))


def chunk_returns(rewards: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    """``R = Σ_k γ^k r_k`` over the valid steps of each chunk: rewards and mask (n, h) ->
    (n,). Padding past a terminal contributes nothing (the sum stops at the terminal)."""
    if not 0.0 <= gamma <= 1.0:
        raise ConfigError(f"discount must be in [0, 1], got {gamma}")
    rewards = np.asarray(rewards, dtype=np.float64)
    discounts = gamma ** np.arange(rewards.shape[1], dtype=np.float64)
    return (rewards * np.asarray(mask, dtype=bool) * discounts).sum(axis=1)
