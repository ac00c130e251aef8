"""The robosuite arm behind the Robot protocol (real robosuite, rendered at 32x32)."""

import numpy as np
import pytest

from robots.robosuite_arm import RobosuiteArm, robosuite_env_id
from vptr.errors import UnknownNameError

pytestmark = pytest.mark.robosuite


def test_task_names_resolve_and_unknown_ones_are_refused():
    assert robosuite_env_id("lift") == robosuite_env_id("vptr/RobosuiteLift-v0") == "vptr/RobosuiteLift-v0"
    with pytest.raises(UnknownNameError):
        robosuite_env_id("juggle")


def test_observations_actions_and_limits_of_the_robosuite_arm():
    from sim.robosuite.env import ACTION_NAMES, STATE_NAMES

    robot = RobosuiteArm(task="lift", image_size=32)
    feats = robot.observation_features  # before connecting: robosuite not built yet
    assert list(feats)[:len(STATE_NAMES)] == list(STATE_NAMES) and feats["agentview"] == (32, 32, 3)
    a = robot.spec.action
    assert a.names == ACTION_NAMES and a.max_step == (0.5,) * 6 + (2.0,) and a.hold[-1] is None
    with robot:
        obs = robot.get_observation()
        assert set(obs) == set(feats) and obs["agentview"].dtype == np.uint8
        np.testing.assert_allclose(robot.current_action(obs)[:6], 0.0)
        start = robot.current_action(obs)[6]
        assert -1.0 <= start <= 1.0
        z0 = obs["eef_pos_z"]
        for _ in range(4):
            sent = robot.send_action(dict(zip(ACTION_NAMES, [0, 0, 2.0, 0, 0, 0, -1])))
        assert sent["delta_z"] == 1.0  # clipped, returned as sent
        assert robot.get_observation()["eef_pos_z"] > z0 + 0.02
        assert robot.current_action(robot.get_observation())[6] < start - 0.2  # opening reads as such
    assert not robot.is_connected
