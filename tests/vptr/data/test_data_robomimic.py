"""robomimic-schema HDF5 datasets: demos in number order, key mapping, splits, terminals,
images through the frame cache, and refusals that name the file, the demo and the problem."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest

from vptr.data.config import VideoSourceConfig
from vptr.data.robomimic import HDF5ImageItem, camera_path, obs_path, open_robomimic_dataset
from vptr.data.robot import RobotSourceConfig, open_robot_dataset
from vptr.errors import DataError

# demo name -> (length, success); written out of order to check the number order
DEMOS = {"demo_0": (5, True), "demo_10": (4, True), "demo_2": (6, False)}
ORDER = ["demo_0", "demo_2", "demo_10"]


def write_robomimic(path, demos=DEMOS, hw=(24, 32), dense=False, fps_attr=False,
                    control_freq=20, edit=None):
    """A small robosuite-like robomimic file: eef position, object state, one camera."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for d, (n, success) in demos.items():
            k = int(d.split("_")[1])
            g = data.create_group(d)
            g.create_dataset("actions", data=k + np.arange(n * 7).reshape(n, 7) / 100)
            rewards = np.linspace(0.1, 0.9, n) if dense else np.zeros(n)
            rewards[-1] = 1.0 if success else rewards[-1]
            g.create_dataset("rewards", data=rewards)
            g.create_dataset("dones", data=(np.arange(n) == n - 1).astype(np.int64))
            g.create_dataset("obs/robot0_eef_pos", data=np.full((n, 3), k, np.float64))
            g.create_dataset("obs/object", data=np.arange(n * 4, dtype=np.float64).reshape(n, 4))
            g.create_dataset("obs/agentview_image",
                             data=rng.integers(0, 256, (n, *hw, 3), dtype=np.uint8))
            g.attrs["num_samples"] = n
        data.attrs["total"] = sum(n for n, _ in demos.values())
        env_kwargs = {"control_freq": control_freq} if control_freq else {}
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1,
                                             "env_kwargs": env_kwargs})
        if fps_attr:
            data.attrs["fps"] = 10
        f.create_dataset("mask/train", data=np.array([b"demo_0", b"demo_10"]))
        f.create_dataset("mask/valid", data=np.array([b"demo_2"]))
        if edit is not None:
            edit(f)
    return path


@pytest.fixture
def lift_cfg(tmp_path):
    return RobotSourceConfig(
        state_keys=("robot0_eef_pos", "obs/object"), action_key="actions",
        reward_key="rewards", done_key="dones",
        frames=VideoSourceConfig(image_size=16, cache_dir=str(tmp_path / "cache"),
                                 progress=False, decode_workers=1))


def test_key_mapping():
    assert obs_path("observation.state") == obs_path("state") == "obs/state"
    assert obs_path("obs/robot0_eef_pos") == obs_path("robot0_eef_pos") == "obs/robot0_eef_pos"
    for key in ("observation.images.agentview", "obs/agentview_image", "agentview_image",
                "agentview"):
        assert camera_path(key) == "obs/agentview_image"


