"""`vptr deploy`: an artifact through executor, safety filter and loop on the sim arm;
refusals (mismatched robot, tampered artifact) before anything moves; recording."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vptr.deploy import DeployConfig, deploy
from vptr.errors import ConfigError

SIZE = 16
CAM = "observation.images.front"


@pytest.fixture(scope="module")
def sim_policy(tmp_path_factory):
    """An (untrained) QC artifact with the sim arm's observation and action names."""
    from sim.native.embodiments import ACTION_NAMES, Arm
    from vptr.finetune import get_agent
    from vptr.finetune.policy import save_policy
    from vptr.nets.encoders import make_encoder
    from vptr.nets.policy import DataSpec

    torch.manual_seed(0)
    names = list(Arm.state_names)
    spec = DataSpec(action_dim=5, horizon=4, state_dim=len(names), cameras=(CAM,),
                    image_size=SIZE, frame_stack=2)
    agent = get_agent("qc")
    cfg = agent.config_cls(chunk=4, hidden=(32, 32), feature_dim=8, flow_steps=2, act_samples=2)
    nets = agent.create(cfg, spec, lambda: {CAM: make_encoder("impala_small", 6, SIZE)})
    nets.action_norm.fit({"min": [-1.0] * 5, "max": [1.0] * 5})
    meta = {"state_features": ["observation.state"], "state_widths": [len(names)],
            "state_names": {"observation.state": names}, "action_names": list(ACTION_NAMES),
            "fps": 20.0, "tasks": ["reach the target"], "encoder": "impala_small"}
    return save_policy(tmp_path_factory.mktemp("art") / "policy", "qc", cfg, nets, meta)


@pytest.mark.parametrize("executor", ["chunk", "rtc"])
def test_deploy_runs_the_full_stack_on_the_sim_arm(sim_policy, tmp_path, executor):
    report = deploy(DeployConfig(policy=sim_policy, robot="sim:reach", episodes=2, max_steps=12,
                                 executor=executor, realtime=False,
                                 report=tmp_path / "r.json"), out=open(os.devnull, "w"))
    assert report["episodes"] == 2
    for e in report["per_episode"]:  # an episode ends at the step limit or on success
        assert e["steps"] == 12 or (e["success"] and 0 < e["steps"] < 12), e
    assert 0.0 <= report["success_ci95"][0] <= report["success_rate"] <= report["success_ci95"][1]
    assert report["inference_ms"]["p50"] is not None and report["limits"] == "on"
    assert json.loads((tmp_path / "r.json").read_text())["robot"] == "sim:reach"


def test_deploy_refuses_a_robot_that_does_not_match_before_moving(sim_policy):
    with pytest.raises(ConfigError, match="mismatches") as e:
        deploy(DeployConfig(policy=sim_policy, robot="mock", max_steps=5))
    assert "waist_pos" in str(e.value)  # the policy's state the mock robot lacks, by name
    with pytest.raises(ConfigError, match="rate"):
        deploy(DeployConfig(policy=sim_policy, robot="sim:reach", rate=50.0, max_steps=5))


def test_deploy_cli_refuses_a_tampered_artifact_without_a_traceback(sim_policy, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in sim_policy.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "vptr", "deploy", "--policy", str(bad), "--robot",
                        "sim:reach", "--max-steps", "3", "--no-realtime"], capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, PYTHONHASHSEED="0"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "sha256 does not match" in r.stderr


def test_deploy_records_episodes_that_lerobot_opens(sim_policy, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    deploy(DeployConfig(policy=sim_policy, robot="sim:reach", episodes=1, max_steps=6,
                        realtime=False, record=tmp_path / "rec"), out=open(os.devnull, "w"))
    ds = LeRobotDataset("vptr/deploy", root=tmp_path / "rec")
    assert ds.num_episodes == 1 and ds.num_frames == 6
    frame = ds[0]
    assert np.asarray(frame["action"]).shape == (5,)


def test_max_step_can_only_tighten_the_robots_own_limits(sim_policy):
    from robots.sim_arm import SimArm
    from vptr.deploy import step_limit

    action = SimArm(render_images=False).spec.action  # max_step (1, 1, 1, 1, 2)
    cfg = DeployConfig(policy=sim_policy, max_step=1.5)
    np.testing.assert_array_equal(step_limit(cfg, action), [1.0, 1.0, 1.0, 1.0, 1.5])
    assert step_limit(DeployConfig(policy=sim_policy), action) is None


def test_limits_are_off_only_when_asked_for_on_the_command_line(sim_policy, tmp_path):
    from vptr.cli import build_parser

    def parsed(*argv):
        ns = build_parser().parse_args(["deploy", "--policy", str(sim_policy), *argv])
        return getattr(ns, "unlimited", False)

    assert parsed() is False and parsed("--unlimited") is True
    report = deploy(DeployConfig(policy=sim_policy, robot="sim:reach", max_steps=3, realtime=False,
                                 unlimited=True), out=open(os.devnull, "w"))
    assert report["limits"] == "off"
    assert not {"rate", "clamp"} & set(report["interventions"])  # nothing limited


def test_an_unwritable_output_is_one_error_line_not_a_traceback(sim_policy, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    r = subprocess.run([sys.executable, "-m", "vptr", "export", "--policy", str(sim_policy),
                        "--out", str(blocker / "artifact")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(blocker) in r.stderr


def test_export_provenance_names_the_final_policys_evaluation(tmp_path):
    from vptr.export import newest_eval

    ev = tmp_path / "eval"
    (ev / "vptr_Lift-v0").mkdir(parents=True)
    for step, rate in ((2, 0.1), (10, 0.9), (4, 0.3)):
        (ev / f"step_{step:07d}.json").write_text(json.dumps({"success_rate": rate, "episodes": 5}))
    assert newest_eval(tmp_path)["success_rate"] == 0.9  # the highest step, whatever the mtimes
    (ev / "vptr_Lift-v0" / "report.json").write_text(json.dumps({"success_rate": 0.8,
                                                                  "episodes": 50}))
    assert newest_eval(tmp_path)["episodes"] == 50  # a `vptr eval` of the final policy wins


def test_deploy_picks_the_sim_tasks_own_instruction_for_a_multi_task_policy(tmp_path):
    from vptr.deploy import deploy_task

    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "policy.json").write_text(json.dumps(
        {"tasks": ["pick up the red cube", "reach the red ball"],
         "provenance": {"target_tasks": ["pick up the red cube"]}}))
    assert deploy_task(DeployConfig(policy=folder, robot="sim:reach")) == "reach the red ball"
    assert deploy_task(DeployConfig(policy=folder, robot="sim:push")) == "pick up the red cube"
    assert deploy_task(DeployConfig(policy=folder, robot="sim:reach", task="1")) == 1
    assert deploy_task(DeployConfig(policy=folder, robot="mock")) == 0
