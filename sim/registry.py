"""Environment ids for every backend, and `make` / `make_expert` with clear errors."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from vptr.errors import ConfigError, unknown

# id -> (entry point, fixed kwargs). Filled by each backend's ``ENV_SPECS``.
ENV_IDS: dict[str, tuple[str, dict[str, Any]]] = {}


def register_all() -> None:
    from sim.native import ENV_SPECS as native_specs
    from sim.robosuite import ENV_SPECS as robosuite_specs

    for specs in (native_specs, robosuite_specs):
        for env_id, (entry_point, kwargs, max_steps) in specs.items():
            ENV_IDS[env_id] = (entry_point, kwargs)
            if env_id not in gym.registry:
                gym.register(env_id, entry_point=entry_point, kwargs=kwargs,
                             max_episode_steps=max_steps, disable_env_checker=True)


def make(env_id: str, **kwargs: Any) -> gym.Env:
    """`gymnasium.make` that names the problem for an unknown id or a bad option."""
    if env_id not in ENV_IDS:
        raise unknown("task id", env_id, ENV_IDS)
    try:
        return gym.make(env_id, **kwargs)
    except TypeError as e:  # unexpected keyword argument, etc.
        raise ConfigError(f"{env_id}: {e}") from None


def task_description(env_id: str) -> str:
    """The language instruction of ``env_id``'s task (what generated datasets store as the
    task string), without building the environment."""
    if env_id not in ENV_IDS:
        raise unknown("task id", env_id, ENV_IDS)
    entry_point, kwargs = ENV_IDS[env_id]
    if entry_point.startswith("sim.native."):
        from sim.native.tasks import TASKS as native_tasks

        return native_tasks[kwargs["task"]].description
    from sim.robosuite.tasks import TASKS as robosuite_tasks

    return robosuite_tasks[kwargs["task"]].description


def make_expert(env: gym.Env, noise: float = 0.0, seed: int | None = None):
    """The scripted expert of ``env``'s task (privileged state), with action noise."""
    if not 0.0 <= noise:
        raise ConfigError(f"expert noise must be >= 0, got {noise}")
    return env.unwrapped.scripted_expert(noise=noise, seed=seed)
