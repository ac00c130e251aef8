"""Data generation: scripted-expert robot demonstrations and action-free video.

* Robot demonstrations -> a LeRobotDataset v3.0 written with LeRobot's own writer
  (camera images stored as video), one dataset for all requested tasks; or
  (``--format robomimic``) the same episodes as robomimic-schema HDF5 written with h5py.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vptr.config import config_hash, helpfield, to_dict
from vptr.errors import ConfigError, DataError, unknown
from vptr.files import building, ensure_dir

MARKER = "vptr_generation.json"
ROBOMIMIC_FILE = "demo.hdf5"  # the file inside a robomimic-format output folder
VALID_FRACTION = 0.1  # robomimic mask/valid: this share of the demos (at least one of two)
# reach is left out: its episodes are ~5 frames, too short to show progress to a goal
DEFAULT_VIDEO_TASKS = ("vptr/Push-v0", "vptr/Lift-v0", "vptr/PickPlace-v0", "vptr/Stack-v0",
                       "vptr/Drawer-v0")


def default_data_dir() -> Path:
    return Path(os.environ.get("VPTR_DATA_DIR", "data"))


@dataclass(frozen=True)
class RobotDataConfig:
    """Scripted-expert robot demonstrations written as a LeRobotDataset v3.0 (or robomimic
    HDF5). Native tasks also record their object state, ``observation.environment_state``
    (robomimic: ``obs/environment_state``); robosuite tasks record proprioception only."""

    tasks: tuple[str, ...] = helpfield(("vptr/Lift-v0",), "environment ids to record, one dataset")
    episodes_per_task: int = helpfield(20, "episodes recorded per task")
    noise: float = helpfield(0.1, "std of the expert's Gaussian action noise (0 = clean expert)")
    image_size: int = helpfield(64, "camera image height and width in pixels")
    cameras: tuple[str, ...] = helpfield(("front",), "cameras to record")
    keep_failures: bool = helpfield(True, "also keep episodes the expert failed (useful for offline RL)")
    seed: int = helpfield(0, "base seed; episode i of task k uses seed + 10000*k + i")
    video_codec: Literal["libsvtav1", "h264", "hevc"] = helpfield(
        "libsvtav1", "codec for the camera videos (LeRobot's default is libsvtav1; lerobot "
                     "format only)")
    format: Literal["lerobot", "robomimic"] = helpfield(
        "lerobot", "lerobot: a LeRobotDataset v3.0 folder (images as video); robomimic: "
                   "<out>/demo.hdf5 in robomimic's schema (lossless images, mask/train and "
                   "mask/valid splits), same episodes")
    data_dir: Path | None = helpfield(None, "root of the generated-data cache "
                                            "(default: $VPTR_DATA_DIR or ./data)")

    def __post_init__(self) -> None:
        _check_common(self.tasks, self.episodes_per_task, self.noise, self.image_size)
        if (self.format == "lerobot" and self.video_codec == "libsvtav1"
                and self.image_size < MIN_AV1_SIZE):
            raise ConfigError(f"image_size {self.image_size}: the SVT-AV1 encoder crashes below "
                              f"{MIN_AV1_SIZE} px (SIGFPE, measured at 16 and 24); use "
                              "--video-codec h264 for small frames")
        if not self.cameras:
            raise ConfigError("cameras: at least one camera is required")
        if self.format not in ("lerobot", "robomimic"):
            raise ConfigError(f"format must be 'lerobot' or 'robomimic', got {self.format!r}")

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


# sources under sim/ that do not shape generated data (the evaluation harness)
NOT_DATA_SOURCES = ("evaluate.py",)


@functools.lru_cache(maxsize=1)
def sim_code_fingerprint() -> str:
    """Hash of the simulator and generator sources: data made by other code is not reused.
    The evaluation harness is left out: it does not shape the data."""
    import hashlib

    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).as_posix() in NOT_DATA_SOURCES:
            continue
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


# the smallest frame size libsvtav1 encodes here (16 and 24 px died of SIGFPE; 28 and 32 work)
MIN_AV1_SIZE = 28


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


def robot_dataset_path(out: Path, cfg: RobotDataConfig) -> Path:
    """What a robot-dataset reader opens in the folder :func:`generate_robot` returned:
    the folder itself (LeRobotDataset) or the HDF5 file in it (robomimic)."""
    return out / ROBOMIMIC_FILE if cfg.format == "robomimic" else out


def generate_robot(cfg: RobotDataConfig, force: bool = False, log=print) -> tuple[Path, dict]:
    """Record expert demonstrations into a LeRobotDataset v3.0 or, with
    ``cfg.format="robomimic"``, a robomimic HDF5 file ``<out>/demo.hdf5`` (cached)."""
    out = cfg.out_dir()
    write = _write_robot if cfg.format == "lerobot" else _write_robomimic
    return _build(out, cfg, "robot", lambda d: write(cfg, d, out.name), force, log)


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


@dataclass
class Episode:
    """One recorded expert episode, row t = (observation before action t, action t, ...)."""

    task: str  # environment id
    description: str  # language instruction
    seed: int
    state: np.ndarray  # (T, Ds) float32 proprioception
    environment_state: np.ndarray | None  # (T, ENV_STATE_DIM) float32; None: not recorded
    images: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8
    action: np.ndarray  # (T, Da) float32, as sent
    reward: np.ndarray  # (T,) float32 of the step taken from row t
    success: np.ndarray  # (T,) bool, is_success after the step
    done: np.ndarray  # (T,) bool, the episode ended with the step (terminal or time limit)


@dataclass(frozen=True)
class RobotLayout:
    """What every task of one dataset shares: state/action layout, rate, env kwargs."""

    state_names: list[str]
    action_names: list[str]
    env_state_names: list[str] | None  # None: the tasks have no environment state
    env_state_per_task: dict[str, list[str]]
    fps: int
    embodiment: str
    env_kwargs: dict[str, Any]


def _make_envs(cfg: RobotDataConfig) -> tuple[list, RobotLayout]:
    """The environments of ``cfg.tasks`` and their common layout.

    Native tasks are made with ``environment_state=True``: their object state is recorded
    as ``observation.environment_state`` (zero-padded to one width for every native task;
    see :mod:`sim.native.env`). The robosuite wrapper observes proprioception only (it builds
    robosuite with ``use_object_obs=False``), so robosuite datasets carry no environment
    state. Tasks whose layouts differ (e.g. native and robosuite) are refused.
    """
    import sim
    from sim.native import ENV_SPECS as NATIVE

    kwargs = {"image_size": cfg.image_size, "cameras": tuple(cfg.cameras)}
    envs = []
    try:
        for t in cfg.tasks:
            envs.append(sim.make(t, **kwargs, **({"environment_state": True} if t in NATIVE
                                                  else {})))
        base = envs[0].unwrapped
        per_task = {}
        for t, env in zip(cfg.tasks, envs):
            u = env.unwrapped
            if (u.state_names != base.state_names or u.action_names != base.action_names
                    or (t in NATIVE) != (cfg.tasks[0] in NATIVE)):
                raise ConfigError(f"tasks: {t} has a different state/action layout from "
                                  f"{cfg.tasks[0]}; record them as separate datasets")
            if t in NATIVE:
                per_task[t] = list(u.environment_state_names)
    except BaseException:
        for env in envs:
            env.close()
        raise
    env_names = None
    if per_task:
        first = next(iter(per_task.values()))
        # one name list if the tasks agree, else positions (per-task names in the record)
        env_names = (first if all(v == first for v in per_task.values())
                     else [f"environment_state_{i}" for i in range(len(first))])
    if per_task:
        kwargs["environment_state"] = True
    layout = RobotLayout(list(base.state_names), list(base.action_names), env_names, per_task,
                         int(round(base.control_hz)), str(base.embodiment),
                         {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()})
    return envs, layout


def expert_episodes(cfg: RobotDataConfig, envs: list, per_task: dict) -> Iterator[Episode]:
    """The episodes to keep, in recording order (task k, episode i: seed + 10000*k + i);
    both output formats write exactly these. ``per_task`` collects the counts."""
    import sim

    bar = _progress(len(cfg.tasks) * cfg.episodes_per_task, "robot demos")
    try:
        for k, (task, env) in enumerate(zip(cfg.tasks, envs)):
            expert = sim.make_expert(env, noise=cfg.noise, seed=cfg.seed + 10000 * k)
            counts = per_task.setdefault(task, {"attempted": 0, "successful": 0, "saved": 0})
            for i in range(cfg.episodes_per_task):
                seed = cfg.seed + 10000 * k + i
                steps = list(rollout(env, expert, seed))
                ok = np.array([bool(info.get("is_success", False)) for *_, info, _ in steps])
                counts["attempted"] += 1
                counts["successful"] += int(ok.any())
                bar.update(1)
                bar.set_postfix(task=_slug(task),
                                success=f"{counts['successful']}/{counts['attempted']}")
                if not (ok.any() or cfg.keep_failures):
                    continue
                counts["saved"] += 1
                obs = [s[0] for s in steps]
                yield Episode(
                    task, env.unwrapped.task_description, seed,
                    np.stack([np.asarray(o["state"], np.float32) for o in obs]),
                    (np.stack([o["environment_state"] for o in obs]).astype(np.float32)
                     if "environment_state" in obs[0] else None),
                    {c: np.stack([o["pixels"][c] for o in obs]) for c in cfg.cameras},
                    np.stack([s[1] for s in steps]).astype(np.float32),
                    np.array([s[2] for s in steps], np.float32), ok,
                    np.array([s[3] or s[4] for s in steps]))
    finally:
        bar.close()


def _write_robot(cfg: RobotDataConfig, root: Path, name: str) -> dict:
    """Write the dataset into the (empty) folder ``root``; its repo id is ``vptr/<name>``."""
    from lerobot.configs.video import RGBEncoderConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    _quiet_encoders()
    envs, layout = _make_envs(cfg)
    s = cfg.image_size
    features = {
        "observation.state": {"dtype": "float32", "shape": (len(layout.state_names),),
                              "names": layout.state_names},
        **({"observation.environment_state": {
            "dtype": "float32", "shape": (len(layout.env_state_names),),
            "names": layout.env_state_names}} if layout.env_state_names else {}),
        **{f"observation.images.{c}": {"dtype": "video", "shape": (s, s, 3),
                                       "names": ["height", "width", "channels"]}
           for c in cfg.cameras},
        "action": {"dtype": "float32", "shape": (len(layout.action_names),),
                   "names": layout.action_names},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
    }
    root.rmdir()  # LeRobot creates the dataset folder itself and refuses an existing one
    ds = LeRobotDataset.create(
        repo_id=f"vptr/{name}", fps=layout.fps, features=features,
        root=root, robot_type=layout.embodiment, use_videos=True, video_backend="pyav",
        rgb_encoder=RGBEncoderConfig(vcodec=cfg.video_codec))
    per_task: dict[str, dict[str, int]] = {}
    try:
        for ep in expert_episodes(cfg, envs, per_task):
            for t in range(len(ep.action)):
                frame = {"observation.state": ep.state[t], "action": ep.action[t],
                         "next.reward": ep.reward[t:t + 1], "next.success": ep.success[t:t + 1],
                         "next.done": ep.done[t:t + 1], "task": ep.description}
                if ep.environment_state is not None:
                    frame["observation.environment_state"] = ep.environment_state[t]
                for c in cfg.cameras:
                    frame[f"observation.images.{c}"] = ep.images[c][t]
                ds.add_frame(frame)
            ds.save_episode()
    finally:
        ds.finalize()  # also on errors: closes LeRobot's writers (the partial copy is discarded)
        for env in envs:
            env.close()
    saved = sum(c["saved"] for c in per_task.values())
    if saved == 0:
        raise DataError(f"{root}: the expert produced no episodes to keep")
    return {"episodes": saved, "frames": int(ds.meta.total_frames), "fps": layout.fps,
            "per_task": per_task, "format": "LeRobotDataset v3.0",
            **_env_state_record(layout)}


def _env_state_record(layout: RobotLayout) -> dict:
    return ({"environment_state_names": layout.env_state_per_task}
            if layout.env_state_per_task else {})


def _write_robomimic(cfg: RobotDataConfig, root: Path, name: str) -> dict:
    """The same episodes as :func:`_write_robot`, as robomimic-schema HDF5 ``root/demo.hdf5``.

    Schema (robomimic, Mandlekar et al. 2021, "Dataset structure"): ``data/demo_<i>/``
    holds ``obs/state`` (proprioception), ``obs/environment_state`` (native tasks),
    ``obs/<camera>_image`` (T, H, W, 3) uint8 (gzip: lossless), ``actions``, ``rewards``,
    ``dones``; attributes ``num_samples`` and ``ep_meta`` (JSON: ``lang`` = the task
    instruction, the env id and seed). ``data`` attributes: ``total`` (rows),
    ``env_args`` (JSON: ``env_name`` = first env id, ``type`` 2 = a Gymnasium env,
    ``env_kwargs``, ``env_names`` = every task), ``fps`` and the feature names.
    ``mask/train`` and ``mask/valid`` split the demos 90/10 (seeded by ``cfg.seed``).
    No ``next_obs`` and no simulator ``states`` (the reader derives s' from the next row).
    """
    import h5py

    from vptr.data.sampling import split_trajectories

    envs, layout = _make_envs(cfg)
    per_task: dict[str, dict[str, int]] = {}
    demos: list[str] = []
    total = 0
    try:
        with h5py.File(root / ROBOMIMIC_FILE, "w") as f:
            data = f.create_group("data")
            for ep in expert_episodes(cfg, envs, per_task):
                g = data.create_group(f"demo_{len(demos)}")
                g.create_dataset("actions", data=ep.action)
                g.create_dataset("rewards", data=ep.reward)
                g.create_dataset("dones", data=ep.done.astype(np.int64))
                obs = g.create_group("obs")
                obs.create_dataset("state", data=ep.state)
                if ep.environment_state is not None:
                    obs.create_dataset("environment_state", data=ep.environment_state)
                for c in cfg.cameras:
                    obs.create_dataset(f"{c}_image", data=ep.images[c], compression="gzip",
                                       chunks=(1, *ep.images[c].shape[1:]))
                g.attrs["num_samples"] = len(ep.action)
                g.attrs["ep_meta"] = json.dumps({"lang": ep.description, "env_name": ep.task,
                                                 "seed": ep.seed})
                demos.append(g.name.split("/")[-1])
                total += len(ep.action)
            if not demos:
                raise DataError(f"{root}: the expert produced no episodes to keep")
            data.attrs["total"] = total
            data.attrs["fps"] = layout.fps
            data.attrs["env_args"] = json.dumps({
                "env_name": cfg.tasks[0], "type": 2, "env_kwargs": layout.env_kwargs,
                "env_names": list(cfg.tasks), "embodiment": layout.embodiment})
            data.attrs["state_names"] = json.dumps(layout.state_names)
            data.attrs["action_names"] = json.dumps(layout.action_names)
            if layout.env_state_names:
                data.attrs["environment_state_names"] = json.dumps(layout.env_state_names)
            train, valid = split_trajectories(len(demos), VALID_FRACTION, seed=cfg.seed)
            for split, ids in (("train", train), ("valid", valid)):
                f.create_dataset(f"mask/{split}", data=np.array([demos[i] for i in ids], "S"))
    finally:
        for env in envs:
            env.close()
    saved = sum(c["saved"] for c in per_task.values())
    return {"episodes": saved, "frames": total, "fps": layout.fps, "per_task": per_task,
            "format": "robomimic HDF5", "file": ROBOMIMIC_FILE,
            "splits": {"train": len(train), "valid": len(valid)}, **_env_state_record(layout)}


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
    if cfg.format == "robomimic":
        print(f"robot dataset (robomimic HDF5): {out / ROBOMIMIC_FILE}")
    else:
        print(f"robot dataset (LeRobotDataset v3.0): {out}")
    print(json.dumps(record["stats"], indent=2))
    return 0


def run_video(cfg: VideoDataConfig) -> int:
    """``vptr generate video``."""
    out, record = generate_video(cfg)
    print(f"action-free video: {out}  (manifest: {out / 'manifest.csv'})")
    print(json.dumps(record["stats"], indent=2))
    return 0
