"""``vptr deploy``: run an exported policy on a robot through the full stack.

artifact (:mod:`vptr.runtime.artifact`, checksums verified) -> chunk executor -> safety
filter (limits from the robot's spec, on unless ``--unlimited``) -> fixed-rate control
loop (watchdog, e-stop on SIGUSR1 or Ctrl-C) -> robot (:mod:`robots`). The policy must
match the robot: every mismatch (state names, cameras and their shapes, actions, rate)
is listed and the command refuses to start.

Robots (``--robot``):

* ``sim:<task>`` -- the native MuJoCo arm (``lift``, ``reach`` ...), cameras and image size
  taken from the policy; ``--no-realtime`` steps it as fast as it computes (simulated
  time: timing figures are then not wall-clock);
* ``robosuite:<task>`` -- the robosuite Panda (``lift``, ``stack``, ``pickplacecan``,
  ``door``), cameras and image size from the policy;
* ``lerobot:<type>`` -- any robot in LeRobot's registry (``--robot-option key=value`` are
  its config fields; ``--max-step`` is required unless its spec carries limits);
* ``ur:<host>`` -- a Universal Robots arm through ``ur_rtde`` (``--robot-option`` sets
  :class:`robots.ur.URConfig` fields);
* ``mock`` -- the mock robot with its default spec (a dry run of the stack).

Each episode prints a status line; the final report (stdout and ``--report FILE.json``)
has success with a Wilson 95 % interval, the achieved loop rate, jitter p50/p99,
inference latency p50/p99, boundary stalls, seams and safety interventions by kind.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vptr.config import helpfield
from vptr.errors import ConfigError

EXECUTORS = ("chunk", "receding", "ensemble", "async", "rtc")


@dataclass(frozen=True)
class DeployConfig:
    """Run an exported policy on a robot (simulated or real)."""

    policy: Path | None = helpfield(None, "artifact folder (`vptr export --out`, or a run's policy/)")
    robot: str = helpfield("sim:lift", "sim:<task>, robosuite:<task>, lerobot:<type>, "
                                       "ur:<host> or mock")
    robot_option: tuple[str, ...] = helpfield((), "robot options key=value (LeRobot config "
                                                   "fields, URConfig fields, sim: domain_shift)")
    rate: float = helpfield(0.0, "control rate in Hz (0 = the policy's training rate)")
    episodes: int = helpfield(1, "episodes to run")
    max_steps: int = helpfield(0, "periods per episode at most (0 = until the robot's episode "
                                  "ends; required for real robots)")
    seed: int = helpfield(200_000, "sim: reset seed of the first episode (episode i: seed + i)")
    task: str = helpfield("", "task string or index of a multi-task policy ('' = on sim:<task> "
                              "the task's own instruction when the policy knows it, else "
                              "the task it was fine-tuned on last, as vptr eval; else 0)")
    executor: str = helpfield("chunk", "chunk (open loop), receding, ensemble, async or rtc")
    execute: int = helpfield(0, "receding: actions executed before re-planning (0 = h/2)")
    horizon: int = helpfield(0, "async/rtc: actions executed from a chunk before the next is "
                                "requested (0 = h/4, at least 2)")
    inflight: int = helpfield(1, "async: inferences in flight at once (n serve latencies up to "
                                 "n / (n + 1) of a chunk)")
    max_guidance_weight: float = helpfield(10.0, "rtc: clip of the guidance weight (beta)")
    max_step: float = helpfield(0.0, "per-step change limit (required for robots whose spec "
                                         "has none; otherwise it can only tighten the spec's)")
    unlimited: bool = helpfield(False, "run WITHOUT the safety filter's range and per-step "
                                       "limits (the NaN guard and stale-observation hold stay; "
                                       "not recommended)")
    realtime: bool = helpfield(True, "sim: pace the loop by the wall clock (false: simulated "
                                     "time, as fast as it computes)")
    simulated_delay: int = helpfield(1, "--no-realtime with async/rtc: control periods an "
                                        "inference takes in simulated time")
    record: Path | None = helpfield(None, "record the episodes to this LeRobotDataset folder")
    report: Path | None = helpfield(None, "write the final report here (JSON)")
    device: str = helpfield("cpu", "device of the policy")
    act_samples: int = helpfield(0, "best-of-N candidates the critic ranks per chunk (0 = the "
                                    "artifact's own, e.g. QC's 8; fewer: lower latency)")
    threads: int = helpfield(1, "torch CPU threads for inference (1: lowest latency at batch "
                                "1 next to the loop thread; 0 = torch's default)")

    def __post_init__(self) -> None:
        if self.policy is None:
            raise ConfigError("--policy DIR: the artifact to deploy")
        if (self.episodes < 1 or self.max_steps < 0 or self.rate < 0 or self.max_step < 0
                or self.threads < 0 or self.simulated_delay < 0 or self.horizon < 0
                or self.act_samples < 0):
            raise ConfigError("episodes must be >= 1; max_steps, rate, max_step, threads, "
                              "simulated_delay, horizon and act_samples >= 0")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, "
                              f"got {self.executor!r}")
        kind = self.robot.partition(":")[0]
        if kind not in ("sim", "robosuite", "lerobot", "ur", "mock"):
            raise ConfigError(f"--robot {self.robot!r}: expected sim:<task>, robosuite:<task>, "
                              "lerobot:<type>, ur:<host> or mock")
        if kind in ("lerobot", "ur") and not self.max_steps:
            raise ConfigError(f"--robot {self.robot}: give --max-steps (a real robot's episode "
                              "does not end by itself)")
        for opt in self.robot_option:
            if "=" not in opt:
                raise ConfigError(f"--robot-option {opt!r}: expected key=value")


def _options(cfg: DeployConfig) -> dict[str, Any]:
    out = {}
    for opt in cfg.robot_option:
        key, _, value = opt.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def deploy_task(cfg: DeployConfig) -> int | str:
    """``--task``; when not given, on the native sim arm the rule of ``vptr eval``
    (:func:`vptr.evaluate.policy_task`), elsewhere index 0."""
    kind, _, arg = cfg.robot.partition(":")
    if kind != "sim":
        return int(cfg.task) if cfg.task.isdigit() else (cfg.task or 0)
    from robots.sim_arm import env_id
    from vptr.evaluate import policy_task

    return policy_task(Path(cfg.policy), env_id(arg or "lift"), cfg.task)


def make_robot(cfg: DeployConfig, policy):
    """The robot ``--robot`` names, shaped after the policy where it is simulated."""
    kind, _, arg = cfg.robot.partition(":")
    options = _options(cfg)
    if kind == "sim":
        from robots.sim_arm import SimArm

        cams = tuple(c for c, _ in policy.io.cameras)
        size = policy.io.cameras[0][1][0] if cams else 64
        unknown = set(options) - {"domain_shift"}
        if unknown:
            raise ConfigError(f"--robot-option {sorted(unknown)}: the sim arm takes domain_shift")
        return SimArm(task=arg or "lift", image_size=size, cameras=cams or ("front",),
                      seed=cfg.seed, render_images=bool(cams),
                      domain_shift=float(options.get("domain_shift", 0.0)))
    if kind == "robosuite":
        from robots.robosuite_arm import RobosuiteArm

        if options:
            raise ConfigError(f"--robot-option {sorted(options)}: the robosuite arm takes none")
        cams = tuple(c for c, _ in policy.io.cameras)
        return RobosuiteArm(task=arg or "lift", image_size=policy.io.cameras[0][1][0] if cams else 84,
                            cameras=cams or ("agentview",), seed=cfg.seed, render_images=bool(cams))
    if kind == "lerobot":
        from robots.lerobot_adapter import LeRobotRobot

        return LeRobotRobot.from_type(arg, max_step=cfg.max_step or None,
                                      rate_hz=cfg.rate or policy.io.rate_hz or 30.0, **options)
    if kind == "ur":
        from robots.ur import URArm, URConfig

        try:
            return URArm(URConfig(host=arg, **options))
        except TypeError as e:
            raise ConfigError(f"--robot-option: {e}") from None
    from robots.mock import MockRobot, default_spec

    return MockRobot(default_spec(rate_hz=cfg.rate or policy.io.rate_hz or 50.0))


def step_limit(cfg: DeployConfig, action) -> np.ndarray | None:
    """``--max-step`` for a robot whose spec has none; for one that has, it can only
    tighten the spec's limits."""
    if not cfg.max_step:
        return None
    if action.max_step is None:
        return np.full(action.dim, cfg.max_step)
    return np.minimum(np.asarray(action.max_step, dtype=float), cfg.max_step)


