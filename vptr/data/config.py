"""Configs of the video data pipeline: how frames are decoded/cached, how batches are sampled.

``VideoSourceConfig`` is everything that changes the decoded pixels (and therefore keys the
frame cache); ``SamplerConfig`` is everything about drawing pretraining batches from the
cached frames. Defaults follow the ICVF release (Ghosh et al. 2023, dibyaghosh/icvf_release)
as summarised in /work/shared/specs/pretraining.md, "Sampling".
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vptr.config import helpfield
from vptr.errors import ConfigError

# Bump when decoding/resampling/resizing changes what ends up in the cache, so old caches
# are never reused for a different algorithm.
CACHE_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$VPTR_CACHE_DIR`` or ``~/.cache/vptr/frames`` (sources may live on read-only disks)."""
    env = os.environ.get("VPTR_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vptr" / "frames"


@dataclass(frozen=True)
class VideoSourceConfig:
    """Decoding, resampling, resizing and caching of a video source."""

    fps: float = helpfield(0.0, "target frame rate in Hz, frames chosen by timestamp; 0 keeps "
                                "the native rate (never upsampled: a higher target keeps every "
                                "frame)")
    image_size: int = helpfield(64, "output frames are image_size x image_size pixels (ICVF "
                                    "release: 64)")
    crop: Literal["center", "stretch"] = helpfield(
        "center", "center: resize the short side to image_size, then center-crop; stretch: "
                  "resize both sides to image_size, ignoring the aspect ratio")
    camera_keys: tuple[str, ...] = helpfield(
        (), "LeRobot datasets: camera feature keys to read, one trajectory per episode and "
            "camera (empty: all camera keys)")
    frames_fps: float = helpfield(30.0, "frame rate assumed for frame folders whose manifest "
                                        "has no fps column")
    min_frames: int = helpfield(2, "trajectories with fewer frames after resampling are "
                                   "skipped (TD needs at least s and s')")
    cache_dir: str = helpfield("", "directory of decoded-frame caches; empty: $VPTR_CACHE_DIR "
                                   "or ~/.cache/vptr/frames")
    rebuild_cache: bool = helpfield(False, "decode again even if a valid cache exists")
    decode_workers: int = helpfield(0, "parallel decoders; 0: one per CPU core (at most 8), "
                                       "1: decode serially in this thread")
    decode_pool: Literal["thread", "process"] = helpfield(
        "thread", "thread: PyAV/PIL release the GIL while decoding, no start-up cost; process: "
                  "spawned processes (the calling script needs an if __name__ == '__main__' "
                  "guard)")
    progress: bool = helpfield(True, "show a progress bar while decoding")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps >= 0):
            raise ConfigError(f"fps must be >= 0 (0 = native rate), got {self.fps}")
        if self.image_size <= 0:
            raise ConfigError(f"image_size must be > 0, got {self.image_size}")
        if self.crop not in ("center", "stretch"):
            raise ConfigError(f"crop must be 'center' or 'stretch', got {self.crop!r}")
        if not (math.isfinite(self.frames_fps) and self.frames_fps > 0):
            raise ConfigError(f"frames_fps must be > 0, got {self.frames_fps}")
        if self.min_frames < 1:
            raise ConfigError(f"min_frames must be >= 1, got {self.min_frames}")
        if self.decode_pool not in ("thread", "process"):
            raise ConfigError(f"decode_pool must be 'thread' or 'process', got "
                              f"{self.decode_pool!r}")
        if self.decode_workers < 0:
            raise ConfigError(f"decode_workers must be >= 0, got {self.decode_workers}")
        if any(not k for k in self.camera_keys):
            raise ConfigError(f"camera_keys must not contain empty names, got {self.camera_keys}")

    def cache_root(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def pixel_config(self) -> dict:
        """The fields that change decoded pixels: they (and the source) key the cache.
        (``size`` is ``image_size`` under its old name, so caches built before the rename
        stay valid.)"""
        return {"fps": self.fps, "size": self.image_size, "crop": self.crop,
                "camera_keys": list(self.camera_keys), "frames_fps": self.frames_fps,
                "min_frames": self.min_frames, "format": CACHE_FORMAT_VERSION}

    def num_decode_workers(self) -> int:
        if self.decode_workers:
            return self.decode_workers
        return max(1, min(os.cpu_count() or 1, 8))


@dataclass(frozen=True)
class SamplerConfig:
    """How pretraining batches are drawn from a frame store (ICVF release defaults)."""

    p_currgoal: float = helpfield(0.2, "probability that the outcome frame s+ is the current "
                                       "frame s (ICVF release: 0.2)")
    p_trajgoal: float = helpfield(0.5, "probability that s+ is drawn uniformly from the same "
                                       "trajectory between t and its end (ICVF release: 0.5)")
    p_randomgoal: float = helpfield(0.3, "probability that s+ is a uniformly random frame of "
                                         "the dataset (ICVF release: 0.3)")
    p_samegoal: float = helpfield(0.5, "probability that the outcome equals the intention, "
                                       "s+ = s_z (ICVF release: 0.5)")
    intent_sametraj: bool = helpfield(False, "draw the intention s_z from the observation's "
                                             "own trajectory only (the current frame with "
                                             "p_currgoal, else a later frame of it; ICVF "
                                             "release option intent_sametraj)")
    frame_skip: int = helpfield(1, "k: next_obs is the frame t+k (clipped at the trajectory "
                                   "end)")
    frame_stack: int = helpfield(1, "frames stacked along channels, oldest..newest (1-3); the "
                                    "first frame is repeated at a trajectory start")
    future_dist: Literal["geometric", "uniform"] = helpfield(
        "geometric", "distribution of the future_obs offset j >= 1: geometric with success "
                     "probability 1-future_gamma (TD-JEPA / successor features) or uniform "
                     "over the rest of the trajectory")
    future_gamma: float = helpfield(0.99, "discount of the geometric future offset: mean "
                                          "1/(1-future_gamma) before clipping")
    shift_pad: int = helpfield(0, "random-shift augmentation applied by the data loader "
                                  "(pad, then random crop; DrQ); 0: off (the trainer may call "
                                  "vptr.data.augment.random_shift itself)")
    color_jitter: float = helpfield(0.0, "colour-jitter strength s applied by the data "
                                         "loader: brightness, contrast and saturation of "
                                         "each image scaled by U(1-s, 1+s) (stacked frames "
                                         "share one draw); 0: off")

    def __post_init__(self) -> None:
        probs = {"p_currgoal": self.p_currgoal, "p_trajgoal": self.p_trajgoal,
                 "p_randomgoal": self.p_randomgoal, "p_samegoal": self.p_samegoal}
        for name, p in probs.items():
            if not (0.0 <= p <= 1.0):
                raise ConfigError(f"{name} must be in [0, 1], got {p}")
        total = self.p_currgoal + self.p_trajgoal + self.p_randomgoal
        if abs(total - 1.0) > 1e-6:
            raise ConfigError("p_currgoal + p_trajgoal + p_randomgoal must sum to 1, got "
                              f"{self.p_currgoal} + {self.p_trajgoal} + {self.p_randomgoal} "
                              f"= {total:g}")
        if self.frame_skip < 1:
            raise ConfigError(f"frame_skip must be >= 1, got {self.frame_skip}")
        if not (1 <= self.frame_stack <= 3):
            raise ConfigError(f"frame_stack must be 1, 2 or 3, got {self.frame_stack}")
        if self.future_dist not in ("geometric", "uniform"):
            raise ConfigError(f"future_dist must be 'geometric' or 'uniform', got "
                              f"{self.future_dist!r}")
        if not (0.0 <= self.future_gamma < 1.0):
            raise ConfigError(f"future_gamma must be in [0, 1), got {self.future_gamma}")
        if self.shift_pad < 0:
            raise ConfigError(f"shift_pad must be >= 0, got {self.shift_pad}")
        if not (0.0 <= self.color_jitter < 1.0):
            raise ConfigError(f"color_jitter must be in [0, 1), got {self.color_jitter}")

    @property
    def goal_probs(self) -> tuple[float, float, float]:
        return (self.p_currgoal, self.p_trajgoal, self.p_randomgoal)

    @property
    def intent_probs(self) -> tuple[float, float, float]:
        """(current, same trajectory, random) probabilities of the intention s_z."""
        if self.intent_sametraj:
            return (self.p_currgoal, 1.0 - self.p_currgoal, 0.0)
        return self.goal_probs