def test_demos_in_number_order_states_concatenated_images_resized(tmp_path, lift_cfg):
    from PIL import Image

    path = write_robomimic(tmp_path / "lift.hdf5")
    ds = open_robot_dataset(path, lift_cfg)  # dispatched on the suffix
    assert ds.lengths.tolist() == [5, 6, 4] and ds.offsets.tolist() == [0, 5, 11]
    assert ds.fps == 20 and ds.tasks == ["Lift"] and ds.task_index.tolist() == [0, 0, 0]
    with h5py.File(path) as f:
        for e, d in enumerate(ORDER):
            rows = slice(ds.offsets[e], ds.offsets[e] + ds.lengths[e])
            np.testing.assert_array_equal(ds.action[rows], f[f"data/{d}/actions"][()]
                                          .astype(np.float32))
            np.testing.assert_array_equal(ds.state[rows, :3], f[f"data/{d}/obs/robot0_eef_pos"])
            np.testing.assert_array_equal(ds.state[rows, 3:], f[f"data/{d}/obs/object"])
            # 24x32 -> 16x16: short side to 16 (box filter), centre crop, as video frames
            raw = f[f"data/{d}/obs/agentview_image"][2]
            want = np.asarray(Image.fromarray(raw).resize((21, 16), Image.Resampling.BOX))[:, 2:18]
            np.testing.assert_array_equal(
                ds.images("observation.images.agentview", np.array([ds.offsets[e] + 2]))[0], want)
    assert list(ds.cameras) == ["observation.images.agentview"]
    assert ds.cameras["observation.images.agentview"].image_size == (16, 16)
    assert ds.state_widths == [3, 4]
    assert ds.feature_names["state"] == [f"obs/robot0_eef_pos[{i}]" for i in range(3)] + [
        f"obs/object[{i}]" for i in range(4)]
    assert ds.feature_names["action"] == [f"actions[{i}]" for i in range(7)]
    assert ds.done[ds.offsets + ds.lengths - 1].all() and ds.done.sum() == 3


def test_images_of_the_configured_size_are_copied_exactly(tmp_path, lift_cfg):
    path = write_robomimic(tmp_path / "lift.hdf5", hw=(16, 16))
    ds = open_robomimic_dataset(path, lift_cfg)
    with h5py.File(path) as f:
        raw = np.concatenate([f[f"data/{d}/obs/agentview_image"][()] for d in ORDER])
    np.testing.assert_array_equal(ds.cameras["observation.images.agentview"].frames, raw)


def test_filter_key_selects_a_split(tmp_path, lift_cfg):
    path = write_robomimic(tmp_path / "lift.hdf5")
    full = open_robomimic_dataset(path, lift_cfg)
    train = open_robomimic_dataset(path, dataclasses.replace(lift_cfg, filter_key="train"))
    valid = open_robomimic_dataset(path, dataclasses.replace(lift_cfg, filter_key="valid"))
    assert train.lengths.tolist() == [5, 4] and valid.lengths.tolist() == [6]
    np.testing.assert_array_equal(valid.action, full.action[5:11])
    cam = "observation.images.agentview"
    np.testing.assert_array_equal(valid.cameras[cam].frames, full.cameras[cam].frames[5:11])
    np.testing.assert_array_equal(train.cameras[cam].frames[5:],
                                  full.cameras[cam].frames[11:])
    assert valid.cameras[cam].path != full.cameras[cam].path  # the split keys the cache
    with pytest.raises(DataError, match=r"lift\.hdf5: no filter key mask/test \(filter keys: "
                                        r"train, valid\)"):
        open_robomimic_dataset(path, dataclasses.replace(lift_cfg, filter_key="test"))


@pytest.mark.parametrize("dense", [False, True])
def test_success_is_a_reward_of_one_and_terminals_follow_the_config(tmp_path, lift_cfg, dense):
    path = write_robomimic(tmp_path / "lift.hdf5", dense=dense)
    ds = open_robomimic_dataset(path, lift_cfg)  # terminal="success", success from rewards
    np.testing.assert_array_equal(ds.success, ds.reward >= 1.0)
    assert ds.success.sum() == 2  # dense shaping below 1 is not a success
    assert ds.terminal.tolist() == [True, False, True]  # demo_2 fails
    done = open_robomimic_dataset(path, dataclasses.replace(lift_cfg, terminal="done"))
    assert done.terminal.tolist() == [True, True, True]
    never = open_robomimic_dataset(path, dataclasses.replace(lift_cfg, terminal="never",
                                                             success_key=""))
    assert not never.terminal.any() and never.success is None


