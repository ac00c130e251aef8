"""robosuite wrapper: lazy import, config errors, images, seeding, experts.

Every test builds real robosuite envs (2-10 s each on a shared 2-core CPU); the expert
roll-outs are also marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

from sim.robosuite import ENV_SPECS, TASKS
from sim.robosuite.env import (
    ACTION_NAMES,
    STATE_NAMES,
    RobosuiteEnv,
    RobosuiteEnvConfig,
)
from vptr.errors import ConfigError, UnknownNameError

pytestmark = pytest.mark.robosuite

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def lift_state_env():
    env = RobosuiteEnv(task="Lift", render_images=False)
    yield env
    env.close()


# ------------------------------------------------------------------ registry / import
def test_import_does_not_import_robosuite():
    code = ("import sys, sim.robosuite, sim.robosuite.env, sim.robosuite.tasks; "
            "assert 'robosuite' not in sys.modules, 'robosuite was imported'; "
            "print(sorted(sim.robosuite.ENV_SPECS))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "vptr/RobosuiteLift-v0" in out.stdout


def test_env_specs_cover_required_tasks():
    assert {"vptr/RobosuiteLift-v0", "vptr/RobosuitePickPlaceCan-v0",
            "vptr/RobosuiteStack-v0"} <= set(ENV_SPECS)
    for env_id, (entry, kwargs, max_steps) in ENV_SPECS.items():
        assert entry == "sim.robosuite.env:RobosuiteEnv"
        assert kwargs["task"] in TASKS and TASKS[kwargs["task"]].env_id == env_id
        assert 50 <= max_steps <= 1000


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, words", [
    ({"task": "Lfit"}, ["task", "Lfit", "Lift", "Stack"]),
    ({"image_size": 0}, ["image_size", "0"]),
    ({"image_size": "84"}, ["image_size", "'84'"]),
    ({"image_size": 4096}, ["image_size", "4096"]),
    ({"render_quality": "ultra"}, ["render_quality", "ultra"]),
    ({"reward_type": "shaped"}, ["reward_type", "shaped"]),
    ({"control_freq": 30}, ["control_freq", "30"]),
    ({"render_mode": "human"}, ["render_mode", "human"]),
    ({"cameras": ()}, ["cameras"]),
])
def test_bad_options_raise_config_error_naming_the_value(kwargs, words):
    # Raised by config validation, before robosuite is imported or a model is built.
    with pytest.raises(ConfigError) as e:
        RobosuiteEnv(**{"task": "Lift", **kwargs})
    for w in words:
        assert w in str(e.value)


def test_unknown_task_is_an_unknown_name_error():
    with pytest.raises(UnknownNameError):
        RobosuiteEnvConfig(task="Wipe")


def test_unknown_camera_lists_the_model_cameras():
    with pytest.raises(UnknownNameError) as e:
        RobosuiteEnv(task="Lift", render_images=False, cameras=("agentveiw",))
    assert "agentveiw" in str(e.value) and "agentview" in str(e.value)


# ------------------------------------------------------------------ API and seeding
def test_step_api_spaces_and_attributes(lift_state_env):
    env = lift_state_env
    obs, info = env.reset(seed=0)
    assert set(obs) == {"state"} and info == {"is_success": False}
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (len(STATE_NAMES),)
    assert env.observation_space.contains(obs)
    assert env.action_space.shape == (7,) and env.action_names == ACTION_NAMES
    assert len(env.state_names) == obs["state"].shape[0] == 23
    assert (env.embodiment, env.task, env.control_hz) == ("panda", "Lift", 20)
    assert "cube" in env.task_description
    # the state is the robot's proprioception: eef position matches the grip site
    eef = env.robosuite_env.sim.data.site_xpos[env.robosuite_env.robots[0].eef_site_id["right"]]
    np.testing.assert_allclose(obs["state"][:3], eef, atol=1e-5)
    cos, sin = obs["state"][9:16], obs["state"][16:23]
    np.testing.assert_allclose(cos**2 + sin**2, 1.0, atol=1e-5)

    out = env.step(np.zeros(7, np.float32))
    assert len(out) == 5
    obs, reward, terminated, truncated, info = out
    assert reward == 0.0 and terminated is False and truncated is False
    assert info == {"is_success": False}
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(6))


def _object_qpos(env: RobosuiteEnv) -> np.ndarray:
    rs = env.robosuite_env
    return np.concatenate([rs.sim.data.get_joint_qpos(j) for obj in rs.model.mujoco_objects
                           for j in obj.joints])


def test_reset_is_deterministic_per_seed_and_leaves_global_rng_alone(lift_state_env):
    env = lift_state_env
    np.random.seed(1234)
    global_before = np.random.get_state()[1].copy()

    s1, _ = env.reset(seed=7)
    cube1 = _object_qpos(env)
    s2, _ = env.reset(seed=7)
    cube2 = _object_qpos(env)
    s3, _ = env.reset(seed=8)
    cube3 = _object_qpos(env)
    np.testing.assert_array_equal(cube1, cube2)
    np.testing.assert_array_equal(s1["state"], s2["state"])  # robot init noise too
    assert np.abs(cube1[:2] - cube3[:2]).max() > 1e-4  # placement differs in x/y
    assert not np.array_equal(s1["state"], s3["state"])
    np.testing.assert_array_equal(np.random.get_state()[1], global_before)

    # Same seed + same actions -> the same trajectory; unseeded resets continue the
    # seeded stream deterministically.
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 7))
    trajs = []
    for _ in range(2):
        env.reset(seed=3)
        trajs.append([env.step(a)[0]["state"] for a in actions])
        trajs.append(_object_qpos(env))
        env.reset()
        trajs.append(_object_qpos(env))
    for a, b in zip(trajs[:3], trajs[3:]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_pick_place_can_seeding_places_the_can_in_the_source_bin():
    env = RobosuiteEnv(task="PickPlaceCan", render_images=False)
    try:
        rs = env.robosuite_env
        can = lambda: np.array(rs.sim.data.body_xpos[rs.obj_body_id["Can"]])
        env.reset(seed=11)
        a = can()
        env.reset(seed=11)
        np.testing.assert_array_equal(a, can())
        env.reset(seed=12)
        assert np.abs(a[:2] - can()[:2]).max() > 1e-4
        # the can starts in bin 1 (y < 0), away from the goal bin (y > 0)
        assert a[1] < 0 and abs(a[1] - rs.bin1_pos[1]) < 0.25
    finally:
        env.close()


def test_dense_reward_is_shaped_and_bounded():
    env = RobosuiteEnv(task="Lift", render_images=False, reward_type="dense")
    try:
        env.reset(seed=0)
        rewards = [env.step(np.zeros(7))[1] for _ in range(3)]
        # Lift's reaching term 1 - tanh(10 d) (normalised by 2.25) is > 0 at any distance
        assert all(0.0 < r < 1.0 for r in rewards)
    finally:
        env.close()


# ------------------------------------------------------------------ images
def _project(env: RobosuiteEnv, camera: str, point: np.ndarray, size: int) -> np.ndarray:
    """(row, col) of a world point in an upright image (MuJoCo camera looks along -z)."""
    model, data = env.robosuite_env.sim.model._model, env.robosuite_env.sim.data._data
    cid = env.robosuite_env.sim.model.camera_name2id(camera)
    rot = data.cam_xmat[cid].reshape(3, 3)
    p = rot.T @ (point - data.cam_xpos[cid])
    f = size / 2 / np.tan(np.deg2rad(model.cam_fovy[cid]) / 2)
    return np.array([size / 2 - f * p[1] / -p[2], size / 2 + f * p[0] / -p[2]])


@pytest.mark.parametrize("quality", ["default", "cheap"])
def test_images_are_upright_uint8_and_match_the_space(quality):
    size = 48
    env = RobosuiteEnv(task="Lift", image_size=size, render_quality=quality,
                       cameras=("agentview", "robot0_eye_in_hand"), render_mode="rgb_array")
    try:
        obs, _ = env.reset(seed=0)
        for _ in range(2):
            obs, *_ = env.step(np.full(7, 0.2, np.float32))
        assert env.observation_space.contains(obs)
        for cam in ("agentview", "robot0_eye_in_hand"):
            img = obs["pixels"][cam]
            assert img.shape == (size, size, 3) and img.dtype == np.uint8 and img.std() > 5
        np.testing.assert_array_equal(env.render(), obs["pixels"]["agentview"])

        # Upright: the red cube appears where the camera model projects it. Put it at two
        # places far from the image centre (a vertical flip would mirror the rows).
        import mujoco

        rs = env.robosuite_env
        rows = []
        for pos in ([0.15, 0.15, 0.83], [-0.12, -0.12, 0.95]):
            rs.sim.data.set_joint_qpos(rs.cube.joints[0], np.r_[pos, 1.0, 0.0, 0.0, 0.0])
            mujoco.mj_forward(rs.sim.model._model, rs.sim.data._data)
            img = env.render_camera("agentview").astype(int)
            red = (img[..., 0] > 60) & (img[..., 0] > 1.6 * img[..., 1]) & (
                img[..., 0] > 1.6 * img[..., 2])
            assert red.sum() >= 3
            found = np.array([np.nonzero(red)[0].mean(), np.nonzero(red)[1].mean()])
            expected = _project(env, "agentview", np.array(pos), size)
            assert np.abs(found - expected).max() < 2.5, (found, expected)
            rows.append(found[0])
        assert rows[0] > size / 2 + 5 > size / 2 - 5 > rows[1]  # near table edge low, high cube up
    finally:
        env.close()


def test_cheap_quality_changes_the_rendering_but_not_the_scene():
    imgs = {}
    for quality in ("default", "cheap"):
        env = RobosuiteEnv(task="Lift", image_size=32, render_quality=quality)
        try:
            obs, _ = env.reset(seed=1)
            imgs[quality] = obs["pixels"]["agentview"].astype(float)
        finally:
            env.close()
    diff = np.abs(imgs["default"] - imgs["cheap"])
    assert diff.max() > 0  # no reflections / anti-aliasing
    assert diff.mean() < 12  # same scene, same camera


def test_state_only_env_has_no_renderer(lift_state_env):
    with pytest.raises(ConfigError, match="render"):
        lift_state_env.render_camera("agentview")
    with pytest.raises(ConfigError, match="render_mode"):
        lift_state_env.render()


# ------------------------------------------------------------------ experts
def _run_expert(env: RobosuiteEnv, seeds, noise=0.0, max_steps=None) -> list[bool]:
    expert = env.scripted_expert(noise=noise, seed=0)
    max_steps = max_steps or TASKS[env.task].max_episode_steps
    results = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        info = {"is_success": False}
        for _ in range(max_steps):
            obs, reward, terminated, _, info = env.step(expert.act(obs))
            if terminated:
                assert reward == 1.0 and info["is_success"]
                break
        results.append(bool(info["is_success"]))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
def test_expert_solves_task(task):
    env = RobosuiteEnv(task=task, render_images=False)
    try:
        results = _run_expert(env, seeds=range(100, 110))
    finally:
        env.close()
    assert sum(results) >= 9, f"{task}: expert succeeded in {sum(results)}/10 episodes"


def test_expert_noise_is_seeded_and_success_does_not_terminate_when_disabled():
    env = RobosuiteEnv(task="Lift", render_images=False, terminate_on_success=False)
    try:
        obs, _ = env.reset(seed=0)
        clean = env.scripted_expert(noise=0.0)
        noisy = [env.scripted_expert(noise=0.3, seed=5) for _ in range(2)]
        a0 = clean.act(obs)
        a1, a2 = noisy[0].act(obs), noisy[1].act(obs)
        np.testing.assert_array_equal(a1, a2)  # same seed, same noise
        assert np.abs(a1 - a0).max() > 0.01
        assert a0.dtype == np.float32 and np.all(np.abs(a1) <= 1.0)
        with pytest.raises(ConfigError, match="noise"):
            env.scripted_expert(noise=-0.1)

        succeeded = 0
        for _ in range(100):
            obs, reward, terminated, _, info = env.step(clean.act(obs))
            assert not terminated
            assert reward == (1.0 if info["is_success"] else 0.0)
            succeeded += info["is_success"]
        assert succeeded >= 10  # holds the cube up after lifting it
    finally:
        env.close()


def test_registered_id_makes_a_time_limited_env():
    import sim

    env = sim.make("vptr/RobosuiteLift-v0", render_images=False)
    try:
        assert env.spec.max_episode_steps == TASKS["Lift"].max_episode_steps
        assert isinstance(env.unwrapped, RobosuiteEnv) and env.unwrapped.task == "Lift"
        obs, _ = env.reset(seed=0)
        assert obs["state"].shape == (23,)
    finally:
        env.close()
