"""Find the trajectories of a video source without decoding them.

A source is one of (detected from the path, or forced with a ``kind:`` prefix):

- ``videos``   a folder searched recursively for video files (mp4, webm, mkv, avi, mov, m4v),
               or a single video file;
- ``manifest`` a ``manifest.csv`` (the file, or a folder holding it) whose rows name video
               files or frame folders, relative to the manifest's folder or absolute;
- ``frames``   a folder of frame folders (VIP's custom-dataset layout ``root/video0/0.png``);
- ``lerobot``  a LeRobotDataset v3.0 folder (has ``meta/info.json``) or a repo id; one
               trajectory per episode and camera, actions ignored.

Manifest columns (header row required; unknown columns are ignored):

- ``path`` (or ``video_path``): video file or frame folder;
- ``num_frames`` (ours) or ``len`` (VIP / R3M Ego4D manifests): native frame count, used to
  detect truncated files (frame folders: only the first ``len`` frames are used, as VIP/R3M do);
- ``fps``: native rate of a frame folder (default ``VideoSourceConfig.frames_fps``);
- ``text`` (ours) or ``txt`` (VIP / R3M): task description or narration, kept verbatim;
- ``width``, ``height``: informational.

Our generator writes ``path,num_frames,fps,width,height,text``; VIP and R3M read Ego4D
frame folders from ``path,len,txt`` (facebookresearch/vip ``vip/utils/data_loaders.py``,
facebookresearch/r3m ``r3m/utils/data_loaders.py``). Hidden files and folders (``.name``, e.g.
macOS ``._clip.mp4`` forks) are ignored. Problems found here (missing files, unreadable
folders, bad rows) become :class:`Skip` records, as do decoding problems later.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vptr.data.config import VideoSourceConfig
from vptr.data.decode import (
    Clip,
    Unusable,
    decode_image_files,
    decode_video,
    frame_sort_key,
    is_image_file,
    load_image,
    select_frames,
)
from vptr.errors import DataError, unknown

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
SOURCE_KINDS = ("videos", "manifest", "frames", "lerobot")
MANIFEST_NAME = "manifest.csv"
PATH_COLUMNS = ("path", "video_path")
COUNT_COLUMNS = ("num_frames", "len")
TEXT_COLUMNS = ("text", "txt")


@dataclass(frozen=True)
class Skip:
    """An input that was left out, with a reason category and a detail message."""

    path: str
    category: str
    detail: str = ""


@dataclass(frozen=True)
class VideoItem:
    """A video file, or the [start, end) seconds of one (LeRobot packs episodes per file)."""

    path: Path
    label: str
    text: str = ""
    start: float | None = None
    end: float | None = None
    expected_frames: int | None = None

    def decode(self, cfg: VideoSourceConfig) -> Clip:
        return decode_video(self.path, cfg, start=self.start, end=self.end,
                            expected_frames=self.expected_frames)


@dataclass(frozen=True)
class FrameFolderItem:
    """A folder of frame images in natural filename order, at ``fps``."""

    path: Path
    label: str
    files: tuple[str, ...]
    fps: float
    text: str = ""
    expected_frames: int | None = None

    def decode(self, cfg: VideoSourceConfig) -> Clip:
        return decode_image_files([self.path / f for f in self.files], self.fps, cfg,
                                  expected_frames=self.expected_frames)


@dataclass(frozen=True)
class LeRobotImageItem:
    """One episode of a LeRobot camera stored as images inside the data parquet files."""

    data_file: Path
    label: str
    key: str
    episode: int
    fps: float
    text: str = ""
    expected_frames: int | None = None

    def decode(self, cfg: VideoSourceConfig) -> Clip:
        import pyarrow.parquet as pq

        table = pq.read_table(self.data_file, columns=[self.key, "episode_index", "frame_index"],
                              filters=[("episode_index", "=", self.episode)])
        order = np.argsort(table.column("frame_index").to_numpy(), kind="stable")
        cells = table.column(self.key).to_pylist()
        n = len(cells)
        if n == 0:
            raise Unusable("zero frames", f"episode {self.episode} has no rows")
        if self.expected_frames and n < self.expected_frames:
            raise Unusable("truncated", f"found {n} of {self.expected_frames} frames")
        keep, fps = select_frames(n, self.fps, cfg)
        frames = []
        for i in keep.tolist():
            cell = cells[order[i]] or {}
            name = f"{self.key}[{i}]"
            if cell.get("bytes"):
                frames.append(load_image(io.BytesIO(cell["bytes"]), cfg, name))
            elif cell.get("path"):
                frames.append(load_image(cell["path"], cfg, name))
            else:
                raise Unusable("decode error", f"frame {name} has neither bytes nor path")
        return Clip(np.stack(frames), fps, float(self.fps), n)


Item = VideoItem | FrameFolderItem | LeRobotImageItem


@dataclass
class SourceListing:
    """Everything known about a source before decoding; ``fingerprint`` keys cache validity."""

    kind: str
    source: str
    unit: str
    items: list[Item] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    fingerprint: list[list] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.items) + len(self.skipped)


def skip_summary(skipped: list[Skip], total: int, unit: str) -> str:
    """One line such as ``skipped 3 of 40 videos: 2 not a video (a.mp4: Invalid data ...;
    +1 more), 1 missing file (b.mp4)`` (categories by decreasing count)."""
    if not skipped:
        return f"skipped 0 of {total} {unit}"
    by_cat: dict[str, list[Skip]] = {}
    for s in skipped:
        by_cat.setdefault(s.category, []).append(s)
    parts = []
    for cat, items in sorted(by_cat.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        first = items[0]
        example = f"{first.path}: {first.detail}" if first.detail else first.path
        more = f"; +{len(items) - 1} more" if len(items) > 1 else ""
        parts.append(f"{len(items)} {cat} ({example}{more})")
    return f"skipped {len(skipped)} of {total} {unit}: " + ", ".join(parts)


def skip_counts(skipped: list[Skip]) -> dict[str, int]:
    return dict(Counter(s.category for s in skipped))


def _stat_entry(path: Path) -> list:
    st = path.stat()
    return [str(path), int(st.st_size), int(st.st_mtime_ns)]


def _dir_entry(path: Path, n_files: int) -> list:
    # A folder's mtime changes when files are added or removed: cheaper than stat-ing
    # millions of Ego4D frames, and it catches the same edits.
    return [str(path), n_files, int(path.stat().st_mtime_ns)]


def walk_files(root: Path, skipped: list[Skip]) -> list[tuple[Path, list[str]]]:
    """(folder, sorted non-hidden file names) for every readable folder under ``root``.

    Unreadable folders become ``unreadable`` skips instead of aborting the search.
    """
    out = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            skipped.append(Skip(str(folder), "unreadable", e.strerror or str(e)))
            continue
        files, dirs = [], []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    dirs.append(Path(entry.path))
                elif entry.is_file():
                    files.append(entry.name)
            except OSError as e:
                skipped.append(Skip(entry.path, "unreadable", e.strerror or str(e)))
        out.append((folder, sorted(files)))
        stack.extend(sorted(dirs, reverse=True))
    return sorted(out, key=lambda x: str(x[0]))


def is_video_file(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith(".")


def list_video_dir(root: Path) -> SourceListing:
    """Every video file under ``root`` (recursive), in path order."""
    listing = SourceListing("videos", str(root), "videos")
    if root.is_file():
        listing.items.append(VideoItem(root, root.name))
        listing.fingerprint.append(_stat_entry(root))
        return listing
    for folder, files in walk_files(root, listing.skipped):
        for name in files:
            if is_video_file(name):
                path = folder / name
                listing.items.append(VideoItem(path, str(path.relative_to(root))))
                listing.fingerprint.append(_stat_entry(path))
    return listing


def _frame_folder(path: Path, label: str, fps: float, text: str,
                  count: int | None, listing: SourceListing) -> None:
    try:
        names = sorted((e.name for e in os.scandir(path) if is_image_file(e.name)),
                       key=frame_sort_key)
    except OSError as e:
        listing.skipped.append(Skip(label, "unreadable", e.strerror or str(e)))
        return
    listing.fingerprint.append(_dir_entry(path, len(names)))
    if count is not None and len(names) > count:
        names = names[:count]
    listing.items.append(FrameFolderItem(path, label, tuple(names), fps, text, count))


def list_frame_folders(root: Path, cfg: VideoSourceConfig) -> SourceListing:
    """VIP's custom layout: every folder under ``root`` holding images is one trajectory."""
    listing = SourceListing("frames", str(root), "frame folders")
    for folder, files in walk_files(root, listing.skipped):
        if any(is_image_file(f) for f in files):
            label = str(folder.relative_to(root)) if folder != root else root.name
            _frame_folder(folder, label, cfg.frames_fps, "", None, listing)
    return listing


