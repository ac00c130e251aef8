"""The fine-tuning loop on a tiny generated dataset: exact resume, encoder modes, pretrained
encoders checked against the data, the policy folder round trip, `vptr eval`, bad input
refused before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vptr.config import build_config
from vptr.errors import ConfigError, DataError
from vptr.train.finetune_loop import FinetuneConfig, train

SIZE = 32


@pytest.fixture(scope="module")
def robot_dir(tmp_path_factory):
    from sim.generate import RobotDataConfig, generate_robot

    cfg = RobotDataConfig(tasks=("vptr/Reach-v0",), episodes_per_task=3, image_size=SIZE,
                          data_dir=tmp_path_factory.mktemp("data"))
    return generate_robot(cfg, log=lambda m: None)[0]


def config(robot_dir, tmp_path, **values) -> FinetuneConfig:
    base = {"data": str(robot_dir), "agent": "qc", "steps": 6, "checkpoint_every": 3,
            "log_every": 3, "out_dir": str(tmp_path / "runs"), "run_name": "r",
            "progress": False, "deterministic": True, "threads": 1, "shift_pad": 2,
            "encoder.name": "impala_small", "source.frames.cache_dir": str(tmp_path / "cache"),
            "source.frames.progress": False, "source.frames.decode_workers": 1,
            "source.frames.image_size": SIZE,
            "source.state_keys": ("observation.state", "observation.environment_state")}
    for agent in ("qc", "flowbc", "iql", "dqc", "corft"):
        base.update({f"{agent}.batch_size": 8, f"{agent}.hidden": (32, 32),
                     f"{agent}.feature_dim": 16, f"{agent}.flow_steps": 2})
    base.update({"qc.target_samples": 2, "qc.act_samples": 3, "dqc.backup_horizon": 7})
    base.update(values)
    return build_config(FinetuneConfig, base)


def weights(run_dir) -> dict[str, torch.Tensor]:
    name = (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run_dir / "checkpoints" / name / "model.safetensors"))


@pytest.mark.parametrize("agent", ["qc", "corft"])  # corft: phases read the batch's step
def test_resume_after_a_crash_matches_an_uninterrupted_run(robot_dir, tmp_path, agent):
    crashed = config(robot_dir, tmp_path / "b", agent=agent, **{"corft.bc_steps": 4})
    ref = train(config(robot_dir, tmp_path / "a", agent=agent, **{"corft.bc_steps": 4}))
    assert train(crashed, stop_after=4)["stopped"]  # killed after step 4: checkpoint at 3
    resumed = train(crashed)
    assert resumed["step"] == 6 and ref["step"] == 6
    a, b = weights(tmp_path / "a" / "runs" / "r"), weights(tmp_path / "b" / "runs" / "r")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    history = json.loads((tmp_path / "b" / "runs" / "r" / "history.json").read_text())
    assert [h[0] for h in history] == [3, 6]


def test_periodic_evaluation_does_not_change_what_a_run_learns(robot_dir, tmp_path):
    """Evaluating every 3 steps leaves the weights at step 6 bit-identical to a run that
    evaluates only at the end (``eval_every`` is not part of the run's hash)."""
    ev = {"eval_env": "vptr/Reach-v0", "eval_episodes": 2, "videos": 0}
    train(config(robot_dir, tmp_path / "a", **ev))
    train(config(robot_dir, tmp_path / "b", eval_every=3, **ev))
    assert (tmp_path / "b" / "runs" / "r" / "eval" / "step_0000003.json").exists()
    a, b = weights(tmp_path / "a" / "runs" / "r"), weights(tmp_path / "b" / "runs" / "r")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_frozen_encoder_trains_on_cached_embeddings_only(robot_dir, tmp_path):
    cfg = config(robot_dir, tmp_path, **{"encoder.mode": "frozen", "shift_pad": 0})
    train(cfg)
    w = weights(tmp_path / "runs" / "r")
    trunk = [k for k in w if ".trunks." in k and k.startswith("nets.policy.")]
    assert trunk
    torch.manual_seed(cfg.seed)
    from vptr.nets.encoders import make_encoder

    torch.manual_seed(cfg.seed)
    fresh = make_encoder("impala_small", 3, SIZE).state_dict()
    for k in trunk:  # the trunk is exactly its initialisation: never trained
        name = k.split(".trunks.", 1)[1].split(".", 1)[1]
        torch.testing.assert_close(w[k], fresh[name], rtol=0, atol=0)
    head = [k for k in w if k.startswith("nets.policy.encoder.head.")]
    assert head


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_a_frozen_trunk_sees_each_dataset_frame_once_and_no_update(robot_dir, tmp_path,
                                                                 monkeypatch, mode):
    """What makes a frozen run cheap: the trunk embeds every dataset row once before
    training and never runs in an update; a trained trunk runs on every batch."""
    import vptr.nets.encoders as encoders

    rows, make = [], encoders.make_encoder

    def counted(*args, **kwargs):
        trunk = make(*args, **kwargs)
        trunk.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
        return trunk

    monkeypatch.setattr(encoders, "make_encoder", counted)
    shift = 0 if mode == "frozen" else 2
    out = train(config(robot_dir, tmp_path, **{"encoder.mode": mode, "shift_pad": shift}))
    assert out["step"] == 6
    meta = json.loads((robot_dir / "meta" / "info.json").read_text())
    if mode == "frozen":
        assert sum(rows) == meta["total_frames"]  # each row once, in batches of <= 256
    else:  # QC's shared trunk: obs and next_obs of a batch of 8 in each of the 6 updates
        assert len(rows) >= 12 and sum(rows) >= 6 * 2 * 8


def test_a_cpu_bf16_run_trains_fp32_weights_with_bf16_arithmetic(robot_dir, tmp_path):
    train(config(robot_dir, tmp_path / "fp32"))
    out = train(config(robot_dir, tmp_path / "bf16", amp="bf16", device="cpu"))
    assert out["step"] == 6
    a, b = weights(tmp_path / "fp32" / "runs" / "r"), weights(tmp_path / "bf16" / "runs" / "r")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in b.values()
               if v.is_floating_point())
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the updates did run in bf16
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        config(robot_dir, tmp_path, amp="fp16", device="cpu")


