"""The native MuJoCo tabletop suite: low-poly tasks, a WidowX-like arm, a video "hand",
domain randomisation and scripted experts.

This module only declares the environment ids (cheap: no MuJoCo model is compiled and
mujoco itself is not imported until an environment is made). The environment class is
:class:`sim.native.env.TabletopEnv`; tasks live in :mod:`sim.native.tasks`.

    env = gymnasium.make("vptr/Lift-v0", embodiment="hand", domain_shift=0.5)
    expert = env.unwrapped.scripted_expert(noise=0.1, seed=0)
"""

from __future__ import annotations

import os

# Without a display MuJoCo picks GLFW and fails to render; default to CPU rendering with
# OSMesa (DESIGN.md). Only when nothing was chosen, and only effective if mujoco has not
# been imported yet; set MUJOCO_GL=egl yourself on a GPU machine.
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
# OSMesa's llvmpipe rasterises with a thread pool by default; for our small low-poly
# frames the hand-off costs more than it saves: drawing in the calling thread measured
# 2x the env steps/s (benchmarks/RESULTS.md) and lets parallel workers use one core each.
# robosuite's large scenes were within 10 % either way. Read when the GL library loads.
os.environ.setdefault("LP_NUM_THREADS", "0")

_ENTRY_POINT = "sim.native.env:TabletopEnv"

# task name -> (env id, max episode steps at 20 Hz). The limits leave the zero-noise
# experts (which need roughly 15-70 steps) a comfortable margin for noisy rollouts.
TASK_IDS: dict[str, tuple[str, int]] = {
    "reach": ("vptr/Reach-v0", 50),
    "push": ("vptr/Push-v0", 100),
    "lift": ("vptr/Lift-v0", 80),
    "pickplace": ("vptr/PickPlace-v0", 120),
    "stack": ("vptr/Stack-v0", 120),
    "drawer": ("vptr/Drawer-v0", 100),
}

ENV_SPECS: dict[str, tuple[str, dict, int]] = {
    env_id: (_ENTRY_POINT, {"task": task}, max_steps)
    for task, (env_id, max_steps) in TASK_IDS.items()
}

__all__ = ["ENV_SPECS", "TASK_IDS"]