def _pick(row: dict, names: tuple[str, ...]) -> str | None:
    for n in names:
        v = row.get(n)
        if v is not None and v.strip() != "":
            return v.strip()
    return None


def read_manifest(path: Path) -> list[dict[str, str]]:
    """Rows of a manifest as dicts (header required, BOM tolerated); DataError if unusable."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            if not any(c in columns for c in PATH_COLUMNS):
                raise DataError(f"{path}: manifest has no 'path' column (columns: "
                                f"{', '.join(columns) or 'none'}); expected "
                                "path,num_frames,fps,width,height,text or VIP/R3M path,len,txt")
            reader.fieldnames = columns
            return [dict(r) for r in reader]
    except OSError as e:
        raise DataError(f"{path}: cannot read manifest ({e.strerror or e})") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a valid CSV manifest ({e})") from None


def list_manifest(manifest: Path, cfg: VideoSourceConfig) -> SourceListing:
    """Rows of ``manifest`` -> video / frame-folder items; bad or missing rows are skipped."""
    base = manifest.parent
    listing = SourceListing("manifest", str(manifest), "manifest rows")
    listing.fingerprint.append(_stat_entry(manifest))
    for line, row in enumerate(read_manifest(manifest), start=2):
        rel = _pick(row, PATH_COLUMNS)
        if rel is None:
            listing.skipped.append(Skip(f"{manifest.name}:{line}", "bad manifest row",
                                        "empty path"))
            continue
        try:
            count_text = _pick(row, COUNT_COLUMNS)
            count = int(float(count_text)) if count_text is not None else None
            fps_text = _pick(row, ("fps",))
            fps = float(fps_text) if fps_text is not None else None
            if (count is not None and count < 0) or (fps is not None and not fps > 0):
                raise ValueError("negative frame count or non-positive fps")
        except ValueError as e:
            listing.skipped.append(Skip(f"{manifest.name}:{line}", "bad manifest row", str(e)))
            continue
        text = _pick(row, TEXT_COLUMNS) or ""
        path = Path(rel).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            is_dir = path.is_dir()
            exists = is_dir or path.is_file()
        except OSError as e:
            listing.skipped.append(Skip(rel, "unreadable", e.strerror or str(e)))
            continue
        if not exists:
            listing.skipped.append(Skip(rel, "missing file", f"listed on line {line} of "
                                                             f"{manifest.name}"))
        elif is_dir:
            _frame_folder(path, rel, fps or cfg.frames_fps, text, count, listing)
        else:
            listing.items.append(VideoItem(path, rel, text, expected_frames=count or None))
            listing.fingerprint.append(_stat_entry(path))
    return listing


def _episode_text(tasks) -> str:
    if tasks is None:
        return ""
    if isinstance(tasks, str):
        return tasks
    return " | ".join(str(t) for t in tasks)


def lerobot_meta(root_or_repo: str):
    """LeRobot metadata of a local dataset folder (never touches the network) or a repo id.

    For a local folder only ``LeRobotDatasetMetadata`` (the ``meta`` of a LeRobotDataset) is
    loaded: a full ``LeRobotDataset`` would try to download any missing data or video file
    from the hub, and we decode the camera streams ourselves anyway. A repo id goes through
    ``LeRobotDataset`` so that the hub copy (with videos) is fetched the usual way.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    local = Path(root_or_repo).expanduser()
    try:
        if (local / "meta" / "info.json").is_file():
            for required in ("meta/episodes", "meta/tasks.parquet"):
                if not (local / required).exists():
                    raise DataError(f"{local}: incomplete LeRobot dataset ({required} is "
                                    "missing; was it finalized?)")
            return LeRobotDatasetMetadata(f"local/{local.resolve().name}", root=local)
        # video_backend="pyav": LeRobot would otherwise probe torchcodec, which cannot load.
        return LeRobotDataset(root_or_repo, video_backend="pyav").meta
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{root_or_repo}: cannot open as a LeRobot dataset "
                        f"({type(e).__name__}: {e})") from None


