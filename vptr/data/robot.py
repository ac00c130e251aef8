"""Robot datasets for fine-tuning: episodes read once into row-aligned arrays + frame caches.

:func:`open_robot_dataset` opens a LeRobotDataset v3.0 folder (read here) or a
robomimic-schema HDF5 file (``.hdf5``/``.h5``, :mod:`vptr.data.robomimic`). The
low-dimensional features of every episode (state, action, reward, done, success, task)
become arrays; each camera's images go into the decoded-frame cache that pretraining uses
(one trajectory per episode, :mod:`vptr.data.cache`), so an epoch never decodes video.
Everything is validated before training starts (spec: finetuning.md, "Robot data"): the
rate against ``fps``, the action/state widths against ``action_dim``/``state_dim``,
missing features, empty episodes, NaN/Inf in actions, states and rewards; a problem
names the file, the episode and the feature.

LeRobot: the data are read from the parquet files with pyarrow. ``state_keys`` are
concatenated in order into ``state`` (e.g. ``("observation.state",
"observation.environment_state")`` for a state-based policy that sees the objects).

Which episode ends are true terminals (no value beyond them) and which are time-limit
truncations is not stored by LeRobot (``next.done`` is either): ``terminal="success"``
(default; our generated data terminates on success) makes an episode terminal when its
last row is a success, ``"done"`` when its last row is done, ``"never"`` treats every end
as a truncation. See :mod:`vptr.data.chunks` for what that changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vptr.config import helpfield
from vptr.data.config import VideoSourceConfig
from vptr.errors import ConfigError, DataError

HDF5_SUFFIXES = (".hdf5", ".h5")


@dataclass(frozen=True)
class RobotSourceConfig:
    """Which features of a robot dataset are read, and how they are checked.

    Keys name LeRobot features; a robomimic file maps them as described in
    :mod:`vptr.data.robomimic` (the defaults open both formats of ``vptr generate robot``).
    """

    state_keys: tuple[str, ...] = helpfield(
        ("observation.state",), "state features, concatenated in this order into the "
                                "policy's state (empty: no state)")
    action_key: str = helpfield("action", "action feature")
    reward_key: str = helpfield("next.reward", "reward of the step taken from each row")
    done_key: str = helpfield("next.done", "episode-end flag of each row")
    success_key: str = helpfield("next.success", "success flag of each row ('' = none)")
    terminal: Literal["success", "done", "never"] = helpfield(
        "success", "which episode ends are terminals: a final success, any final done, or "
                   "none (every end is a time-limit truncation)")
    images: bool = helpfield(True, "read camera images (false: state-only learning)")
    camera_keys: tuple[str, ...] = helpfield((), "camera features to read (empty: all RGB "
                                                 "cameras)")
    fps: float = helpfield(0.0, "expected dataset rate in Hz (the policy's control rate); a "
                                "dataset recorded at another rate is refused; 0 = accept the "
                                "dataset's")
    action_dim: int = helpfield(0, "expected action width; 0 = accept the dataset's")
    state_dim: int = helpfield(0, "expected width of the concatenated state; 0 = accept")
    filter_key: str = helpfield("", "robomimic only: read the demos listed in mask/<filter_key> "
                                    "(e.g. train, valid); '' = every demo")
    frames: VideoSourceConfig = field(default_factory=VideoSourceConfig, metadata={
        "help": "decoding, resizing and caching of the camera images"})

    def __post_init__(self) -> None:
        if not self.action_key:
            raise ConfigError("action_key: an action feature is required")
        if isinstance(self.state_keys, str) or not all(
                isinstance(k, str) and k for k in self.state_keys):
            raise ConfigError(f"state_keys must be a tuple of feature names, got "
                              f"{self.state_keys!r}")
        if len(set(self.state_keys)) != len(self.state_keys):
            raise ConfigError(f"state_keys has duplicates: {self.state_keys!r}")
        if self.terminal == "success" and not self.success_key:
            raise ConfigError("terminal=success needs a success_key")
        if self.frames.fps:
            raise ConfigError("frames.fps: robot datasets are read at their own rate (0); "
                              "resampling would misalign images and actions")
        if not (math.isfinite(self.fps) and self.fps >= 0):
            raise ConfigError(f"fps must be >= 0 (0 = the dataset's rate), got {self.fps}")
        for name in ("action_dim", "state_dim"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 = accept), got {getattr(self, name)}")
        if self.state_dim and not self.state_keys:
            raise ConfigError(f"state_dim={self.state_dim} but state_keys is empty (no state)")


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
    state: np.ndarray | None  # (N, Ds) float32, the state_keys concatenated
    action: np.ndarray  # (N, Da) float32
    reward: np.ndarray  # (N,) float32
    done: np.ndarray  # (N,) bool
    success: np.ndarray | None  # (N,) bool
    cameras: dict[str, Any]  # camera key -> FrameStore, trajectory e = episode e
    # "state" (the state_keys concatenated), "action", and each read feature's key -> names
    feature_names: dict[str, list[str]]
    state_widths: list[int] = field(default_factory=list)  # width of each state_keys feature
    # (E,) int8 for a target joined with prior data (vptr.data.mixture.join): 0 = target
    # episode, 1 = prior episode; None = a single dataset
    part: np.ndarray | None = None

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


def open_robot_dataset(path: str | Path, cfg: RobotSourceConfig | None = None) -> RobotDataset:
    """A validated robot dataset: a LeRobotDataset v3.0 folder, or a robomimic-schema HDF5
    file (``.hdf5``/``.h5``); anything else is refused with a DataError."""
    cfg = cfg or RobotSourceConfig()
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: robot dataset not found")
    if path.is_file():
        if path.suffix.lower() not in HDF5_SUFFIXES:
            raise DataError(f"{path}: not a robot dataset (expected a LeRobotDataset folder or "
                            f"a robomimic {'/'.join(HDF5_SUFFIXES)} file)")
        from vptr.data.robomimic import open_robomimic_dataset

        return open_robomimic_dataset(path, cfg)
    if not (path / "meta" / "info.json").is_file():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in HDF5_SUFFIXES)
        hint = f"; it holds {', '.join(inside)}: pass that file" if inside else ""
        raise DataError(f"{path}: not a LeRobotDataset folder (no meta/info.json){hint}")
    return open_lerobot_dataset(path, cfg)


# --------------------------------------------------------------------------- checks
# Shared by both readers. ``where[e]`` names episode e for messages: "<file>, episode <id>".


def check_rate(where: str, fps: float, cfg: RobotSourceConfig) -> None:
    if cfg.fps and not math.isclose(fps, cfg.fps, rel_tol=1e-6):
        raise DataError(f"{where}: recorded at {fps:g} fps (every episode), the config expects "
                        f"fps={cfg.fps:g}")


def check_width(where: str, what: str, keys: str, width: int, expected: int) -> None:
    if expected and width != expected:
        raise DataError(f"{where}: {what} {keys} has {width} values per row, the config "
                        f"expects {what}_dim={expected}")


def check_finite(x: np.ndarray, key: str, where: Sequence[str], offsets: np.ndarray) -> None:
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        e = int(np.searchsorted(offsets, row, side="right") - 1)
        raise DataError(f"{where[e]}: feature {key!r} has NaN or Inf at step "
                        f"{row - int(offsets[e])} ({int(bad.sum())} rows in all)")


def terminals(cfg: RobotSourceConfig, done: np.ndarray, success: np.ndarray | None,
              offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(E,) bool: which episode ends are terminals (``cfg.terminal``, module docstring)."""
    last = offsets + lengths - 1
    if cfg.terminal == "success":
        return np.asarray(success[last], bool)
    if cfg.terminal == "done":
        return np.asarray(done[last], bool)
    return np.zeros(len(lengths), bool)


