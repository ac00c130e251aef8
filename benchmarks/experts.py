"""Scripted-expert success rates per task and embodiment (state-only rollouts).

    ./run python benchmarks/experts.py                       # 100 seeds native, 30 robosuite
    ./run python benchmarks/experts.py --noise 0.1 --seeds 50

Success is the environment's own ``info["is_success"]`` within the registered time limit.
Prints a table with the success rate, a Wilson 95 % interval and the mean episode length.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rollouts(env_id: str, kwargs: dict, seeds: int, noise: float) -> tuple[int, float]:
    import numpy as np

    import sim

    env = sim.make(env_id, render_images=False, **kwargs)
    expert = sim.make_expert(env, noise=noise, seed=12345)
    wins, lengths = 0, []
    for seed in range(seeds):
        obs, _ = env.reset(seed=seed)
        expert.reset()
        steps, done = 0, False
        while not done:
            obs, _, term, trunc, info = env.step(np.asarray(expert.act(obs), np.float32))
            steps, done = steps + 1, term or trunc
        wins += bool(info["is_success"])
        lengths.append(steps)
    env.close()
    return wins, float(np.mean(lengths))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=100, help="episodes per native task/embodiment")
    p.add_argument("--robosuite-seeds", type=int, default=30, help="episodes per robosuite task")
    p.add_argument("--noise", type=float, default=0.0, help="expert action-noise std")
    p.add_argument("--native-only", action="store_true", help="skip robosuite")
    args = p.parse_args()

    import sim
    from vptr.diagnostics.machine import describe
    from vptr.diagnostics.table import format_table

    jobs = []
    for env_id in sim.ENV_IDS:
        if "Robosuite" in env_id:
            if not args.native_only:
                jobs.append((env_id, {}, "panda", args.robosuite_seeds))
        else:
            for body in ("arm", "hand"):
                jobs.append((env_id, {"embodiment": body}, body, args.seeds))
    rows = []
    for env_id, kwargs, body, n in jobs:
        t = time.time()
        wins, mean_len = rollouts(env_id, kwargs, n, args.noise)
        lo, hi = wilson(wins, n)
        rows.append([env_id, body, f"{wins}/{n}", f"{wins / n:.0%} [{lo:.0%}, {hi:.0%}]",
                     f"{mean_len:.0f}", f"{time.time() - t:.0f}s"])
    print(f"machine: {describe()}; expert noise {args.noise}")
    print(format_table(["task", "embodiment", "successes", "rate [Wilson 95%]",
                         "mean steps", "time"], rows))


if __name__ == "__main__":
    main()