def test_frozen_mode_refuses_random_shift(robot_dir, tmp_path):
    with pytest.raises(ConfigError, match="shift_pad"):
        config(robot_dir, tmp_path, **{"encoder.mode": "frozen", "shift_pad": 4})


def test_scaled_mode_puts_the_trunks_in_their_own_group(robot_dir, tmp_path):
    from vptr.finetune import get_agent
    from vptr.train import core
    from vptr.train.finetune_loop import build_training, data_spec, open_data, trunk_factory

    cfg = config(robot_dir, tmp_path, **{"encoder.mode": "scaled", "encoder.lr_scale": 0.1})
    ds = open_data(cfg)
    with core.session("cpu") as s:
        nets, step, _ = build_training(cfg, get_agent("qc"), data_spec(cfg, ds),
                                       trunk_factory(cfg, ds), ds, s)
    groups = step.optimizer.param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(3e-4), pytest.approx(3e-5)]
    trunk = {id(p) for n, p in nets.named_parameters() if ".trunks." in n}
    assert {id(p) for p in groups[1]["params"]} == trunk


def test_pretrained_encoder_that_does_not_fit_is_refused(robot_dir, tmp_path):
    from vptr.nets.encoders import make_encoder
    from vptr.nets.weights import export_encoder

    enc = make_encoder("impala_small", 6, 16)
    export_encoder(tmp_path / "enc", enc, "impala_small", frame_stack=2, image_size=16)
    cfg = config(robot_dir, tmp_path, **{"encoder.init": str(tmp_path / "enc")})
    with pytest.raises(ConfigError, match=r"in_channels 6.*image_size 16 vs the dataset's 32"):
        train(cfg)
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.parametrize("shared", [True, False])
def test_pretrained_encoder_initialises_both_networks(robot_dir, tmp_path, shared):
    from vptr.nets.encoders import make_encoder
    from vptr.nets.weights import export_encoder

    torch.manual_seed(123)
    enc = make_encoder("impala_small", 3, SIZE)
    export_encoder(tmp_path / "enc", enc, "impala_small", frame_stack=1, image_size=SIZE)
    from vptr.finetune import get_agent
    from vptr.train import core
    from vptr.train.finetune_loop import build_training, data_spec, open_data, trunk_factory

    cfg = config(robot_dir, tmp_path, **{"encoder.init": str(tmp_path / "enc"),
                                         "qc.shared_trunk": shared})
    ds = open_data(cfg)
    with core.session("cpu") as s:
        nets, _, _ = build_training(cfg, get_agent("qc"), data_spec(cfg, ds),
                                    trunk_factory(cfg, ds), ds, s)
    ref = enc.state_dict()
    for net in (nets.policy, nets.q):
        trunk = next(iter(net.encoder.trunks.values()))
        # QC's default: one trunk for both networks; otherwise a copy each
        assert (trunk is next(iter(nets.q.encoder.trunks.values()))) == (shared or net is nets.q)
        for k, v in trunk.state_dict().items():
            torch.testing.assert_close(v, ref[k])


