"""Decoded-frame cache and the :class:`FrameStore` the samplers read from.

A cache is a folder ``<cache_dir>/<name>-<key>/`` with

- ``frames.u8``: every kept frame of every trajectory, back to back, uint8 (N, H, W, 3),
  opened with ``np.memmap`` (the OS page cache shares it between loader workers);
- ``index.json``: shape, per-trajectory offset/length/fps/text/source, the skipped inputs
  with reasons, the pixel config and a fingerprint (path, size, mtime) of every source file.

The key hashes the source and the pixel config; the fingerprint is compared on every open,
so edited sources are decoded again and unchanged ones never are. A cache is built in a
hidden temporary folder and renamed into place only when complete (:func:`vptr.files.building`),
so an interrupted build is never mistaken for a cache.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vptr.data.config import CACHE_FORMAT_VERSION, VideoSourceConfig
from vptr.data.decode import Clip, Unusable
from vptr.data.readers import Item, Skip, SourceListing, list_source, skip_counts, skip_summary
from vptr.data.sampling import split_trajectories
from vptr.errors import DataError
from vptr.files import building

log = logging.getLogger(__name__)

FRAMES_FILE = "frames.u8"
INDEX_FILE = "index.json"


class FrameStore:
    """Trajectories of uint8 frames in one memory-mapped array.

    ``frames`` is (N, H, W, 3); trajectory ``i`` is ``frames[offsets[i]:offsets[i] +
    lengths[i]]`` at ``fps[i]``. Indices returned by samplers are rows of ``frames``. A
    :meth:`subset` shares the same file; pickling sends only the metadata (each loader
    worker maps the file itself).
    """

    def __init__(self, path: str | Path, index: dict, traj_ids: np.ndarray | None = None):
        self.path = Path(path)
        self.index = index
        trajs = index["trajectories"]
        n_all = len(trajs["offset"])
        ids = np.arange(n_all) if traj_ids is None else np.asarray(traj_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= n_all):
            raise IndexError(f"trajectory ids must be in [0, {n_all}), got {ids.tolist()}")
        self.traj_ids = ids
        self.offsets = np.asarray(trajs["offset"], dtype=np.int64)[ids]
        self.lengths = np.asarray(trajs["length"], dtype=np.int64)[ids]
        self.fps = np.asarray(trajs["fps"], dtype=np.float64)[ids]
        self.texts = [trajs["text"][i] for i in ids]
        self.sources = [trajs["source"][i] for i in ids]
        self.skipped = [Skip(**s) for s in index["skipped"]]
        self._frames: np.ndarray | None = None

    @classmethod
    def open(cls, path: str | Path) -> FrameStore:
        """Open a complete cache folder directly (no check against the sources)."""
        path = Path(path)
        try:
            index = json.loads((path / INDEX_FILE).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a frame cache ({e})") from None
        store = cls(path, index)
        expected = int(np.prod(index["shape"]))
        actual = (path / FRAMES_FILE).stat().st_size if (path / FRAMES_FILE).exists() else -1
        if actual != expected:
            raise DataError(f"{path / FRAMES_FILE}: {actual} bytes, index expects {expected}")
        return store

    @property
    def frames(self) -> np.ndarray:
        if self._frames is None:
            shape = tuple(self.index["shape"])
            if shape[0] == 0:
                self._frames = np.zeros(shape, np.uint8)
            else:
                self._frames = np.memmap(self.path / FRAMES_FILE, dtype=np.uint8, mode="r",
                                         shape=shape)
        return self._frames

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.index["shape"][1]), int(self.index["shape"][2])

    @property
    def source(self) -> str:
        return self.index["source"]

    def trajectory(self, i: int) -> np.ndarray:
        """Frames (T, H, W, 3) of trajectory ``i`` (a read-only view, no copy)."""
        o = int(self.offsets[i])
        return self.frames[o:o + int(self.lengths[i])]

    def subset(self, ids) -> FrameStore:
        """The trajectories ``ids`` (positions in this store) as a store on the same file."""
        return FrameStore(self.path, self.index, self.traj_ids[np.asarray(ids, dtype=np.int64)])

    def split(self, val_fraction: float, seed: int = 0,
              shuffle: bool = True) -> tuple[FrameStore, FrameStore]:
        """Deterministic (train, val) split of whole trajectories (see split_trajectories)."""
        train, val = split_trajectories(len(self), val_fraction, seed=seed, shuffle=shuffle)
        return self.subset(train), self.subset(val)

    def skip_summary(self) -> str:
        return skip_summary(self.skipped, self.index["total"], self.index["unit"])

    def skip_counts(self) -> dict[str, int]:
        return skip_counts(self.skipped)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_frames"] = None  # a memmap would pickle as a full copy of the frames
        return state

    def __repr__(self) -> str:
        h, w = self.image_size
        return (f"FrameStore({len(self)} trajectories, {self.num_frames} frames of {h}x{w}, "
                f"source={self.source!r}, cache={str(self.path)!r})")


def cache_name(listing: SourceListing, cfg: VideoSourceConfig) -> str:
    """``<readable source name>-<hash of source and pixel config>``."""
    blob = json.dumps({"kind": listing.kind, "source": listing.source,
                       "config": cfg.pixel_config()}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", _display_name(listing))[:40].lstrip(".")
    return f"{slug or 'source'}-{key}"


def _display_name(listing: SourceListing) -> str:
    path = Path(listing.source.rstrip("/"))
    return (path.parent.name if listing.kind == "manifest" else path.name) or listing.source


def decode_item(item: Item, cfg: VideoSourceConfig) -> Clip | Skip:
    """Decode one item; every input problem becomes a :class:`Skip` (runs in workers)."""
    try:
        clip = item.decode(cfg)
    except Unusable as e:
        return Skip(item.label, e.category, e.detail)
    except Exception as e:
        return Skip(item.label, "decode error", f"{type(e).__name__}: {e}")
    if len(clip.frames) < cfg.min_frames:
        return Skip(item.label, "too short", f"{len(clip.frames)} frames at {clip.fps:g} fps "
                                             f"(min_frames={cfg.min_frames})")
    return clip


def decode_items(items: list[Item], cfg: VideoSourceConfig) -> Iterator[Clip | Skip]:
    """Results in item order, decoded by ``cfg.decode_workers`` threads or processes.

    Threads are the default: PyAV and PIL decode and rescale without holding the GIL, so
    two threads decode as fast as two forked processes (measured on a shared 2-core machine,
    320x240 H.264 -> 64 px: ~2,200 frames/s each, ~1,000 for spawned processes counting
    their start-up) and need no picklable state or ``__main__`` guard. Processes use
    "spawn": they inherit no threads or locks from a parent that may be running torch.
    """
    workers = min(cfg.num_decode_workers(), len(items))
    if workers <= 1:
        for item in items:
            yield decode_item(item, cfg)
        return
    if cfg.decode_pool == "process":
        chunk = max(1, min(16, len(items) // (workers * 8)))
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        chunk = 1
        pool = ThreadPoolExecutor(workers, thread_name_prefix="vptr-decode")
    try:
        yield from pool.map(decode_item, items, itertools.repeat(cfg), chunksize=chunk)
    finally:  # on Ctrl-C or an abandoned build, do not wait for the queued items
        pool.shutdown(wait=True, cancel_futures=True)


def build_cache(listing: SourceListing, cfg: VideoSourceConfig, target: Path) -> None:
    """Decode every item of ``listing`` into the cache folder ``target``."""
    from tqdm import tqdm

    t0 = time.time()
    with building(target, "frame-cache directory") as tmp:
        trajs: dict[str, list] = {k: [] for k in ("offset", "length", "fps", "native_fps",
                                                  "text", "source")}
        skipped = list(listing.skipped)
        n_frames, shape = 0, None
        with open(tmp / FRAMES_FILE, "wb") as fh, tqdm(
                total=len(listing.items), unit=listing.unit.split()[-1], dynamic_ncols=True,
                desc=f"decoding {_display_name(listing)}", disable=not cfg.progress) as bar:
            for item, result in zip(listing.items, decode_items(listing.items, cfg)):
                bar.update(1)
                if isinstance(result, Skip):
                    skipped.append(result)
                    continue
                frames = np.ascontiguousarray(result.frames, dtype=np.uint8)
                shape = frames.shape[1:]
                fh.write(memoryview(frames).cast("B"))
                for k, v in (("offset", n_frames), ("length", len(frames)), ("fps", result.fps),
                             ("native_fps", result.native_fps), ("text", item.text),
                             ("source", item.label)):
                    trajs[k].append(v)
                n_frames += len(frames)
            fh.flush()
            os.fsync(fh.fileno())
        if not trajs["offset"]:
            raise DataError(f"no usable {listing.unit} in {listing.source}: "
                            f"{skip_summary(skipped, listing.total, listing.unit)}")
        index = {"format": CACHE_FORMAT_VERSION, "kind": listing.kind, "source": listing.source,
                 "unit": listing.unit, "config": cfg.pixel_config(),
                 "fingerprint": listing.fingerprint, "dtype": "uint8",
                 "shape": [n_frames, *map(int, shape)], "trajectories": trajs,
                 "skipped": [s.__dict__ for s in skipped], "total": listing.total,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "build_seconds": round(time.time() - t0, 3)}
        with open(tmp / INDEX_FILE, "w") as fh:
            json.dump(index, fh)
            fh.flush()
            os.fsync(fh.fileno())
    log.info("decoded %d %s (%d frames) from %s in %.1f s into %s", len(trajs["offset"]),
             listing.unit, n_frames, listing.source, time.time() - t0, target)


def load_cache(target: Path, listing: SourceListing, cfg: VideoSourceConfig) -> FrameStore | None:
    """The cache at ``target`` if it is complete and matches the sources, else None."""
    if not (target / INDEX_FILE).is_file():
        return None
    try:
        store = FrameStore.open(target)
    except DataError as e:
        log.warning("ignoring broken frame cache: %s", e)
        return None
    index = store.index
    if (index.get("format") != CACHE_FORMAT_VERSION or index.get("config") != cfg.pixel_config()
            or index.get("source") != listing.source):
        log.info("frame cache %s was built with other settings; rebuilding", target)
        return None
    if index.get("fingerprint") != listing.fingerprint:
        log.info("sources of %s changed since the cache was built; rebuilding", listing.source)
        return None
    return store


def open_video_source(spec: str | os.PathLike, cfg: VideoSourceConfig | None = None) -> FrameStore:
    """Open a video source (see :mod:`vptr.data.readers`) as a :class:`FrameStore`.

    Decodes once into the cache (``cfg.cache_dir``) and reuses it while the sources and the
    pixel config are unchanged. Skipped inputs are logged as one summary line and kept in
    ``store.skipped``; raises DataError if no trajectory is usable.
    """
    cfg = cfg or VideoSourceConfig()
    return open_listing(list_source(spec, cfg), cfg)


def open_listing(listing: SourceListing, cfg: VideoSourceConfig) -> FrameStore:
    """The frame store of an already listed source (any items with ``decode(cfg)``, e.g.
    the image arrays of a robomimic file): the valid cache, or decoded into it now."""
    if not listing.items:
        what = (skip_summary(listing.skipped, listing.total, listing.unit) if listing.skipped
                else f"it holds no {listing.unit}")
        raise DataError(f"no usable {listing.unit} in {listing.source}: {what}")
    target = cfg.cache_root() / cache_name(listing, cfg)
    store = None if cfg.rebuild_cache else load_cache(target, listing, cfg)
    if store is None:
        build_cache(listing, cfg, target)
        store = FrameStore.open(target)
    if store.skipped:
        log.warning("%s: %s", listing.source, store.skip_summary())
    return store
