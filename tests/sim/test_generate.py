"""Data generation: LeRobot robot datasets, action-free video folders, caching, errors."""

import csv
import json
import subprocess
import sys

import av
import numpy as np
import pytest

from sim.generate import (
    MARKER,
    RobotDataConfig,
    VideoDataConfig,
    cached,
    generate_robot,
    generate_video,
)
from vptr.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def robot_ds(tmp_path_factory):
    cfg = RobotDataConfig(tasks=("vptr/Reach-v0", "vptr/Lift-v0"), episodes_per_task=2,
                          image_size=32, cameras=("front",), noise=0.05,
                          data_dir=tmp_path_factory.mktemp("data"))
    out, record = generate_robot(cfg, log=lambda m: None)
    return cfg, out, record


def test_robot_dataset_opens_with_lerobot(robot_ds):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    cfg, out, record = robot_ds
    h = 5
    fps = record["stats"]["fps"]
    ds = LeRobotDataset(repo_id="vptr/test", root=out, video_backend="pyav",
                        delta_timestamps={"action": [k / fps for k in range(h)]})
    assert ds.fps == fps and 10 <= fps <= 20
    assert ds.num_episodes == 4 == record["stats"]["episodes"]
    assert len(ds) == record["stats"]["frames"]
    item = ds[0]
    assert item["observation.images.front"].shape == (3, 32, 32)
    n_act = ds.meta.features["action"]["shape"][0]
    assert item["action"].shape == (h, n_act)
    assert item["observation.state"].shape == tuple(ds.meta.features["observation.state"]["shape"])
    # the last frame of an episode: only its own action is real, the rest is padding
    ep0_len = int(ds.meta.episodes["length"][0])
    last = ds[ep0_len - 1]
    assert last["action_is_pad"].tolist() == [False] + [True] * (h - 1)
    assert not ds[0]["action_is_pad"].any()
    tasks = set(ds.meta.tasks.index)
    assert len(tasks) == 2  # one language instruction per task
    # the recorded actions are the ones the expert sent: within the action space
    acts = np.stack([ds.hf_dataset[i]["action"] for i in range(len(ds))])
    assert np.all(np.abs(acts) <= 1.0 + 1e-6)


def test_native_object_state_is_recorded(robot_ds):
    """observation.environment_state: the padded privileged state, one width for all tasks."""
    import pyarrow.parquet as pq

    import sim
    from sim.native.env import ENV_STATE_DIM, flatten_environment_state

    cfg, out, record = robot_ds
    info = json.loads((out / "meta" / "info.json").read_text())
    feature = info["features"]["observation.environment_state"]
    assert feature["shape"] == [ENV_STATE_DIM]
    # Reach and Lift name their entries differently: positions in the feature, names per task
    assert feature["names"] == [f"environment_state_{i}" for i in range(ENV_STATE_DIM)]
    names = record["stats"]["environment_state_names"]
    assert names["vptr/Lift-v0"][:4] == ["cube_pos_x", "cube_pos_y", "cube_pos_z", "cube_yaw"]
    table = pq.read_table(next((out / "data").rglob("*.parquet"))).to_pandas()
    first = table[table["frame_index"] == 0].sort_values("episode_index")
    recorded = first["observation.environment_state"].tolist()
    for got, (k, i) in zip(recorded, [(0, 0), (0, 1), (1, 0), (1, 1)], strict=True):
        env = sim.make(cfg.tasks[k], render_images=False)
        env.reset(seed=cfg.seed + 10000 * k + i)  # the seed of episode i of task k
        want = flatten_environment_state(env.unwrapped.privileged_state())
        np.testing.assert_array_equal(np.asarray(got, np.float32), want)
        env.close()


def test_generation_is_cached(robot_ds):
    cfg, out, record = robot_ds
    messages = []
    out2, record2 = generate_robot(cfg, log=messages.append)
    assert out2 == out and record2 == record and "cached" in messages[0]
    assert json.loads((out / MARKER).read_text())["config"]["episodes_per_task"] == 2


