"""robomimic-schema HDF5 robot datasets, read with h5py into a :class:`RobotDataset`.

Schema (robomimic, Mandlekar et al. 2021, "Dataset structure"): ``data/demo_<k>/`` holds
``obs/<key>`` (low-dimensional float (T, D) arrays; RGB images (T, H, W, 3) uint8 under
keys ending in ``_image``), ``actions`` (T, Da), ``rewards`` (T,), ``dones`` (T,); the
demo attribute ``num_samples`` = T; ``data`` attributes ``env_args`` (JSON) and ``total``;
``mask/<split>`` lists demo names (bytes) of a split, chosen with ``filter_key``.
Demos are read in the order of their number (``demo_2`` before ``demo_10``), as
robomimic's own SequenceDataset orders them.

Keys of :class:`~vptr.data.robot.RobotSourceConfig` are LeRobot feature names or paths
inside a demo group; both name the same thing (so one config opens both formats that
``vptr generate robot`` writes):

===============================  =============================  =========================
config key                       robomimic dataset              RobotDataset
===============================  =============================  =========================
``observation.<k>`` or ``<k>``   ``obs/<k>`` (state_keys)       state (concatenated)
``obs/<k>``                      ``obs/<k>``                    state
``action``                       ``actions``                    action
``next.reward``                  ``rewards``                    reward
``next.done``                    ``dones``                      done
``next.success``                 none: ``rewards >= 1``         success
``observation.images.<c>``       ``obs/<c>_image``              cameras key
``obs/<c>_image``, ``<c>_image``                                ``observation.images.<c>``
===============================  =============================  =========================

Any other action/reward/done/success key is a path inside the demo group. Cameras are
keyed by their LeRobot name in ``RobotDataset.cameras`` (the batch keys and an exported
policy's observation keys are then the same for both formats); with no ``camera_keys``
every ``obs/*_image`` of the first demo is read. Images are decoded once into the same
frame cache as LeRobot cameras (:func:`vptr.data.cache.open_listing`; the cache key
hashes the file, the split and the pixel config, the fingerprint its size and mtime),
resized to ``frames.image_size`` only when their size differs.

Success and terminals: robomimic stores no success flag, so ``next.success`` is derived
from the reward: a row is a success when its reward is >= 1 (sparse robosuite/robomimic
rewards are 1 exactly on success; the dense rewards of robosuite and of our native tasks
are normalised to reach 1 only on success). ``dones`` marks the final step (and, in
robomimic's ``done_mode=2``, successes); ``terminal="done"`` makes an episode terminal when
its last ``dones`` is set, ``"success"`` when its last row is a success, ``"never"`` none.

The rate: the ``data`` attribute ``fps`` (our writer), else ``env_args.env_kwargs.
control_freq`` (robosuite datasets), else ``cfg.fps``; a file with none of them is refused
unless ``fps`` is configured. Task text: the demo attribute ``ep_meta`` (JSON) ``lang``,
else ``env_args.env_name``. Feature names: the ``data`` attributes ``<key>_names`` and
``action_names`` (JSON lists, our writer), else ``<key>[i]``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vptr.data.config import VideoSourceConfig
from vptr.data.decode import Clip, Unusable, square_geometry
from vptr.data.robot import (
    RobotDataset,
    RobotSourceConfig,
    camera_frames_config,
    check_finite,
    check_rate,
    check_width,
    feature_names,
    role_names,
    terminals,
)
from vptr.errors import DataError

log = logging.getLogger(__name__)

_ALIASES = {"action": "actions", "next.reward": "rewards", "next.done": "dones"}
SUCCESS_FROM_REWARD = "next.success"  # the LeRobot success key: derived, rewards >= 1
IMAGE_SUFFIX = "_image"
CAMERA_PREFIX = "observation.images."


def obs_path(key: str) -> str:
    """A state key -> its path in a demo group (module docstring)."""
    if "/" in key:
        return key
    return "obs/" + key.removeprefix("observation.")


def camera_path(key: str) -> str:
    """A camera key -> ``obs/<name>_image``."""
    if key.startswith(CAMERA_PREFIX):
        return f"obs/{key.removeprefix(CAMERA_PREFIX)}{IMAGE_SUFFIX}"
    key = key if "/" in key else "obs/" + key
    return key if key.endswith(IMAGE_SUFFIX) else key + IMAGE_SUFFIX


def camera_name(path: str) -> str:
    """``obs/<name>_image`` -> ``observation.images.<name>`` (the RobotDataset key)."""
    return CAMERA_PREFIX + path.removeprefix("obs/").removesuffix(IMAGE_SUFFIX)


@dataclass(frozen=True)
class HDF5ImageItem:
    """One demo's images ``(T, H, W, 3)`` uint8 in a robomimic file (a frame-cache item)."""

    path: Path
    dataset: str  # e.g. data/demo_3/obs/agentview_image
    label: str
    fps: float
    text: str = ""

    def decode(self, cfg: VideoSourceConfig) -> Clip:
        import h5py

        with h5py.File(self.path, "r") as f:
            frames = f[self.dataset][()]
        if len(frames) == 0:
            raise Unusable("zero frames", f"{self.dataset} has no rows")
        return Clip(resize_frames(frames, cfg, self.dataset), self.fps, self.fps, len(frames))


