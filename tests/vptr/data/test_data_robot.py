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


@pytest.fixture(scope="module")
def robomimic_file(tmp_path_factory):
    """The episodes of ``robot_dir`` (same config and seeds) written as robomimic HDF5."""
    from sim.generate import ROBOMIMIC_FILE, RobotDataConfig, generate_robot

    cfg = RobotDataConfig(tasks=("vptr/Reach-v0",), episodes_per_task=3, image_size=32,
                          format="robomimic", data_dir=tmp_path_factory.mktemp("data"))
    out, _ = generate_robot(cfg, log=lambda m: None)
    return out / ROBOMIMIC_FILE


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


def test_state_keys_are_concatenated_in_order(robot_dir, source_cfg):
    ds = open_robot_dataset(robot_dir, source_cfg)
    both = open_robot_dataset(robot_dir, dataclasses.replace(
        source_cfg, state_keys=("observation.environment_state", "observation.state"),
        state_dim=8 + ds.state.shape[1]))
    assert both.state.shape == (len(ds.action), 8 + ds.state.shape[1])
    np.testing.assert_array_equal(both.state[:, 8:], ds.state)
    assert both.feature_names["state"][:3] == ["target_pos_x", "target_pos_y", "target_pos_z"]
    assert both.feature_names["state"][8:] == ds.feature_names["state"]
    assert ds.feature_names["state"][-1] == "gripper_opening"
    assert both.state_widths == [8, ds.state.shape[1]] and ds.state_widths == [15]
    assert both.feature_names["observation.state"] == ds.feature_names["state"]
    # the Reach target (the object state) is constant over an episode and differs between
    e0, e1 = (both.state[ds.offsets[e]:ds.offsets[e] + ds.lengths[e], :3] for e in (0, 1))
    assert (e0 == e0[0]).all() and not np.array_equal(e0[0], e1[0])
    none = open_robot_dataset(robot_dir, dataclasses.replace(source_cfg, state_keys=()))
    assert none.state is None and "state" not in none.feature_names and "state" not in none.stats()


def test_robomimic_format_reads_as_the_lerobot_format(robot_dir, robomimic_file, source_cfg):
    """`vptr generate robot --format robomimic` of the same config: the same dataset."""
    import h5py

    cfg = dataclasses.replace(source_cfg, state_keys=("observation.state",
                                                      "observation.environment_state"))
    lerobot = open_robot_dataset(robot_dir, cfg)
    hdf5 = open_robot_dataset(robomimic_file, cfg)
    for field in ("lengths", "offsets", "terminal", "task_index", "state", "action", "reward",
                  "done", "success"):
        np.testing.assert_array_equal(getattr(hdf5, field), getattr(lerobot, field), field)
    assert hdf5.fps == lerobot.fps and hdf5.tasks == lerobot.tasks == ["reach the red ball"]
    assert hdf5.feature_names == lerobot.feature_names and hdf5.state_widths == [15, 8]
    assert list(hdf5.cameras) == list(lerobot.cameras) == ["observation.images.front"]
    cam = "observation.images.front"
    with h5py.File(robomimic_file) as f:  # lossless: the frame cache holds the exact images
        raw = np.concatenate([f[f"data/demo_{e}/obs/front_image"][()] for e in range(3)])
    np.testing.assert_array_equal(hdf5.cameras[cam].frames, raw)
    diff = np.abs(hdf5.cameras[cam].frames.astype(float) - lerobot.cameras[cam].frames)
    assert diff.mean() < 5.0  # the LeRobot copy went through AV1 (crf 30): ~3 grey levels
    train = open_robot_dataset(robomimic_file, dataclasses.replace(cfg, filter_key="train"))
    valid = open_robot_dataset(robomimic_file, dataclasses.replace(cfg, filter_key="valid"))
    assert train.num_episodes == 2 and valid.num_episodes == 1
    assert sorted(train.lengths.tolist() + valid.lengths.tolist()) == sorted(lerobot.lengths)


