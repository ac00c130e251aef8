"""The Robot protocol's spec checks and the mock robot's fault injection."""

import numpy as np
import pytest

from robots.base import (
    ActionSpec,
    ObservationTimeout,
    RobotDisconnected,
    RobotFault,
    RobotSpec,
    action_vector,
)
from robots.mock import Faults, MockRobot, default_spec
from vptr.errors import ConfigError
from vptr.runtime import FakeClock


def test_specs_are_validated_with_clear_errors():
    with pytest.raises(ConfigError, match="unique"):
        ActionSpec(names=("a", "a"))
    with pytest.raises(ConfigError, match="low has 1 entries for 2 actions"):
        ActionSpec(names=("a", "b"), low=(0.0,), high=(1.0, 1.0))
    with pytest.raises(ConfigError, match="give both low and high"):
        ActionSpec(names=("a",), low=(0.0,))
    with pytest.raises(ConfigError, match="low > high for \\['a'\\]"):
        ActionSpec(names=("a",), low=(1.0,), high=(0.0,))
    with pytest.raises(ConfigError, match="max_step must be > 0"):
        ActionSpec(names=("a",), max_step=(0.0,))
    with pytest.raises(ConfigError, match="camera 'cam' needs an \\(H, W, C\\) shape"):
        RobotSpec(state_names=(), action=ActionSpec(names=("a",)), rate_hz=10, cameras={"cam": (8, 8)})
    with pytest.raises(ConfigError, match="rate_hz"):
        RobotSpec(state_names=(), action=ActionSpec(names=("a",)), rate_hz=0)
    with pytest.raises(ConfigError, match="missing \\['b'\\], unexpected \\['c'\\]"):
        action_vector({"a": 1.0, "c": 2.0}, ("a", "b"))


def test_features_follow_lerobot_conventions_and_exist_while_disconnected():
    robot = MockRobot(spec=default_spec(camera=(6, 8, 3)))
    assert not robot.is_connected
    feats = robot.observation_features
    assert feats["shoulder_pan.pos"] is float and feats["front"] == (6, 8, 3)
    assert list(robot.action_features) == list(robot.spec.action.names)
    with pytest.raises(RobotDisconnected):
        robot.get_observation()
    with robot:
        obs = robot.get_observation()
        assert obs["front"].shape == (6, 8, 3) and obs["front"].dtype == np.uint8
        # send_action returns what was actually sent, after the driver's clipping
        sent = robot.send_action({**{n: 0.0 for n in robot.spec.action.names}, "elbow.pos": 9.0})
        assert sent["elbow.pos"] == 2.5 and robot.get_observation()["elbow.pos"] == 2.5
        np.testing.assert_allclose(robot.current_action(robot.get_observation())[2], 2.5)
    assert not robot.is_connected


def _zero(robot):
    return {n: 0.0 for n in robot.spec.action.names}


def test_injected_latency_uses_the_injected_clock():
    clock = FakeClock()
    robot = MockRobot(faults=Faults(obs_latency_s=0.01, action_latency_s=0.002), clock=clock.now,
                      sleep=clock.sleep)
    robot.connect()
    robot.get_observation()
    robot.send_action(_zero(robot))
    assert clock.now() == pytest.approx(0.012)


def test_dropped_and_stale_observations():
    clock = FakeClock()
    robot = MockRobot(faults=Faults(drop_prob=0.5, seed=0), clock=clock.now, sleep=clock.sleep)
    robot.connect()
    outcomes = []
    for _ in range(200):
        try:
            robot.get_observation()
            outcomes.append("ok")
        except ObservationTimeout:
            outcomes.append("drop")
    assert 60 < outcomes.count("drop") < 140
    stale = MockRobot(faults=Faults(stale_prob=1.0), clock=clock.now, sleep=clock.sleep)
    stale.connect()
    first = stale.get_observation()
    stale.send_action({**_zero(stale), "elbow.pos": 1.0})
    clock.sleep(0.3)
    assert stale.get_observation() == first  # the robot moved, the observation did not
    assert stale.health().obs_age_s == pytest.approx(0.3) and stale.health().ok


def test_disconnects_and_vendor_faults():
    robot = MockRobot(faults=Faults(disconnect_after=2))
    robot.connect()
    robot.send_action(_zero(robot))
    robot.send_action(_zero(robot))
    assert not robot.is_connected
    with pytest.raises(RobotDisconnected):
        robot.get_observation()
    robot = MockRobot(faults=Faults(fault_after=1))
    robot.connect()
    robot.send_action(_zero(robot))
    h = robot.health()
    assert h.protective_stop and not h.ok and "vendor fault" in h.describe()
    with pytest.raises(RobotFault, match="vendor fault"):
        robot.send_action(_zero(robot))
    robot = MockRobot()
    robot.connect()
    robot.inject_fault("joint 3 over temperature")
    with pytest.raises(RobotFault, match="over temperature"):
        robot.send_action(_zero(robot))
    with pytest.raises(ConfigError, match="drop_prob"):
        Faults(drop_prob=2.0)
