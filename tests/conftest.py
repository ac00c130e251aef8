"""Shared fixtures. Rendering always uses OSMesa on CPU in tests.

The suite runs on two pytest-xdist workers by default (pyproject's ``-n 2 --dist loadscope
--no-loadscope-reorder``: a module's tests, and so its module fixtures, stay on one
worker); ``-n 0`` runs it in one process (e.g. for ``--pdb``). Each worker, and what it
starts, uses one torch/OpenMP thread: two workers each spinning two OpenMP threads on a
2-core machine made small steps many times slower. The modules that take longest (the
learning tests) are collected first, so that the other worker shares out the rest while
they run."""

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported, inherited by subprocesses
    os.environ["MKL_NUM_THREADS"] = "1"

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


# Longest-running modules, measured (`./run tests --durations=15`), first in this order; then
# every other module with a slow test; then the rest, each in its collected order.
LONGEST_FIRST = ("tests/vptr/train/test_learning.py", "tests/vptr/train/test_finetune_learning.py",
                 "tests/vptr/experiment/test_experiment.py", "tests/vptr/test_quickstart.py",
                 "tests/vptr/train/test_pretrain.py")


def pytest_collection_modifyitems(config, items):
    def module(item) -> str:
        return item.nodeid.split("::", 1)[0]

    slow_modules = {module(i) for i in items if i.get_closest_marker("slow")}

    def rank(item) -> int:
        m = module(item)
        if m in LONGEST_FIRST:
            return LONGEST_FIRST.index(m)
        return len(LONGEST_FIRST) + (0 if m in slow_modules else 1)

    items.sort(key=rank)  # stable: a module's tests keep their order