def _rewrite_parquet(folder, edit) -> None:
    """Apply ``edit(pandas frame) -> frame`` to the data file of a copied dataset."""
    import pyarrow as pa

    data_file = next((folder / "data").rglob("*.parquet"))
    schema = pq.read_schema(data_file)
    table = edit(pq.read_table(data_file).to_pandas())
    pq.write_table(pa.Table.from_pandas(table, schema=schema, preserve_index=False), data_file)


def test_nan_actions_are_refused_by_file_episode_and_step(robot_dir, source_cfg, tmp_path):
    bad = tmp_path / "nan"
    shutil.copytree(robot_dir, bad)

    def nan_action(table):
        row = int(np.flatnonzero(table["episode_index"] == 1)[3])
        table.at[row, "action"] = np.array([np.nan] * 5, np.float32)
        return table

    _rewrite_parquet(bad, nan_action)
    with pytest.raises(DataError, match=r"nan/data/chunk-000/file-000\.parquet, episode 1: "
                                         r"feature 'action' has NaN or Inf at step 3 \(1 rows"):
        open_robot_dataset(bad, source_cfg)


def test_empty_episode_is_refused(robot_dir, source_cfg, tmp_path):
    bad = tmp_path / "empty"
    shutil.copytree(robot_dir, bad)
    _rewrite_parquet(bad, lambda t: t[t["episode_index"] != 2])
    meta_file = next((bad / "meta" / "episodes").rglob("*.parquet"))
    episodes = pq.read_table(meta_file).to_pandas()
    episodes.loc[episodes["episode_index"] == 2, "length"] = 0
    import pyarrow as pa

    pq.write_table(pa.Table.from_pandas(episodes, schema=pq.read_schema(meta_file),
                                        preserve_index=False), meta_file)
    with pytest.raises(DataError, match=r"file-000\.parquet, episode 2: empty episode"):
        open_robot_dataset(bad, source_cfg)


@pytest.mark.parametrize("change, message", [
    ({"state_keys": ("observation.effort",)},
     r"file-000\.parquet, episode 0: no feature\(s\) observation\.effort \(has: "),
    ({"action_key": "actions"}, r"file-000\.parquet, episode 0: no feature\(s\) actions"),
    ({"action_dim": 7}, r"file-000\.parquet, episode 0: action 'action' has 5 values per "
                        r"row, the config expects action_dim=7"),
    ({"state_dim": 14}, r"file-000\.parquet, episode 0: state 'observation\.state' has 15 "
                        r"values per row, the config expects state_dim=14"),
    ({"fps": 10.0}, r"meta/info\.json: recorded at 20 fps \(every episode\), the config "
                    r"expects fps=10"),
    ({"camera_keys": ("observation.images.wrist",)}, r"no camera 'observation\.images\.wrist'"),
    ({"filter_key": "train"}, r"filter_key='train' selects a robomimic split"),
])
def test_mismatches_with_the_config_are_refused_by_name(robot_dir, source_cfg, change, message):
    with pytest.raises(DataError, match=message) as err:
        open_robot_dataset(robot_dir, dataclasses.replace(source_cfg, **change))
    assert str(robot_dir) in str(err.value)


def test_other_paths_are_refused(tmp_path, source_cfg):
    with pytest.raises(DataError, match="robot dataset not found"):
        open_robot_dataset(tmp_path / "nope", source_cfg)
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(DataError, match=r"a\.csv: not a robot dataset"):
        open_robot_dataset(tmp_path / "a.csv", source_cfg)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "demo.hdf5").write_bytes(b"")
    with pytest.raises(DataError, match=r"no meta/info\.json\); it holds demo\.hdf5"):
        open_robot_dataset(tmp_path / "folder", source_cfg)


@pytest.mark.parametrize("kwargs, message", [
    ({"frames": VideoSourceConfig(fps=10)}, "resampling"),
    ({"state_keys": "observation.state"}, "state_keys must be a tuple"),
    ({"state_keys": ("a", "a")}, "duplicates"),
    ({"state_keys": (), "state_dim": 3}, "state_keys is empty"),
    ({"fps": -1.0}, "fps must be >= 0"),
    ({"action_dim": -2}, "action_dim must be >= 0"),
])
def test_config_is_validated(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RobotSourceConfig(**kwargs)


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