def list_lerobot(root_or_repo: str, cfg: VideoSourceConfig) -> SourceListing:
    """Camera streams of a LeRobotDataset v3.0: one item per (episode, camera)."""
    meta = lerobot_meta(root_or_repo)
    root = Path(meta.root)
    is_local = Path(root_or_repo).expanduser().exists()
    depth = set(meta.depth_keys)  # depth maps are not RGB frames; pick them explicitly
    available = list(meta.camera_keys)
    keys = list(cfg.camera_keys) or [k for k in available if k not in depth]
    for k in keys:
        if k not in available:
            raise unknown(f"camera key of {root_or_repo}", k, available)
    listing = SourceListing("lerobot", str(root) if is_local else root_or_repo,
                            "episode cameras")
    for f in sorted((root / "meta").rglob("*")):
        if f.is_file():
            listing.fingerprint.append(_stat_entry(f))
    if meta.episodes is None or not keys:
        return listing
    seen: set[Path] = set()
    episodes = meta.episodes.select_columns(
        [c for c in meta.episodes.column_names if not c.startswith("stats/")]).to_list()
    for row in episodes:
        ep = int(row["episode_index"])
        text = _episode_text(row.get("tasks"))
        length = int(row["length"])
        for key in keys:
            label = f"episode_{ep:06d}/{key}"
            if key in meta.video_keys:
                path = root / meta.get_video_file_path(ep, key)
                item = VideoItem(path, label, text, float(row[f"videos/{key}/from_timestamp"]),
                                 float(row[f"videos/{key}/to_timestamp"]), length)
            else:
                path = root / meta.get_data_file_path(ep)
                item = LeRobotImageItem(path, label, key, ep, float(meta.fps), text, length)
            if not path.is_file():
                listing.skipped.append(Skip(label, "missing file", str(path)))
                continue
            listing.items.append(item)
            if path not in seen:
                seen.add(path)
                listing.fingerprint.append(_stat_entry(path))
    return listing


