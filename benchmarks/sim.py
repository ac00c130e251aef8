"""Simulation throughput: env steps per second including one camera image per step.

    ./run python benchmarks/sim.py            # native suite + robosuite Lift
    ./run python benchmarks/sim.py --native-only

Steps are timed with resets excluded. Actions come from the task's scripted expert so
the arm moves and objects make contact as in data generation. "2 procs" runs one env
per process on both cores and reports the summed rate.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
# benchmarks/sim.py is named like the `sim` package: keep this folder off the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]



def steps_per_second(env_id: str, kwargs: dict, steps: int, seed: int = 0) -> float:
    import numpy as np

    import sim

    env = sim.make(env_id, **kwargs)
    expert = sim.make_expert(env, noise=0.1, seed=seed)
    obs, _ = env.reset(seed=seed)
    expert.reset()
    elapsed, done_steps, episode = 0.0, 0, 0
    warmup = max(steps // 10, 5)  # first renders compile llvmpipe shaders
    while done_steps < steps + warmup:
        if done_steps == warmup:
            elapsed = 0.0
        action = np.asarray(expert.act(obs), dtype=np.float32)
        t = time.perf_counter()
        obs, _, term, trunc, _ = env.step(action)
        elapsed += time.perf_counter() - t
        done_steps += 1
        if term or trunc:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
            expert.reset()
    env.close()
    return steps / elapsed


def _worker(args):
    return steps_per_second(*args)


def parallel_steps_per_second(env_id: str, kwargs: dict, steps: int, procs: int) -> float:
    with mp.get_context("spawn").Pool(procs) as pool:
        rates = pool.map(_worker, [(env_id, kwargs, steps, 1000 * i) for i in range(procs)])
    return sum(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="timed steps per native measurement")
    p.add_argument("--robosuite-steps", type=int, default=60, help="timed steps per robosuite measurement")
    p.add_argument("--native-only", action="store_true", help="skip robosuite")
    args = p.parse_args()

    rows = []
    for size in (64, 128):
        kw = dict(image_size=size, cameras=("front",))
        one = steps_per_second("vptr/Lift-v0", kw, args.steps)
        two = parallel_steps_per_second("vptr/Lift-v0", kw, args.steps, 2)
        rows.append(["native vptr/Lift-v0 (arm)", f"{size}x{size}", "-", f"{one:,.0f}", f"{two:,.0f}"])
    kw = dict(image_size=64, cameras=("front",), embodiment="hand", domain_shift=0.5)
    rows.append(["native vptr/Lift-v0 (hand, shift 0.5)", "64x64", "-",
                 f"{steps_per_second('vptr/Lift-v0', kw, args.steps):,.0f}", ""])
    rows.append(["native vptr/Lift-v0 (no image)", "-", "-",
                 f"{steps_per_second('vptr/Lift-v0', dict(render_images=False), args.steps):,.0f}", ""])
    if not args.native_only:
        for quality in ("default", "cheap"):
            for size in (64, 128):
                kw = dict(image_size=size, render_quality=quality)
                rate = steps_per_second("vptr/RobosuiteLift-v0", kw, args.robosuite_steps)
                rows.append(["robosuite Lift (Panda, OSC_POSE)", f"{size}x{size}", quality,
                             f"{rate:,.1f}", ""])
    from vptr.diagnostics.machine import describe
    from vptr.diagnostics.table import format_table as table

    print(f"machine: {describe()}")
    print(table(["environment", "image", "render", "steps/s (1 proc)", "steps/s (2 procs)"], rows))


if __name__ == "__main__":
    main()
