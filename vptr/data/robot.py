"""Robot datasets for fine-tuning: a LeRobotDataset v3.0 read once into arrays + frame caches.

:func:`open_robot_dataset` reads the low-dimensional features of every episode (state,
action, reward, done, success, task) from the dataset's parquet files with pyarrow, and
each camera's images into the decoded-frame cache that pretraining uses (one trajectory
per episode, :func:`vptr.data.cache.open_video_source`), so an epoch never decodes video.
Everything is validated before training starts; a problem names the dataset, the episode
and the feature.

Which episode ends are true terminals (no value beyond them) and which are time-limit
truncations is not stored by LeRobot (``next.done`` is either): ``terminal="success"``
(default; our generated data terminates on success) makes an episode terminal when its
last row is a success, ``"done"`` when its last row is done, ``"never"`` treats every end
as a truncation. See :mod:`vptr.data.chunks` for what that changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vptr.config import helpfield
from vptr.data.config import VideoSourceConfig
from vptr.errors import ConfigError, DataError


@dataclass(frozen=True)
class RobotSourceConfig:
    """Which features of a robot dataset are read, and how."""

    state_key: str = helpfield("observation.state", "proprioceptive state feature ('' = "
                                                    "none)")
    action_key: str = helpfield("action", "action feature")
    reward_key: str = helpfield("next.reward", "reward of the step taken from each row")
    done_key: str = helpfield("next.done", "episode-end flag of each row")
    success_key: str = helpfield("next.success", "success flag of each row ('' = none)")
    terminal: Literal["success", "done", "never"] = helpfield(
        "success", "which episode ends are terminals: a final success, any final done, or "
                   "none (every end is a time-limit truncation)")
    camera_keys: tuple[str, ...] = helpfield((), "camera features to read (empty: all RGB "
                                                 "cameras)")
    frames: VideoSourceConfig = field(default_factory=VideoSourceConfig, metadata={
        "help": "decoding, resizing and caching of the camera images"})

    def __post_init__(self) -> None:
        if not self.action_key:
            raise ConfigError("action_key: an action feature is required")
        if self.terminal == "success" and not self.success_key:
            raise ConfigError("terminal=success needs a success_key")
        if self.frames.fps:
            raise ConfigError("frames.fps: robot datasets are read at their own rate (0); "
                              "resampling would misalign images and actions")


@dataclass
class RobotDataset:
    """Episodes of a robot dataset as row-aligned arrays (row = dataset frame)."""

    source: str
    fps: float
    offsets: np.ndarray  # (E,) first row of each episode
    lengths: np.ndarray  # (E,)
    terminal: np.ndarray  # (E,) bool
    task_index: np.ndarray  # (E,) int64
    tasks: list[str]  # task_index -> text
    state: np.ndarray | None  # (N, Ds) float32
    action: np.ndarray  # (N, Da) float32
    reward: np.ndarray  # (N,) float32
    done: np.ndarray  # (N,) bool
    success: np.ndarray | None  # (N,) bool
    cameras: dict[str, Any]  # camera key -> FrameStore, trajectory e = episode e
    feature_names: dict[str, list[str]]

    @property
    def num_episodes(self) -> int:
        return len(self.lengths)

    def images(self, camera: str, rows: np.ndarray) -> np.ndarray:
        """uint8 (..., H, W, 3) frames of ``camera`` at dataset rows (same layout as the
        frame store: episodes back to back in the same order)."""
        return np.asarray(self.cameras[camera].frames[np.asarray(rows)])

    def stats(self) -> dict[str, dict[str, list[float]]]:
        """Per-dimension mean/std/min/max of state and action (stored with a run and carried
        into the exported artifact)."""
        out = {}
        for name, x in (("state", self.state), ("action", self.action)):
            if x is not None:
                x = x.astype(np.float64)
                out[name] = {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
                             "min": x.min(0).tolist(), "max": x.max(0).tolist()}
        return out


def _column(table, key: str, where: str, width: int | None = None) -> np.ndarray:
    if key not in table.column_names:
        raise DataError(f"{where}: no feature {key!r} (has: {', '.join(table.column_names)})")
    col = table.column(key)
    try:
        values = col.to_numpy(zero_copy_only=False)
    except Exception as e:  # pyarrow type problems
        raise DataError(f"{where}: feature {key!r} is not numeric ({e})") from None
    if values.dtype == object:  # fixed-size lists come back as arrays of arrays
        values = np.stack(values) if len(values) else np.zeros((0, width or 0))
    return values


def _finite(x: np.ndarray, key: str, where: str, episode_of_row: np.ndarray) -> None:
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{where}: feature {key!r} has NaN or Inf in episode "
                        f"{int(episode_of_row[row])} (row {row}, {int(bad.sum())} rows in all)")


def open_robot_dataset(path: str | Path, cfg: RobotSourceConfig | None = None) -> RobotDataset:
    """Read a local LeRobotDataset v3.0 folder (validated; images into the frame cache)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vptr.data.cache import open_video_source
    from vptr.data.readers import lerobot_meta

    cfg = cfg or RobotSourceConfig()
    path = Path(path)
    meta = lerobot_meta(str(path))
    root = Path(meta.root)
    episodes = meta.episodes
    if episodes is None or len(episodes) == 0:
        raise DataError(f"{path}: the robot dataset has no episodes")
    ep_rows = episodes.select_columns(["episode_index", "length"]).to_list()
    files = sorted({root / meta.get_data_file_path(int(r["episode_index"])) for r in ep_rows})
    wanted = [k for k in (cfg.state_key, cfg.action_key, cfg.reward_key, cfg.done_key,
                          cfg.success_key) if k] + ["episode_index", "frame_index",
                                                     "task_index"]
    tables = []
    for f in files:
        try:
            schema = pq.read_schema(f)
            missing = [k for k in wanted if k not in schema.names]
            if missing:
                raise DataError(f"{f}: no feature(s) {', '.join(missing)} (has: "
                                f"{', '.join(schema.names)})")
            tables.append(pq.read_table(f, columns=wanted))
        except OSError as e:
            raise DataError(f"{f}: cannot read the parquet file ({e})") from None

    table = pa.concat_tables(tables)
    where = str(path)
    ep = _column(table, "episode_index", where)
    # episodes in the metadata's order: the order of the camera frame stores too
    index_of = {int(r["episode_index"]): i for i, r in enumerate(ep_rows)}
    unknown_eps = set(np.unique(ep).tolist()) - set(index_of)
    if unknown_eps:
        raise DataError(f"{where}: rows of episodes {sorted(unknown_eps)[:5]} not in the "
                        "episode metadata")
    position = np.array([index_of[int(e)] for e in ep], dtype=np.int64)
    order = np.lexsort((_column(table, "frame_index", where), position))
    table, ep, position = table.take(pa.array(order)), ep[order], position[order]
    lengths = np.array([int(r["length"]) for r in ep_rows], dtype=np.int64)
    counts = np.bincount(position, minlength=len(ep_rows))
    for i, (want, got) in enumerate(zip(lengths, counts)):
        if want == 0 or got != want:
            raise DataError(f"{where}: episode {ep_rows[i]['episode_index']} has {got} rows, "
                            f"the metadata says {want}" + (" (empty episode)" if not want else ""))
    offsets = np.cumsum(lengths) - lengths
    action = _column(table, cfg.action_key, where).astype(np.float32)
    state = _column(table, cfg.state_key, where).astype(np.float32) if cfg.state_key else None
    reward = _column(table, cfg.reward_key, where).astype(np.float32).reshape(-1)
    done = _column(table, cfg.done_key, where).astype(bool).reshape(-1)
    success = (_column(table, cfg.success_key, where).astype(bool).reshape(-1)
               if cfg.success_key else None)
    for key, x in ((cfg.action_key, action), (cfg.state_key, state), (cfg.reward_key, reward)):
        if x is not None:
            _finite(x, key, where, ep)
    last = offsets + lengths - 1
    terminal = {"success": lambda: success[last], "done": lambda: done[last],
                "never": lambda: np.zeros(len(lengths), bool)}[cfg.terminal]()
    task_index = _column(table, "task_index", where).astype(np.int64)[offsets]
    tasks = [str(t) for t in sorted(meta.tasks.index, key=lambda t: meta.tasks.loc[t].iloc[0])]
    cameras = open_cameras(path, meta, cfg, lengths, open_video_source)
    names = {k: list(meta.features.get(k, {}).get("names") or [])
             for k in (cfg.state_key, cfg.action_key) if k}
    return RobotDataset(str(path), float(meta.fps), offsets, lengths, np.asarray(terminal),
                        task_index, tasks, state, action, reward, done, success, cameras, names)


def open_cameras(path: Path, meta, cfg: RobotSourceConfig, lengths: np.ndarray,
                 open_video_source) -> dict[str, Any]:
    """One frame store per camera, checked to hold exactly the dataset's rows."""
    depth = set(meta.depth_keys)
    available = [k for k in meta.camera_keys if k not in depth]
    keys = list(cfg.camera_keys) or available
    out = {}
    for key in keys:
        if key not in available:
            raise DataError(f"{path}: no camera {key!r} (cameras: {', '.join(available)})")
        store = open_video_source(path, _with_camera(cfg.frames, key))
        if store.skipped or not np.array_equal(store.lengths, lengths):
            raise DataError(f"{path}: camera {key!r} does not match the episodes "
                            f"({store.skip_summary() if store.skipped else 'frame counts differ'})")
        out[key] = store
    return out


def _with_camera(frames: VideoSourceConfig, key: str) -> VideoSourceConfig:
    import dataclasses

    return dataclasses.replace(frames, camera_keys=(key,), min_frames=1)
