"""Fine-tuning throughput on this machine: updates/s per agent and encoder mode, acting
latency, evaluation episodes/s, peak memory.

    ./run python benchmarks/finetune.py            # full table (a few minutes on 2 cores)
    ./run python benchmarks/finetune.py --tiny     # seconds: checks the benchmark runs

Synthetic batches with the shapes of the native Lift data (64x64 front camera, 8-d state,
5-d actions); the networks and losses are the real ones (vptr.finetune). "frozen" batches
carry precomputed trunk embeddings (what `--encoder.mode frozen` trains on), "finetune"
batches carry images and train the trunks. Ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
# benchmarks/sim.py is named like the `sim` package: keep this folder off the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vptr.diagnostics.machine import describe as machine_line  # noqa: E402
from vptr.finetune import AGENTS, get_agent  # noqa: E402
from vptr.finetune.nets import DataSpec  # noqa: E402
from vptr.nets.encoders import make_encoder  # noqa: E402
from vptr.train.core import LossModule, adam, autocast, make_target  # noqa: E402

CAM = "observation.images.front"


def batch_for(spec: DataSpec, b: int, h: int, frozen: bool, emb_dim: int) -> dict:
    g = torch.Generator().manual_seed(0)
    out = {"state": torch.randn(b, spec.state_dim, generator=g),
           "next_state": torch.randn(b, spec.state_dim, generator=g),
           "actions": torch.rand(b, h, spec.action_dim, generator=g) * 2 - 1,
           "action_mask": torch.ones(b, h, dtype=torch.bool), "chunk_reward": -torch.ones(b),
           "bootstrap_mask": torch.ones(b), "task_index": torch.zeros(b, dtype=torch.int64),
           "mc_return": torch.full((b,), -10.0), "step": torch.full((b,), 10**6)}
    for k in ("obs", "next_obs"):
        if frozen:
            out[f"{k}_emb"] = torch.randn(b, emb_dim, generator=g)
        else:
            out[f"{k}.{CAM}"] = torch.randint(0, 256, (b, 3, spec.image_size, spec.image_size),
                                              dtype=torch.uint8, generator=g)
    return out


def build(name: str, frozen: bool, size: int, encoder: str, overrides: dict):
    agent = get_agent(name)
    fields = {f.name for f in dataclasses.fields(agent.config_cls)}
    cfg = agent.config_cls(**{k: v for k, v in overrides.items() if k in fields})
    spec = DataSpec(action_dim=5, horizon=cfg.chunk, state_dim=8, cameras=(CAM,),
                    image_size=size)
    torch.manual_seed(0)
    base = make_encoder(encoder, 3, size)
    if frozen:
        base.requires_grad_(False)
        trunks = lambda: {CAM: base}
    else:
        import copy
        trunks = lambda: {CAM: copy.deepcopy(base)}
    nets = agent.create(cfg, spec, trunks)
    part = agent.target_of(nets)
    target = make_target(part) if part is not None else None
    opt = adam([p for p in nets.parameters() if p.requires_grad], lr=cfg.lr)
    return agent, cfg, spec, nets, target, opt, int(base.out_dim)


def time_updates(agent, cfg, nets, target, opt, batch, seconds: float, amp: str = "off",
                 compiled: bool = False) -> float:
    """Updates/s over ``seconds`` after one warm-up update (which includes compiling)."""
    loss_fn = LossModule(nets, target, agent.loss_fn, cfg)  # what TrainStep runs
    if compiled:
        loss_fn = torch.compile(loss_fn)

    def one():
        with autocast(amp, torch.device("cpu")):
            loss, _ = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    one()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        one()
        n += 1
    return n / (time.perf_counter() - t0)


def act_latency(agent, cfg, nets, spec, reps: int) -> tuple[float, float]:
    obs = {f"obs.{CAM}": torch.randint(0, 256, (1, 3, spec.image_size, spec.image_size),
                                       dtype=torch.uint8),
           "state": torch.randn(1, spec.state_dim), "task_index": torch.zeros(1, dtype=torch.int64)}
    nets.eval()
    agent.act(nets, obs, cfg)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        agent.act(nets, obs, cfg)
        times.append((time.perf_counter() - t0) * 1000)
    nets.train()
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="seconds-long run (checks it works)")
    p.add_argument("--seconds", type=float, default=6.0, help="timing window per cell")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--encoder", default="impala_small")
    p.add_argument("--image-size", type=int, default=64,
                   help="camera image size of the synthetic batches (--tiny: 32)")
    p.add_argument("--agents", nargs="+", choices=sorted(AGENTS), default=sorted(AGENTS),
                   help="agents to time (default: all)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation throughput")
    p.add_argument("--amp", nargs="+", choices=("off", "bf16"), default=["off"],
                   help="precisions of the update (CPU autocast, what `--amp bf16` trains "
                        "with); several are timed in one run and compared")
    p.add_argument("--compile", nargs="+", choices=("off", "on"), default=["off"],
                   help="torch.compile the update's loss (what `--compile` trains with; the "
                        "warm-up update, not timed, compiles); both are timed in one run")
    args = p.parse_args()
    if args.image_size < 16:
        p.error(f"--image-size must be >= 16, got {args.image_size}")
    torch.set_num_threads(args.threads)
    secs = 0.3 if args.tiny else args.seconds
    size = 32 if args.tiny else args.image_size
    ours = dict(batch_size=16 if args.tiny else 128)
    paper = dict(batch_size=256, hidden=(512,) * 4, target_samples=32, act_samples=32,
                 flow_steps=10)
    print(f"machine: {machine_line()}; torch threads {args.threads}; image {size}x{size}, "
          f"trunk {args.encoder}")
    print(f"\n{'agent':<8} {'encoder':<9} {'settings':<8} {'amp':<5} {'compile':<8} {'updates/s':>10} "
          f"{'act p50 ms':>11} {'act p99 ms':>11}")
    rows = {}
    cells = [(a, m, "ours") for a in AGENTS if a in args.agents for m in ("frozen", "finetune")]
    if "qc" in args.agents:
        cells.append(("qc", "frozen", "paper"))
    if args.tiny:
        cells = [("qc", "frozen", "ours"), ("qc", "finetune", "ours"), ("flowbc", "frozen", "ours")]
    cells = [(*c, amp, comp) for c in cells for amp in args.amp for comp in args.compile]
    for name, mode, which, amp, comp in cells:
        over = ours if which == "ours" else paper
        agent, cfg, spec, nets, target, opt, emb = build(name, mode == "frozen", size,
                                                          args.encoder, over)
        batch = batch_for(spec, cfg.batch_size, cfg.sample_horizon(), mode == "frozen", emb)
        ups = time_updates(agent, cfg, nets, target, opt, batch, secs, amp, comp == "on")
        p50, p99 = act_latency(agent, cfg, nets, spec, 5 if args.tiny else 50) \
            if mode == "finetune" and amp == "off" and comp == "off" else (float("nan"),) * 2
        rows[(name, mode, which, amp, comp)] = ups
        print(f"{name:<8} {mode:<9} {which:<8} {amp:<5} {comp:<8} {ups:>10.2f} {p50:>11.2f} "
              f"{p99:>11.2f}", flush=True)
    print()
    for amp in args.amp:
        for comp in args.compile:
            how = f"amp {amp}, compile {comp}"
            if ("qc", "finetune", "ours", amp, comp) in rows:
                r = rows[("qc", "frozen", "ours", amp, comp)] / rows[("qc", "finetune", "ours", amp, comp)]
                print(f"QC frozen-cached / fine-tuned encoder ({how}): {r:.1f}x updates/s")
            if ("qc", "frozen", "paper", amp, comp) in rows:
                r = rows[("qc", "frozen", "ours", amp, comp)] / rows[("qc", "frozen", "paper", amp, comp)]
                print(f"QC our defaults / paper defaults (frozen, {how}): {r:.1f}x updates/s")
    for (name, mode, which, amp, comp), ups in rows.items():
        if amp == "bf16" and (name, mode, which, "off", comp) in rows:
            print(f"bf16 / fp32 updates/s, {name} {mode} {which} (compile {comp}): "
                  f"{ups / rows[(name, mode, which, 'off', comp)]:.2f}x")
        if comp == "on" and (name, mode, which, amp, "off") in rows:
            print(f"compiled / eager updates/s, {name} {mode} {which} (amp {amp}): "
                  f"{ups / rows[(name, mode, which, amp, 'off')]:.2f}x")
    if not args.no_eval:
        from sim.evaluate import measure_throughput

        print(f"\nevaluation, vptr/Lift-v0 at {size}x{size}, zero actions (full-length episodes)")
        print(f"{'eval workers':<13} {'episodes/s':>10}")
        for w in (1, 2):
            eps = measure_throughput("vptr/Lift-v0", num_workers=w,
                                     episodes=4 if args.tiny else 20,
                                     env_kwargs={"image_size": size})
            print(f"{w:<13} {eps['episodes_per_s']:>10.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