def test_policy_folder_round_trip_and_vptr_eval(robot_dir, tmp_path):
    from sim.evaluate import evaluate
    from vptr.finetune.policy import load_policy

    cfg = config(robot_dir, tmp_path, agent="flowbc", frame_stack=2, eval_env="vptr/Reach-v0",
                 eval_episodes=2, videos=1)
    result = train(cfg)
    assert result["eval"]["episodes"] == 2 and result["eval"]["videos"]
    policy = load_policy(result["policy"])
    assert policy.data_spec.frame_stack == 2
    kw = policy.env_kwargs()
    assert kw["environment_state"] and kw["image_size"] == SIZE
    torch.manual_seed(0)
    a = evaluate(policy, "vptr/Reach-v0", episodes=2, seed=5, env_kwargs=kw, progress=False)
    torch.manual_seed(0)
    b = evaluate(load_policy(result["policy"]), "vptr/Reach-v0", episodes=2, seed=5,
                 env_kwargs=kw, progress=False)
    assert a["per_episode"] == b["per_episode"]
    env = dict(os.environ, PYTHONHASHSEED="0")
    out = subprocess.run([sys.executable, "-m", "vptr", "eval", "--run", result["run_dir"],
                          "--episodes", "2", "--videos", "0", "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "runs" / "r" / "eval" / "vptr_Reach-v0" / "report.json")
                        .read_text())
    assert report["episodes"] == 2 and "success_ci95" in report
    # an environment whose observations do not match is refused, naming the mismatch: a
    # valid artifact that reads one more state entry and one fewer environment entry
    from vptr.runtime.artifact import load_artifact, write_artifact

    doc, actor = load_artifact(result["policy"])
    state = doc["observation"]["state"]
    state[0]["names"].append(state[1]["names"].pop(0))
    other = write_artifact(tmp_path / "other", actor, {k: v for k, v in doc.items() if k in (
        "agent", "observation", "action", "rate_hz", "tasks", "provenance")})
    out = subprocess.run([sys.executable, "-m", "vptr", "eval", "--policy", str(other),
                          "--env", "vptr/Lift-v0", "--episodes", "1", "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "state" in out.stderr and "environment_state" in out.stderr, out.stderr


def test_bad_data_is_refused_before_a_run_directory_exists(robot_dir, tmp_path):
    with pytest.raises(DataError, match="no feature"):
        train(config(robot_dir, tmp_path, **{"source.state_keys": ("observation.nope",)}))
    assert not (tmp_path / "runs").exists()
    with pytest.raises(DataError):
        train(config(robot_dir, tmp_path, **{"source.fps": 30.0}))
    assert not (tmp_path / "runs").exists()


def test_cli_help_and_errors():
    env = dict(os.environ, PYTHONHASHSEED="0")
    out = subprocess.run([sys.executable, "-m", "vptr", "finetune", "--help"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "--qc.target-samples" in out.stdout
    assert "--encoder.mode" in out.stdout
    out = subprocess.run([sys.executable, "-m", "vptr", "finetune", "--data", "/nonexistent",
                          "--agent", "nope"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "vptr", "eval"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 2 and "exactly one of --run" in out.stderr


def test_acting_wrapper_stacks_consecutive_frames():
    from vptr.finetune import get_agent
    from vptr.finetune.nets import DataSpec
    from vptr.finetune.policy import sim_policy
    from vptr.nets.encoders import make_encoder

    spec = DataSpec(action_dim=2, horizon=2, cameras=("observation.images.front",),
                    image_size=8, frame_stack=3)
    agent = get_agent("flowbc")
    cfg = agent.config_cls(chunk=2, hidden=(8,), feature_dim=4, flow_steps=1)
    nets = agent.create(cfg, spec, lambda: {c: make_encoder("impala_small", 9, 8,
                                                            channels_last=False)
                                            for c in spec.cameras})
    pol = sim_policy("flowbc", cfg, nets, {"channels_last": False})
    frame = lambda v: {"pixels.front": np.full((2, 8, 8, 3), v, np.uint8),
                       "env_index": np.array([0, 1])}
    stacked = lambda slots: np.stack([pol.history.stacked(s, "observation.images.front")
                                      for s in slots])
    pol.reset(np.array([0, 1]))
    pol.observe(frame(1))
    pol.observe(frame(2))
    stack = stacked([1, 0])
    assert stack.shape == (2, 9, 8, 8)
    assert stack[:, ::3, 0, 0].tolist() == [[1, 1, 2], [1, 1, 2]]  # first frame repeated
    pol.reset(np.array([1]))
    pol.observe({"pixels.front": np.full((1, 8, 8, 3), 7, np.uint8), "env_index": np.array([1])})
    assert stacked([1])[0, ::3, 0, 0].tolist() == [7, 7, 7]
    assert pol(frame(3)).shape == (2, 2, 2)


@pytest.mark.slow
def test_torchrun_two_processes(robot_dir, tmp_path):
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "vptr",
                        "finetune", "--data", str(robot_dir), "--agent", "qc", "--steps", "4",
                        "--checkpoint-every", "2", "--log-every", "2", "--qc.batch-size", "8",
                        "--qc.hidden", "32", "32", "--qc.target-samples", "2",
                        "--source.frames.image-size", str(SIZE), "--source.frames.cache-dir",
                        str(tmp_path / "cache"), "--out-dir", str(tmp_path / "runs"),
                        "--run-name", "ddp", "--threads", "1", "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    assert (run / "policy" / "policy.json").exists()
    assert [h[0] for h in json.loads((run / "history.json").read_text())] == [2, 4]


def test_multi_task_policy_is_conditioned_by_task_string(tmp_path):
    from sim.generate import RobotDataConfig, generate_robot
    from vptr.finetune.policy import load_policy

    data, _ = generate_robot(RobotDataConfig(tasks=("vptr/Reach-v0", "vptr/Lift-v0"),
                                             episodes_per_task=2, image_size=SIZE,
                                             data_dir=tmp_path / "data"), log=lambda m: None)
    cfg = config(data, tmp_path, agent="flowbc", steps=2, checkpoint_every=2, log_every=1,
                 eval_env="vptr/Reach-v0", eval_episodes=1, videos=1,
                 **{"source.images": False})
    result = train(cfg)
    assert result["eval"]["videos"]  # a state-only policy is still filmed (rendered frames)
    doc = json.loads((tmp_path / "runs" / "r" / "policy" / "policy.json").read_text())
    assert len(doc["tasks"]) == 2 and doc["network"]["spec"]["num_tasks"] == 2
    lift = next(t for t in doc["tasks"] if "cube" in t)
    policy = load_policy(result["policy"], task=lift)
    assert policy.task_index == doc["tasks"].index(lift)
    widths = [len(s["names"]) for s in doc["observation"]["state"]]
    obs = {"state": np.zeros((3, widths[0]), np.float32),
           "environment_state": np.zeros((3, widths[1]), np.float32)}
    torch.manual_seed(0)
    a = policy(obs)
    torch.manual_seed(0)
    b = load_policy(result["policy"], task=1 - policy.task_index)(obs)
    assert a.shape == (3, 5, 5) and not np.allclose(a, b)  # the task changes the action
    with pytest.raises(DataError, match="unknown task 'fly'"):
        load_policy(result["policy"], task="fly")


# ----------------------------------------------------------------------------- V-PTR phases


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
    """Multi-task prior data of two other tasks (V-PTR's phase-2 data)."""
    from sim.generate import RobotDataConfig, generate_robot

    cfg = RobotDataConfig(tasks=("vptr/Lift-v0", "vptr/Push-v0"), episodes_per_task=2,
                          image_size=SIZE, data_dir=tmp_path_factory.mktemp("prior"))
    return generate_robot(cfg, log=lambda m: None)[0]


def phase3(robot_dir, prior_dir, tmp_path, **values) -> FinetuneConfig:
    return config(robot_dir, tmp_path, **{"prior.data": (str(prior_dir),),
                                          "prior.fraction": 0.75, **values})


def test_resume_with_prior_mixing_matches_an_uninterrupted_run(robot_dir, prior_dir, tmp_path):
    crashed = phase3(robot_dir, prior_dir, tmp_path / "b", agent="flowbc")
    train(phase3(robot_dir, prior_dir, tmp_path / "a", agent="flowbc"))
    assert train(crashed, stop_after=4)["stopped"]
    assert train(crashed)["step"] == 6
    a, b = weights(tmp_path / "a" / "runs" / "r"), weights(tmp_path / "b" / "runs" / "r")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_init_run_copies_every_network_and_reindexes_task_rows(robot_dir, prior_dir, tmp_path):
    from vptr.finetune import get_agent
    from vptr.train import core
    from vptr.train.finetune_loop import build_training, data_spec, open_data, trunk_factory

    phase2 = train(config(prior_dir, tmp_path / "p2", agent="qc"))  # multi-task prior only
    old = weights(tmp_path / "p2" / "runs" / "r")
    cfg = phase3(robot_dir, prior_dir, tmp_path / "p3", agent="qc",
                 **{"init.run": phase2["run_dir"]})
    ds = open_data(cfg)
    old_tasks = json.loads((tmp_path / "p2" / "runs" / "r" / "policy" / "policy.json")
                           .read_text())["tasks"]
    assert ds.tasks[0] == "reach the red ball" and set(ds.tasks[1:]) == set(old_tasks)
    with core.session("cpu") as s:
        nets, step, _ = build_training(cfg, get_agent("qc"), data_spec(cfg, ds),
                                       trunk_factory(cfg, ds), ds, s)
    from vptr.nets.weights import state_dict_to_safetensors
    from vptr.train.finetune_loop import checkpointed_modules

    new = state_dict_to_safetensors(checkpointed_modules(nets, step))
    assert new.keys() == old.keys() and any(k.startswith("target.") for k in new)
    rows = [k for k in new if k.endswith(".task.weight")]
    norms = [k for k in new if "_norm." in k]
    assert rows and norms
    for k in new:
        if k in rows:  # 3 tasks now, 2 before: rows follow the task strings
            assert new[k].shape[0] == 3 and old[k].shape[0] == 2
            for i, task in enumerate(ds.tasks[1:], start=1):
                torch.testing.assert_close(new[k][i], old[k][old_tasks.index(task)])
            assert not any(torch.allclose(new[k][0], r) for r in old[k])  # new task: fresh
        elif k not in norms:  # trunks, heads, critics, policy, the target critic
            torch.testing.assert_close(new[k], old[k], rtol=0, atol=0, msg=k)
    # the normalisers are refitted to the joined data (target + prior), as stored
    stats = ds.stats()["action"]
    lo, hi = torch.tensor(stats["min"]), torch.tensor(stats["max"])
    torch.testing.assert_close(nets.action_norm.shift, (hi + lo) / 2)
    # and a fresh run (no init.run) does not start from those weights: the test can fail
    fresh = phase3(robot_dir, prior_dir, tmp_path / "p3b", agent="qc")
    with core.session("cpu") as s:
        nets2, step2, _ = build_training(fresh, get_agent("qc"), data_spec(fresh, ds),
                                         trunk_factory(fresh, ds), ds, s)
    w2 = state_dict_to_safetensors(checkpointed_modules(nets2, step2))
    assert not torch.equal(w2["nets.policy.flow.net.0.weight"], old["nets.policy.flow.net.0.weight"])


def test_init_run_that_does_not_fit_is_refused_before_a_run_directory_exists(
        robot_dir, prior_dir, tmp_path):
    phase2 = train(config(prior_dir, tmp_path / "p2", agent="flowbc", steps=3))
    init = {"init.run": phase2["run_dir"]}
    cases = [({"agent": "qc"}, "init.run is a 'flowbc' run, this run's agent is 'qc'"),
             ({"agent": "flowbc", "flowbc.hidden": (16, 16)},
              "flowbc.hidden [32, 32] vs [16, 16]"),
             ({"agent": "flowbc", "prior.data": ()},
              "it has a task embedding, this run has one task")]
    for values, message in cases:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            train(phase3(robot_dir, prior_dir, tmp_path, **{**init, **values}))
        assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match=r"drop --encoder\.init"):
        phase3(robot_dir, prior_dir, tmp_path, **init, **{"encoder.init": phase2["run_dir"]})
    with pytest.raises(DataError, match="not a `vptr finetune` run directory"):
        train(phase3(robot_dir, prior_dir, tmp_path, **{"init.run": str(tmp_path / "p2")}))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(DataError, match="no checkpoint"):
        train(phase3(robot_dir, prior_dir, tmp_path, **{"init.run": str(tmp_path / "empty")}))


def test_an_incompatible_prior_dataset_is_refused_before_training(robot_dir, tmp_path):
    from sim.generate import RobotDataConfig, generate_robot

    wrist, _ = generate_robot(RobotDataConfig(tasks=("vptr/Lift-v0",), episodes_per_task=1,
                                              image_size=SIZE, cameras=("wrist",),
                                              data_dir=tmp_path / "data"), log=lambda m: None)
    # the object state of another single task means other things: refused by name
    with pytest.raises(DataError, match=r"'observation\.environment_state' names its entry 0 "
                                        r"'cube_pos_x', the target 'target_pos_x'"):
        train(config(robot_dir, tmp_path, **{"prior.data": (str(wrist),)}))
    cfg = config(robot_dir, tmp_path, **{"prior.data": (str(wrist),),
                                         "source.state_keys": ("observation.state",)})
    with pytest.raises(DataError) as e:
        train(cfg)
    msg = str(e.value)
    assert msg.startswith(f"{wrist}: cannot be mixed with the target dataset {robot_dir}")
    assert "cameras ['observation.images.wrist'], the target's ['observation.images.front']" \
        in msg
    assert not (tmp_path / "runs").exists()
    env = dict(os.environ, PYTHONHASHSEED="0")
    out = subprocess.run([sys.executable, "-m", "vptr", "finetune", "--data", str(robot_dir),
                          "--prior.data", str(wrist), "--source.frames.cache-dir",
                          str(tmp_path / "cache"), "--out-dir", str(tmp_path / "runs"),
                          "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("vptr: error: ")
    assert "cannot be mixed" in out.stderr
    with pytest.raises(ConfigError, match=r"prior\.fraction"):
        config(robot_dir, tmp_path, **{"prior.data": (str(wrist),), "prior.fraction": 1.0})


def test_evaluation_conditions_a_multi_task_policy_on_the_target_task(robot_dir, prior_dir,
                                                                      tmp_path):
    from vptr.evaluate import default_task, policy_task
    from vptr.train.finetune_loop import eval_task, open_data

    cfg = phase3(robot_dir, prior_dir, tmp_path, agent="flowbc", eval_env="vptr/Reach-v0",
                 eval_episodes=1, videos=0, steps=2, checkpoint_every=2, log_every=2)
    ds = open_data(cfg)
    assert eval_task(cfg, ds) == "reach the red ball"
    # the eval env's own instruction wins over the target's task; else the target's
    tasks = ["reach the red ball", "pick up the red cube"]
    assert default_task(tasks, "vptr/Lift-v0", ["reach the red ball"]) == "pick up the red cube"
    assert default_task(tasks, "vptr/Stack-v0", ["reach the red ball"]) == "reach the red ball"
    assert default_task(["x"], "vptr/Lift-v0", []) == 0
    result = train(cfg)
    doc = json.loads((tmp_path / "runs" / "r" / "policy" / "policy.json").read_text())
    assert doc["provenance"]["target_tasks"] == ["reach the red ball"]
    assert doc["provenance"]["prior_fraction"] == 0.75 and len(doc["tasks"]) == 3
    assert policy_task(Path(result["policy"]), "vptr/Reach-v0", "") == "reach the red ball"
    assert policy_task(Path(result["policy"]), "vptr/Reach-v0", "2") == 2
    with pytest.raises(ConfigError, match="eval_task 'fly' is not a task"):
        train(phase3(robot_dir, prior_dir, tmp_path / "x", eval_task="fly"))
