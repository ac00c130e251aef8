"""Shared fixtures. Rendering always uses OSMesa on CPU in tests."""

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import csv

import numpy as np
import pytest


def moving_square_video(length: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A square sliding from a random start to a random end over a noisy background."""
    frames = np.zeros((length, size, size, 3), np.uint8)
    start, end = rng.uniform(0, size - 5, 2), rng.uniform(0, size - 5, 2)
    color = rng.integers(128, 256, 3)
    for t in range(length):
        x, y = (start + (end - start) * t / max(length - 1, 1)).astype(int)
        frames[t] = rng.integers(0, 30, (size, size, 3))
        frames[t, y:y + 5, x:x + 5] = color
    return frames


def write_video_folder(root, n: int, size: int = 32, length: tuple[int, int] = (12, 24),
                       seed: int = 0, fps: float = 10.0):
    """A folder of mp4 files + manifest.csv in the layout `vptr generate video` writes."""
    from sim.generate import write_mp4

    rng = np.random.default_rng(seed)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        frames = moving_square_video(int(rng.integers(*length)), size, rng)
        name = f"videos/episode_{i:06d}.mp4"
        write_mp4(root / name, frames, fps)
        rows.append({"path": name, "num_frames": len(frames), "fps": fps, "width": size,
                     "height": size, "text": "move the square"})
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture(scope="session")
def square_videos(tmp_path_factory):
    """16 tiny synthetic videos (32x32, 12-23 frames)."""
    return write_video_folder(tmp_path_factory.mktemp("square_videos"), 16)


@pytest.fixture
def single_thread():
    """One intra-op thread: on shared 2-core machines two OpenMP threads competing with
    other processes made small training steps 30-60x slower (spin-waiting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