def executor_config(cfg: DeployConfig):
    from vptr.runtime import ExecutorConfig

    mode = "chunk" if cfg.executor == "chunk" else cfg.executor
    return ExecutorConfig(mode=mode, execute=cfg.execute, horizon=cfg.horizon, inflight=cfg.inflight,
                          max_guidance_weight=cfg.max_guidance_weight)


def summarize(episodes: list[dict[str, Any]], rate: float, realtime: bool) -> dict[str, Any]:
    from sim.evaluate import wilson_interval

    def pct(key: str, q: float) -> float | None:
        xs = [x for e in episodes for x in e["_" + key]]
        return round(float(np.percentile(xs, q)) * 1e3, 3) if xs else None

    successes = [bool(e["success"]) for e in episodes if e["success"] is not None]
    interventions: Counter = Counter()
    for e in episodes:
        interventions.update(e["interventions"])
    out: dict[str, Any] = {
        "episodes": len(episodes), "rate_hz": rate, "realtime": realtime,
        "achieved_hz": round(float(np.mean([e["achieved_hz"] for e in episodes])), 2),
        "jitter_ms": {"p50": pct("jitter", 50), "p99": pct("jitter", 99)},
        "inference_ms": {"p50": pct("inference", 50), "p99": pct("inference", 99)},
        "boundary_stall_s": round(sum(e["boundary_stall_s"] for e in episodes), 4),
        "largest_seam": max(e["largest_seam"] for e in episodes),
        "interventions": dict(interventions),
        "stop_reasons": dict(Counter(e["stop_reason"] for e in episodes)),
        "per_episode": [{k: v for k, v in e.items() if not k.startswith("_")} for e in episodes]}
    if successes:
        k, n = sum(successes), len(successes)
        out.update(success_rate=k / n, success_ci95=list(wilson_interval(k, n)))
    return out


