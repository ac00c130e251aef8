"""The policy artifact: round trip against the training model, tamper and truncation
refusals, the runtime loading it without training code, RTC inpainting on a real flow
policy, and the parity-checked TorchScript parts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vptr.finetune import get_agent
from vptr.finetune.policy import save_policy
from vptr.nets.encoders import make_encoder
from vptr.nets.policy import DataSpec
from vptr.runtime.artifact import ArtifactError, ArtifactPolicy, SimPolicy, load_artifact, write_artifact

ROOT = Path(__file__).resolve().parents[3]
SIZE, H, DA = 16, 4, 3
CAM = "observation.images.front"
STATE_NAMES = ["j0", "j1", "g"]
META = {"state_features": ["observation.state"], "state_widths": [3],
        "state_names": {"observation.state": STATE_NAMES}, "action_names": ["dx", "dy", "grip"],
        "fps": 20.0, "tasks": ["lift the cube"], "encoder": "impala_small",
        "channels_last": False, "provenance": {"dataset": "test"}}


def make_agent(name: str, frame_stack: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    spec = DataSpec(action_dim=DA, horizon=H, state_dim=3, cameras=(CAM,), image_size=SIZE,
                    frame_stack=frame_stack, num_tasks=1)
    agent = get_agent(name)
    extra = {"act_samples": 4} if name in ("qc", "dqc") else {}
    if name == "dqc":
        extra["backup_horizon"] = 6
    cfg = agent.config_cls(chunk=H, hidden=(32, 32), feature_dim=8, flow_steps=3, **extra)
    nets = agent.create(cfg, spec, lambda: {CAM: make_encoder("impala_small", 3 * frame_stack, SIZE,
                                                              channels_last=False)})
    nets.action_norm.fit({"min": [-2.0, 0.0, -1.0], "max": [2.0, 0.5, 1.0]})
    nets.policy.encoder.state_norm.fit({"mean": [0.1, -0.2, 0.0], "std": [2.0, 0.5, 1.0]})
    return agent, cfg, nets.eval()


def observation(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"observation.state": rng.normal(size=3).astype(np.float32),
            CAM: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)}


def training_batch(obs_seq: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """The training layout of the last observation with its frame stack."""
    frames = [o[CAM].transpose(2, 0, 1) for o in obs_seq]
    return {"state": torch.from_numpy(obs_seq[-1]["observation.state"])[None],
            f"obs.{CAM}": torch.from_numpy(np.concatenate(frames))[None],
            "task_index": torch.zeros(1, dtype=torch.int64)}


@pytest.fixture
def artifact(tmp_path):
    agent, cfg, nets = make_agent("qc")
    return save_policy(tmp_path / "policy", "qc", cfg, nets, META), (agent, cfg, nets)


@pytest.mark.parametrize("name", ["qc", "dqc", "flowbc", "iql", "corft"])
def test_runtime_output_equals_the_training_model(tmp_path, name):
    agent, cfg, nets = make_agent(name)
    folder = save_policy(tmp_path / "p", name, cfg, nets, META)
    policy = ArtifactPolicy(folder)
    rng = np.random.default_rng(0)
    seq = [observation(rng), observation(rng)]
    for o in seq:
        policy.observe(o)  # the loop observes every period; stack = the last two
    torch.manual_seed(7)
    with torch.no_grad():
        ref = nets.action_norm.inverse(agent.act(nets, training_batch(seq), cfg))[0].numpy()
    torch.manual_seed(7)
    got = policy(seq[-1])
    assert got.shape == (H, DA)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    # ... through the traced trunk and Euler step of the deployment path
    assert "flow step" in policy.compiled and any(k.startswith("trunk") for k in policy.compiled)
    assert policy.io.state_names == tuple(STATE_NAMES) and policy.io.rate_hz == 20.0
    assert policy.io.cameras == (("front", (SIZE, SIZE, 3)),)
    # the simulation wrapper gives the same chunk for the same frames
    sim = SimPolicy(folder)
    sim.observe({"state": seq[0]["observation.state"][None], "pixels.front": seq[0][CAM][None]})
    sim.observe({"state": seq[1]["observation.state"][None], "pixels.front": seq[1][CAM][None]})
    torch.manual_seed(7)
    out = sim({"state": seq[1]["observation.state"][None], "pixels.front": seq[1][CAM][None]})
    np.testing.assert_allclose(out[0], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["flowbc", "qc"])
def test_seeded_slots_act_the_same_whatever_the_batch_and_the_history(tmp_path, name):
    agent, cfg, nets = make_agent(name, frame_stack=1)
    sim = SimPolicy(save_policy(tmp_path / "p", name, cfg, nets, META))
    rng = np.random.default_rng(0)
    obs = [observation(rng) for _ in range(3)]

    def batch(rows, slots):
        return {"state": np.stack([obs[r]["observation.state"] for r in rows]),
                "pixels.front": np.stack([obs[r][CAM] for r in rows]),
                "env_index": np.asarray(slots, dtype=np.int64)}

    sim.reset(np.arange(3), seeds=np.array([5, 6, 7]))
    together = sim(batch([0, 1, 2], [0, 1, 2]))
    torch.manual_seed(123)  # the global generator plays no part
    sim.reset(np.array([2, 0]), seeds=np.array([7, 5]))  # other slots, other order
    alone = sim(batch([2, 0], [2, 0]))
    np.testing.assert_allclose(alone, together[[2, 0]], atol=1e-6, rtol=0)
    sim.reset(np.arange(2), seeds=np.array([5, 5]))  # one observation in two slots
    same = sim(batch([0, 0], [0, 1]))
    sim.reset(np.arange(2), seeds=np.array([5, 6]))
    other = sim(batch([0, 0], [0, 1]))
    np.testing.assert_allclose(same[0], same[1], atol=1e-6, rtol=0)
    assert not np.allclose(other[0], other[1], atol=1e-3)  # each seed its own draw
    # a slot reset without a seed draws from torch's global generator
    sim.reset(np.array([0]))
    torch.manual_seed(9)
    a = sim(batch([0], [0]))
    torch.manual_seed(9)
    np.testing.assert_array_equal(sim(batch([0], [0])), a)
    with pytest.raises(ValueError, match="2 seeds for 1 slots"):
        sim.reset(np.array([0]), seeds=np.array([1, 2]))


@pytest.mark.parametrize("n", [1, 2, 9])
def test_a_best_of_n_dial_at_load_acts_as_the_training_agent_with_that_n(tmp_path, n):
    agent, cfg, nets = make_agent("qc")  # trained to act best-of-4
    folder = save_policy(tmp_path / "p", "qc", cfg, nets, META)
    policy = ArtifactPolicy(folder, act_samples=n)
    assert policy.actor.cfg.act_samples == n
    rng = np.random.default_rng(1)
    seq = [observation(rng), observation(rng)]
    for o in seq:
        policy.observe(o)
    torch.manual_seed(3)
    with torch.no_grad():
        ref = nets.action_norm.inverse(agent.act(nets, training_batch(seq), cfg, samples=n))
    torch.manual_seed(3)
    np.testing.assert_allclose(policy(seq[-1]), ref[0].numpy(), atol=1e-5, rtol=0)


def test_a_policy_without_a_critic_refuses_best_of_n(tmp_path):
    from vptr.errors import ConfigError

    agent, cfg, nets = make_agent("flowbc")
    folder = save_policy(tmp_path / "p", "flowbc", cfg, nets, META)
    with pytest.raises(ConfigError, match="needs a critic"):
        SimPolicy(folder, act_samples=8)
    assert SimPolicy(folder, act_samples=1).actor.cfg.act_samples == 1


def test_traced_parts_act_as_the_eager_ones_with_a_channels_last_trunk(tmp_path):
    torch.manual_seed(0)
    spec = DataSpec(action_dim=DA, horizon=H, state_dim=3, cameras=(CAM,), image_size=SIZE)
    agent = get_agent("qc")
    cfg = agent.config_cls(chunk=H, hidden=(32, 32), feature_dim=8, flow_steps=3, act_samples=6)
    nets = agent.create(cfg, spec, lambda: {CAM: make_encoder("impala_small", 3, SIZE)})
    folder = save_policy(tmp_path / "p", "qc", cfg, nets, {**META, "channels_last": True})
    fast, eager = ArtifactPolicy(folder), ArtifactPolicy(folder, compiled=False)
    assert set(fast.compiled) == {f"trunk {CAM.replace('.', '__')}", "flow step"}
    assert eager.compiled == {}
    obs = observation(np.random.default_rng(3))
    prefix, weights = np.tile(np.array([1.0, 0.2, -0.5]), (H, 1)), np.array([1.0, 1.0, 0.5, 0.0])
    for seed in range(3):
        torch.manual_seed(seed)
        a = fast(obs), fast.sample(obs, prefix, weights, 10.0)
        torch.manual_seed(seed)
        b = eager(obs), eager.sample(obs, prefix, weights, 10.0)
        np.testing.assert_allclose(a[0], b[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(a[1], b[1], atol=1e-5, rtol=0)


def test_artifact_document_describes_the_policy(artifact):
    folder, _ = artifact
    doc = json.loads((folder / "policy.json").read_text())
    assert doc["format"] == "vptr-policy" and doc["chunk_size"] == H and doc["rate_hz"] == 20.0
    assert doc["observation"]["state"][0]["names"] == STATE_NAMES
    cam = doc["observation"]["cameras"][0]
    assert cam["shape"] == [SIZE, SIZE, 3] and cam["frame_stack"] == 2 and cam["dtype"] == "uint8"
    assert doc["action"]["names"] == ["dx", "dy", "grip"]
    np.testing.assert_allclose(doc["normalization"]["action"]["min"], [-2.0, 0.0, -1.0])
    np.testing.assert_allclose(doc["normalization"]["state"]["std"], [2.0, 0.5, 1.0])
    assert doc["network"]["actor"]["act_samples"] == 4 and doc["network"]["actor"]["ranker_heads"] == 2
    assert len(doc["integrity"]["weights_sha256"]) == 64


def _flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampered_edited_truncated_or_missing_files_are_refused(artifact, tmp_path):
    folder, _ = artifact
    load_artifact(folder)  # intact: loads
    variants = {}
    for name in ("weights", "doc", "truncated_weights", "truncated_doc", "missing"):
        copy = tmp_path / name
        copy.mkdir()
        for f in folder.iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        variants[name] = copy
    w = variants["weights"] / "model.safetensors"
    _flip_byte(w, w.stat().st_size - 5)  # a weight value, same size
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        load_artifact(variants["weights"])
    doc_path = variants["doc"] / "policy.json"
    doc = json.loads(doc_path.read_text())
    doc["action"]["data_max"][0] = 100.0  # an edit that would change what the robot does
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="edited after export"):
        load_artifact(variants["doc"])
    w = variants["truncated_weights"] / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="truncated"):
        load_artifact(variants["truncated_weights"])
    d = variants["truncated_doc"] / "policy.json"
    d.write_text(d.read_text()[:200])
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(variants["truncated_doc"])
    (variants["missing"] / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"model\.safetensors: missing"):
        load_artifact(variants["missing"])


def test_the_runtime_loads_and_acts_without_training_code(artifact):
    folder, _ = artifact
    code = ("import sys, pickle, numpy as np, torch\n"
            "def refuse(*a, **k): raise AssertionError('unpickling on the deployment path')\n"
            "pickle.load = pickle.loads = torch.load = refuse\n"
            "class Refuse:\n    def __init__(self, *a, **k): refuse()\n"
            "pickle.Unpickler = Refuse\n"
            "from vptr.runtime.artifact import ArtifactPolicy\n"
            f"p = ArtifactPolicy({str(folder)!r})\n"
            f"obs = {{'observation.state': np.zeros(3, np.float32), "
            f"{CAM!r}: np.zeros(({SIZE}, {SIZE}, 3), np.uint8)}}\n"
            "assert p(obs).shape == (4, 3)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('vptr.train', 'vptr.finetune', "
            "'vptr.pretrain', 'vptr.data'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout


def test_rtc_guidance_pulls_the_frozen_prefix_toward_the_pending_actions(artifact):
    folder, _ = artifact
    policy = ArtifactPolicy(folder)
    obs = observation(np.random.default_rng(1))
    prefix = np.tile(np.array([1.5, 0.4, -0.8]), (H, 1))
    weights = np.array([1.0, 1.0, 0.5, 0.0])
    free, guided = [], []
    for s in range(8):
        torch.manual_seed(s)
        free.append(np.abs(policy(obs)[:2] - prefix[:2]).mean())
        torch.manual_seed(s)
        guided.append(np.abs(policy.sample(obs, prefix, weights, 10.0)[:2] - prefix[:2]).mean())
    assert np.mean(guided) < 0.5 * np.mean(free), (np.mean(guided), np.mean(free))


def test_rewriting_a_loaded_artifact_keeps_its_behaviour(artifact, tmp_path):
    folder, _ = artifact
    doc, actor = load_artifact(folder)
    again = write_artifact(tmp_path / "again", actor, {k: doc[k] for k in ("agent", "observation",
                                                                           "action", "rate_hz", "tasks")})
    obs = observation(np.random.default_rng(2))
    torch.manual_seed(0)
    a = ArtifactPolicy(folder)(obs)
    torch.manual_seed(0)
    b = ArtifactPolicy(again)(obs)
    np.testing.assert_array_equal(a, b)


def test_torchscript_parts_match_pytorch(artifact, tmp_path):
    from vptr.export import EncoderPart, ExportConfig, example_inputs, export

    folder, _ = artifact
    out = export(ExportConfig(policy=folder, out=tmp_path / "exported", torchscript=True))
    doc = json.loads((out / "policy.json").read_text())
    parts = doc["exports"]["torchscript"]
    assert set(parts) == {"encoder", "velocity"} and all(p["max_abs_err"] <= 1e-5 for p in parts.values())
    _, actor = load_artifact(out)
    enc_in, vel_in = example_inputs(actor, n=2, seed=3)
    traced = torch.jit.load(str(out / parts["encoder"]["file"]))
    with torch.no_grad():
        torch.testing.assert_close(traced(*enc_in), EncoderPart(actor)(*enc_in), atol=1e-5, rtol=0)
        velocity = torch.jit.load(str(out / parts["velocity"]["file"]))
        torch.testing.assert_close(velocity(*vel_in), actor.policy.flow(*vel_in), atol=1e-5, rtol=0)
    with pytest.raises(Exception, match="exists and is not empty"):
        export(ExportConfig(policy=folder, out=out))


def test_onnx_parts_match_pytorch_in_onnxruntime(artifact, tmp_path):
    import onnxruntime as ort

    from vptr.export import EncoderPart, ExportConfig, example_inputs, export

    folder, _ = artifact
    out = export(ExportConfig(policy=folder, out=tmp_path / "onnx", onnx=True))
    parts = json.loads((out / "policy.json").read_text())["exports"]["onnx"]
    assert all(p["max_abs_err"] is not None and p["max_abs_err"] <= 1e-5 for p in parts.values())
    _, actor = load_artifact(out)
    enc_in, _ = example_inputs(actor, n=4, seed=9)  # another batch size than at export
    sess = ort.InferenceSession(str(out / parts["encoder"]["file"]), providers=["CPUExecutionProvider"])
    feed = dict(zip(parts["encoder"]["inputs"], enc_in))
    got = sess.run(None, {i.name: feed[i.name].numpy() for i in sess.get_inputs()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, EncoderPart(actor)(*enc_in).numpy(), atol=1e-5, rtol=0)
