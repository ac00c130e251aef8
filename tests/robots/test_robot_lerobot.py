"""LeRobot interop through LeRobot's registry: our sim arm built by
make_robot_from_config and driven by LeRobot's own recording loop; any LeRobot robot
behind our protocol (limits given explicitly, or refused by the safety filter)."""

import dataclasses

import numpy as np
import pytest
from lerobot.robots import Robot as LeRobotBase
from lerobot.robots import RobotConfig, make_robot_from_config

from robots.lerobot_adapter import LeRobotRobot, VptrSimArm, VptrSimArmConfig, known_types
from vptr.errors import ConfigError, UnknownNameError
from vptr.runtime import ControlLoop, FakeClock, LoopConfig, SafetyFilter
from vptr.runtime.executor import ExecutorConfig, make_executor
from vptr.runtime.policy import PolicyIO

pytestmark = pytest.mark.filterwarnings("ignore")


def test_make_robot_from_config_builds_our_sim_arm(tmp_path):
    assert "vptr_sim_arm" in known_types()
    cfg = VptrSimArmConfig(task="push", image_size=32, calibration_dir=tmp_path)
    assert cfg.type == "vptr_sim_arm"
    robot = make_robot_from_config(cfg)
    assert isinstance(robot, VptrSimArm) and isinstance(robot, LeRobotBase)
    assert robot.name == robot.robot_type == "vptr_sim_arm"
    assert robot.observation_features["front"] == (32, 32, 3)
    robot.connect()
    obs = robot.get_observation()
    sent = robot.send_action({n: 0.0 for n in robot.action_features})
    assert set(obs) == set(robot.observation_features) and set(sent) == set(robot.action_features)
    robot.disconnect()


def test_lerobot_s_command_line_parses_our_robot_type():
    import draccus

    @dataclasses.dataclass
    class Cmd:  # the shape of LeRobot's script configs: a `robot: RobotConfig` field
        robot: RobotConfig

    cmd = draccus.parse(config_class=Cmd, args=["--robot.type=vptr_sim_arm", "--robot.task=stack",
                                                "--robot.camera_names=[front,wrist]"])
    assert isinstance(cmd.robot, VptrSimArmConfig)
    assert cmd.robot.task == "stack" and cmd.robot.camera_names == ("front", "wrist")


