"""Robot datasets: a generated LeRobotDataset read into row-aligned arrays and frame caches,
checked against LeRobot's own reader; bad datasets are refused by name."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from vptr.data.chunks import chunk_index, valid_starts
from vptr.data.config import VideoSourceConfig
from vptr.data.robot import RobotSourceConfig, open_robot_dataset
from vptr.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def robot_dir(tmp_path_factory):
    from sim.generate import RobotDataConfig, generate_robot

    cfg = RobotDataConfig(tasks=("vptr/Reach-v0",), episodes_per_task=3, image_size=32,
                          data_dir=tmp_path_factory.mktemp("data"))
    out, _ = generate_robot(cfg, log=lambda m: None)
    return out


@pytest.fixture
def source_cfg(tmp_path):
    return RobotSourceConfig(frames=VideoSourceConfig(
        image_size=32, cache_dir=str(tmp_path / "cache"), progress=False, decode_workers=1))


def test_arrays_and_frames_match_lerobots_reader(robot_dir, source_cfg):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = open_robot_dataset(robot_dir, source_cfg)
    ref = LeRobotDataset(f"vptr/{robot_dir.name}", root=robot_dir, video_backend="pyav")
    assert ds.num_episodes == 3 and int(ds.lengths.sum()) == len(ref) and ds.fps == ref.fps
    for row in (0, int(ds.offsets[1]) + 2, len(ref) - 1):
        item = ref[row]
        np.testing.assert_array_equal(ds.action[row], item["action"].numpy())
        np.testing.assert_array_equal(ds.state[row], item["observation.state"].numpy())
        assert ds.reward[row] == pytest.approx(float(item["next.reward"]))
        frame = ds.images("observation.images.front", np.array([row]))[0]
        decoded = (item["observation.images.front"].permute(1, 2, 0).numpy() * 255)
        assert np.abs(frame.astype(float) - decoded).mean() < 2.0  # same frame, codec noise
    # the scripted expert reaches the goal and the episode terminates on success
    assert ds.terminal.all() and ds.success[ds.offsets + ds.lengths - 1].all()
    assert ds.tasks and ds.task_index.tolist() == [0, 0, 0]
    assert ds.feature_names["action"][-1] == "gripper"
    stats = ds.stats()
    np.testing.assert_allclose(stats["action"]["mean"], ds.action.mean(0), rtol=1e-6)


def test_chunks_over_a_real_dataset(robot_dir, source_cfg):
    ds = open_robot_dataset(robot_dir, source_cfg)
    ep, t = valid_starts(ds.lengths, ds.terminal, h=4)
    assert len(t) == int(ds.lengths.sum())  # terminal episodes: every row starts a chunk
    idx = chunk_index(ds.offsets, ds.lengths, ds.terminal, ep, t, h=4)
    assert (idx.action_rows[~idx.action_mask] ==
            np.repeat(ds.offsets + ds.lengths - 1, 4).reshape(-1, 4)[ep][~idx.action_mask]).all()
    never = open_robot_dataset(robot_dir, dataclasses.replace(source_cfg, terminal="never"))
    ep2, _ = valid_starts(never.lengths, never.terminal, h=4)
    assert len(ep2) == int((never.lengths - 4).clip(0).sum())


def test_bad_datasets_are_refused_by_name(robot_dir, source_cfg, tmp_path):
    with pytest.raises(DataError, match=r"file-000.parquet: no feature\(s\) observation.effort"):
        open_robot_dataset(robot_dir, dataclasses.replace(source_cfg,
                                                          state_key="observation.effort"))
    with pytest.raises(DataError, match=r"no camera 'observation\.images\.wrist'"):
        open_robot_dataset(robot_dir, dataclasses.replace(
            source_cfg, camera_keys=("observation.images.wrist",)))
    bad = tmp_path / "nan"
    shutil.copytree(robot_dir, bad)
    data_file = next((bad / "data").rglob("*.parquet"))
    table = pq.read_table(data_file).to_pandas()
    row = int(np.flatnonzero(table["episode_index"] == 1)[3])
    table.at[row, "action"] = np.array([np.nan] * 5, np.float32)
    import pyarrow as pa

    pq.write_table(pa.Table.from_pandas(table, schema=pq.read_schema(data_file)), data_file)
    with pytest.raises(DataError, match=r"'action' has NaN or Inf in episode 1"):
        open_robot_dataset(bad, source_cfg)
    with pytest.raises(ConfigError, match="resampling"):
        RobotSourceConfig(frames=VideoSourceConfig(fps=10))


def test_chunk_batches_hold_the_dataset_rows(robot_dir, source_cfg):
    import torch

    from vptr.data.batch import stack_frames
    from vptr.data.chunk_sampler import ChunkSampler

    ds = open_robot_dataset(robot_dir, source_cfg)
    sampler = ChunkSampler(ds, h=4, discount=0.9, frame_stack=2, seed=3)
    batch = sampler.sample(16, step=5)
    again = sampler.sample(16, step=5)
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # reproducible by step
    cam = "obs.observation.images.front"
    assert batch["actions"].shape == (16, 4, 5) and batch[cam].shape == (16, 6, 32, 32)
    # an episode's last row starts a chunk of one real action: padded, masked, m = 0
    last = sampler.batch(np.array([1]), np.array([int(ds.lengths[1]) - 1]))
    row = int(ds.offsets[1] + ds.lengths[1] - 1)
    assert last["action_mask"][0].tolist() == [True, False, False, False]
    assert torch.equal(last["actions"][0], torch.from_numpy(ds.action[[row] * 4]))
    assert last["chunk_reward"][0].item() == pytest.approx(float(ds.reward[row]))
    assert last["bootstrap_mask"][0].item() == 0.0
    for i in range(16):
        e, t = int(batch["episode"][i]), int(batch["t"][i])
        rows = ds.offsets[e] + np.minimum(t + np.arange(4), ds.lengths[e] - 1)
        np.testing.assert_array_equal(batch["actions"][i].numpy(), ds.action[rows])
        valid = t + np.arange(4) < ds.lengths[e]
        want = sum(0.9**k * ds.reward[r] for k, r in enumerate(rows) if valid[k])
        assert batch["chunk_reward"][i].item() == pytest.approx(want, rel=1e-5)
        frames = ds.cameras["observation.images.front"].trajectory(e)
        assert torch.equal(batch[cam][i], torch.from_numpy(stack_frames(frames, 2)[t]))
        next_t = min(t + 4, int(ds.lengths[e]) - 1)
        assert torch.equal(batch["next_obs.observation.images.front"][i],
                           torch.from_numpy(stack_frames(frames, 2)[next_t]))
