"""Tiny synthetic videos, frame folders, manifests and LeRobot datasets for the data tests.

Frame i of a synthetic video is filled with gray level ``LEVEL * i`` (so the frame a
resampler picked can be read back from its brightness) plus a white square moving right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LEVEL = 8
CODECS = {".mp4": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4"}


def synthetic_frame(i: int, width: int = 32, height: int = 32) -> np.ndarray:
    img = np.full((height, width, 3), min(255, LEVEL * i), np.uint8)
    x = (2 * i) % max(1, width - 8)
    img[height - 10:height - 4, x:x + 6] = 255
    return img


def frame_number(frame: np.ndarray) -> int:
    """Recover i from a decoded synthetic frame (top-left corner brightness)."""
    h = max(1, frame.shape[0] // 4)
    return round(float(frame[:h, :h].mean()) / LEVEL)


def write_video(path: Path, n: int, fps: int = 10, width: int = 32, height: int = 32,
                frames: list[np.ndarray] | None = None, options: dict | None = None) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(CODECS[path.suffix.lower()], rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        if path.suffix.lower() in (".mp4", ".mkv"):
            s.options = {"crf": "10"}  # near-lossless: brightness decodes back within +-2
        else:
            s.bit_rate = 4_000_000
        if n == 0:
            c.start_encoding()
        for i in range(n):
            img = frames[i] if frames is not None else synthetic_frame(i, width, height)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_frame_folder(folder: Path, n: int, width: int = 32, height: int = 32,
                       name: str = "{i}.png") -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(synthetic_frame(i, width, height)).save(folder / name.format(i=i))
    return folder


def write_manifest(path: Path, header: list[str], rows: list[list]) -> Path:
    import csv

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def make_lerobot(root: Path, episodes: list[int], fps: int = 10, use_videos: bool = True,
                 size: int = 32) -> Path:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dtype = "video" if use_videos else "image"
    features = {
        "observation.images.front": {"dtype": dtype, "shape": (size, size, 3),
                                     "names": ["height", "width", "channels"]},
        "observation.images.wrist": {"dtype": dtype, "shape": (size, size, 3),
                                     "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (2,), "names": None},
        "action": {"dtype": "float32", "shape": (2,), "names": None},
    }
    ds = LeRobotDataset.create(repo_id="test/tiny", root=root, fps=fps, features=features,
                               use_videos=use_videos, video_backend="pyav")
    for ep, n in enumerate(episodes):
        for i in range(n):
            img = synthetic_frame(i, size, size)
            ds.add_frame({"observation.images.front": img,
                          "observation.images.wrist": 255 - img,
                          "observation.state": np.zeros(2, np.float32),
                          "action": np.full(2, i, np.float32), "task": f"task {ep}"})
        ds.save_episode()
    ds.finalize()
    return root

