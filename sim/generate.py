"""Data generation: scripted-expert robot demonstrations and action-free video.

* Robot demonstrations -> a LeRobotDataset v3.0 written with LeRobot's own writer
  (camera images stored as video), one dataset for all requested tasks.
* Action-free video -> ``<dir>/videos/episode_XXXXXX.mp4`` + ``<dir>/manifest.csv``
  (columns ``path,num_frames,fps,width,height,text``): no actions, no states, no
  rewards -- the layout a user's own video corpus would have.

Outputs are cached under ``<data_dir>/{robot,video}/<name>-<config hash>``. Each is
built in a hidden temporary sibling and renamed into place only when complete, with a
``vptr_generation.json`` marker written last, so an interrupted run never leaves
something that looks finished (the next run discards the temporary copy).

``run_robot`` / ``run_video`` are the ``vptr generate robot|video`` commands.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vptr.config import config_hash, helpfield, to_dict
from vptr.errors import ConfigError, DataError, unknown
from vptr.files import building, ensure_dir

MARKER = "vptr_generation.json"
# reach is left out: its episodes are ~5 frames, too short to show progress to a goal
DEFAULT_VIDEO_TASKS = ("vptr/Push-v0", "vptr/Lift-v0", "vptr/PickPlace-v0", "vptr/Stack-v0",
                       "vptr/Drawer-v0")


def default_data_dir() -> Path:
    return Path(os.environ.get("VPTR_DATA_DIR", "data"))


@dataclass(frozen=True)
class RobotDataConfig:
    """Scripted-expert robot demonstrations written as a LeRobotDataset v3.0."""

    tasks: tuple[str, ...] = helpfield(("vptr/Lift-v0",), "environment ids to record, one dataset")
    episodes_per_task: int = helpfield(20, "episodes recorded per task")
    noise: float = helpfield(0.1, "std of the expert's Gaussian action noise (0 = clean expert)")
    image_size: int = helpfield(64, "camera image height and width in pixels")
    cameras: tuple[str, ...] = helpfield(("front",), "cameras to record")
    keep_failures: bool = helpfield(True, "also keep episodes the expert failed (useful for offline RL)")
    seed: int = helpfield(0, "base seed; episode i of task k uses seed + 10000*k + i")
    video_codec: Literal["libsvtav1", "h264", "hevc"] = helpfield(
        "libsvtav1", "codec for the camera videos (LeRobot's default is libsvtav1)")
    data_dir: Path | None = helpfield(None, "root of the generated-data cache "
                                            "(default: $VPTR_DATA_DIR or ./data)")

    def __post_init__(self) -> None:
        _check_common(self.tasks, self.episodes_per_task, self.noise, self.image_size)
        if not self.cameras:
            raise ConfigError("cameras: at least one camera is required")

    def out_dir(self) -> Path:
        name = "+".join(_slug(t) for t in self.tasks)
        return Path(self.data_dir or default_data_dir()) / "robot" / f"{name}-{cache_key(self)}"


@dataclass(frozen=True)
class VideoDataConfig:
    """Action-free video of a video embodiment (folder of mp4 files + manifest.csv)."""

    tasks: tuple[str, ...] = helpfield(DEFAULT_VIDEO_TASKS, "native environment ids to film")
    episodes_per_task: int = helpfield(25, "videos recorded per task")
    embodiment: Literal["hand", "arm"] = helpfield(
        "hand", "body filmed: 'hand' (the video embodiment) or 'arm' (the robot, e.g. held-out eval)")
    domain_shift: float = helpfield(0.3, "0..1: how far camera, lighting, colours, distractors "
                                         "are from the robot domain")
    noise: float = helpfield(0.1, "std of the expert's Gaussian action noise")
    image_size: int = helpfield(64, "frame height and width in pixels")
    camera: str = helpfield("front", "camera to film")
    successful_only: bool = helpfield(True, "keep only episodes that reach the goal")
    seed: int = helpfield(0, "base seed; episode i of task k uses seed + 10000*k + i")
    data_dir: Path | None = helpfield(None, "root of the generated-data cache "
                                            "(default: $VPTR_DATA_DIR or ./data)")

    def __post_init__(self) -> None:
        _check_common(self.tasks, self.episodes_per_task, self.noise, self.image_size)
        if not 0.0 <= self.domain_shift <= 1.0:
            raise ConfigError(f"domain_shift must be in [0, 1], got {self.domain_shift}")
        for t in self.tasks:
            if "Robosuite" in t:
                raise ConfigError(f"tasks: {t} is a robosuite task; video embodiments exist only "
                                  "in the native suite")

    def out_dir(self) -> Path:
        name = f"{self.embodiment}-shift{self.domain_shift:g}"
        return Path(self.data_dir or default_data_dir()) / "video" / f"{name}-{cache_key(self)}"


@functools.lru_cache(maxsize=1)
def sim_code_fingerprint() -> str:
    """Hash of the simulator and generator sources: data made by other code is not reused."""
    import hashlib

    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:8]


def cache_key(cfg: Any) -> str:
    """What keys a cached output: the config (minus where it is stored) and the code."""
    d = to_dict(cfg)
    d.pop("data_dir", None)
    d["sim_code"] = sim_code_fingerprint()
    return config_hash(d)


def _slug(env_id: str) -> str:
    return env_id.split("/")[-1].replace("-v", "v").lower()


def _check_common(tasks, episodes, noise, image_size) -> None:
    import sim

    if not tasks:
        raise ConfigError("tasks: at least one task id is required")
    for t in tasks:
        if t not in sim.ENV_IDS:
            raise unknown("task id", t, sim.ENV_IDS)
    if episodes <= 0:
        raise ConfigError(f"episodes_per_task must be > 0, got {episodes}")
    if noise < 0:
        raise ConfigError(f"noise must be >= 0, got {noise}")
    if not 16 <= image_size <= 512 or image_size % 2:
        raise ConfigError(f"image_size must be even and in [16, 512] (video codecs need even "
                          f"sizes), got {image_size}")


# --------------------------------------------------------------------------- cache


def cached(out: Path) -> dict[str, Any] | None:
    """The generation record of a complete output, or None."""
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _build(out: Path, cfg: Any, kind: str, builder, force: bool, log) -> tuple[Path, dict]:
    """Build in a temporary sibling of ``out`` and rename it into place when complete
    (:func:`vptr.files.building`; the marker is written last).

    A lock file serialises builders of the same output (two processes asking for the
    same config: the second waits, then finds the first one's result in the cache).
    """
    import fcntl

    record = cached(out)
    if record is not None and not force:
        log(f"{kind}: cached at {out}")
        return out, record
    ensure_dir(out.parent, "output directory")
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = cached(out)
        if record is not None and not force:
            log(f"{kind}: cached at {out} (built by another process)")
            return out, record
        with building(out) as partial:
            start = time.time()
            stats = builder(partial)
            record = {"kind": kind, "config": to_dict(cfg), "stats": stats,
                      "seconds": round(time.time() - start, 2), "vptr_version": _version()}
            (partial / MARKER).write_text(json.dumps(record, indent=2))
    return out, record


def _version() -> str:
    from vptr import __version__

    return __version__


# --------------------------------------------------------------------------- rollouts


def rollout(env, expert, seed: int):
    """Run one expert episode; yields (obs, action, reward, terminated, truncated, info,
    next_obs) per step."""
    obs, info = env.reset(seed=seed)
    expert.reset()
    while True:
        action = np.asarray(expert.act(obs), dtype=np.float32)
        next_obs, reward, terminated, truncated, info = env.step(action)
        yield obs, action, float(reward), bool(terminated), bool(truncated), info, next_obs
        obs = next_obs
        if terminated or truncated:
            return


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ep", dynamic_ncols=True, leave=False)


def generate_robot(cfg: RobotDataConfig, force: bool = False, log=print) -> tuple[Path, dict]:
    """Record expert demonstrations into a LeRobotDataset v3.0 (cached)."""
    out = cfg.out_dir()
    return _build(out, cfg, "robot", lambda d: _write_robot(cfg, d, out.name), force, log)


def _quiet_encoders() -> None:
    """Keep encoder chatter (libx264 statistics, SVT-AV1 banners) off the terminal."""
    import av

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only (read at encoder start)
    av.logging.set_level(av.logging.ERROR)
    try:  # LeRobot's writer maps episodes with HF datasets, which draws progress bars
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


def _write_robot(cfg: RobotDataConfig, root: Path, name: str) -> dict:
    """Write the dataset into the (empty) folder ``root``; its repo id is ``vptr/<name>``."""
    from lerobot.configs.video import RGBEncoderConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    import sim

    _quiet_encoders()
    envs = [sim.make(t, image_size=cfg.image_size, cameras=cfg.cameras) for t in cfg.tasks]
    base = envs[0].unwrapped
    for t, env in zip(cfg.tasks, envs):
        u = env.unwrapped
        if u.state_names != base.state_names or u.action_names != base.action_names:
            raise ConfigError(f"tasks: {t} has a different state/action layout from "
                              f"{cfg.tasks[0]}; record them as separate datasets")
    s = cfg.image_size
    features = {
        "observation.state": {"dtype": "float32", "shape": (len(base.state_names),),
                              "names": list(base.state_names)},
        **{f"observation.images.{c}": {"dtype": "video", "shape": (s, s, 3),
                                       "names": ["height", "width", "channels"]}
           for c in cfg.cameras},
        "action": {"dtype": "float32", "shape": (len(base.action_names),),
                   "names": list(base.action_names)},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
    }
    fps = int(round(base.control_hz))
    root.rmdir()  # LeRobot creates the dataset folder itself and refuses an existing one
    ds = LeRobotDataset.create(
        repo_id=f"vptr/{name}", fps=fps, features=features,
        root=root, robot_type=base.embodiment, use_videos=True, video_backend="pyav",
        rgb_encoder=RGBEncoderConfig(vcodec=cfg.video_codec))
    per_task: dict[str, dict[str, int]] = {}
    bar = _progress(len(cfg.tasks) * cfg.episodes_per_task, "robot demos")
    try:
        for k, (task, env) in enumerate(zip(cfg.tasks, envs)):
            expert = sim.make_expert(env, noise=cfg.noise, seed=cfg.seed + 10000 * k)
            counts = per_task.setdefault(task, {"attempted": 0, "successful": 0, "saved": 0})
            for i in range(cfg.episodes_per_task):
                seed = cfg.seed + 10000 * k + i
                success = False
                for obs, action, reward, term, trunc, info, _ in rollout(env, expert, seed):
                    success = success or bool(info.get("is_success", False))
                    frame = {"observation.state": np.asarray(obs["state"], np.float32),
                             "action": action,
                             "next.reward": np.array([reward], np.float32),
                             "next.success": np.array([bool(info.get("is_success", False))]),
                             "next.done": np.array([term or trunc]),
                             "task": env.unwrapped.task_description}
                    for c in cfg.cameras:
                        frame[f"observation.images.{c}"] = obs["pixels"][c]
                    ds.add_frame(frame)
                counts["attempted"] += 1
                counts["successful"] += int(success)
                if success or cfg.keep_failures:
                    ds.save_episode()
                    counts["saved"] += 1
                else:
                    ds.clear_episode_buffer()
                bar.update(1)
                bar.set_postfix(task=_slug(task), success=f"{counts['successful']}/{counts['attempted']}")
    finally:
        ds.finalize()  # also on errors: closes LeRobot's writers (the partial copy is discarded)
        bar.close()
        for env in envs:
            env.close()
    saved = sum(c["saved"] for c in per_task.values())
    if saved == 0:
        raise DataError(f"{root}: the expert produced no episodes to keep")
    return {"episodes": saved, "frames": int(ds.meta.total_frames), "fps": fps,
            "per_task": per_task, "format": "LeRobotDataset v3.0"}


def generate_video(cfg: VideoDataConfig, force: bool = False, log=print) -> tuple[Path, dict]:
    """Film the video embodiment doing the tasks: mp4 folder + manifest.csv (cached)."""
    return _build(cfg.out_dir(), cfg, "video", lambda d: _write_video(cfg, d), force, log)


def write_mp4(path: Path, frames: list[np.ndarray] | np.ndarray, fps: float) -> None:
    """Encode uint8 RGB frames (T, H, W, 3) as H.264/yuv420p (even sizes required)."""
    from fractions import Fraction

    import av

    _quiet_encoders()
    h, w = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f),
                                                                   format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_video(cfg: VideoDataConfig, root: Path) -> dict:
    import sim

    (root / "videos").mkdir(parents=True)
    rows, per_task = [], {}
    bar = _progress(len(cfg.tasks) * cfg.episodes_per_task, f"{cfg.embodiment} video")
    try:
        for k, task in enumerate(cfg.tasks):
            env = sim.make(task, embodiment=cfg.embodiment, domain_shift=cfg.domain_shift,
                           image_size=cfg.image_size, cameras=(cfg.camera,))
            try:
                fps = float(env.unwrapped.control_hz)
                expert = sim.make_expert(env, noise=cfg.noise, seed=cfg.seed + 10000 * k)
                counts = per_task.setdefault(task, {"attempted": 0, "successful": 0, "saved": 0})
                for i in range(cfg.episodes_per_task):
                    frames, success, last = [], False, None
                    steps = rollout(env, expert, cfg.seed + 10000 * k + i)
                    for obs, _a, _r, _t, _tr, info, last in steps:  # noqa: B007 (used below)
                        frames.append(obs["pixels"][cfg.camera])
                        success = success or bool(info.get("is_success", False))
                    # the observation after the last action shows the outcome (goal reached)
                    frames.append(last["pixels"][cfg.camera])
                    counts["attempted"] += 1
                    counts["successful"] += int(success)
                    bar.update(1)
                    if cfg.successful_only and not success:
                        continue
                    name = f"videos/episode_{len(rows):06d}.mp4"
                    write_mp4(root / name, frames, fps)
                    rows.append({"path": name, "num_frames": len(frames), "fps": fps,
                                 "width": cfg.image_size, "height": cfg.image_size,
                                 "text": env.unwrapped.task_description})
                    counts["saved"] += 1
            finally:
                env.close()
    finally:
        bar.close()
    if not rows:
        raise DataError(f"{root}: no successful episodes were filmed; raise episodes_per_task "
                        "or lower noise")
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"videos": len(rows), "frames": int(sum(r["num_frames"] for r in rows)),
            "fps": rows[0]["fps"], "per_task": per_task}


# --------------------------------------------------------------------------- commands


def run_robot(cfg: RobotDataConfig) -> int:
    """``vptr generate robot``."""
    out, record = generate_robot(cfg)
    print(f"robot dataset (LeRobotDataset v3.0): {out}")
    print(json.dumps(record["stats"], indent=2))
    return 0


def run_video(cfg: VideoDataConfig) -> int:
    """``vptr generate video``."""
    out, record = generate_video(cfg)
    print(f"action-free video: {out}  (manifest: {out / 'manifest.csv'})")
    print(json.dumps(record["stats"], indent=2))
    return 0
