"""Pretraining throughput: training steps/s and frames/s, loader-only batches/s, peak memory.

    ./run python benchmarks/pretrain.py                 # ICVF: Impala @ 64x64 and ResNet-18 @ 128x128
    ./run python benchmarks/pretrain.py --steps 20 --threads 1
    ./run python benchmarks/pretrain.py --tiny --steps 2    # seconds: impala_small @ 32x32

Each configuration runs in its own Python process (a fresh interpreter started with
``subprocess``, so peak RSS is its own and it exits like any command) on generated video
(`vptr generate video`, 128x128, resized by the data pipeline). It times the trainer's own
step (``vptr.train.pretrain_loop.build_training``), not a copy. "loader" is the data
loader alone (same workers, no model); the loader must deliver at least 2x what
training consumes. frames/s counts the images of the batch contract the objective
reads (obs, next_obs, goal, intent) per second; "encoded/s" counts frames actually
run through the online encoder after de-duplication.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
# benchmarks/sim.py is named like the `sim` package: keep this folder off the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


CONFIGS = [  # (name, encoder, frame size, batch size; 0 = the objective's default)
    ("ICVF, Impala (release)", "impala", 64, 0),
    ("ICVF, ResNet-18 (timm)", "timm:resnet18", 128, 0),
]
TINY = [("ICVF, Impala small (tiny)", "impala_small", 32, 8)]


def video_source(data_dir: str, episodes: int) -> str:
    from sim.generate import VideoDataConfig, generate_video

    cfg = VideoDataConfig(tasks=("vptr/Lift-v0", "vptr/PickPlace-v0"), episodes_per_task=episodes,
                          image_size=128, data_dir=data_dir)
    out, _ = generate_video(cfg, log=lambda m: None)
    return str(out)


def measure(args: tuple) -> dict:
    """Loader alone, then the trainer's own step (vptr.train.pretrain_loop.build_training:
    forward, backward, Adam, EMA target), in this process."""
    name, encoder, size, batch, data, steps, warmup, workers, threads, cache = args
    import torch

    from vptr.config import build_config
    from vptr.data import make_loader, open_video_source
    from vptr.pretrain import get_objective
    from vptr.train import core
    from vptr.train.pretrain_loop import PretrainConfig, build_training

    cfg = build_config(PretrainConfig, {"data": data, "encoder": encoder,
                                        "source.image_size": size, "source.cache_dir": cache,
                                        "source.progress": False, "num_workers": workers,
                                        "threads": threads, "device": "cpu",
                                        "batch_size": batch})
    with core.session(cfg.device, cfg.threads) as s:
        store = open_video_source(cfg.data, cfg.source)
        bs = cfg.resolved_batch_size()

        loader = s.closing(core.BatchIterator(make_loader(store, cfg.sampler, bs, seed=0,
                                                          num_workers=workers)))
        for _ in range(warmup):
            next(loader)
        t = time.perf_counter()
        n_load = steps * 3
        for _ in range(n_load):
            next(loader)
        loader_bps = n_load / (time.perf_counter() - t)
        loader.close()

        _, step = build_training(cfg, get_objective(cfg.objective), size, s)
        batches = s.closing(core.BatchIterator(make_loader(store, cfg.sampler, bs, seed=1,
                                                           num_workers=workers)))
        encoded = 0
        for i in range(warmup + steps):
            if i == warmup:
                t = time.perf_counter()
                encoded = 0
            batch = next(batches)
            step(batch)
            idx = torch.cat([batch[k] for k in ("obs_index", "goal_index", "intent_index")])
            encoded += int(torch.unique(idx).numel())
        elapsed = time.perf_counter() - t
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
    p.add_argument("--only", default="", help="run only the configs whose name contains this")
    p.add_argument("--tiny", action="store_true", help="one small config on 2 short videos "
                                                       "per task (a smoke test, seconds)")
    p.add_argument("--one", type=int, default=-1, help=argparse.SUPPRESS)  # internal
    p.add_argument("--result", default="", help=argparse.SUPPRESS)  # internal
    args = p.parse_args()
    configs = TINY if args.tiny else CONFIGS
    data = video_source(args.data_dir, 2 if args.tiny else 10)
    if args.one >= 0:  # the child process: one config, result as JSON
        name, encoder, size, batch = configs[args.one]
        result = measure((name, encoder, size, batch, data, args.steps, args.warmup,
                          args.workers, args.threads, args.cache_dir))
        with open(args.result, "w") as fh:
            json.dump(result, fh)
        return
    results = []
    for i, (name, *_) in enumerate(configs):
        if args.only.lower() not in name.lower():
            continue
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            child = [a for a in sys.argv[1:] if not a.startswith(("--one", "--result"))]
            subprocess.run([sys.executable, os.path.abspath(__file__), *child, "--one", str(i),
                            "--result", out.name], check=True)
            results.append(json.loads(open(out.name).read()))
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
