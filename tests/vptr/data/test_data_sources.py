"""Sources: video folders, manifests (ours, VIP/R3M), frame folders, LeRobot; bad inputs."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest
from vptr_data_synth import (
    frame_number,
    make_lerobot,
    write_frame_folder,
    write_manifest,
    write_video,
)

from vptr.data import readers
from vptr.data.cache import open_video_source
from vptr.data.readers import list_source, skip_summary
from vptr.errors import ConfigError, DataError, UnknownNameError


def test_video_folder_is_searched_recursively_and_hidden_files_ignored(tmp_path, cfg):
    src = tmp_path / "videos"
    write_video(src / "a.mp4", 12)
    write_video(src / "deep" / "er" / "b.webm", 10)
    write_video(src / "c.MKV", 8)
    write_video(src / "d.avi", 6)
    (src / "notes.txt").write_text("not a video")
    (src / "._a.mp4").write_bytes(os.urandom(100))  # macOS resource fork
    (src / ".git").mkdir()
    (src / ".git" / "x.mp4").write_bytes(os.urandom(100))
    store = open_video_source(src, cfg)
    assert sorted(store.sources) == ["a.mp4", "c.MKV", "d.avi", "deep/er/b.webm"]
    assert dict(zip(store.sources, store.lengths.tolist())) == {
        "a.mp4": 12, "c.MKV": 8, "d.avi": 6, "deep/er/b.webm": 10}
    assert store.frames.shape == (36, 16, 16, 3) and store.skipped == []
    assert np.all(store.fps == 10)
    # a single file is a source too
    assert open_video_source(src / "a.mp4", cfg).lengths.tolist() == [12]


def _bad_folder(tmp_path):
    src = tmp_path / "mixed"
    good = [write_video(src / f"good{i}.mp4", 10 + i) for i in range(3)]
    write_video(src / "nested" / "good3.webm", 10)
    (src / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    data = good[0].read_bytes()
    (src / "cut.mp4").write_bytes(data[: len(data) // 2])  # moov index at the end is lost
    fast = write_video(tmp_path / "fast.mp4", 20, options={"movflags": "+faststart"})
    data = fast.read_bytes()
    (src / "cut_faststart.mp4").write_bytes(data[: int(len(data) * 0.6)])
    webm = write_video(tmp_path / "long.webm", 20).read_bytes()
    (src / "cut.webm").write_bytes(webm[: int(len(webm) * 0.5)])
    write_video(src / "zero.mkv", 0)
    (src / "empty.mp4").write_bytes(b"")
    (src / "locked").mkdir()
    write_video(src / "locked" / "hidden_inside.mp4", 10)
    return src


def test_bad_inputs_are_skipped_and_counted_with_reasons(tmp_path, cfg, monkeypatch, caplog):
    src = _bad_folder(tmp_path)
    real_scandir = os.scandir

    def scandir(path):  # root bypasses chmod, so simulate an unreadable folder
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(readers.os, "scandir", scandir)
    with caplog.at_level("WARNING", logger="vptr.data"):
        store = open_video_source(src, cfg)
    assert sorted(store.sources) == ["good0.mp4", "good1.mp4", "good2.mp4", "nested/good3.webm"]
    by_path = {os.path.basename(s.path): s.category for s in store.skipped}
    assert by_path == {"random.mp4": "not a video", "cut.mp4": "truncated or corrupt",
                       "cut_faststart.mp4": by_path["cut_faststart.mp4"],
                       "cut.webm": "truncated", "zero.mkv": "zero frames",
                       "empty.mp4": "zero frames", "locked": "unreadable"}
    # A cut faststart mp4 keeps its index: the decoder errors or comes up short.
    assert by_path["cut_faststart.mp4"] in ("truncated", "decode error")
    assert store.skip_counts()["zero frames"] == 2
    summary = store.skip_summary()
    assert summary.startswith("skipped 7 of 11 videos: ")
    assert "not a video (random.mp4: Invalid data found when processing input)" in summary
    assert "unreadable (" in summary and "locked: Permission denied" in summary
    assert summary in caplog.text
    # the reasons survive the cache: a second open reports the same without decoding
    again = open_video_source(src, cfg)
    assert again.skip_summary() == summary


def test_nothing_usable_raises_one_clear_data_error(tmp_path, cfg):
    src = tmp_path / "junk"
    src.mkdir()
    (src / "a.mp4").write_bytes(os.urandom(3000))
    (src / "b.webm").write_bytes(b"")
    with pytest.raises(DataError) as e:
        open_video_source(src, cfg)
    msg = str(e.value)
    assert msg.startswith(f"no usable videos in {src.resolve()}: skipped 2 of 2 videos")
    assert not list((tmp_path / "cache").glob("*")) or not any(
        (p / "index.json").exists() for p in (tmp_path / "cache").iterdir())
    with pytest.raises(DataError, match="video source not found"):
        open_video_source(tmp_path / "nope", cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no video files"):
        open_video_source(tmp_path / "empty", cfg)


def test_our_manifest_format(tmp_path, cfg):
    root = tmp_path / "gen"
    write_video(root / "videos" / "episode_000000.mp4", 20, fps=20)
    write_video(root / "videos" / "episode_000001.mp4", 16, fps=20)
    write_video(root / "videos" / "episode_000002.mp4", 10, fps=20)
    write_video(root / "videos" / "not_listed.mp4", 10, fps=20)
    write_manifest(root / "manifest.csv", ["path", "num_frames", "fps", "width", "height", "text"],
                   [["videos/episode_000000.mp4", 20, 20, 32, 32, "push the red block"],
                    ["videos/episode_000001.mp4", 16, 20, 32, 32, "open, then close"],
                    ["videos/episode_000002.mp4", 40, 20, 32, 32, "claims 40 frames"],
                    ["videos/episode_000003.mp4", 20, 20, 32, 32, "missing"],
                    ["", 20, 20, 32, 32, "no path"]])
    store = open_video_source(root, dataclasses.replace(cfg, fps=10))
    assert store.sources == ["videos/episode_000000.mp4", "videos/episode_000001.mp4"]
    assert store.texts == ["push the red block", "open, then close"]
    assert store.lengths.tolist() == [10, 8] and store.fps.tolist() == [10.0, 10.0]
    assert [frame_number(f) for f in store.trajectory(0)] == list(range(0, 20, 2))
    cats = {s.path: s.category for s in store.skipped}
    assert cats == {"videos/episode_000002.mp4": "truncated",
                    "videos/episode_000003.mp4": "missing file",
                    "manifest.csv:6": "bad manifest row"}
    assert "of 5 manifest rows" in store.skip_summary()
    # the manifest file itself can be given, and a kind prefix overrides detection
    assert len(open_video_source(root / "manifest.csv", cfg)) == 2
    assert len(open_video_source(f"videos:{root}", cfg)) == 4


def test_manifest_without_path_column_is_a_data_error(tmp_path, cfg):
    write_manifest(tmp_path / "manifest.csv", ["file", "frames"], [["a.mp4", 3]])
    with pytest.raises(DataError, match=r"manifest.csv: manifest has no 'path' column "
                                        r"\(columns: file, frames\)"):
        open_video_source(tmp_path, cfg)


def test_vip_r3m_style_manifest_of_frame_folders(tmp_path, cfg):
    # VIP / R3M read Ego4D as frame folders of 000000.jpg... listed as path,len,txt with
    # absolute paths (VIP writes them with a trailing slash).
    frames = tmp_path / "ego4d_frames"
    a = write_frame_folder(frames / "clip_a", 12, width=48, height=32, name="{i:06d}.jpg")
    b = write_frame_folder(frames / "clip_b", 9, name="{i:06d}.jpg")
    write_manifest(tmp_path / "manifest.csv", ["path", "len", "txt"],
                   [[f"{a}/", 10, "#C C opens the drawer"], [str(b), 9, "#C C cuts a tomato"],
                    [str(frames / "clip_gone"), 5, "#C C leaves"]])
    store = open_video_source(tmp_path / "manifest.csv", dataclasses.replace(cfg, frames_fps=30))
    assert store.lengths.tolist() == [10, 9]  # len caps the folder, as VIP/R3M index < len
    assert store.texts == ["#C C opens the drawer", "#C C cuts a tomato"]
    assert store.fps.tolist() == [30.0, 30.0]
    assert [frame_number(f) for f in store.trajectory(1)] == list(range(9))
    assert [s.category for s in store.skipped] == ["missing file"]


def test_frame_folders_without_manifest(tmp_path, cfg):
    # VIP's custom-dataset layout: root/video0/0.png, 1.png, ... (natural number order)
    write_frame_folder(tmp_path / "vip" / "video0", 12)
    write_frame_folder(tmp_path / "vip" / "video1", 6)
    store = open_video_source(tmp_path / "vip", dataclasses.replace(cfg, frames_fps=10, fps=5))
    assert store.index["kind"] == "frames"
    assert store.sources == ["video0", "video1"] and store.lengths.tolist() == [6, 3]
    assert [frame_number(f) for f in store.trajectory(0)] == [0, 2, 4, 6, 8, 10]


def test_unknown_source_kind_is_a_config_error(tmp_path, cfg):
    with pytest.raises(UnknownNameError, match="unknown video source kind 'vidoes'"):
        list_source(f"vidoes:{tmp_path}", cfg)


def test_skip_summary_format():
    skips = [readers.Skip("a.mp4", "not a video", "Invalid data"),
             readers.Skip("b.mp4", "missing file"), readers.Skip("c.mp4", "not a video", "x")]
    assert skip_summary(skips, 40, "videos") == (
        "skipped 3 of 40 videos: 2 not a video (a.mp4: Invalid data; +1 more), "
        "1 missing file (b.mp4)")


@pytest.fixture(scope="module")
def lerobot_video_root(tmp_path_factory):
    return make_lerobot(tmp_path_factory.mktemp("lr") / "tiny", [12, 15], fps=10)


def test_lerobot_video_dataset_one_trajectory_per_episode_and_camera(lerobot_video_root, cfg):
    store = open_video_source(lerobot_video_root, cfg)
    assert store.index["kind"] == "lerobot"
    assert store.sources == ["episode_000000/observation.images.front",
                             "episode_000000/observation.images.wrist",
                             "episode_000001/observation.images.front",
                             "episode_000001/observation.images.wrist"]
    assert store.lengths.tolist() == [12, 12, 15, 15]
    assert store.texts == ["task 0", "task 0", "task 1", "task 1"]
    assert np.all(store.fps == 10)
    # episodes share one mp4 per camera: each segment starts at its own first frame
    assert [frame_number(f) for f in store.trajectory(2)] == list(range(15))
    wrist = store.trajectory(3).astype(int)
    assert abs(wrist[0, :4, :4].mean() - 255) < 6  # the wrist camera is the inverted image
    only = open_video_source(lerobot_video_root,
                             dataclasses.replace(cfg, camera_keys=("observation.images.wrist",),
                                                 fps=5))
    assert only.lengths.tolist() == [6, 8] and len(only) == 2
    with pytest.raises(ConfigError, match=r"unknown camera key .* 'observation\.images\.top'"):
        open_video_source(lerobot_video_root,
                          dataclasses.replace(cfg, camera_keys=("observation.images.top",)))


def test_lerobot_missing_video_file_is_skipped(lerobot_video_root, tmp_path, cfg):
    root = tmp_path / "copy"
    shutil.copytree(lerobot_video_root, root)
    shutil.rmtree(root / "videos" / "observation.images.wrist")
    store = open_video_source(f"lerobot:{root}", cfg)
    assert len(store) == 2 and store.skip_counts() == {"missing file": 2}


def test_lerobot_image_dataset(tmp_path, cfg):
    root = make_lerobot(tmp_path / "img", [5, 7], use_videos=False)
    store = open_video_source(root, cfg)
    assert store.lengths.tolist() == [5, 5, 7, 7]
    assert [frame_number(f) for f in store.trajectory(2)] == list(range(7))
