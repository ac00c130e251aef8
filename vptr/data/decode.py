"""Decode one video (or one folder of frame images) into square uint8 frames.

Frames are chosen by timestamp for a target frame rate, resized and center-cropped while
decoding (only the frames that are kept are converted), so memory stays bounded by one
decoded frame plus the small output. Every call opens and closes its own PyAV container
and shares no state, so decoding is safe from several threads or processes at once.

Problems with the input raise :class:`Unusable` with a short category ("not a video",
"truncated", ...) that the cache builder turns into a skip record instead of a crash.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vptr.data.config import VideoSourceConfig

# Timestamps come as rationals rounded by the container (ms for Matroska); ticks closer
# than this to a frame time are treated as equal (LeRobot uses the same 1e-4 s tolerance).
TIME_EPS = 1e-4

# A decoded count this far below the count the header/manifest promises means the file was
# cut short: max(2 frames, 2 %) absorbs codecs that drop a frame or two at edit boundaries.
TRUNCATION_SLACK_FRAMES = 2
TRUNCATION_SLACK_RATIO = 0.02


class Unusable(Exception):
    """An input that cannot be decoded; ``category`` groups reasons in the skip summary."""

    def __init__(self, category: str, detail: str):
        super().__init__(f"{category}: {detail}")
        self.category = category
        self.detail = detail


@dataclass(frozen=True)
class Clip:
    """Decoded frames of one trajectory: ``frames`` (T, size, size, 3) uint8 at ``fps``."""

    frames: np.ndarray
    fps: float
    native_fps: float
    native_frames: int


def square_geometry(width: int, height: int, size: int, crop: str) -> tuple[int, int, int, int]:
    """Resize target (w, h) and crop origin (x0, y0) that turn a frame into size x size.

    "center" scales the short side to ``size`` (keeping the aspect ratio) and crops the
    middle, as VIP/R3M preprocess Ego4D (Resize + CenterCrop); "stretch" scales both sides.
    """
    if width <= 0 or height <= 0:
        raise Unusable("decode error", f"frame has size {width}x{height}")
    if crop == "stretch":
        return size, size, 0, 0
    scale = size / min(width, height)
    rw = max(size, round(width * scale))
    rh = max(size, round(height * scale))
    return rw, rh, (rw - size) // 2, (rh - size) // 2


def truncation_threshold(expected: int) -> int:
    """Fewest decoded frames accepted when ``expected`` were promised."""
    return expected - max(TRUNCATION_SLACK_FRAMES, math.ceil(TRUNCATION_SLACK_RATIO * expected))


class TimeResampler:
    """Streaming choice of frames for ticks ``t0 + k / target_fps`` (t0 = first frame time).

    A frame shown during [t_i, t_{i+1}) serves every tick in that interval; the last frame
    is shown for one native frame duration. Feed frame times in presentation order with
    :meth:`push`, which returns how many ticks the *previous* frame serves; :meth:`finish`
    returns how many the last frame serves.
    """

    def __init__(self, target_fps: float):
        if target_fps <= 0:
            raise ValueError(f"target_fps must be > 0, got {target_fps}")
        self.step = 1.0 / target_fps
        self.origin: float | None = None
        self.next_tick = 0

    def _count_before(self, limit: float) -> int:
        n = 0
        while self.origin + self.next_tick * self.step < limit - TIME_EPS:
            self.next_tick += 1
            n += 1
        return n

    def push(self, time: float) -> int:
        if self.origin is None:
            self.origin = time
            return 0
        return self._count_before(time)

    def finish(self, last_time: float, frame_duration: float) -> int:
        if self.origin is None:
            return 0
        return self._count_before(last_time + frame_duration)


def resample_indices(times: np.ndarray, target_fps: float, frame_duration: float) -> np.ndarray:
    """Indices of the frames shown at each tick of ``target_fps`` (pure form of the resampler)."""
    sampler = TimeResampler(target_fps)
    out: list[int] = []
    for i, t in enumerate(np.asarray(times, dtype=np.float64)):
        out.extend([i - 1] * sampler.push(float(t)))
    if len(times):
        out.extend([len(times) - 1] * sampler.finish(float(times[-1]), frame_duration))
    return np.asarray(out, dtype=np.int64)


def keeps_native_rate(target_fps: float, native_fps: float) -> bool:
    """We never upsample: duplicated frames would be fake zero-time transitions for TD."""
    return target_fps <= 0 or native_fps <= 0 or target_fps >= native_fps * (1 - 1e-6)


def _rate(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _header_frame_count(container, stream, fps: float) -> int | None:
    """Frames the container promises (mp4/avi store a count; Matroska only a duration)."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    if fps <= 0:
        return None
    seconds = None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    else:
        tag = (stream.metadata or {}).get("DURATION")
        m = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", tag.strip()) if tag else None
        if m:
            seconds = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
        elif container.duration and len(container.streams) == 1:
            seconds = container.duration / 1_000_000
    return round(seconds * fps) if seconds else None


