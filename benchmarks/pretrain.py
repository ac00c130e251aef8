"""Pretraining throughput: training steps/s and frames/s, loader-only batches/s, peak memory.

    ./run python benchmarks/pretrain.py                 # ICVF: Impala @ 64x64 and ResNet-18 @ 128x128
    ./run python benchmarks/pretrain.py --steps 20 --threads 1

Each configuration runs in its own process (so peak RSS is its own) on generated video
(`vptr generate video`, 128x128, resized by the data pipeline). "loader" is the data
loader alone (same workers, no model); the loader must deliver at least 2x what
training consumes. frames/s counts the images of the batch contract the objective
reads (obs, next_obs, goal, intent) per second; "encoded/s" counts frames actually
run through the online encoder after de-duplication.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
# benchmarks/sim.py is named like the `sim` package: keep this folder off the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


CONFIGS = [
    ("ICVF, Impala (release)", "impala", 64),
    ("ICVF, ResNet-18 (timm)", "timm:resnet18", 128),
]


def video_source(data_dir: str) -> str:
    from sim.generate import VideoDataConfig, generate_video

    cfg = VideoDataConfig(tasks=("vptr/Lift-v0", "vptr/PickPlace-v0"), episodes_per_task=10,
                          image_size=128, data_dir=data_dir)
    out, _ = generate_video(cfg, log=lambda m: None)
    return str(out)


def measure(args: tuple) -> dict:
    name, encoder, size, data, steps, warmup, workers, threads, cache = args
    import torch

    from vptr.config import build_config
    from vptr.data import make_loader, open_video_source
    from vptr.pretrain.common import ema_update, make_target
    from vptr.train.pretrain import LossModule, PretrainConfig, build_nets

    if threads:
        torch.set_num_threads(threads)
    cfg = build_config(PretrainConfig, {"data": data, "encoder": encoder, "source.size": size,
                                        "source.cache_dir": cache, "source.progress": False,
                                        "num_workers": workers})
    store = open_video_source(cfg.data, cfg.source)
    bs = cfg.resolved_batch_size()

    # loader alone
    loader = iter(make_loader(store, cfg.sampler, bs, seed=0, num_workers=workers))
    for _ in range(warmup):
        next(loader)
    t = time.perf_counter()
    n_load = steps * 3
    for _ in range(n_load):
        next(loader)
    loader_bps = n_load / (time.perf_counter() - t)
    del loader

    torch.manual_seed(0)
    nets, objective = build_nets(cfg, size)
    target = make_target(nets)
    opt = torch.optim.Adam(nets.parameters(), lr=cfg.resolved_lr(), eps=cfg.icvf.adam_eps)
    module = LossModule(nets, target, objective.loss_fn, cfg.objective_cfg)
    batches = iter(make_loader(store, cfg.sampler, bs, seed=1, num_workers=workers))
    encoded = 0
    for i in range(warmup + steps):
        if i == warmup:
            t = time.perf_counter()
            encoded = 0
        batch = next(batches)
        loss, _ = module(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(target, nets, cfg.icvf.target_rate)
        idx = torch.cat([batch[k] for k in ("obs_index", "goal_index", "intent_index")])
        encoded += int(torch.unique(idx).numel())
    elapsed = time.perf_counter() - t
    del batches
    sps = steps / elapsed
    return {"name": name, "size": size, "batch": bs, "steps_per_s": sps,
            "frames_per_s": sps * bs * 4, "encoded_per_s": encoded / elapsed,
            "loader_batches_per_s": loader_bps, "loader_ratio": loader_bps / sps,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "threads": torch.get_num_threads(), "workers": workers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=15, help="timed training steps per config")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--workers", type=int, default=1, help="data-loader worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--data-dir", default=os.environ.get("VPTR_DATA_DIR", "data"),
                   help="generated-data cache")
    p.add_argument("--cache-dir", default="", help="decoded-frame cache (default: the usual)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    args = p.parse_args()
    data = video_source(args.data_dir)
    results = []
    ctx = mp.get_context("spawn")
    for name, encoder, size in CONFIGS:
        # a fresh process per config (its own peak RSS); not a Pool: daemonic pool workers
        # cannot start data-loader workers
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            results.append(pool.submit(measure, (name, encoder, size, data, args.steps,
                                                 args.warmup, args.workers, args.threads,
                                                 args.cache_dir)).result())
    rows = [[r["name"], f"{r['size']}x{r['size']}", r["batch"], f"{r['steps_per_s']:.2f}",
             f"{r['frames_per_s']:,.0f}", f"{r['encoded_per_s']:,.0f}",
             f"{r['loader_batches_per_s']:.1f}", f"{r['loader_ratio']:.1f}x",
             f"{r['peak_rss_gb']:.2f}"] for r in results]
    from vptr.diagnostics.machine import describe
    from vptr.diagnostics.table import format_table as table

    print(f"machine: {describe()}; torch threads {results[0]['threads']}, "
          f"loader workers {args.workers}")
    print(table(["config", "frames", "batch", "train steps/s", "frames/s", "encoded/s",
                 "loader batches/s", "loader / train", "peak RSS (GB)"], rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
