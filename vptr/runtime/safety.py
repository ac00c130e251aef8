"""The safety filter between the chunk executor and every robot driver (layer 2).

Every command goes through :meth:`SafetyFilter.__call__`, which guarantees, whatever the
policy produced (NaN, Inf, 1e300, nothing at all):

1. the command is finite;
2. it lies within ``[low, high]`` (position / command limits);
3. it differs from the previous command by at most ``max_step`` per entry, where the
   per-step limit is the smaller of the spec's ``max_step`` and ``max_velocity / rate``;
   the first command is limited relative to :meth:`~robots.base.Robot.current_action`,
   so the robot ramps slowly to the policy's first target.

No action, a non-finite action or a stale observation (older than ``max_obs_age_s``:
a frozen camera must not let the policy run open-loop) is replaced by the *hold*
command: the last command for absolute entries, the spec's hold value (e.g. 0 for a
delta) for relative ones -- still rate-limited, so a moving robot decelerates.
Interventions are counted by kind in :attr:`SafetyFilter.interventions`.

Safe by default: limits come from the robot's spec; a robot that declares none is
refused unless limits are given here or ``unlimited=True`` asks explicitly for none
(the finite-command guard stays on even then).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from robots.base import ActionSpec
from vptr.errors import ConfigError

KINDS = ("hold", "nonfinite", "clamp", "rate", "stale_obs")


def _vector(value: float | Sequence[float] | Mapping[str, float] | None, names: tuple[str, ...],
            what: str) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ConfigError(f"safety: {what} names unknown actions {unknown}")
        return None if not value else np.array([float(value.get(n, np.nan)) for n in names])
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (len(names),)).copy()
    return arr


class SafetyFilter:
    """See the module docstring. ``low`` / ``high`` / ``max_step`` override the spec
    (a number, one value per action, or a name -> value mapping for some actions)."""

    def __init__(self, spec: ActionSpec, rate_hz: float, *, low=None, high=None, max_step=None,
                 unlimited: bool = False, max_obs_age_s: float | None = 0.5) -> None:
        if not rate_hz > 0:
            raise ConfigError(f"safety: rate_hz must be > 0, got {rate_hz}")
        self.spec = spec
        names = spec.names
        self.low = self._resolve(low, spec.low, names, "low", -np.inf, unlimited)
        self.high = self._resolve(high, spec.high, names, "high", np.inf, unlimited)
        if np.any(self.low > self.high):
            raise ConfigError(f"safety: low > high for "
                              f"{[n for n, lo, hi in zip(names, self.low, self.high) if lo > hi]}")
        step = np.full(len(names), np.inf)
        if spec.max_step is not None:
            step = np.minimum(step, spec.max_step)
        if spec.max_velocity is not None:
            step = np.minimum(step, np.asarray(spec.max_velocity) / rate_hz)
        given = _vector(max_step, names, "max_step")
        if given is not None:
            step = np.where(np.isnan(given), step, given)
        if not unlimited and np.isinf(step).any():
            raise ConfigError(f"safety: no per-step change limit for "
                              f"{[n for n, s in zip(names, step) if np.isinf(s)]}; give max_step, "
                              "or unlimited=True to run without limits (not recommended)")
        if np.any(step <= 0):
            raise ConfigError(f"safety: max_step must be > 0, got {step}")
        self.max_step = step
        self.max_obs_age_s = max_obs_age_s
        self._hold_mask = np.array([h is not None for h in spec.hold])
        self._hold_value = np.array([0.0 if h is None else h for h in spec.hold])
        self._last: np.ndarray | None = None
        self.interventions: Counter[str] = Counter()
        self.commands = 0

    @staticmethod
    def _resolve(given, from_spec, names, what, unbounded, unlimited) -> np.ndarray:
        out = np.full(len(names), np.nan) if from_spec is None else np.array(from_spec, dtype=np.float64)
        override = _vector(given, names, what)
        if override is not None:
            out = np.where(np.isnan(override), out, override)
        missing = [n for n, v in zip(names, out) if np.isnan(v)]
        if missing and not unlimited:
            raise ConfigError(f"safety: no {what} limit for {missing} (the robot declares none); give "
                              f"{what}=..., or unlimited=True to run without limits (not recommended)")
        return np.where(np.isnan(out), unbounded, out)

    @property
    def last(self) -> np.ndarray | None:
        """The last command let through (None before :meth:`reset`)."""
        return None if self._last is None else self._last.copy()

    def reset(self, current: np.ndarray) -> None:
        """Start from the robot's current command (:meth:`~robots.base.Robot.current_action`)."""
        cur = np.asarray(current, dtype=np.float64).reshape(-1)
        if cur.shape != (self.spec.dim,) or not np.isfinite(cur).all():
            raise ConfigError(f"safety: the current command must be {self.spec.dim} finite numbers, "
                              f"got {cur}")
        self._last = np.clip(cur, self.low, self.high)

    def hold_target(self) -> np.ndarray:
        return np.where(self._hold_mask, self._hold_value, self._last)

    def __call__(self, action: np.ndarray | None, obs_age_s: float | None = None) -> np.ndarray:
        """The safe command for this period (see the module docstring)."""
        if self._last is None:
            raise RuntimeError("SafetyFilter.reset(current) must be called before the first command")
        self.commands += 1
        count = self.interventions
        if obs_age_s is not None and self.max_obs_age_s is not None and obs_age_s > self.max_obs_age_s:
            count["stale_obs"] += 1
            target = self.hold_target()
        elif action is None:
            count["hold"] += 1
            target = self.hold_target()
        else:
            a = np.asarray(action, dtype=np.float64)
            if a.shape != (self.spec.dim,):
                raise ConfigError(f"safety: an action must have shape ({self.spec.dim},) "
                                  f"{list(self.spec.names)}, got {a.shape}")
            if np.isfinite(a).all():
                target = a
            else:
                count["nonfinite"] += 1
                target = self.hold_target()
        clamped = np.clip(target, self.low, self.high)
        if np.any(clamped != target):
            count["clamp"] += 1
        last, step = self._last, self.max_step
        with np.errstate(over="ignore", invalid="ignore"):  # inf - inf where a limit is inf
            limited = last + np.clip(clamped - last, -step, step)
        limited = np.where(np.isinf(step), clamped, np.clip(limited, self.low, self.high))
        if np.any(limited != clamped):
            count["rate"] += 1
        self._last = limited
        return limited.copy()
