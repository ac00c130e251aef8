"""Decoding: frame counts per container, timestamp resampling, resize/crop geometry."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from vptr_data_synth import frame_number, write_frame_folder, write_video

from vptr.data.decode import (
    TimeResampler,
    Unusable,
    decode_image_files,
    decode_video,
    resample_indices,
    square_geometry,
    truncation_threshold,
)


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".mkv", ".avi"])
def test_decode_counts_fps_and_shape_per_container(tmp_path, cfg, ext):
    path = write_video(tmp_path / f"v{ext}", 20, fps=10)
    clip = decode_video(path, cfg)
    assert clip.frames.shape == (20, 16, 16, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == 10 and clip.native_fps == 10 and clip.native_frames == 20
    # Frames come out in order, unchanged in content (brightness encodes the frame number).
    assert [frame_number(f) for f in clip.frames] == list(range(20))


def test_resampling_by_timestamp_picks_the_frame_shown_at_each_tick(tmp_path, cfg):
    path = write_video(tmp_path / "v.mp4", 30, fps=30)
    clip = decode_video(path, dataclasses.replace(cfg, fps=10))
    assert clip.fps == 10 and clip.native_frames == 30
    assert [frame_number(f) for f in clip.frames] == list(range(0, 30, 3))
    # 25 frames at 30 fps last 0.833 s: ticks 0, 0.1, ..., 0.8 -> 9 frames.
    path = write_video(tmp_path / "w.mp4", 25, fps=30)
    clip = decode_video(path, dataclasses.replace(cfg, fps=10))
    assert len(clip.frames) == 9
    # 7.5 fps from 30: every 4th frame.
    clip = decode_video(path, dataclasses.replace(cfg, fps=7.5))
    assert [frame_number(f) for f in clip.frames] == [0, 4, 8, 12, 16, 20, 24]


def test_never_upsamples(tmp_path, cfg):
    path = write_video(tmp_path / "v.webm", 12, fps=10)
    clip = decode_video(path, dataclasses.replace(cfg, fps=25))
    assert len(clip.frames) == 12 and clip.fps == 10


def test_resampler_picks_the_last_frame_shown_at_each_tick():
    rng = np.random.default_rng(0)
    for _ in range(20):
        native = rng.choice([10.0, 24.0, 29.97, 30.0, 60.0])
        target = float(rng.uniform(1, native))
        n = int(rng.integers(1, 80))
        times = np.arange(n) / native + 3.0  # a start offset must not matter
        idx = resample_indices(times, target, 1 / native)
        expected_count = int(np.ceil(n / native * target - 1e-9))
        assert abs(len(idx) - expected_count) <= 1
        assert np.all(np.diff(idx) >= 1) and idx[0] == 0 and idx[-1] <= n - 1
        # each chosen frame is the last one shown at or before its tick
        ticks = times[0] + np.arange(len(idx)) / target
        assert np.all(times[idx] <= ticks + 1e-4)
        later = np.minimum(idx + 1, n - 1)
        assert np.all((later == idx) | (times[later] > ticks - 1e-4))
    # Frames every 0.4 s, ticks every 0.5 s: push returns the ticks served by the previous
    # frame (0 -> tick 0, 0.4 -> tick 0.5, 0.8 -> tick 1.0); the last frame serves 1.5.
    r = TimeResampler(2.0)
    assert [r.push(t) for t in (0.0, 0.4, 0.8, 1.2)] == [0, 1, 1, 1]
    assert r.finish(1.2, 0.4) == 1
    r = TimeResampler(1.0)
    assert [r.push(t) for t in (0.0, 0.4, 0.8, 1.2)] == [0, 1, 0, 1]  # tick 1.0 -> frame 0.8
    assert r.finish(1.2, 0.4) == 0


def test_square_geometry_center_crop_and_stretch():
    assert square_geometry(48, 32, 16, "center") == (24, 16, 4, 0)
    assert square_geometry(32, 64, 16, "center") == (16, 32, 0, 8)
    assert square_geometry(1920, 1080, 64, "center") == (114, 64, 25, 0)
    assert square_geometry(48, 32, 16, "stretch") == (16, 16, 0, 0)


def test_center_crop_removes_the_sides_and_stretch_keeps_them(tmp_path, cfg):
    img = np.zeros((32, 48, 3), np.uint8)
    img[:, :8, 0] = 255       # red left band, cropped away by a center crop
    img[:, 8:40, 1] = 255     # green middle
    img[:, 40:, 2] = 255      # blue right band
    path = write_video(tmp_path / "wide.mp4", 3, width=48, height=32, frames=[img] * 3)
    center = decode_video(path, cfg).frames[0].astype(int)
    assert center.shape == (16, 16, 3)
    assert center[..., 1].mean() > 200 and center[..., 0].mean() < 40
    assert center[..., 2].mean() < 40
    stretch = decode_video(path, dataclasses.replace(cfg, crop="stretch")).frames[0].astype(int)
    assert stretch[:, :2, 0].mean() > 150 and stretch[:, -2:, 2].mean() > 150


def test_truncation_detected_from_expected_count(tmp_path, cfg):
    path = write_video(tmp_path / "v.mkv", 10)
    assert len(decode_video(path, cfg, expected_frames=11).frames) == 10  # within slack
    with pytest.raises(Unusable) as e:
        decode_video(path, cfg, expected_frames=20)
    assert e.value.category == "truncated" and "10 of 20" in e.value.detail
    assert truncation_threshold(20) == 18 and truncation_threshold(1000) == 980


def test_segment_decoding_uses_timestamps(tmp_path, cfg):
    path = write_video(tmp_path / "v.mp4", 30, fps=10)
    clip = decode_video(path, cfg, start=1.2, end=2.7, expected_frames=15)
    assert [frame_number(f) for f in clip.frames] == list(range(12, 27))


def test_frame_folder_decode_and_resample(tmp_path, cfg):
    folder = write_frame_folder(tmp_path / "f", 12, width=40, height=32)
    files = sorted(folder.iterdir(), key=lambda p: int(p.stem))
    clip = decode_image_files(files, 10.0, cfg)
    assert clip.frames.shape == (12, 16, 16, 3)
    assert [frame_number(f) for f in clip.frames] == list(range(12))
    clip = decode_image_files(files, 10.0, dataclasses.replace(cfg, fps=5))
    assert [frame_number(f) for f in clip.frames] == [0, 2, 4, 6, 8, 10] and clip.fps == 5
    (folder / "5.png").write_bytes(b"not a png")
    with pytest.raises(Unusable) as e:
        decode_image_files(files, 10.0, cfg)
    assert e.value.category == "decode error" and "5.png" in e.value.detail


def test_decoding_from_threads_is_safe(tmp_path, cfg):
    paths = [write_video(tmp_path / f"v{i}.mp4", 10 + i) for i in range(4)]
    expected = [decode_video(p, cfg).frames for p in paths]
    results: dict[int, np.ndarray] = {}

    def work(i):
        results[i] = decode_video(paths[i % 4], cfg).frames

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        np.testing.assert_array_equal(results[i], expected[i % 4])
