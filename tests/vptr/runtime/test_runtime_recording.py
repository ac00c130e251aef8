"""Episodes recorded by the control loop open with LeRobot's own LeRobotDataset."""

import numpy as np
import pytest

from robots.sim_arm import SimArm
from vptr.runtime import ControlLoop, FakeClock, LoopConfig, SafetyFilter
from vptr.runtime.executor import ExecutorConfig, make_executor
from vptr.runtime.policy import PolicyIO
from vptr.runtime.recording import EpisodeRecorder

pytestmark = pytest.mark.filterwarnings("ignore")


class Forward:
    """Moves the tool forward and closes the gripper a little more each chunk."""

    def __init__(self, robot):
        s = robot.spec
        self.io = PolicyIO(state_names=s.state_names, action_names=s.action.names, chunk_size=5,
                           cameras=s.cameras, rate_hz=s.rate_hz)
        self.k = 0

    def __call__(self, obs):
        assert obs["observation.images.front"].shape == (32, 32, 3)
        self.k += 1
        return np.tile([0.3, 0.0, -0.1, 0.0, -1.0 + 0.1 * self.k], (5, 1))


class Sent:
    """Wraps send_action to keep what the robot accepted."""

    def __init__(self, robot):
        self.log, inner = [], robot.send_action

        def send(action):
            out = inner(action)
            self.log.append([out[n] for n in robot.spec.action.names])
            return out

        robot.send_action = send


def test_recorded_episodes_open_with_lerobot_dataset(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    robot = SimArm(task="lift", image_size=32, seed=3)
    robot.connect()
    sent = Sent(robot)
    root = tmp_path / "deploy"
    rec = EpisodeRecorder(root, robot.observation_features, robot.action_features, fps=20,
                          repo_id="vptr/test-deploy", robot_type=robot.name, task=robot.task_description)
    lengths = []
    try:
        for episode, steps in enumerate((12, 7)):
            if episode:
                robot.reset()
            policy = Forward(robot)
            loop = ControlLoop(robot, policy.io, make_executor(policy, ExecutorConfig(mode="chunk")),
                               SafetyFilter(robot.spec.action, 20), clock=FakeClock(), recorder=rec,
                               cfg=LoopConfig(rate_hz=20, max_steps=steps, handle_sigint=False,
                                              estop_signal=None))
            lengths.append(loop.run().steps)
    finally:
        rec.close()
        robot.disconnect()
    assert lengths == [12, 7] and rec.episodes == 2 and rec.frames == 19
    ds = LeRobotDataset("vptr/test-deploy", root=root, video_backend="pyav")
    assert ds.num_episodes == 2 and len(ds) == 19 and ds.fps == 20
    assert ds.meta.robot_type == "vptr_sim_arm"
    assert ds.features["observation.state"]["names"] == list(robot.spec.state_names)
    assert ds.features["action"]["names"] == list(robot.spec.action.names)
    actions = np.stack([ds[i]["action"].numpy() for i in range(len(ds))])
    np.testing.assert_allclose(actions, np.array(sent.log), atol=1e-6)  # the commands actually sent
    frame = ds[13]
    assert frame["episode_index"].item() == 1
    assert tuple(frame["observation.images.front"].shape) == (3, 32, 32)
    assert ds[0]["task"] == "pick up the red cube"


def test_recording_refuses_an_existing_folder_and_a_fractional_fps(tmp_path):
    from vptr.errors import ConfigError

    with pytest.raises(ConfigError, match="already exists"):
        EpisodeRecorder(tmp_path, {"a": float}, {"a": float}, fps=20)
    with pytest.raises(ConfigError, match="integer fps"):
        EpisodeRecorder(tmp_path / "x", {"a": float}, {"a": float}, fps=12.5)
