"""robosuite tasks (Panda, OSC_POSE) behind the project's Gymnasium interface.

``ENV_SPECS`` maps each env id to ``(entry point, fixed kwargs, max_episode_steps)`` for
``sim.registry``. Importing this package does not import robosuite: the env constructor
does, so listing or registering ids stays cheap.
"""

from __future__ import annotations

from typing import Any

from sim.robosuite.tasks import TASKS, RobosuiteTask

ENTRY_POINT = "sim.robosuite.env:RobosuiteEnv"

ENV_SPECS: dict[str, tuple[str, dict[str, Any], int]] = {
    t.env_id: (ENTRY_POINT, {"task": name}, t.max_episode_steps) for name, t in TASKS.items()
}

__all__ = ["ENTRY_POINT", "ENV_SPECS", "TASKS", "RobosuiteTask"]
