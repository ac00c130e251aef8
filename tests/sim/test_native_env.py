"""The native tabletop environment: API, spaces, determinism, domain shift, errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from sim.native import ENV_SPECS, TASK_IDS
from sim.native.embodiments import POS_SCALE, YAW_SCALE
from sim.native.env import TabletopEnv
from sim.native.scene import CONTROL_HZ, WORKSPACE_LOW
from vptr.errors import ConfigError

TASKS = list(TASK_IDS)


def make(task="lift", **kw):
    kw.setdefault("image_size", 32)
    return TabletopEnv(task, **kw)


def rollout(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    states, images = [obs["state"]], [obs["pixels"]["front"]]
    for a in actions:
        obs, *_ = env.step(a)
        states.append(obs["state"])
        images.append(obs["pixels"]["front"])
    return np.stack(states), np.stack(images)


def red_rows(image):
    """Mean row index of the red cube's pixels."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    rows, _ = np.nonzero((r > 120) & (g < 70) & (b < 70))
    assert rows.size > 0, "the red cube is not visible"
    return rows.mean()


def test_env_specs_ids_and_cheap_import():
    for env_id in ("vptr/Reach-v0", "vptr/Push-v0", "vptr/Lift-v0", "vptr/PickPlace-v0",
                   "vptr/Stack-v0", "vptr/Drawer-v0"):
        entry, kwargs, max_steps = ENV_SPECS[env_id]
        assert entry == "sim.native.env:TabletopEnv"
        assert kwargs["task"] in TASKS
        assert 40 <= max_steps <= 120
    code = "import sys, sim.native; assert 'mujoco' not in sys.modules, 'mujoco imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())


@pytest.mark.parametrize("embodiment", ["arm", "hand"])
@pytest.mark.parametrize("task", TASKS)
def test_observation_matches_space_and_attributes(task, embodiment):
    cams = ("front", "wrist") if embodiment == "arm" else ("front",)
    env = make(task, embodiment=embodiment, cameras=cams)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (len(env.state_names),)
    for cam in cams:
        assert obs["pixels"][cam].shape == (32, 32, 3) and obs["pixels"][cam].dtype == np.uint8
    assert set(obs["pixels"]) == set(cams)
    assert info["is_success"] is False
    assert env.action_space.shape == (5,) and len(env.action_names) == 5
    assert env.control_hz == CONTROL_HZ == env.metadata["render_fps"] == 20.0
    assert isinstance(env.task_description, str) and len(env.task_description) > 5
    assert env.task == task and env.embodiment == embodiment
    obs, reward, _, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert isinstance(info["is_success"], bool) and reward in (0.0, 1.0) and truncated is False
    env.close()


def test_render_images_false_and_render_mode():
    env = make(render_images=False)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"state"} and "pixels" not in env.observation_space.spaces
    assert env.render() is None
    env.close()
    env = make(render_mode="rgb_array", image_size=48)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(env.render(), obs["pixels"]["front"])
    env.close()
    env.close()  # idempotent
    with pytest.raises(RuntimeError):
        env.render()


def test_images_upright_lifted_cube_moves_up():
    env = make("lift", image_size=64)
    expert = env.scripted_expert()
    obs, _ = env.reset(seed=1)
    before = red_rows(obs["pixels"]["front"])
    for _ in range(80):
        obs, _, terminated, _, _ = env.step(expert.act(obs))
        if terminated:
            break
    assert terminated
    for _ in range(8):  # keep lifting towards the carry height
        obs, *_ = env.step(np.array([0, 0, 1, 0, 1], np.float32))
    after = red_rows(obs["pixels"]["front"])
    assert after < before - 3  # row 0 is the top of the image
    env.close()


def test_wrist_camera_differs_from_front():
    env = make(cameras=("front", "wrist"))
    obs, _ = env.reset(seed=0)
    assert np.abs(obs["pixels"]["front"].astype(int) - obs["pixels"]["wrist"]).mean() > 10
    env.close()