def feature_names(names: Any, key: str, width: int) -> list[str]:
    """Names of a feature's ``width`` entries (``key[i]`` where the dataset has none)."""
    if isinstance(names, dict):  # LeRobot also allows {"motors": [...]}
        names = [n for v in names.values() for n in (v if isinstance(v, list) else [v])]
    if isinstance(names, (list, tuple)) and len(names) == width:
        return [str(n) for n in names]
    return [f"{key}[{i}]" for i in range(width)]


def role_names(per_key: dict[str, list[str]], action_key: str,
               state_keys: list[str]) -> dict[str, list[str]]:
    """``RobotDataset.feature_names``: every read feature's names under its own key, plus
    "action" and "state" (the state features concatenated; absent without state)."""
    out = dict(per_key)
    out["action"] = per_key[action_key]
    if state_keys:
        out["state"] = [n for k in state_keys for n in per_key[k]]
    else:
        out.pop("state", None)
    return out


# --------------------------------------------------------------------------- LeRobot


def _column(table, key: str, where: str) -> np.ndarray:
    """A numeric column as an (N, ...) array."""
    col = table.column(key)
    try:
        values = col.to_numpy(zero_copy_only=False)
    except Exception as e:  # pyarrow type problems
        raise DataError(f"{where}: feature {key!r} is not numeric ({e})") from None
    if values.dtype == object:  # fixed-size lists come back as arrays of arrays
        try:
            values = np.stack(values)
        except ValueError as e:  # ragged lists
            raise DataError(f"{where}: feature {key!r} has rows of different widths ({e})") \
                from None
    return values


