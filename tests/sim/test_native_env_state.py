"""obs["environment_state"]: the privileged object state of every native task, one width."""

import numpy as np
import pytest

from sim.native import TASK_IDS
from sim.native.env import ENV_STATE_DIM, TabletopEnv
from vptr.errors import ConfigError


@pytest.mark.parametrize("task", list(TASK_IDS))
def test_environment_state_is_the_padded_privileged_state(task):
    env = TabletopEnv(task, image_size=16, environment_state=True)
    plain = TabletopEnv(task, image_size=16)
    obs, _ = env.reset(seed=3)
    ref, _ = plain.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(4):
        a = rng.uniform(-1, 1, 5)
        obs, *_ = env.step(a)
        ref, *_ = plain.step(a)
    assert env.observation_space.contains(obs) and "environment_state" not in ref
    assert "environment_state" not in plain.observation_space.spaces
    x = obs["environment_state"]
    assert x.dtype == np.float32 and x.shape == (ENV_STATE_DIM,)
    flat = np.concatenate([np.ravel(v) for v in env.privileged_state().values()])
    np.testing.assert_array_equal(x[:len(flat)], flat.astype(np.float32))
    assert not x[len(flat):].any()
    names = env.environment_state_names
    assert len(names) == ENV_STATE_DIM and names[len(flat):] == [
        f"pad_{i}" for i in range(ENV_STATE_DIM - len(flat))]
    # the option only adds an entry: same dynamics, same proprioception and images
    np.testing.assert_array_equal(obs["state"], ref["state"])
    np.testing.assert_array_equal(obs["pixels"]["front"], ref["pixels"]["front"])
    env.close()
    plain.close()


def test_width_is_the_widest_task_and_names_follow_the_declared_order():
    real = {}
    for task in TASK_IDS:
        env = TabletopEnv(task, image_size=16, render_images=False, environment_state=True)
        real[task] = [n for n in env.environment_state_names if not n.startswith("pad_")]
        env.close()
    assert max(len(v) for v in real.values()) == ENV_STATE_DIM
    assert real["lift"] == ["cube_pos_x", "cube_pos_y", "cube_pos_z", "cube_yaw"]
    assert real["stack"][4:] == ["base_pos_x", "base_pos_y", "base_pos_z", "base_yaw"]
    assert real["drawer"][3] == "drawer_open"


def test_lift_cube_pose_is_observable():
    env = TabletopEnv("lift", render_images=False, environment_state=True)
    obs, _ = env.reset(seed=0)
    names = env.environment_state_names
    cube = obs["environment_state"][[names.index(f"cube_pos_{a}") for a in "xyz"]]
    np.testing.assert_allclose(cube, env.unwrapped.privileged_state()["cube_pos"], atol=1e-7)
    assert cube[2] == pytest.approx(0.02, abs=1e-3)  # resting on the table
    env.close()


def test_environment_state_option_is_validated():
    with pytest.raises(ConfigError, match="environment_state must be True or False"):
        TabletopEnv("lift", render_images=False, environment_state="yes")