def test_robomimic_file_has_robomimics_schema(tmp_path):
    import h5py

    import sim
    from sim.generate import ROBOMIMIC_FILE
    from sim.native.env import ENV_STATE_DIM

    cfg = RobotDataConfig(tasks=("vptr/Reach-v0",), episodes_per_task=3, image_size=32,
                          format="robomimic", data_dir=tmp_path)
    out, record = generate_robot(cfg, log=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == sorted([ROBOMIMIC_FILE, MARKER])
    with h5py.File(out / ROBOMIMIC_FILE, "r") as f:
        demos = sorted(f["data"], key=lambda d: int(d.split("_")[1]))
        assert demos == ["demo_0", "demo_1", "demo_2"]
        env_args = json.loads(f["data"].attrs["env_args"])
        assert env_args["env_name"] == "vptr/Reach-v0" and env_args["type"] == 2
        assert env_args["env_kwargs"]["environment_state"] is True
        lengths = []
        for d in demos:
            g = f["data"][d]
            t = int(g.attrs["num_samples"])
            lengths.append(t)
            assert g["actions"].shape == (t, 5) and g["rewards"].shape == g["dones"].shape == (t,)
            assert sorted(g["obs"]) == ["environment_state", "front_image", "state"]
            assert g["obs/front_image"].shape == (t, 32, 32, 3)
            assert g["obs/front_image"].dtype == np.uint8
            assert g["obs/environment_state"].shape == (t, ENV_STATE_DIM)
            assert g["dones"][-1] == 1 and not g["dones"][:-1].any()
            assert json.loads(g.attrs["ep_meta"])["lang"] == "reach the red ball"
        assert int(f["data"].attrs["total"]) == sum(lengths) == record["stats"]["frames"]
        train = [n.decode() for n in f["mask/train"][:]]
        valid = [n.decode() for n in f["mask/valid"][:]]
        assert sorted(train + valid) == demos and len(valid) == 1
        # row 0 is the observation after reset(seed): the image the env renders then
        env = sim.make("vptr/Reach-v0", image_size=32)
        obs, _ = env.reset(seed=cfg.seed + 1)
        np.testing.assert_array_equal(f["data/demo_1/obs/front_image"][0], obs["pixels"]["front"])
        np.testing.assert_array_equal(f["data/demo_1/obs/state"][0], obs["state"])
        env.close()


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    cfg = VideoDataConfig(tasks=("vptr/Reach-v0", "vptr/Push-v0"), episodes_per_task=2,
                          image_size=32, data_dir=tmp_path_factory.mktemp("data"))
    out, record = generate_video(cfg, log=lambda m: None)
    return cfg, out, record


def test_video_folder_decodes_and_has_no_actions(video_dir):
    cfg, out, record = video_dir
    with (out / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == {"path", "num_frames", "fps", "width", "height", "text"}
    assert len(rows) == record["stats"]["videos"] >= 3
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted(["manifest.csv", MARKER] + [r["path"] for r in rows])
    for r in rows:
        with av.open(str(out / r["path"])) as c:
            assert [s.type for s in c.streams] == ["video"]  # no data/subtitle streams
            assert float(c.streams.video[0].average_rate) == pytest.approx(float(r["fps"]))
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == int(r["num_frames"]) > 5
        assert frames[0].shape == (32, 32, 3)
    text = (out / MARKER).read_text() + (out / "manifest.csv").read_text()
    assert "action" not in text.lower()


def test_interrupted_generation_never_looks_complete(tmp_path, monkeypatch):
    import sim.generate as gen

    cfg = VideoDataConfig(tasks=("vptr/Reach-v0",), episodes_per_task=3, image_size=32,
                          data_dir=tmp_path)
    calls = {"n": 0}
    real = gen.write_mp4

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(gen, "write_mp4", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_video(cfg, log=lambda m: None)
    assert not cfg.out_dir().exists() and cached(cfg.out_dir()) is None
    monkeypatch.setattr(gen, "write_mp4", real)
    out, record = generate_video(cfg, log=lambda m: None)
    assert cached(out) is not None and record["stats"]["videos"] >= 1
    assert not out.with_name(out.name + ".partial").exists()


def test_concurrent_generation_of_one_config(tmp_path):
    """Two processes asking for the same data: one builds, the other reuses it."""
    code = ("import sys; from sim.generate import VideoDataConfig, generate_video; "
            "cfg = VideoDataConfig(tasks=('vptr/Reach-v0',), episodes_per_task=3, image_size=32, "
            "data_dir=sys.argv[1]); out, rec = generate_video(cfg, log=print); "
            "print('OUT', out, rec['stats']['videos'])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    lines = [next(ln for ln in o[0].splitlines() if ln.startswith("OUT")) for o in outs]
    assert lines[0] == lines[1]
    out = tmp_path / "video" / lines[0].split()[1].split("/video/")[1]
    assert cached(out) is not None
    assert not list(out.parent.glob("*.partial*"))
    with (out / "manifest.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == int(lines[0].split()[2])


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown task id 'vptr/Nope-v0'"):
        RobotDataConfig(tasks=("vptr/Nope-v0",))
    with pytest.raises(ConfigError, match="episodes_per_task must be > 0"):
        VideoDataConfig(episodes_per_task=0)
    with pytest.raises(ConfigError, match=r"domain_shift must be in \[0, 1\], got 1.5"):
        VideoDataConfig(domain_shift=1.5)
    with pytest.raises(ConfigError, match="image_size must be even"):
        VideoDataConfig(image_size=33)
    # SVT-AV1 dies of SIGFPE on small frames: refused before any work, H.264 accepted
    with pytest.raises(ConfigError, match=r"SVT-AV1 encoder crashes below 28 px.*h264"):
        RobotDataConfig(tasks=("vptr/Reach-v0",), image_size=24)
    RobotDataConfig(tasks=("vptr/Reach-v0",), image_size=24, video_codec="h264")


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = VideoDataConfig(tasks=("vptr/Reach-v0",), episodes_per_task=1, data_dir=blocker / "d")
    with pytest.raises(DataError, match="not writable"):
        generate_video(cfg, log=lambda m: None)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vptr.cli", *args], capture_output=True,
                          text=True, timeout=120, **kw)


@pytest.mark.parametrize("args, needle", [
    (["generate", "robot", "--tasks", "vptr/Nope-v0"], "unknown task id 'vptr/Nope-v0'"),
    (["generate", "video", "--domain-shift", "2"], "domain_shift must be in [0, 1], got 2.0"),
    (["generate", "video", "--image-size", "big"], "--image-size"),
    (["generate", "robot", "--episodes-per-task", "0"], "episodes_per_task must be > 0"),
])
def test_cli_bad_input_one_line(args, needle):
    r = _cli(*args)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]


def test_cli_unwritable_dir(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    r = _cli("generate", "video", "--tasks", "vptr/Reach-v0", "--episodes-per-task", "1",
             "--data-dir", str(blocker / "sub"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("vptr: error:")
    assert "not writable" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_help_lists_commands():
    r = _cli("--help")
    assert r.returncode == 0 and "generate" in r.stdout and "quickstart" in r.stdout
    r = _cli("generate", "video", "--help")
    assert r.returncode == 0 and "--domain-shift" in r.stdout and "--embodiment" in r.stdout
