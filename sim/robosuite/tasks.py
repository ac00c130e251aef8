"""The robosuite tasks we wrap: pure data, so importing it does not import robosuite.

Each task names the robosuite environment class, the language instruction shown to
language-conditioned policies, the episode limit used when the id is registered with
Gymnasium, and extra keyword arguments passed to ``robosuite.make``.

Episode limits: at 20 Hz the zero-noise scripted experts need about 40 steps for Lift,
90 for Stack, 135 for PickPlaceCan and 85 for Door; the limits leave 2-5x headroom for
noisy experts and learned policies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RobosuiteTask:
    """One wrapped robosuite task (see the module docstring)."""

    env_id: str  # Gymnasium id registered by ``sim.registry``
    robosuite_name: str  # class name in robosuite's registry, e.g. "Lift"
    description: str  # language instruction
    max_episode_steps: int  # Gymnasium TimeLimit at the default 20 Hz control rate
    robosuite_kwargs: dict[str, Any] = field(default_factory=dict)


TASKS: dict[str, RobosuiteTask] = {
    t.robosuite_name: t
    for t in (
        RobosuiteTask("vptr/RobosuiteLift-v0", "Lift", "lift the red cube", 200),
        RobosuiteTask("vptr/RobosuitePickPlaceCan-v0", "PickPlaceCan",
                      "pick up the red can and place it in the lower right bin", 400),
        RobosuiteTask("vptr/RobosuiteStack-v0", "Stack",
                      "stack the red cube on top of the green cube", 400),
        # use_latch=True is robosuite's default Door: the handle must be turned down
        # before the door swings open.
        RobosuiteTask("vptr/RobosuiteDoor-v0", "Door",
                      "turn the door handle and pull the door open", 300,
                      {"use_latch": True}),
    )
}
