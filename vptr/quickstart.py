"""``vptr quickstart``: the whole pipeline on the built-in default data.

Stages so far:

1. generate robot demonstrations (LeRobotDataset v3.0) and action-free video of the
   video embodiment, plus held-out evaluation video of both the video embodiment and
   the robot arm (which never appears in the training video);
2. pretrain ICVF on the action-free video (reduced scale: small frames and encoder) and
   score its value on the held-out sets against negative pixel L2 and untrained networks;
3. fine-tune QC (best-of-N over a flow chunk policy) on the robot demonstrations from the
   ICVF encoder (front camera at the encoder's image size + proprioception), and
   evaluate the policy in simulation (success rate with a Wilson 95 % interval);
4. export the policy (``vptr export``: safetensors + policy.json with checksums) and
   deploy the artifact on the simulated arm through the runtime (``vptr deploy``:
   artifact -> executor -> safety filter -> control loop -> robot) on the evaluation's
   episode seeds; its success is printed next to ``vptr eval``'s.

Everything is cached or resumable, so a second run is fast. The budget is 10 minutes on
2 CPU cores for the whole pipeline.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vptr.config import helpfield
from vptr.errors import ConfigError

# the repository's configs/ (the project is installed editable by ./run)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class QuickstartConfig:
    """Options of the quickstart (defaults are the built-in default data)."""

    data_dir: Path | None = helpfield(None, "generated-data cache (default: $VPTR_DATA_DIR or ./data)")
    robot_episodes: int = helpfield(20, "robot demonstrations per task")
    video_episodes: int = helpfield(25, "training videos per task (video embodiment)")
    eval_episodes: int = helpfield(5, "held-out videos per task, for each of hand and arm")
    image_size: int = helpfield(64, "image size for all generated data")
    seed: int = helpfield(0, "base seed")
    pretrain_config: Path = helpfield(CONFIGS / "pretrain" / "icvf_reduced.toml",
                                      "pretraining options (TOML of PretrainConfig fields)")
    pretrain_steps: int = helpfield(3000, "pretraining steps (0 = the config's)")
    finetune_steps: int = helpfield(600, "fine-tuning steps")
    finetune_agent: str = helpfield("qc", "fine-tuning agent")
    encoder_mode: Literal["frozen", "scaled", "finetune"] = helpfield(
        "scaled", "how the ICVF trunk is fine-tuned: frozen, scaled (lr x 0.1) or finetune")
    policy_episodes: int = helpfield(20, "evaluation episodes of the fine-tuned policy")
    out_dir: Path = helpfield(Path("runs/quickstart"), "where runs are written")
    skip_pretrain: bool = helpfield(False, "only generate the data")

    def __post_init__(self) -> None:
        for name in ("robot_episodes", "video_episodes", "eval_episodes", "finetune_steps",
                     "policy_episodes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")


def data_configs(cfg: QuickstartConfig):
    """The default data: robot demos, training video, held-out hand and arm video."""
    from sim.generate import RobotDataConfig, VideoDataConfig

    common = dict(image_size=cfg.image_size, data_dir=cfg.data_dir)
    robot = RobotDataConfig(tasks=("vptr/Lift-v0",), episodes_per_task=cfg.robot_episodes,
                            seed=cfg.seed, **common)
    video = VideoDataConfig(embodiment="hand", episodes_per_task=cfg.video_episodes,
                            domain_shift=0.3, seed=cfg.seed, **common)
    # held-out seeds far from the training ones; the arm never appears in training video
    eval_hand = VideoDataConfig(embodiment="hand", episodes_per_task=cfg.eval_episodes,
                                domain_shift=0.3, seed=cfg.seed + 500_000, **common)
    eval_arm = VideoDataConfig(embodiment="arm", episodes_per_task=cfg.eval_episodes,
                               domain_shift=0.0, seed=cfg.seed + 600_000, **common)
    return {"robot": robot, "video": video, "eval_hand": eval_hand, "eval_arm": eval_arm}


def pretrain_config(cfg: QuickstartConfig, paths: dict[str, Path]):
    """The quickstart's PretrainConfig: the TOML file plus the generated data paths."""
    from vptr.config import build_config, flatten, load_toml
    from vptr.train.pretrain_loop import PretrainConfig

    values = flatten(load_toml(cfg.pretrain_config))
    values.update({"data": str(paths["video"]),
                   "eval_data": (f"hand={paths['eval_hand']}", f"arm={paths['eval_arm']}"),
                   "out_dir": str(cfg.out_dir), "seed": cfg.seed})
    if cfg.pretrain_steps:
        values["steps"] = cfg.pretrain_steps
    return build_config(PretrainConfig, values, where=str(cfg.pretrain_config))


def finetune_config(cfg: QuickstartConfig, robot: Path, pretrain_run: Path, image_size: int):
    """The quickstart's FinetuneConfig: the ICVF trunk, the robot demos at its image size."""
    from vptr.config import build_config
    from vptr.train.finetune_loop import FinetuneConfig

    agent = cfg.finetune_agent
    values = {"data": str(robot), "agent": agent, "steps": cfg.finetune_steps,
              "seed": cfg.seed, "out_dir": str(cfg.out_dir / "finetune"),
              "encoder.init": str(pretrain_run), "encoder.mode": cfg.encoder_mode,
              "shift_pad": 0 if cfg.encoder_mode == "frozen" else 2,
              "source.frames.image_size": image_size, "eval_env": "vptr/Lift-v0",
              "eval_episodes": cfg.policy_episodes, "videos": 2, "checkpoint_every": 200,
              f"{agent}.batch_size": 64}
    if agent == "qc":
        values["qc.target_samples"] = 4
    return build_config(FinetuneConfig, values, where="quickstart")