def test_lerobot_s_own_recording_loop_drives_the_sim_arm(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.processor import make_default_processors
    from lerobot.scripts.lerobot_record import record_loop
    from lerobot.teleoperators import Teleoperator, TeleoperatorConfig
    from lerobot.utils.feature_utils import hw_to_dataset_features

    @dataclasses.dataclass
    class UpConfig(TeleoperatorConfig):
        pass

    class Up(Teleoperator):  # a scripted "operator": move the tool up, gripper open
        config_class, name = UpConfig, "up"

        def __init__(self, config):
            super().__init__(config)

        action_features = property(lambda self: {n: float for n in robot.action_features})
        feedback_features = property(lambda self: {})
        is_connected = property(lambda self: True)
        is_calibrated = property(lambda self: True)

        def connect(self, calibrate=True): ...
        def calibrate(self): ...
        def configure(self): ...
        def send_feedback(self, feedback): ...
        def disconnect(self): ...

        def get_action(self):
            return {"ee_dx": 0.0, "ee_dy": 0.0, "ee_dz": 0.5, "ee_dyaw": 0.0, "gripper": -1.0}

    cfg = VptrSimArmConfig(task="lift", image_size=32, calibration_dir=tmp_path / "c")
    robot = make_robot_from_config(cfg)
    features = {**hw_to_dataset_features(robot.observation_features, "observation", False),
                **hw_to_dataset_features(robot.action_features, "action", False)}
    ds = LeRobotDataset.create("vptr/lerobot-loop", fps=20, features=features, root=tmp_path / "ds",
                               robot_type=robot.name, use_videos=False)
    tele_a, robot_a, robot_o = make_default_processors()
    robot.connect()
    z0 = robot.get_observation()["ee_z"]
    record_loop(robot=robot, events={"exit_early": False}, fps=20, teleop_action_processor=tele_a,
                robot_action_processor=robot_a, robot_observation_processor=robot_o, dataset=ds,
                teleop=Up(UpConfig(calibration_dir=tmp_path / "t")), control_time_s=0.5, single_task="lift")
    assert robot.get_observation()["ee_z"] > z0 + 0.02
    robot.disconnect()
    ds.save_episode()
    ds.finalize()
    back = LeRobotDataset("vptr/lerobot-loop", root=tmp_path / "ds")
    assert back.num_episodes == 1 and 5 <= len(back) <= 11
    np.testing.assert_allclose(back[0]["action"].numpy(), [0, 0, 0.5, 0, -1])


def test_any_lerobot_robot_by_config_type_with_clear_errors(tmp_path):
    with pytest.raises(UnknownNameError, match=r"unknown LeRobot robot type 'so102'.*so101_follower"):
        LeRobotRobot.from_type("so102")
    with pytest.raises(ConfigError, match=r"Missing required field.*port"):
        LeRobotRobot.from_type("so101_follower", calibration_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"could not be built.*feetech"):  # its SDK is not installed here
        LeRobotRobot.from_type("so101_follower", port="/dev/null", calibration_dir=str(tmp_path))
    sim = LeRobotRobot.from_type("vptr_sim_arm", task="reach", image_size=16, calibration_dir=str(tmp_path))
    assert sim.spec.action.max_step == (1.0, 1.0, 1.0, 1.0, 2.0)  # our spec survives the wrapping


class TwoJointConfig(RobotConfig):
    pass


class TwoJoint(LeRobotBase):
    """A LeRobot robot that, like LeRobot's own, declares names but no limits."""

    config_class, name = TwoJointConfig, "two_joint"

    def __init__(self, config):
        super().__init__(config)
        self.q, self.connected = np.zeros(2), False

    observation_features = property(lambda self: {"j0.pos": float, "j1.pos": float})
    action_features = property(lambda self: {"j0.pos": float, "j1.pos": float})
    is_connected = property(lambda self: self.connected)
    is_calibrated = property(lambda self: True)

    def connect(self, calibrate=True):
        self.connected = True

    def calibrate(self): ...
    def configure(self): ...

    def get_observation(self):
        return {"j0.pos": float(self.q[0]), "j1.pos": float(self.q[1])}

    def send_action(self, action):
        self.q = np.array([action["j0.pos"], action["j1.pos"]])
        return dict(action)

    def disconnect(self):
        self.connected = False


def test_a_lerobot_robot_without_limits_needs_them_given_and_then_runs_in_our_loop(tmp_path):
    bare = LeRobotRobot(TwoJoint(TwoJointConfig(calibration_dir=tmp_path)))
    with pytest.raises(ConfigError, match=r"no low limit.*robot declares none"):
        SafetyFilter(bare.spec.action, 30)
    with pytest.raises(ConfigError, match=r"limits: missing \['j1.pos'\]"):
        LeRobotRobot(TwoJoint(TwoJointConfig(calibration_dir=tmp_path)), limits={"j0.pos": (-1, 1)})
    robot = LeRobotRobot(TwoJoint(TwoJointConfig(calibration_dir=tmp_path)),
                         limits={"j0.pos": (-1, 1), "j1.pos": (-2, 2)}, max_step=0.05, rate_hz=30)
    robot.connect()

    class Far:
        io = PolicyIO(state_names=("j0.pos", "j1.pos"), action_names=("j1.pos", "j0.pos"), chunk_size=4)

        def __call__(self, obs):
            return np.tile([9.0, -9.0], (4, 1))  # far outside the limits, in the policy's order

    ex = make_executor(Far(), ExecutorConfig(mode="chunk"))
    loop = ControlLoop(robot, Far.io, ex, SafetyFilter(robot.spec.action, 30), clock=FakeClock(),
                       cfg=LoopConfig(rate_hz=30, max_steps=30, handle_sigint=False, estop_signal=None))
    report = loop.run()
    assert report.steps == 30
    np.testing.assert_allclose(robot.robot.q, [-1.0, 1.5])  # j0 reached its limit, j1 ramps 0.05/step


def test_lerobot_s_plugin_loader_registers_our_robot_from_the_package_name():
    # what `lerobot-record --robot.discover_packages_path=robots --robot.type=vptr_sim_arm`
    # does before parsing: import the package and every module in it
    from lerobot.configs.parser import load_plugin

    load_plugin("robots")
    assert RobotConfig.get_choice_class("vptr_sim_arm") is VptrSimArmConfig
