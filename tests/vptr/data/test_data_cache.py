"""Frame cache: round trip, no re-decoding, invalidation, atomic builds, pool, pickling."""

from __future__ import annotations

import dataclasses
import os
import pickle
import socket

import numpy as np
import pytest
from vptr_data_synth import write_video

from vptr.data import cache as cache_mod
from vptr.data.cache import FrameStore, open_video_source
from vptr.data.decode import decode_video
from vptr.data.sampling import split_trajectories
from vptr.errors import ConfigError


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src"
    for i, n in enumerate([12, 9, 15, 7]):
        write_video(src / f"v{i}.mp4", n, width=40, height=32)
    return src


@pytest.fixture
def decode_calls(monkeypatch):
    calls = []
    real = cache_mod.decode_item

    def counting(item, cfg):
        calls.append(item.label)
        return real(item, cfg)

    monkeypatch.setattr(cache_mod, "decode_item", counting)
    return calls


def _complete_caches(root):
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_cache_round_trip_equals_direct_decode(source, cfg):
    store = open_video_source(source, cfg)
    assert isinstance(store.frames, np.memmap) and store.frames.dtype == np.uint8
    for i, name in enumerate(store.sources):
        np.testing.assert_array_equal(store.trajectory(i), decode_video(source / name, cfg).frames)
    assert store.offsets.tolist() == [0, 12, 21, 36] and store.num_frames == 43
    index = store.index
    assert index["config"]["size"] == 16 and index["shape"] == [43, 16, 16, 3]
    assert [os.path.basename(f[0]) for f in index["fingerprint"]] == [f"v{i}.mp4" for i in range(4)]
    assert all(len(f) == 3 and f[1] > 0 and f[2] > 0 for f in index["fingerprint"])


def test_second_open_does_not_decode(source, cfg, decode_calls):
    first = open_video_source(source, cfg)
    assert len(decode_calls) == 4
    mtime = (first.path / "frames.u8").stat().st_mtime_ns
    second = open_video_source(source, cfg)
    assert len(decode_calls) == 4  # nothing decoded again
    assert second.path == first.path and (second.path / "frames.u8").stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(np.asarray(second.frames), np.asarray(first.frames))
    # rebuild_cache forces a decode
    open_video_source(source, dataclasses.replace(cfg, rebuild_cache=True))
    assert len(decode_calls) == 8


def test_changed_sources_or_settings_rebuild(source, cfg, decode_calls):
    store = open_video_source(source, cfg)
    write_video(source / "v1.mp4", 20, width=40, height=32)  # edited: new size and mtime
    again = open_video_source(source, cfg)
    assert len(decode_calls) == 8 and again.lengths.tolist() == [12, 20, 15, 7]
    assert again.path == store.path  # same key, replaced in place
    bigger = open_video_source(source, dataclasses.replace(cfg, image_size=24))
    assert bigger.path != store.path and bigger.image_size == (24, 24)
    assert len(_complete_caches(store.path.parent)) == 2
    # a damaged cache (frames file cut) is detected and rebuilt
    with open(store.path / "frames.u8", "r+b") as fh:
        fh.truncate(100)
    fixed = open_video_source(source, cfg)
    assert fixed.num_frames == 54 and len(decode_calls) == 16


def test_interrupted_build_is_never_taken_for_a_cache(source, cfg, monkeypatch):
    real = cache_mod.decode_item
    seen = []

    def dies_on_third(item, c):
        seen.append(item)
        if len(seen) == 3:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of a build
        return real(item, c)

    monkeypatch.setattr(cache_mod, "decode_item", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        open_video_source(source, cfg)
    root = cfg.cache_root()
    assert list(root.iterdir()) == []  # no cache, no leftover temporary folder
    # a build killed without cleanup leaves a hidden temp folder: ignored and removed
    monkeypatch.setattr(cache_mod, "decode_item", real)
    name = cache_mod.cache_name(cache_mod.list_source(source, cfg), cfg)
    dead = root / f".{name}.tmp-{socket.gethostname()}-999999999-deadbeef"
    dead.mkdir()
    (dead / "frames.u8").write_bytes(b"\0" * 10)
    store = open_video_source(source, cfg)
    assert store.num_frames == 43 and not dead.exists()
    assert _complete_caches(root) == [name]


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_parallel_decoding_matches_serial(source, cfg, pool):
    one = open_video_source(source, cfg)
    two = open_video_source(source, dataclasses.replace(cfg, decode_workers=2, decode_pool=pool,
                                                        rebuild_cache=True))
    assert two.sources == one.sources
    np.testing.assert_array_equal(np.asarray(two.frames), np.asarray(one.frames))


def test_store_pickles_without_frames_and_reopens(source, cfg):
    store = open_video_source(source, cfg)
    _ = store.frames  # mapped
    blob = pickle.dumps(store)
    assert len(blob) < store.frames.nbytes / 2
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.trajectory(2), store.trajectory(2))
    direct = FrameStore.open(store.path)
    assert direct.lengths.tolist() == store.lengths.tolist()


def test_split_is_deterministic_disjoint_and_covers(source, cfg):
    train_ids, val_ids = split_trajectories(10, 0.3, seed=1)
    again = split_trajectories(10, 0.3, seed=1)
    assert train_ids.tolist() == again[0].tolist() and val_ids.tolist() == again[1].tolist()
    assert len(val_ids) == 3 and sorted([*train_ids, *val_ids]) == list(range(10))
    assert split_trajectories(100, 0.3, seed=2)[1].tolist() != \
        split_trajectories(100, 0.3, seed=1)[1].tolist()
    tail = split_trajectories(10, 0.2, shuffle=False)
    assert tail[1].tolist() == [8, 9]
    assert [len(v) for _, v in (split_trajectories(3, 0.01), split_trajectories(1, 0.5))] == [1, 0]
    with pytest.raises(ConfigError):
        split_trajectories(10, 1.0)
    store = open_video_source(source, cfg)
    train, val = store.split(0.25, seed=0)
    assert len(train) == 3 and len(val) == 1
    assert set(train.sources) | set(val.sources) == set(store.sources)
    k = int(val.traj_ids[0])
    np.testing.assert_array_equal(val.trajectory(0), store.trajectory(k))
    assert val.num_frames == store.lengths[k]