def finetune_stage(cfg: QuickstartConfig, robot: Path, pretrain_run: Path,
                   image_size: int) -> dict:
    from vptr.train.finetune_loop import train as finetune

    fcfg = finetune_config(cfg, robot, pretrain_run, image_size)
    t = time.time()
    print(f"\n[3/4] fine-tuning {fcfg.agent} from the ICVF encoder ({fcfg.encoder.mode}, "
          f"{image_size}x{image_size} front camera + state, {fcfg.steps} steps) on {robot}")
    result = finetune(fcfg)
    ev = result["eval"]
    lo, hi = ev["success_ci95"]
    print(f"fine-tuned in {time.time() - t:.0f}s -> {result['run_dir']}")
    print(f"policy on {fcfg.eval_env}: success {100 * ev['success_rate']:.0f}% (95% CI "
          f"{100 * lo:.0f}-{100 * hi:.0f}, {ev['episodes']} episodes), mean length "
          f"{ev['length_mean']:.0f} steps; videos in {result['run_dir']}/eval/videos")
    print(f"  evaluate again: ./run vptr eval --run {result['run_dir']} --episodes 50")
    return result


def deploy_stage(cfg: QuickstartConfig, result: dict) -> dict:
    """Export the fine-tuned policy and run it through the deployment stack on the sim arm
    (simulated time: the loop is paced by the simulation, not the wall clock) on the
    evaluation's episode seeds, so both see the same initial states."""
    from vptr.deploy import DeployConfig, deploy
    from vptr.export import ExportConfig, export

    run_dir = Path(result["run_dir"])
    out = run_dir.parent.parent / "export" / run_dir.name
    t = time.time()
    print(f"\n[4/4] export -> {out}; deploy on sim:lift ({cfg.policy_episodes} episodes, chunk "
          "executor, safety limits on)")
    export(ExportConfig(run=run_dir, out=out, overwrite=True))
    with open(os.devnull, "w") as quiet:
        rep = deploy(DeployConfig(policy=out, robot="sim:lift", episodes=cfg.policy_episodes,
                                  seed=int(result["eval"]["seed"]), realtime=False,
                                  executor="chunk"), out=quiet)
    ev = result["eval"]
    lo, hi = rep["success_ci95"]
    elo, ehi = ev["success_ci95"]
    agree = max(lo, elo) <= min(hi, ehi)
    print(f"deployed in {time.time() - t:.0f}s: success {100 * rep['success_rate']:.0f}% "
          f"(95% CI {100 * lo:.0f}-{100 * hi:.0f}) vs vptr eval {100 * ev['success_rate']:.0f}% "
          f"(95% CI {100 * elo:.0f}-{100 * ehi:.0f}): intervals "
          f"{'overlap' if agree else 'DO NOT overlap'}; inference p50/p99 "
          f"{rep['inference_ms']['p50']}/{rep['inference_ms']['p99']} ms; safety interventions "
          f"{rep['interventions'] or 'none'}")
    print(f"  on the wall clock: ./run vptr deploy --policy {out} --robot sim:lift --episodes 5")
    return rep


def run(cfg: QuickstartConfig) -> int:
    from sim.generate import generate_robot, generate_video

    start = time.time()
    cfgs = data_configs(cfg)
    rows, paths = [], {}
    for name, dcfg in cfgs.items():
        t = time.time()
        gen = generate_robot if name == "robot" else generate_video
        out, record = gen(dcfg, log=lambda msg: None)
        paths[name] = out
        stats = record["stats"]
        count = stats.get("episodes", stats.get("videos"))
        rows.append((name, count, stats["frames"], f"{time.time() - t:.1f}s", str(out)))
    print("\n[1/4] data")
    print(f"{'set':<10} {'episodes':>8} {'frames':>7} {'time':>7}  path")
    for name, count, frames, took, path in rows:
        print(f"{name:<10} {count:>8} {frames:>7} {took:>7}  {path}")
    if not cfg.skip_pretrain:
        from vptr.diagnostics.evaluate import EvaluateValuesConfig, evaluate_run
        from vptr.train.pretrain_loop import train

        pcfg = pretrain_config(cfg, paths)
        t = time.time()
        print(f"\n[2/4] pretraining {pcfg.objective} ({pcfg.encoder}, "
              f"{pcfg.source.image_size}x{pcfg.source.image_size}, {pcfg.steps} steps) on {paths['video']}")
        result = train(pcfg)
        print(f"pretrained in {time.time() - t:.0f}s -> {result['run_dir']}")
        held_out = cfg.eval_episodes * len(cfgs["eval_hand"].tasks)  # all of them
        evaluate_run(EvaluateValuesConfig(run=Path(result["run_dir"]), episodes=held_out,
                                          untrained_seeds=3))
        ft = finetune_stage(cfg, paths["robot"], Path(result["run_dir"]),
                            int(pcfg.source.image_size))
        deploy_stage(cfg, ft)
    print(f"\nquickstart finished in {time.time() - start:.1f}s")
    return 0
