"""``vptr quickstart``: the whole pipeline on the built-in default data.

Stages so far: generate robot demonstrations (LeRobotDataset v3.0) and action-free
video of the video embodiment, plus held-out evaluation video of both the video
embodiment and the robot arm. Everything is cached, so a second run is fast. The
budget is 10 minutes on 2 CPU cores for the whole pipeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vptr.config import helpfield
from vptr.errors import ConfigError


@dataclass(frozen=True)
class QuickstartConfig:
    """Options of the quickstart (defaults are the built-in default data)."""

    data_dir: Path | None = helpfield(None, "generated-data cache (default: $VPTR_DATA_DIR or ./data)")
    robot_episodes: int = helpfield(20, "robot demonstrations per task")
    video_episodes: int = helpfield(25, "training videos per task (video embodiment)")
    eval_episodes: int = helpfield(5, "held-out videos per task, for each of hand and arm")
    image_size: int = helpfield(64, "image size for all generated data")
    seed: int = helpfield(0, "base seed")

    def __post_init__(self) -> None:
        for name in ("robot_episodes", "video_episodes", "eval_episodes"):
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


def run(cfg: QuickstartConfig) -> int:
    from sim.generate import generate_robot, generate_video

    start = time.time()
    cfgs = data_configs(cfg)
    rows = []
    for name, dcfg in cfgs.items():
        t = time.time()
        gen = generate_robot if name == "robot" else generate_video
        out, record = gen(dcfg, log=lambda msg: None)
        stats = record["stats"]
        count = stats.get("episodes", stats.get("videos"))
        rows.append((name, count, stats["frames"], f"{time.time() - t:.1f}s", str(out)))
    print("\nvptr quickstart: data")
    print(f"{'stage':<10} {'episodes':>8} {'frames':>7} {'time':>7}  path")
    for name, count, frames, took, path in rows:
        print(f"{name:<10} {count:>8} {frames:>7} {took:>7}  {path}")
    print(f"\nquickstart finished in {time.time() - start:.1f}s")
    return 0