def test_actions_are_clipped_and_validated():
    env_a, env_b = make(render_images=False), make(render_images=False)
    env_a.reset(seed=2)
    env_b.reset(seed=2)
    for _ in range(3):
        sa = env_a.step(np.array([5.0, -7.0, 3.0, 9.0, 4.0]))[0]["state"]
        sb = env_b.step(np.array([1.0, -1.0, 1.0, 1.0, 1.0]))[0]["state"]
        np.testing.assert_array_equal(sa, sb)
    with pytest.raises(ValueError, match="shape"):
        env_a.step(np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        env_a.step(np.array([np.nan, 0, 0, 0, 0]))


@pytest.mark.parametrize("embodiment", ["arm", "hand"])
def test_action_scaling_and_hold(embodiment):
    env = make("reach", embodiment=embodiment, render_images=False)
    env.reset(seed=0)
    start = env.unwrapped._emb.tcp_pos.copy()
    for _ in range(4):
        env.step(np.array([1.0, 0, 0, 0, -1]))
    for _ in range(6):
        env.step(np.zeros(5))
    moved = env.unwrapped._emb.tcp_pos - start
    np.testing.assert_allclose(moved, [4 * POS_SCALE, 0, 0], atol=0.004)
    held = env.unwrapped._emb.tcp_pos.copy()
    for _ in range(10):  # a zero action holds the pose (no drift)
        env.step(np.zeros(5))
    np.testing.assert_allclose(env.unwrapped._emb.tcp_pos, held, atol=1e-3)
    yaw0 = env.unwrapped._emb.tcp_yaw()
    for _ in range(3):
        env.step(np.array([0, 0, 0, 1.0, -1]))
    for _ in range(4):
        env.step(np.zeros(5))
    assert env.unwrapped._emb.tcp_yaw() - yaw0 == pytest.approx(3 * YAW_SCALE, abs=0.02)
    for _ in range(15):  # pressing down stops at the workspace floor (fingertips above table)
        env.step(np.array([0, 0, -1.0, 0, -1]))
    assert env.unwrapped._emb.tcp_pos[2] > WORKSPACE_LOW[2] - 0.004
    obs, *_ = env.step(np.array([0, 0, 0, 0, 1.0]))
    for _ in range(4):
        obs, *_ = env.step(np.array([0, 0, 0, 0, 1.0]))
    opening = obs["state"][env.unwrapped.state_names.index("gripper_opening")]
    assert opening < 0.01  # closed on nothing


def test_reset_and_step_are_deterministic_per_seed():
    actions = np.random.default_rng(0).uniform(-1, 1, (12, 5)).astype(np.float32)
    env1 = make("stack", domain_shift=0.8)
    env2 = make("stack", domain_shift=0.8)
    s1, i1 = rollout(env1, 7, actions)
    s2, i2 = rollout(env2, 7, actions)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(i1, i2)
    s3, i3 = rollout(env1, 7, actions)  # same env, reset again
    np.testing.assert_array_equal(s1, s3)
    np.testing.assert_array_equal(i1, i3)
    _, i4 = rollout(env2, 8, actions)
    assert not np.array_equal(i1[0], i4[0])
    assert not np.array_equal(env1.privileged_state()["cube_pos"],
                              env2.privileged_state()["cube_pos"])
    env1.close()
    env2.close()


def test_object_layout_depends_only_on_seed():
    """Same seed -> same object poses for both embodiments and any domain shift, so
    robot and video episodes can be paired."""
    layouts = []
    for emb, shift in (("arm", 0.0), ("hand", 0.0), ("arm", 0.7), ("hand", 1.0)):
        env = make("pickplace", embodiment=emb, domain_shift=shift, render_images=False)
        env.reset(seed=11)
        layouts.append(env.privileged_state())
        env.close()
    for other in layouts[1:]:
        for key in ("cube_pos", "bin_pos"):
            np.testing.assert_allclose(other[key], layouts[0][key], atol=1e-9)


def test_domain_shift_zero_keeps_appearance_and_positive_changes_it():
    env0 = make("lift", image_size=48)
    obs0, _ = env0.reset(seed=0)
    default, cube0 = env0.appearance_params(), env0.privileged_state()["cube_pos"]
    env0.reset(seed=1)
    for key, value in env0.appearance_params().items():
        np.testing.assert_array_equal(value, default[key], err_msg=key)
    assert not np.allclose(env0.privileged_state()["cube_pos"], cube0)  # only poses differ

    env_s = make("lift", image_size=48, domain_shift=0.5)
    obs_s, _ = env_s.reset(seed=0)
    np.testing.assert_array_equal(env_s.privileged_state()["cube_pos"], cube0)
    shifted = env_s.appearance_params()
    changed = [k for k in default if not np.allclose(shifted[k], default[k])]
    assert {"cam_pos", "cam_quat", "light_dir", "geom_rgba"} <= set(changed)
    diff = np.abs(obs_s["pixels"]["front"].astype(int) - obs0["pixels"]["front"]).mean()
    assert diff > 5  # same layout, other appearance
    env_s.reset(seed=1)
    assert not np.allclose(env_s.appearance_params()["cam_pos"], shifted["cam_pos"])
    env0.close()
    env_s.close()


def test_distractors_and_exogenous_motion():
    env = make("lift", domain_shift=1.0, render_images=False)
    rand = env._randomizer
    counts, moving = [], 0
    for seed in range(12):
        env.reset(seed=seed)
        visible = [env.data.mocap_pos[m][2] > -1.0 for m in rand.distractor_mocap]
        counts.append(sum(visible))
        before = env.data.mocap_pos[rand.distractor_mocap[0]].copy()
        env.step(np.zeros(5))
        env.step(np.zeros(5))
        after = env.data.mocap_pos[rand.distractor_mocap[0]]
        moving += int(np.linalg.norm(after - before) > 1e-4)
    assert max(counts) >= 2 and min(counts) <= 1 and max(counts) <= 3
    assert moving >= 1
    env0 = make("lift", domain_shift=0.0, render_images=False)
    for seed in range(3):
        env0.reset(seed=seed)
        assert all(env0.data.mocap_pos[m][2] < -1.0 for m in env0._randomizer.distractor_mocap)


@pytest.mark.parametrize("kwargs, needle", [
    ({"task": "fly"}, "fly"),
    ({"image_size": 0}, "image_size"),
    ({"image_size": -4}, "-4"),
    ({"domain_shift": 1.5}, "1.5"),
    ({"domain_shift": -0.1}, "-0.1"),
    ({"cameras": ("top",)}, "top"),
    ({"embodiment": "hand", "cameras": ("front", "wrist")}, "wrist"),
    ({"embodiment": "tentacle"}, "tentacle"),
    ({"reward_type": "shaped"}, "shaped"),
    ({"render_mode": "human"}, "human"),
])
def test_bad_config_raises_config_error_naming_value(kwargs, needle):
    kwargs = dict(kwargs)
    task = kwargs.pop("task", "lift")
    with pytest.raises(ConfigError, match=needle):
        TabletopEnv(task, **kwargs)


def test_sparse_and_dense_rewards_and_termination():
    env = make("lift", render_images=False, reward_type="dense")
    expert = env.scripted_expert()
    obs, _ = env.reset(seed=3)
    rewards = []
    for _ in range(80):
        obs, reward, terminated, _, info = env.step(expert.act(obs))
        rewards.append(reward)
        if terminated:
            break
    assert info["is_success"] and rewards[-1] == 1.0
    assert all(0.0 <= r <= 1.0 for r in rewards) and rewards[0] < 0.5
    env = make("lift", render_images=False, terminate_on_success=False)
    expert = env.scripted_expert()
    obs, _ = env.reset(seed=3)
    sparse = []
    for _ in range(40):
        obs, reward, terminated, _, info = env.step(expert.act(obs))
        sparse.append(reward)
        assert not terminated
    assert set(sparse) == {0.0, 1.0} and sparse[-1] == 1.0 and info["is_success"]


def test_gymnasium_make_applies_time_limit():
    gym = pytest.importorskip("gymnasium")
    if "vptr/Lift-v0" not in gym.registry:
        gym.register("vptr/Lift-v0", entry_point=ENV_SPECS["vptr/Lift-v0"][0],
                     kwargs=ENV_SPECS["vptr/Lift-v0"][1],
                     max_episode_steps=ENV_SPECS["vptr/Lift-v0"][2], disable_env_checker=True)
    env = gym.make("vptr/Lift-v0", render_images=False)
    env.reset(seed=0)
    for step in range(1, 200):  # noqa: B007 (the step count is checked below)
        *_, terminated, truncated, _ = env.step(np.zeros(5, np.float32))
        if truncated:
            break
    assert step == ENV_SPECS["vptr/Lift-v0"][2] and not terminated
    env.close()