def _convert_video_frame(frame, cfg: VideoSourceConfig) -> np.ndarray:
    from av.video.reformatter import Interpolation

    rw, rh, x0, y0 = square_geometry(frame.width, frame.height, cfg.image_size, cfg.crop)
    # AREA averages source pixels: no aliasing when shrinking 1080p to 64 px.
    rgb = frame.to_ndarray(width=rw, height=rh, format="rgb24", interpolation=Interpolation.AREA)
    return np.ascontiguousarray(rgb[y0:y0 + cfg.image_size, x0:x0 + cfg.image_size])


def _container_signature(path: Path) -> str | None:
    """Container named by the file's magic bytes (ISO-BMFF "ftyp", EBML, RIFF AVI)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return None
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska/webm"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


def _open(path: Path):
    import av

    try:
        if path.stat().st_size == 0:
            raise Unusable("zero frames", "empty file (0 bytes)")
        return av.open(str(path), metadata_errors="ignore")
    except FileNotFoundError as e:
        raise Unusable("missing file", e.strerror or str(e)) from None
    except (PermissionError, IsADirectoryError) as e:
        raise Unusable("unreadable", e.strerror or str(e)) from None
    except av.error.EOFError:
        raise Unusable("zero frames", "the file ends before the first frame") from None
    except av.FFmpegError as e:
        kind = _container_signature(path)
        if kind:  # a real container that cannot be parsed: typically an mp4 cut before its index
            raise Unusable("truncated or corrupt", f"{kind} header but "
                                                   f"{_ffmpeg_message(e)}") from None
        raise Unusable("not a video", _ffmpeg_message(e)) from None
    except OSError as e:
        raise Unusable("unreadable", str(e)) from None


def _ffmpeg_message(e: Exception) -> str:
    # PyAV messages are "[Errno N] Invalid data found when processing input: 'path'"; the
    # path is already in the skip record, so keep only the reason.
    msg = getattr(e, "strerror", None) or str(e)
    return str(msg).split(": '")[0]


def decode_video(path: str | Path, cfg: VideoSourceConfig, *, start: float | None = None,
                 end: float | None = None, expected_frames: int | None = None) -> Clip:
    """Decode ``path`` (optionally only frames with start <= time < end) into a :class:`Clip`.

    ``expected_frames`` (native frames, e.g. from a manifest) overrides the header's count
    for the truncation check. Raises :class:`Unusable` for every input problem.
    """
    import av

    path = Path(path)
    with _open(path) as container:
        if len(container.streams) == 0:
            raise Unusable("zero frames", "the container holds no stream")
        if not container.streams.video:
            raise Unusable("no video stream", "the file has no video stream")
        stream = container.streams.video[0]
        native_fps = _rate(stream)
        if start is None and end is None and expected_frames is None:
            expected_frames = _header_frame_count(container, stream, native_fps)
        keep_all = keeps_native_rate(cfg.fps, native_fps)
        sampler = None if keep_all else TimeResampler(cfg.fps)
        half = 0.5 / native_fps if native_fps > 0 else TIME_EPS
        if start is not None and start > 0 and stream.time_base:
            # Jump near the segment (LeRobot stores many episodes per file); frames before
            # `start` are still decoded from the preceding keyframe and dropped below.
            container.seek(int(max(start - 1.0, 0.0) / stream.time_base), stream=stream,
                           backward=True)
        out: list[np.ndarray] = []
        n_native = 0
        prev = None
        first_time = last_time = None
        try:
            for frame in container.decode(stream):
                time = frame.time
                if time is None:  # no pts: assume a constant rate
                    step = 1.0 / native_fps if native_fps else 0.0
                    time = 0.0 if last_time is None else last_time + step
                if start is not None and time < start - half:
                    continue
                if end is not None and time >= end - half:
                    break
                n_native += 1
                if keep_all:
                    out.append(_convert_video_frame(frame, cfg))
                else:
                    repeats = sampler.push(time)
                    if repeats:
                        out.extend([_convert_video_frame(prev, cfg)] * repeats)
                    prev = frame
                first_time = time if first_time is None else first_time
                last_time = time
        except (av.FFmpegError, OSError, ValueError) as e:
            raise Unusable("decode error", f"after {n_native} frames: {_ffmpeg_message(e)}") \
                from None
        if n_native == 0:
            raise Unusable("zero frames", "no frame could be decoded")
        if not keep_all:
            repeats = sampler.finish(last_time, 1.0 / native_fps)
            if repeats:
                out.extend([_convert_video_frame(prev, cfg)] * repeats)
    if expected_frames and n_native < truncation_threshold(expected_frames):
        raise Unusable("truncated", f"decoded {n_native} of {expected_frames} frames")
    if native_fps <= 0 and n_native > 1 and last_time > first_time:
        native_fps = (n_native - 1) / (last_time - first_time)  # no rate in the header
    fps = native_fps if keep_all else cfg.fps
    return Clip(np.stack(out), float(fps), float(native_fps), n_native)


_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(_IMAGE_EXTENSIONS) and not name.startswith(".")


def frame_sort_key(name: str) -> tuple[int, str]:
    """Natural order of frame files: "2.png" < "10.png"; "000001.jpg" style works too."""
    digits = re.findall(r"\d+", Path(name).stem)
    return (int(digits[-1]) if digits else -1, name)


def load_image(source, cfg: VideoSourceConfig, name: str) -> np.ndarray:
    """One image file (path or bytes buffer) -> (size, size, 3) uint8, same geometry as video."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as im:
            im = im.convert("RGB")
            rw, rh, x0, y0 = square_geometry(im.width, im.height, cfg.image_size, cfg.crop)
            # BOX = area average when shrinking, like swscale's AREA for videos.
            im = im.resize((rw, rh), Image.Resampling.BOX if rw <= im.width else
                           Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise Unusable("decode error", f"frame {name}: {e}") from None
    return np.ascontiguousarray(arr[y0:y0 + cfg.image_size, x0:x0 + cfg.image_size])


def select_frames(n: int, native_fps: float, cfg: VideoSourceConfig) -> tuple[np.ndarray, float]:
    """Indices of frames kept from ``n`` frames at a constant ``native_fps``, and the rate."""
    if keeps_native_rate(cfg.fps, native_fps):
        return np.arange(n, dtype=np.int64), float(native_fps)
    times = np.arange(n, dtype=np.float64) / native_fps
    return resample_indices(times, cfg.fps, 1.0 / native_fps), float(cfg.fps)


def decode_image_files(files: list[Path], native_fps: float, cfg: VideoSourceConfig, *,
                       expected_frames: int | None = None) -> Clip:
    """A folder of frame images (already in time order) at ``native_fps`` -> :class:`Clip`."""
    n = len(files)
    if n == 0:
        raise Unusable("zero frames", "the folder holds no frame images")
    if expected_frames and n < truncation_threshold(expected_frames):
        raise Unusable("truncated", f"found {n} of {expected_frames} frames")
    keep, fps = select_frames(n, native_fps, cfg)
    cache: dict[int, np.ndarray] = {}
    out = []
    for i in keep.tolist():
        if i not in cache:
            cache = {i: load_image(files[i], cfg, files[i].name)}
        out.append(cache[i])
    return Clip(np.stack(out), fps, float(native_fps), n)