def _rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float32)


def _read_tables(path: Path, files: list[Path], wanted: list[str], first_episode: dict):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        try:
            schema = pq.read_schema(f)
            missing = [k for k in wanted if k not in schema.names]
            if missing:
                raise DataError(f"{f}, episode {first_episode[f]}: no feature(s) "
                                f"{', '.join(missing)} (has: {', '.join(schema.names)})")
            tables.append(pq.read_table(f, columns=wanted))
        except OSError as e:
            raise DataError(f"{f}: cannot read the parquet file ({e})") from None
    return pa.concat_tables(tables)


def open_lerobot_dataset(path: Path, cfg: RobotSourceConfig) -> RobotDataset:
    """Read a local LeRobotDataset v3.0 folder (validated; images into the frame cache)."""
    import pyarrow as pa

    from vptr.data.cache import open_video_source
    from vptr.data.readers import lerobot_meta

    if cfg.filter_key:
        raise DataError(f"{path}: filter_key={cfg.filter_key!r} selects a robomimic split "
                        "(mask/<key>); a LeRobot dataset has none")
    meta = lerobot_meta(str(path))
    root = Path(meta.root)
    check_rate(str(root / "meta" / "info.json"), float(meta.fps), cfg)
    episodes = meta.episodes
    if episodes is None or len(episodes) == 0:
        raise DataError(f"{path}: the robot dataset has no episodes")
    ep_rows = episodes.select_columns(["episode_index", "length"]).to_list()
    ep_ids = [int(r["episode_index"]) for r in ep_rows]
    ep_files = [root / meta.get_data_file_path(e) for e in ep_ids]
    where = [f"{f}, episode {e}" for f, e in zip(ep_files, ep_ids)]
    first_episode: dict[Path, int] = {}
    for f, e in zip(ep_files, ep_ids):
        first_episode.setdefault(f, e)
    files = sorted(first_episode)
    wanted = list(dict.fromkeys([*cfg.state_keys, cfg.action_key, cfg.reward_key,
                                 cfg.done_key, *([cfg.success_key] if cfg.success_key else []),
                                 "episode_index", "frame_index", "task_index"]))
    table = _read_tables(path, files, wanted, first_episode)
    ep = _column(table, "episode_index", str(path))
    # episodes in the metadata's order: the order of the camera frame stores too
    index_of = {e: i for i, e in enumerate(ep_ids)}
    unknown_eps = set(np.unique(ep).tolist()) - set(index_of)
    if unknown_eps:
        raise DataError(f"{path}: rows of episodes {sorted(unknown_eps)[:5]} not in the "
                        "episode metadata")
    position = np.array([index_of[int(e)] for e in ep], dtype=np.int64)
    order = np.lexsort((_column(table, "frame_index", str(path)), position))
    table, position = table.take(pa.array(order)), position[order]
    lengths = np.array([int(r["length"]) for r in ep_rows], dtype=np.int64)
    counts = np.bincount(position, minlength=len(ep_rows))
    for i, (want, got) in enumerate(zip(lengths, counts)):
        if want == 0:
            raise DataError(f"{where[i]}: empty episode (0 rows)")
        if got != want:
            raise DataError(f"{where[i]}: {got} rows, the metadata says {want}")
    offsets = np.cumsum(lengths) - lengths
    action = _rows(_column(table, cfg.action_key, str(path)))
    check_width(where[0], "action", repr(cfg.action_key), action.shape[1], cfg.action_dim)
    state, parts = None, []
    if cfg.state_keys:
        parts = [_rows(_column(table, k, str(path))) for k in cfg.state_keys]
        for k, x in zip(cfg.state_keys, parts):
            check_finite(x, k, where, offsets)
        state = np.concatenate(parts, axis=1)
        check_width(where[0], "state", " + ".join(map(repr, cfg.state_keys)), state.shape[1],
                    cfg.state_dim)
    reward = _column(table, cfg.reward_key, str(path)).astype(np.float32).reshape(-1)
    done = _column(table, cfg.done_key, str(path)).astype(bool).reshape(-1)
    success = (_column(table, cfg.success_key, str(path)).astype(bool).reshape(-1)
               if cfg.success_key else None)
    check_finite(action, cfg.action_key, where, offsets)
    check_finite(reward, cfg.reward_key, where, offsets)
    terminal = terminals(cfg, done, success, offsets, lengths)
    task_index = _column(table, "task_index", str(path)).astype(np.int64)[offsets]
    tasks = [str(t) for t in sorted(meta.tasks.index, key=lambda t: meta.tasks.loc[t].iloc[0])]
    cameras = open_cameras(path, meta, cfg, lengths, open_video_source)
    per_key = {k: feature_names(meta.features.get(k, {}).get("names"), k, x.shape[1])
               for k, x in zip([cfg.action_key, *cfg.state_keys], [action, *parts])}
    return RobotDataset(str(path), float(meta.fps), offsets, lengths, terminal, task_index,
                        tasks, state, action, reward, done, success, cameras,
                        role_names(per_key, cfg.action_key, list(cfg.state_keys)),
                        [x.shape[1] for x in parts])


def open_cameras(path: Path, meta, cfg: RobotSourceConfig, lengths: np.ndarray,
                 open_video_source) -> dict[str, Any]:
    """One frame store per camera, checked to hold exactly the dataset's rows."""
    depth = set(meta.depth_keys)
    available = [k for k in meta.camera_keys if k not in depth]
    keys = (list(cfg.camera_keys) or available) if cfg.images else []
    out = {}
    for key in keys:
        if key not in available:
            raise DataError(f"{path}: no camera {key!r} (cameras: {', '.join(available)})")
        store = open_video_source(path, camera_frames_config(cfg.frames, key))
        if store.skipped or not np.array_equal(store.lengths, lengths):
            raise DataError(f"{path}: camera {key!r} does not match the episodes "
                            f"({store.skip_summary() if store.skipped else 'frame counts differ'})")
        out[key] = store
    return out


def camera_frames_config(frames: VideoSourceConfig, key: str) -> VideoSourceConfig:
    """The frame-cache config of one camera: its key is part of the cache key."""
    import dataclasses

    return dataclasses.replace(frames, camera_keys=(key,), min_frames=1)