def resize_frames(frames: np.ndarray, cfg: VideoSourceConfig, name: str) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) with the geometry of video frames
    (:func:`vptr.data.decode.square_geometry`); unchanged when already that size."""
    size = cfg.image_size
    if frames.shape[1:3] == (size, size):
        return np.ascontiguousarray(frames)
    from PIL import Image

    h, w = frames.shape[1:3]
    rw, rh, x0, y0 = square_geometry(w, h, size, cfg.crop)
    method = Image.Resampling.BOX if rw <= w else Image.Resampling.BILINEAR  # as load_image
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        im = Image.fromarray(frame).resize((rw, rh), method)
        out[i] = np.asarray(im)[y0:y0 + size, x0:x0 + size]
    return out


def _demo_number(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else -1, name)


def _demos(f, path: Path, filter_key: str) -> list[str]:
    if "data" not in f:
        raise DataError(f"{path}: not a robomimic file (no 'data' group; has: "
                        f"{', '.join(f) or 'nothing'})")
    demos = list(f["data"])
    if filter_key:
        masks = list(f["mask"]) if "mask" in f else []
        if filter_key not in masks:
            raise DataError(f"{path}: no filter key mask/{filter_key} (filter keys: "
                            f"{', '.join(masks) or 'none'})")
        chosen = [n.decode() if isinstance(n, bytes) else str(n)
                  for n in f[f"mask/{filter_key}"][()]]
        missing = [d for d in chosen if d not in demos]
        if missing:
            raise DataError(f"{path}: mask/{filter_key} lists demos that data/ does not hold: "
                            f"{', '.join(missing[:5])}")
        demos = chosen
    if not demos:
        raise DataError(f"{path}: no demos" + (f" in mask/{filter_key}" if filter_key else ""))
    return sorted(demos, key=_demo_number)


def _read(g, key: str, where: str, length: int | None) -> np.ndarray:
    if key not in g:
        has = sorted(g) + [f"obs/{k}" for k in sorted(g["obs"])] if "obs" in g else sorted(g)
        raise DataError(f"{where}: no {key} (has: {', '.join(has)})")
    x = g[key][()]
    if x.dtype.kind not in "fiub":
        raise DataError(f"{where}: {key} is not numeric ({x.dtype})")
    if length is not None and len(x) != length:
        raise DataError(f"{where}: {key} has {len(x)} rows, actions has {length}")
    return x


def _json_attr(attrs, name: str, path: Path) -> Any:
    if name not in attrs:
        return None
    try:
        return json.loads(attrs[name])
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: attribute {name!r} is not valid JSON ({e})") from None


def _rate(data, env_args: dict | None, path: Path, cfg: RobotSourceConfig) -> float:
    fps = data.attrs.get("fps")
    if fps is None and isinstance(env_args, dict):
        fps = (env_args.get("env_kwargs") or {}).get("control_freq")
    if fps is None:
        if not cfg.fps:
            raise DataError(f"{path}: the file declares no rate (data attribute 'fps' or "
                            "env_args env_kwargs.control_freq); set fps in the config")
        return float(cfg.fps)
    check_rate(str(path), float(fps), cfg)
    return float(fps)


def _names(data, key: str, path: Path, width: int) -> list[str]:
    attr = key.removeprefix("obs/").replace("/", "_") + "_names"
    if key == "actions":
        attr = "action_names"
    return feature_names(_json_attr(data.attrs, attr, path), key, width)


def open_robomimic_dataset(path: str | Path, cfg: RobotSourceConfig | None = None) -> RobotDataset:
    """Read a robomimic-schema HDF5 file (validated; images into the frame cache)."""
    import h5py

    cfg = cfg or RobotSourceConfig()
    path = Path(path).expanduser().resolve()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: cannot open as HDF5 ({e})") from None
    with f:
        demos = _demos(f, path, cfg.filter_key)
        data = f["data"]
        env_args = _json_attr(data.attrs, "env_args", path)
        fps = _rate(data, env_args, path, cfg)
        where = [f"{path}, episode {d}" for d in demos]
        action_key = _ALIASES.get(cfg.action_key, cfg.action_key)
        state_keys = [obs_path(k) for k in cfg.state_keys]
        reward_key = _ALIASES.get(cfg.reward_key, cfg.reward_key)
        done_key = _ALIASES.get(cfg.done_key, cfg.done_key)
        success_key = "" if cfg.success_key == SUCCESS_FROM_REWARD else cfg.success_key
        cols: dict[str, list[np.ndarray]] = {k: [] for k in
                                             [action_key, reward_key, done_key, *state_keys]}
        success_rows, texts, lengths = [], [], []
        for d, w in zip(demos, where):
            g = data[d]
            action = _read(g, action_key, w, None)
            n = len(action)
            if n == 0:
                raise DataError(f"{w}: empty episode (0 steps)")
            if "num_samples" in g.attrs and int(g.attrs["num_samples"]) != n:
                raise DataError(f"{w}: num_samples = {int(g.attrs['num_samples'])}, "
                                f"{action_key} has {n} rows")
            cols[action_key].append(action.reshape(n, -1))
            for k in (reward_key, done_key, *state_keys):
                cols[k].append(_read(g, k, w, n).reshape(n, -1))
            if success_key:
                success_rows.append(_read(g, success_key, w, n).astype(bool).reshape(-1))
            meta = _json_attr(g.attrs, "ep_meta", path) or {}
            texts.append(str(meta.get("lang") or (env_args or {}).get("env_name") or ""))
            lengths.append(n)
        arrays = {}
        for k, parts in cols.items():
            widths = {p.shape[1] for p in parts}
            if len(widths) > 1:
                e = next(i for i, p in enumerate(parts) if p.shape[1] != parts[0].shape[1])
                raise DataError(f"{where[e]}: {k} has {parts[e].shape[1]} values per row, "
                                f"{demos[0]} has {parts[0].shape[1]}")
            arrays[k] = np.concatenate(parts)
        per_key = {c: _names(data, k, path, arrays[k].shape[1])
                   for c, k in zip([cfg.action_key, *cfg.state_keys], [action_key, *state_keys])}
        cam_paths = _camera_paths(data[demos[0]], where[0], cfg)
        _check_images(data, demos, where, cam_paths, lengths)

    lengths = np.asarray(lengths, np.int64)
    offsets = np.cumsum(lengths) - lengths
    action = arrays[action_key].astype(np.float32)
    check_width(where[0], "action", repr(action_key), action.shape[1], cfg.action_dim)
    check_finite(action, action_key, where, offsets)
    state = None
    if state_keys:
        for k in state_keys:
            check_finite(arrays[k], k, where, offsets)
        state = np.concatenate([arrays[k] for k in state_keys], axis=1).astype(np.float32)
        check_width(where[0], "state", " + ".join(map(repr, state_keys)), state.shape[1],
                    cfg.state_dim)
    reward = arrays[reward_key].astype(np.float32).reshape(-1)
    if arrays[reward_key].shape[1] != 1:
        raise DataError(f"{where[0]}: {reward_key} must hold one value per row")
    check_finite(reward, reward_key, where, offsets)
    done = arrays[done_key].astype(bool).reshape(-1)
    success = None
    if cfg.success_key:
        success = np.concatenate(success_rows) if success_key else reward >= 1.0
    tasks = list(dict.fromkeys(texts))
    task_index = np.array([tasks.index(t) for t in texts], np.int64)
    cameras = _open_cameras(path, demos, cam_paths, lengths, texts, fps, cfg)
    return RobotDataset(str(path), fps, offsets, lengths,
                        terminals(cfg, done, success, offsets, lengths), task_index, tasks,
                        state, action, reward, done, success, cameras,
                        role_names(per_key, cfg.action_key, list(cfg.state_keys)),
                        [int(arrays[k].shape[1]) for k in state_keys])


def _camera_paths(g, where: str, cfg: RobotSourceConfig) -> list[str]:
    available = [f"obs/{k}" for k in sorted(g["obs"]) if k.endswith(IMAGE_SUFFIX)] \
        if "obs" in g and cfg.images else []
    if not cfg.images or not cfg.camera_keys:
        return available
    paths = [camera_path(k) for k in cfg.camera_keys]
    for key, p in zip(cfg.camera_keys, paths):
        if p not in available:
            raise DataError(f"{where}: no camera {key!r} ({p}; cameras: "
                            f"{', '.join(available) or 'none'})")
    return paths


def _check_images(data, demos: list[str], where: list[str], cam_paths: list[str],
                  lengths: list[int]) -> None:
    """Shapes and dtypes from the HDF5 metadata, before anything is decoded."""
    for d, w, n in zip(demos, where, lengths):
        for p in cam_paths:
            if p not in data[d]:
                raise DataError(f"{w}: no camera {p}")
            ds = data[d][p]
            if ds.dtype != np.uint8 or ds.ndim != 4 or ds.shape[-1] != 3:
                raise DataError(f"{w}: {p} must be (T, H, W, 3) uint8 RGB, got "
                                f"{ds.shape} {ds.dtype}")
            if ds.shape[0] != n:
                raise DataError(f"{w}: {p} has {ds.shape[0]} frames, actions has {n} rows")


def _open_cameras(path: Path, demos: list[str], cam_paths: list[str], lengths: np.ndarray,
                  texts: list[str], fps: float, cfg: RobotSourceConfig) -> dict[str, Any]:
    """One frame store per camera (one trajectory per demo, in the dataset's order)."""
    from vptr.data.cache import open_listing
    from vptr.data.readers import SourceListing

    st = path.stat()
    source = f"{path}#filter_key={cfg.filter_key}" if cfg.filter_key else str(path)
    out = {}
    for p in cam_paths:
        listing = SourceListing("robomimic", source, "episode cameras",
                                fingerprint=[[str(path), int(st.st_size), int(st.st_mtime_ns)]])
        listing.items = [HDF5ImageItem(path, f"data/{d}/{p}", f"{d}/{p}", fps, t)
                         for d, t in zip(demos, texts)]
        store = open_listing(listing, camera_frames_config(cfg.frames, p))
        if store.skipped or not np.array_equal(store.lengths, lengths):
            raise DataError(f"{path}: camera {p} does not match the episodes "
                            f"({store.skip_summary() if store.skipped else 'frame counts differ'})")
        out[camera_name(p)] = store
    return out