def test_frame_cache_is_reused_and_rebuilt_when_the_file_changes(tmp_path, lift_cfg,
                                                                  monkeypatch):
    path = write_robomimic(tmp_path / "lift.hdf5", hw=(16, 16))
    first = open_robomimic_dataset(path, lift_cfg).cameras["observation.images.agentview"]
    assert first.trajectory(0).any()
    real = HDF5ImageItem.decode

    def fail(self, cfg):
        raise AssertionError("decoded again")

    monkeypatch.setattr(HDF5ImageItem, "decode", fail)
    again = open_robomimic_dataset(path, lift_cfg).cameras["observation.images.agentview"]
    assert again.path == first.path
    monkeypatch.setattr(HDF5ImageItem, "decode", real)

    def black(f):
        f["data/demo_0/obs/agentview_image"][...] = 0

    write_robomimic(path, hw=(16, 16), edit=black)
    edited = open_robomimic_dataset(path, lift_cfg).cameras["observation.images.agentview"]
    assert not edited.trajectory(0).any()  # decoded again from the edited file


def _nan_action(f):
    f["data/demo_2/actions"][1, 3] = np.nan


def _empty_demo(f):
    g = f["data"].create_group("demo_5")
    g.create_dataset("actions", data=np.zeros((0, 7)))


def _short_rewards(f):
    del f["data/demo_10/rewards"]
    f["data/demo_10"].create_dataset("rewards", data=np.zeros(3))


def _grey_images(f):
    del f["data/demo_0/obs/agentview_image"]
    f["data/demo_0/obs"].create_dataset("agentview_image", data=np.zeros((5, 8, 8), np.float32))


@pytest.mark.parametrize("edit, change, message", [
    (None, {"state_keys": ("robot0_joint_pos",)},
     r"lift\.hdf5, episode demo_0: no obs/robot0_joint_pos \(has: actions, dones, obs, "),
    (None, {"camera_keys": ("observation.images.wrist",)},
     r"lift\.hdf5, episode demo_0: no camera 'observation\.images\.wrist'"),
    (_nan_action, {}, r"lift\.hdf5, episode demo_2: feature 'actions' has NaN or Inf at step 1"),
    (_empty_demo, {}, r"lift\.hdf5, episode demo_5: empty episode \(0 steps\)"),
    (_short_rewards, {}, r"lift\.hdf5, episode demo_10: rewards has 3 rows, actions has 4"),
    (_grey_images, {}, r"lift\.hdf5, episode demo_0: obs/agentview_image must be \(T, H, W, 3\) "
                       r"uint8 RGB, got \(5, 8, 8\) float32"),
    (None, {"action_dim": 5}, r"lift\.hdf5, episode demo_0: action 'actions' has 7 values per "
                              r"row, the config expects action_dim=5"),
    (None, {"state_dim": 8}, r"lift\.hdf5, episode demo_0: state 'obs/robot0_eef_pos' \+ "
                             r"'obs/object' has 7 values per row, the config expects state_dim=8"),
    (None, {"fps": 10.0}, r"lift\.hdf5: recorded at 20 fps \(every episode\), the config "
                          r"expects fps=10"),
])
def test_bad_files_are_refused_by_file_demo_and_problem(tmp_path, lift_cfg, edit, change,
                                                         message):
    path = write_robomimic(tmp_path / "lift.hdf5", edit=edit)
    with pytest.raises(DataError, match=message):
        open_robomimic_dataset(path, dataclasses.replace(lift_cfg, **change))


def test_the_rate_comes_from_the_file_or_the_config(tmp_path, lift_cfg):
    assert open_robomimic_dataset(write_robomimic(tmp_path / "a.hdf5", fps_attr=True),
                                  lift_cfg).fps == 10
    silent = write_robomimic(tmp_path / "b.hdf5", control_freq=0)
    with pytest.raises(DataError, match=r"b\.hdf5: the file declares no rate"):
        open_robomimic_dataset(silent, lift_cfg)
    assert open_robomimic_dataset(silent, dataclasses.replace(lift_cfg, fps=15.0)).fps == 15


def test_not_robomimic_files_are_refused(tmp_path, lift_cfg):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"junk\.h5: cannot open as HDF5"):
        open_robot_dataset(tmp_path / "junk.h5", lift_cfg)
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(DataError, match=r"other\.hdf5: not a robomimic file \(no 'data' group"):
        open_robot_dataset(tmp_path / "other.hdf5", lift_cfg)
