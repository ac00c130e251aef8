"""Real-time control: the loop's rate and jitter, and how chunks are executed.

    ./run python benchmarks/control.py                 # about a minute
    ./run python benchmarks/control.py --seconds 2     # shorter runs
    ./run python benchmarks/control.py --tiny          # seconds: a smoke test

1. The control loop (vptr.runtime.ControlLoop, real clock) on the mock robot at 20, 50
   and 100 Hz: achieved rate and the lateness of each period's start (jitter p50 / p99
   / max), with inference off the control thread (async executor, instant policy) --
   i.e. jitter excluding inference.
2. Synchronous (open-loop chunk) vs asynchronous (background thread, overlap blending)
   vs two and three inferences in flight ("async2", "async3", requests evenly spaced) vs
   Real-Time Chunking on a flow policy whose consecutive chunks disagree (the
   reference Gaussian flow of vptr.runtime.reference, means alternating +-0.5: a 1.0
   jump at every seam unless the executor prevents it), with simulated inference
   latencies of a fraction of a chunk (0.44 = half a chunk less one period of slack,
   what one inference in flight serves on a real clock): time stalled at chunk boundaries (blocking
   inference + periods without a command) and the largest jump between consecutive
   executed actions at a chunk switch.
3. Exported-policy inference (vptr.runtime.artifact.ArtifactPolicy, the object `vptr
   deploy` runs; untrained weights of the default architecture: latency does not depend
   on the values) at 64x64 and 128x128, one front camera + a 15-d state, h = 5: flow BC
   (one sample) and QC (best-of-32 ranked by the critic), p50 / p99 over many calls at 1
   and 2 torch threads (QC with its default shared image trunk, and with one trunk each
   for critic and policy), next to LeRobot ACT's chunk prediction (ACTPolicy with its
   defaults: ResNet-18, chunk 100; no pretrained weights are downloaded) on the same
   inputs, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# benchmarks/sim.py is named like the `sim` package: keep this folder off the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np  # noqa: E402

from robots.base import ActionSpec, RobotSpec  # noqa: E402
from robots.mock import MockRobot, default_spec  # noqa: E402
from vptr.diagnostics.machine import describe  # noqa: E402
from vptr.runtime import ControlLoop, LoopConfig, PolicyIO, SafetyFilter  # noqa: E402
from vptr.runtime.executor import ExecutorConfig, boundary_stall_s, make_executor  # noqa: E402
from vptr.runtime.reference import GaussianChunkFlow  # noqa: E402

QUIET = {"handle_sigint": False, "estop_signal": None}


class HoldPolicy:
    """Instant policy: the current joint positions, h times (no inference cost)."""

    def __init__(self, robot, h=16):
        s = robot.spec
        self.io = PolicyIO(state_names=s.state_names, action_names=s.action.names, chunk_size=h)
        self.h = h

    def __call__(self, obs):
        return np.tile(obs["observation.state"].astype(np.float64), (self.h, 1))


def loop_rates(rates, seconds) -> list[dict]:
    rows = []
    for rate in rates:
        robot = MockRobot(spec=default_spec(rate_hz=rate))
        robot.connect()
        policy = HoldPolicy(robot)
        loop = ControlLoop(robot, policy.io, make_executor(policy, ExecutorConfig(mode="async")),
                           SafetyFilter(robot.spec.action, rate), LoopConfig(rate_hz=rate, duration_s=seconds,
                                                                             **QUIET))
        r = loop.run()
        j = np.asarray(r.jitter_s) * 1e3
        w = np.asarray(r.work_s) * 1e3
        rows.append({"rate": rate, "achieved": r.achieved_hz, "steps": r.steps, "p50": np.percentile(j, 50),
                     "p99": np.percentile(j, 99), "max": j.max(), "work_p99": np.percentile(w, 99),
                     "missed": r.missed, "overruns": r.overruns})
    return rows


def disagreeing_flow(h: int, latency_s: float) -> GaussianChunkFlow:
    calls = [0]

    def mean(obs):
        calls[0] += 1
        return np.full((h, 1), 0.5 * (-1) ** calls[0]) + 0.01 * np.arange(h)[:, None]

    io = PolicyIO(state_names=("a",), action_names=("a",), chunk_size=h)
    return GaussianChunkFlow(io, mean, offset_std=0.5, ramp_std=0.02, white_std=0.002, steps=10,
                             latency_s=latency_s)


def execution(rate, h, fractions, seconds) -> list[dict]:
    rows = []
    spec = RobotSpec(state_names=("a",), rate_hz=rate,
                     action=ActionSpec(names=("a",), low=(-5.0,), high=(5.0,), max_step=(5.0,)))
    chunk_s = h / rate
    for frac in fractions:
        for mode in ("chunk", "async", "async2", "async3", "rtc"):
            robot = MockRobot(spec=spec)
            robot.connect()
            policy = disagreeing_flow(h, frac * chunk_s)
            inflight = int(mode[-1]) if mode[-1].isdigit() else 1
            ex = make_executor(policy, ExecutorConfig(mode=mode.rstrip("23"), inflight=inflight))
            loop = ControlLoop(robot, policy.io, ex, SafetyFilter(robot.spec.action, rate),
                               LoopConfig(rate_hz=rate, duration_s=seconds, **QUIET))
            r = loop.run()
            st = ex.stats
            boundaries = max(st.inferences - 1, 1)
            sent = np.array([c[0] for c in robot.sent])
            rows.append({"latency": frac, "mode": mode, "stall_s": boundary_stall_s(st, 1 / rate),
                         "per_boundary_ms": 1e3 * boundary_stall_s(st, 1 / rate) / boundaries,
                         "empty": st.empty_steps, "seam": max(st.seams, default=0.0),
                         "sent_step": float(np.abs(np.diff(sent)).max()) if len(sent) > 1 else 0.0,
                         "inf_p50": 1e3 * float(np.median(st.latencies_s or [np.nan])),
                         "chunks": st.inferences, "seconds": r.duration_s})
    return rows


def _timed(fn, calls: int) -> tuple[float, float]:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.percentile(ts, 50)) * 1e3, float(np.percentile(ts, 99)) * 1e3


def exported_latency(sizes, calls, threads_list) -> list[dict]:
    import tempfile

    import torch

    from sim.native.embodiments import ACTION_NAMES, Arm
    from vptr.finetune import get_agent
    from vptr.finetune.policy import save_policy
    from vptr.nets.encoders import make_encoder
    from vptr.nets.policy import DataSpec
    from vptr.runtime.artifact import ArtifactPolicy

    cam = "observation.images.front"
    names = list(Arm.state_names)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            spec = DataSpec(action_dim=5, horizon=5, state_dim=len(names), cameras=(cam,),
                            image_size=size)
            obs = {"observation.state": np.zeros(len(names), np.float32),
                   cam: np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)}
            policies = {}
            for agent_name, options in (("flowbc", {}), ("qc", {}),
                                        ("qc", {"shared_trunk": False}),
                                        ("qc", {"act_samples": 32})):
                agent = get_agent(agent_name)
                cfg = agent.config_cls(**options)
                label = (f"{agent_name} (N={cfg.act_samples if agent_name == 'qc' else 1}"
                         + (", 2 trunks)" if "shared_trunk" in options else ")"))
                nets = agent.create(cfg, spec, lambda size=size: {cam: make_encoder("impala_small", 3, size)})
                meta = {"state_features": ["observation.state"], "state_widths": [len(names)],
                        "state_names": {"observation.state": names},
                        "action_names": list(ACTION_NAMES), "fps": 20.0}
                folder = save_policy(f"{tmp}/{agent_name}{size}{len(policies)}", agent_name, cfg,
                                     nets, meta)
                policies[label] = ArtifactPolicy(folder)
            from lerobot.configs.types import FeatureType, PolicyFeature
            from lerobot.policies.act.configuration_act import ACTConfig
            from lerobot.policies.act.modeling_act import ACTPolicy

            act_cfg = ACTConfig(input_features={
                "observation.state": PolicyFeature(FeatureType.STATE, (len(names),)),
                cam: PolicyFeature(FeatureType.VISUAL, (3, size, size))},
                output_features={"action": PolicyFeature(FeatureType.ACTION, (5,))},
                pretrained_backbone_weights=None, device="cpu")
            act = ACTPolicy(act_cfg).eval()
            act_batch = {"observation.state": torch.zeros(1, len(names)),
                         cam: torch.rand(1, 3, size, size)}

            def act_chunk(act=act, act_batch=act_batch):
                with torch.no_grad():
                    return act.predict_action_chunk(act_batch)

            for threads in threads_list:
                torch.set_num_threads(threads)
                act_p50, act_p99 = _timed(act_chunk, max(calls // 4, 5))
                for name, pol in policies.items():
                    p50, p99 = _timed(lambda pol=pol, obs=obs: pol(obs), calls)
                    rows.append({"size": size, "threads": threads, "policy": name, "p50": p50,
                                 "p99": p99, "act_p50": act_p50, "act_p99": act_p99})
                rows.append({"size": size, "threads": threads, "policy": "LeRobot ACT (chunk 100)",
                             "p50": act_p50, "p99": act_p99, "act_p50": act_p50, "act_p99": act_p99})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=6.0, help="length of each run")
    p.add_argument("--rates", default="20,50,100", help="loop rates (Hz) of part 1")
    p.add_argument("--exec-rate", type=float, default=20.0, help="loop rate (Hz) of part 2")
    p.add_argument("--chunk", type=int, default=16, help="chunk size h of part 2")
    p.add_argument("--latencies", default="0.25,0.44,0.5,0.75", help="inference latencies (chunk fractions)")
    p.add_argument("--calls", type=int, default=200, help="inference calls per policy in part 3")
    p.add_argument("--sizes", default="64,128", help="image sizes of part 3")
    p.add_argument("--parts", default="1,2,3", help="which parts to run")
    p.add_argument("--tiny", action="store_true", help="0.5 s runs, one latency (a smoke test)")
    args = p.parse_args()
    parts = {int(x) for x in args.parts.split(",")}
    if args.tiny:
        args.seconds, args.latencies, args.calls, args.sizes = 0.5, "0.25", 8, "32"
    print(f"machine: {describe()}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (shared machines: figures are noisy)")
    t0 = time.perf_counter()
    rates = [float(x) for x in args.rates.split(",")] if 1 in parts else []
    print(f"\n1. control loop on the mock robot, {args.seconds:g} s each, inference off-thread")
    print(f"{'rate Hz':>8} {'achieved':>9} {'jitter p50 ms':>14} {'p99 ms':>8} {'max ms':>8} "
          f"{'work p99 ms':>12} {'missed':>7} {'overruns':>9}")
    for r in loop_rates(rates, args.seconds):
        print(f"{r['rate']:>8g} {r['achieved']:>9.2f} {r['p50']:>14.3f} {r['p99']:>8.3f} {r['max']:>8.3f} "
              f"{r['work_p99']:>12.3f} {r['missed']:>7d} {r['overruns']:>9d}")
    fr = [float(x) for x in args.latencies.split(",")] if 2 in parts else []
    chunk_s = args.chunk / args.exec_rate
    print(f"\n2. chunk execution at {args.exec_rate:g} Hz, h = {args.chunk} ({chunk_s:g} s per chunk), "
          f"consecutive chunks 1.0 apart, {args.seconds:g} s each")
    print(f"{'latency':>8} {'mode':>6} {'stalled s':>10} {'per boundary ms':>16} {'empty periods':>14} "
          f"{'largest seam':>13} {'largest sent step':>18} {'inference p50 ms':>17} {'chunks':>7}")
    for r in execution(args.exec_rate, args.chunk, fr, args.seconds):
        print(f"{r['latency']:>7.2f}h {r['mode']:>6} {r['stall_s']:>10.3f} {r['per_boundary_ms']:>16.1f} "
              f"{r['empty']:>14d} {r['seam']:>13.3f} {r['sent_step']:>18.3f} {r['inf_p50']:>17.1f} "
              f"{r['chunks']:>7d}")
    sizes = [int(x) for x in args.sizes.split(",")] if 3 in parts else []
    print(f"\n3. exported-policy inference (ArtifactPolicy, one observation), {args.calls} calls; "
          "ratio = ACT p99 / ours p99 (same run, same threads)")
    print(f"{'image':>6} {'threads':>8} {'policy':>24} {'p50 ms':>8} {'p99 ms':>8} {'ACT p99 / p99':>14}")
    for r in exported_latency(sizes, args.calls, (1,) if args.tiny else (1, 2)):
        print(f"{r['size']:>6} {r['threads']:>8} {r['policy']:>24} {r['p50']:>8.2f} {r['p99']:>8.2f} "
              f"{r['act_p99'] / r['p99']:>13.1f}x")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