def detect_kind(path: Path) -> str:
    """Kind of an existing path (see module docstring); DataError if it holds no video."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "manifest"
        return "videos"
    if (path / "meta" / "info.json").is_file():
        return "lerobot"
    if (path / MANIFEST_NAME).is_file():
        return "manifest"
    skipped: list[Skip] = []
    walked = walk_files(path, skipped)
    if any(is_video_file(f) for _, files in walked for f in files):
        return "videos"
    if any(is_image_file(f) for _, files in walked for f in files):
        return "frames"
    if skipped:  # let the listing report the unreadable folders
        return "videos"
    raise DataError(f"{path}: no video files ({', '.join(VIDEO_EXTENSIONS)}), "
                    f"{MANIFEST_NAME}, frame folders or LeRobot dataset (meta/info.json) found")


def parse_spec(spec: str | os.PathLike) -> tuple[str | None, str]:
    """``"kind:path"`` -> (kind, path); a plain path -> (None, path)."""
    text = os.fspath(spec)
    head, sep, rest = text.partition(":")
    if sep and head and "/" not in head and not Path(text).exists():
        if head not in SOURCE_KINDS:
            raise unknown("video source kind", head, SOURCE_KINDS)
        return head, rest
    return None, text


def list_source(spec: str | os.PathLike, cfg: VideoSourceConfig) -> SourceListing:
    """Find the trajectories of ``spec`` (a path, or ``kind:path``) without decoding."""
    kind, text = parse_spec(spec)
    path = Path(text).expanduser()
    if kind == "lerobot" and not path.exists():
        return list_lerobot(text, cfg)  # a hub repo id, resolved by LeRobot
    if not path.exists():
        raise DataError(f"{text}: video source not found")
    path = path.resolve()
    kind = kind or detect_kind(path)
    if kind == "manifest":
        return list_manifest(path / MANIFEST_NAME if path.is_dir() else path, cfg)
    if kind == "lerobot":
        return list_lerobot(str(path), cfg)
    if kind == "frames":
        return list_frame_folders(path, cfg)
    return list_video_dir(path)