def deploy(cfg: DeployConfig, out=sys.stdout) -> dict[str, Any]:
    from vptr.runtime import ControlLoop, FakeClock, LoopConfig, SafetyFilter, make_executor
    from vptr.runtime.artifact import ArtifactPolicy
    from vptr.runtime.policy import check_compatible

    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    policy = ArtifactPolicy(cfg.policy, device=cfg.device, task=deploy_task(cfg),
                            act_samples=cfg.act_samples)
    rate = cfg.rate or policy.io.rate_hz
    if not rate:
        raise ConfigError(f"{cfg.policy}: the policy declares no rate; give --rate HZ")
    robot = make_robot(cfg, policy)
    check_compatible(policy.io, robot, rate)  # before connecting: nothing moves on a mismatch
    simulated = cfg.robot.startswith(("sim:", "robosuite:"))
    if not cfg.realtime and not simulated:
        raise ConfigError("--no-realtime is for simulated robots only")
    recorder = None
    if cfg.record is not None:
        from vptr.runtime.recording import EpisodeRecorder

        tasks = policy.doc.get("tasks") or [""]
        recorder = EpisodeRecorder(cfg.record, robot.observation_features,
                                   robot.action_features, fps=int(round(rate)),
                                   robot_type=robot.robot_type,
                                   task=tasks[min(policy.task_index, len(tasks) - 1)])
    episodes = []
    robot.connect()
    try:
        for i in range(cfg.episodes):
            if i and hasattr(robot, "reset"):
                robot.reset(cfg.seed + i)
            policy.reset()
            if cfg.unlimited:  # no range and no per-step limit; the NaN guard and the
                # stale-observation hold stay (the robot's driver may still clip)
                safety = SafetyFilter(robot.spec.action, rate_hz=rate, low=-np.inf, high=np.inf,
                                      max_step=np.inf, unlimited=True)
            else:
                safety = SafetyFilter(robot.spec.action, rate_hz=rate,
                                      max_step=step_limit(cfg, robot.spec.action))
            delay = (cfg.simulated_delay if not cfg.realtime and cfg.executor in ("async", "rtc")
                     else None)
            loop = ControlLoop(robot, policy.io, make_executor(policy, executor_config(cfg), delay),
                               safety, LoopConfig(rate_hz=rate, max_steps=cfg.max_steps or None,
                                                  handle_sigint=True),
                               clock=None if cfg.realtime else FakeClock(), recorder=recorder)
            r = loop.run()
            s = r.summary()
            ep = {"episode": i, "success": r.success, "steps": r.steps,
                  "achieved_hz": s["achieved_hz"], "stop_reason": r.stop_reason,
                  "boundary_stall_s": s["boundary_stall_s"], "largest_seam": s["largest_seam"],
                  "interventions": s["interventions"], "holds": r.holds, "missed": r.missed,
                  "_jitter": list(r.jitter_s), "_inference": list(r.inference_s)}
            episodes.append(ep)
            ok = sum(bool(e["success"]) for e in episodes)
            print(f"episode {i + 1}/{cfg.episodes}: {'success' if r.success else 'failure'} "
                  f"in {r.steps} steps ({r.stop_reason}); {s['achieved_hz']:.1f} Hz, jitter p99 "
                  f"{s['jitter_ms'].get('p99', 0):.2f} ms, inference p99 "
                  f"{s['inference_ms'].get('p99', 0):.1f} ms; {ok}/{i + 1} so far", file=out,
                  flush=True)
            if r.stop_reason.startswith(("robot:", "e-stop", "interrupted", "watchdog")):
                print(f"stopping: {r.stop_reason}", file=out)
                break
    finally:
        if recorder is not None:
            recorder.close()
        robot.disconnect()
    report = summarize(episodes, rate, cfg.realtime)
    report.update(policy=str(cfg.policy), robot=cfg.robot, executor=cfg.executor,
                  limits="off" if cfg.unlimited else "on", seed=cfg.seed)
    if cfg.report is not None:
        Path(cfg.report).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.report).write_text(json.dumps(report, indent=2))
    return report


def run(cfg: DeployConfig) -> int:
    r = deploy(cfg)
    line = f"\n{r['episodes']} episodes on {r['robot']} ({r['executor']} executor, limits {r['limits']})"
    if "success_rate" in r:
        lo, hi = r["success_ci95"]
        line += f": success {100 * r['success_rate']:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f})"
    print(line)
    clock = "wall clock" if r["realtime"] else "simulated time"
    print(f"  loop {r['achieved_hz']:.2f} Hz of {r['rate_hz']:g} ({clock}); jitter p50/p99 "
          f"{r['jitter_ms']['p50']}/{r['jitter_ms']['p99']} ms; inference p50/p99 "
          f"{r['inference_ms']['p50']}/{r['inference_ms']['p99']} ms")
    print(f"  boundary stalls {r['boundary_stall_s']:.3f} s; largest seam {r['largest_seam']:.3f}; "
          f"safety interventions {r['interventions'] or 'none'}")
    print(f"  episode ends: {r['stop_reasons']}")
    return 0
