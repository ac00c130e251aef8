"""Batches: the pretraining batch contract, random shift, determinism, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from vptr_data_synth import write_video

from vptr.data.augment import color_jitter_numpy, jitter_factors, random_shift, shift_gather, shift_numpy
from vptr.data.batch import FLAG_KEYS, IMAGE_KEYS, INDEX_KEYS, INT_KEYS, stack_frames
from vptr.data.cache import open_video_source
from vptr.data.config import SamplerConfig, VideoSourceConfig
from vptr.data.loader import PretrainSampler, make_loader
from vptr.data.sampling import sample_index_batch
from vptr.errors import ConfigError, DataError

B = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loader")
    for i, n in enumerate([20, 8, 14]):
        write_video(tmp / "src" / f"v{i}.mp4", n)
    cfg = VideoSourceConfig(image_size=16, decode_workers=1, progress=False,
                            cache_dir=str(tmp / "cache"))
    return open_video_source(tmp / "src", cfg)


def _chw(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(frames)).permute(0, 3, 1, 2)


def test_batch_follows_the_contract(store):
    batch = PretrainSampler(store, SamplerConfig(), seed=0).sample(B, step=0)
    assert set(batch) == {*IMAGE_KEYS, *INT_KEYS, *FLAG_KEYS}
    assert set(INT_KEYS) == {*INDEX_KEYS.values(), "traj_index", "t", "traj_len"}
    for key in IMAGE_KEYS:
        assert batch[key].shape == (B, 3, 16, 16) and batch[key].dtype == torch.uint8
        # without augmentation each image is exactly the indexed frame of the store
        idx = batch[INDEX_KEYS[key]].numpy()
        assert torch.equal(batch[key], _chw(store.frames[idx]))
    for key in (*INDEX_KEYS.values(), "traj_index", "t", "traj_len"):
        assert batch[key].shape == (B,) and batch[key].dtype == torch.int64
    assert all(batch[k].dtype == torch.bool and batch[k].shape == (B,) for k in FLAG_KEYS)
    assert torch.equal(batch["goal_reached"], batch["obs_index"] == batch["goal_index"])
    assert torch.equal(batch["intent_reached"], batch["obs_index"] == batch["intent_index"])
    offsets = torch.from_numpy(store.offsets)[batch["traj_index"]]
    assert torch.equal(batch["obs_index"], offsets + batch["t"])
    assert torch.equal(batch["traj_len"], torch.from_numpy(store.lengths)[batch["traj_index"]])


def test_a_split_store_samples_only_its_own_trajectories(store):
    train, val = store.split(1 / 3, seed=0)
    assert len(train) == 2 and len(val) == 1
    batch = PretrainSampler(val, SamplerConfig(), seed=0).sample(256, step=0)
    start, n = int(val.offsets[0]), int(val.lengths[0])
    assert torch.all(batch["traj_index"] == 0)
    for key in INDEX_KEYS.values():  # random goals too: never a frame of another split
        assert torch.all((batch[key] >= start) & (batch[key] < start + n))
    assert torch.equal(batch["obs"], _chw(store.frames[batch["obs_index"].numpy()]))


def test_stacked_frames_oldest_to_newest_and_repeated_at_start(store):
    sampler = PretrainSampler(store, SamplerConfig(frame_stack=3), seed=1)
    batch = sampler.sample(256, step=0)
    obs, idx, t = batch["obs"], batch["obs_index"].numpy(), batch["t"].numpy()
    assert obs.shape == (256, 9, 16, 16)
    start = idx - t
    for s, back in enumerate((2, 1, 0)):  # channels 3s..3s+2 hold frame t-back (clipped)
        rows = np.maximum(idx - back, start)
        assert torch.equal(obs[:, 3 * s:3 * s + 3], _chw(store.frames[rows]))
    at_start = t == 0
    assert at_start.any()
    assert torch.equal(obs[at_start, 0:3], obs[at_start, 6:9])
    # training and evaluation stack frames the same way (one function, vptr.data.batch)
    traj = batch["traj_index"].numpy()
    for i in range(0, 256, 17):
        stacked = stack_frames(store.trajectory(int(traj[i])), 3)[int(t[i])]
        assert torch.equal(obs[i], torch.from_numpy(stacked))


def test_same_seed_and_step_give_the_same_batch(store):
    cfg = SamplerConfig(shift_pad=2, frame_stack=2)
    a = PretrainSampler(store, cfg, seed=7).sample(B, step=11)
    b = PretrainSampler(store, cfg, seed=7).sample(B, step=11)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for other in (PretrainSampler(store, cfg, seed=7).sample(B, step=12),
                  PretrainSampler(store, cfg, seed=8).sample(B, step=11),
                  PretrainSampler(store, cfg, seed=7, rank=1).sample(B, step=11)):
        assert not torch.equal(a["obs_index"], other["obs_index"])


def _assert_same_batches(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g) == set(w) and all(torch.equal(g[k], w[k]) for k in w)


def test_loader_sequence_is_the_same_for_any_worker_count_and_resumes(store):
    cfg = SamplerConfig(shift_pad=2)
    sampler = PretrainSampler(store, cfg, seed=3)
    want = [sampler.sample(B, step) for step in range(6)]
    _assert_same_batches(list(make_loader(store, cfg, B, seed=3, num_steps=6)), want)
    _assert_same_batches(list(make_loader(store, cfg, B, seed=3, num_steps=6, num_workers=2)),
                         want)
    # a run resumed at step 4 continues from its data position
    resumed = make_loader(store, cfg, B, seed=3, start_step=4, num_steps=2, num_workers=2)
    _assert_same_batches(list(resumed), want[4:])


def test_spawned_workers_reopen_the_memmap(store):
    # spawn pickles the dataset: the store travels as its index and maps the file itself
    cfg = SamplerConfig(frame_stack=2)
    loader = make_loader(store, cfg, B, seed=5, num_steps=2, num_workers=1,
                         multiprocessing_context="spawn")
    want = [PretrainSampler(store, cfg, seed=5).sample(B, step) for step in range(2)]
    _assert_same_batches(list(loader), want)


def test_random_shift_identity_shape_and_equivalence_to_pad_then_crop():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 6, 12, 12), dtype=torch.uint8, generator=gen)
    assert random_shift(x, 0) is x
    y = random_shift(x, 3, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == torch.uint8
    padded = F.pad(x.float(), (3, 3, 3, 3), mode="replicate")
    shifts = set()
    for b in range(16):
        matches = [(dy, dx) for dy in range(7) for dx in range(7)
                   if torch.equal(padded[b, :, dy:dy + 12, dx:dx + 12], y[b].float())]
        # one offset for all 6 channels (a stacked frame shifts as a whole)
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 4  # samples shift independently
    z = random_shift(x.float(), 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z, y.float())  # dtype-independent


def test_numpy_and_gather_shifts_agree():
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (10, 9, 8, 8), dtype=torch.uint8, generator=gen)
    for pad in (1, 4):
        offsets = torch.randint(0, 2 * pad + 1, (10, 2), generator=gen)
        ref = np.stack([np.pad(x[i].numpy(), ((0, 0), (pad, pad), (pad, pad)), mode="edge")
                        [:, dy:dy + 8, dx:dx + 8] for i, (dy, dx) in enumerate(offsets.tolist())])
        np.testing.assert_array_equal(shift_numpy(x.numpy(), offsets.numpy(), pad), ref)
        assert torch.equal(shift_gather(x, offsets, pad), torch.from_numpy(ref))
        assert torch.equal(shift_gather(x.float(), offsets, pad), torch.from_numpy(ref).float())


def test_loader_shift_is_independent_across_keys(store):
    cfg = SamplerConfig(shift_pad=4, p_currgoal=1.0, p_trajgoal=0.0, p_randomgoal=0.0)
    batch = PretrainSampler(store, cfg, seed=0).sample(64, step=0)
    assert batch["goal_reached"].all()  # same frames ...
    differs = (batch["obs"] != batch["goal"]).flatten(1).any(1)
    assert differs.float().mean() > 0.5  # ... shifted differently


def test_sampler_rejects_bad_arguments(store):
    with pytest.raises(ValueError):
        PretrainSampler(store).sample(0, 0)
    with pytest.raises(ValueError):
        make_loader(store, None, batch_size=0)
    with pytest.raises(DataError, match="no trajectories"):
        PretrainSampler(store.subset([]))


def test_color_jitter_by_hand_and_identity():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 6, 5, 4), dtype=np.uint8)  # 2 samples, 2 stacked frames
    ones = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(color_jitter_numpy(x, ones), x)
    # the frames of a stack share one draw: two equal frames stay equal
    same = np.concatenate([x[:, :3], x[:, :3]], axis=1)
    out = color_jitter_numpy(same, jitter_factors(rng, 2, 0.5))
    assert np.array_equal(out[:, :3], out[:, 3:]) and not np.array_equal(out, same)
    # brightness alone: x * b, clipped and rounded
    f = np.array([[1.5, 1, 1], [0.5, 1, 1]], np.float32)
    want = np.clip(np.rint(x.astype(np.float32) * f[:, :1, None, None]), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(color_jitter_numpy(x, f).astype(int), want.astype(int), atol=1)
    # contrast 0 maps each frame to its mean gray; saturation 0 makes every pixel gray
    flat = color_jitter_numpy(x, np.array([[1, 0, 1], [1, 0, 1]], np.float32))
    assert all(np.ptp(flat[i, 3 * s:3 * s + 3]) <= 1 for i in range(2) for s in range(2))
    gray = color_jitter_numpy(x, np.array([[1, 1, 0], [1, 1, 0]], np.float32)).reshape(2, 2, 3, 5, 4)
    assert np.abs(gray.astype(int) - gray[:, :, :1].astype(int)).max() <= 1
    with pytest.raises(ValueError, match="strength"):
        jitter_factors(rng, 2, 1.0)
    with pytest.raises(ValueError, match="factors"):
        color_jitter_numpy(x, np.ones((3, 3)))


def test_sampler_color_jitter_changes_appearance_not_indices_and_shares_a_stack(store):
    plain = PretrainSampler(store, SamplerConfig(frame_stack=2), seed=5).sample(B, step=3)
    cfg = SamplerConfig(frame_stack=2, color_jitter=0.4)
    a = PretrainSampler(store, cfg, seed=5).sample(B, step=3)
    b = PretrainSampler(store, cfg, seed=5).sample(B, step=3)
    assert all(torch.equal(a[k], b[k]) for k in a)  # reproducible by step
    assert torch.equal(a["obs_index"], plain["obs_index"])  # the same frames ...
    assert not torch.equal(a["obs"], plain["obs"])  # ... in other colours
    assert a["obs"].dtype == torch.uint8
    # exactly the plain batch under factors drawn after the indices, one row per image
    sampler = PretrainSampler(store, cfg, seed=5)
    rng = sampler.rng(3)
    sample_index_batch(rng, store.offsets, store.lengths, cfg, B, sampler.near_window)
    f = jitter_factors(rng, len(IMAGE_KEYS) * B, 0.4)
    for n, key in enumerate(IMAGE_KEYS):
        want = color_jitter_numpy(plain[key].numpy(), f[n * B:(n + 1) * B])
        assert np.array_equal(a[key].numpy(), want), key
    with pytest.raises(ConfigError, match="color_jitter"):
        SamplerConfig(color_jitter=1.5)
