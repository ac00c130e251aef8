"""The native simulated arm behind the Robot protocol."""

import numpy as np
import pytest

from robots.sim_arm import SimArm, env_id
from vptr.errors import ConfigError, UnknownNameError


def test_observations_match_the_declared_features_and_the_generated_data_names():
    from sim.native.embodiments import ACTION_NAMES, Arm

    robot = SimArm(task="push", image_size=32, cameras=("front", "wrist"))
    feats = robot.observation_features  # available before connecting
    assert list(feats)[:len(Arm.state_names)] == list(Arm.state_names)  # as `vptr generate robot` writes
    assert feats["front"] == (32, 32, 3) and feats["wrist"] == (32, 32, 3)
    assert list(robot.action_features) == ACTION_NAMES and robot.spec.rate_hz == 20.0
    with robot:
        obs = robot.get_observation()
        assert set(obs) == set(feats)
        assert all(isinstance(obs[n], float) for n in Arm.state_names)
        assert obs["wrist"].shape == (32, 32, 3) and obs["wrist"].dtype == np.uint8
        # at rest: tool deltas 0, gripper open (-1)
        np.testing.assert_allclose(robot.current_action(obs), [0, 0, 0, 0, -1], atol=1e-6)
        z0 = obs["ee_z"]
        for _ in range(5):
            sent = robot.send_action({"ee_dx": 0.0, "ee_dy": 0.0, "ee_dz": 3.0, "ee_dyaw": 0.0,
                                      "gripper": -1.0})
        assert sent["ee_dz"] == 1.0  # clipped to the action space, and returned as sent
        assert robot.get_observation()["ee_z"] > z0 + 0.02  # 5 steps of up to 2 cm
        robot.reset(seed=1)
        assert robot.get_observation()["ee_z"] == pytest.approx(z0, abs=0.07)
    assert not robot.is_connected


def test_the_spec_is_safe_by_default():
    a = SimArm(render_images=False).spec.action
    assert a.low == (-1.0,) * 5 and a.high == (1.0,) * 5 and a.max_step == (1.0, 1.0, 1.0, 1.0, 2.0)
    assert a.hold == (0.0, 0.0, 0.0, 0.0, None)  # deltas stop, the gripper keeps its closure


def test_task_names_and_bad_options():
    assert env_id("lift") == env_id("Lift") == env_id("vptr/Lift-v0") == "vptr/Lift-v0"
    with pytest.raises(UnknownNameError, match="unknown native sim task 'fly'"):
        SimArm(task="fly")
    with pytest.raises(ConfigError, match="cameras must be a tuple"):
        SimArm(cameras="front")
    robot = SimArm(render_images=False)
    robot.connect()
    with pytest.raises(ConfigError, match="non-finite"):
        robot.send_action({"ee_dx": float("nan"), "ee_dy": 0.0, "ee_dz": 0.0, "ee_dyaw": 0.0, "gripper": 0.0})
    robot.disconnect()
