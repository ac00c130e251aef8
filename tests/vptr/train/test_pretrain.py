"""The pretraining loop: resume after SIGKILL, torchrun with 2 processes, CLI errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vptr.config import build_config
from vptr.errors import ConfigError
from vptr.train.pretrain import PretrainConfig, train


def tiny_args(data, out, cache, steps=12, objective="icvf", extra=()):
    return ["--data", str(data), "--objective", objective, "--encoder", "impala_small",
            "--source.size", "16", "--source.cache-dir", str(cache), "--steps", str(steps),
            "--batch-size", "8", "--checkpoint-every", "3", "--log-every", "3",
            "--num-workers", "1", "--out-dir", str(out), "--no-progress", "--deterministic",
            "--threads", "1", *extra]


def run_cli(args, **kw):
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.Popen([sys.executable, "-m", "vptr.cli", "pretrain", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, **kw)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    name = (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run_dir / "checkpoints" / name / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["icvf", "tdjepa"])  # tdjepa draws random z: RNG restore
def test_sigkill_then_resume_matches_uninterrupted(square_videos, tmp_path, objective):
    cache = tmp_path / "cache"
    steps = 15
    extra = ("--run-name", "r", "--batch-size", "8")
    # uninterrupted reference
    ref = run_cli(tiny_args(square_videos, tmp_path / "ref", cache, steps, objective, extra))
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    # interrupted: SIGKILL once a mid-way checkpoint exists, then rerun the same command
    args = tiny_args(square_videos, tmp_path / "killed", cache, steps, objective, extra)
    proc = run_cli(args)
    ckdir = tmp_path / "killed" / "r" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline:
        latest = ckdir / "latest"
        if latest.exists() and latest.read_text().strip() >= "step_0000006":
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = (ckdir / "latest").read_text().strip()
    assert killed_at < f"step_{steps:07d}", "the run finished before it could be killed"
    resumed = run_cli(args)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming" in out
    a, b = final_weights(tmp_path / "ref" / "r"), final_weights(tmp_path / "killed" / "r")
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_torchrun_two_processes(square_videos, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    # eval data only exists on rank 0: the periodic diagnostics must not desynchronise ranks
    args = tiny_args(square_videos, tmp_path / "ddp", tmp_path / "cache", steps=60,
                     objective="vip", extra=("--run-name", "d", "--num-workers", "0",
                                             "--eval-data", f"sq={square_videos}",
                                             "--eval-every", "30", "--eval-episodes", "2"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2",
                        "-m", "vptr.cli", "pretrain", *args], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "ddp" / "d"
    history = json.loads((run / "history.json").read_text())
    first, last = history[0][1], sum(v for _, v in history[-3:]) / 3
    assert last < first, history
    # the checkpoint loads in a single process
    from vptr.diagnostics.evaluate import load_run

    cfg, nets, objective, step, size = load_run(run)
    assert step == 60 and cfg.objective == "vip"
    assert (run / "values" / "sq_step0000030.png").exists()
    with torch.no_grad():
        v = objective.value_fn(nets, torch.zeros(2, 3, 16, 16, dtype=torch.uint8),
                               torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    assert torch.isfinite(v).all()


def test_in_process_short_run_and_diagnostics(square_videos, tmp_path):
    cfg = build_config(PretrainConfig, {
        "data": str(square_videos), "eval_data": (f"sq={square_videos}",),
        "encoder": "impala_small", "steps": 4, "batch_size": 4, "checkpoint_every": 2,
        "log_every": 2, "num_workers": 0, "out_dir": str(tmp_path), "progress": False,
        "source.size": 16, "source.cache_dir": str(tmp_path / "c"), "eval_episodes": 3})
    result = train(cfg)
    run = Path(result["run_dir"])
    assert result["step"] == 4 and len(result["history"]) == 2
    d = result["diagnostics"]["sq"]
    assert set(d) >= {"spearman", "spread", "goal_value", "feature_effective_rank"}
    assert (run / "values" / "sq_step0000004.png").exists()
    meta = json.loads((run / "encoder" / "config.json").read_text())
    assert meta["encoder"] == "impala_small" and meta["image_size"] == 16
    enc = load_file(str(run / "encoder" / "model.safetensors"))
    assert enc and all(torch.isfinite(t).all() for t in enc.values())
    assert list((run / "tb").iterdir())
    # same config again: nothing left to do, resumes at the end
    again = train(cfg)
    assert again["step"] == 4


def test_config_errors(square_videos):
    with pytest.raises(ConfigError, match="data: a video source is required"):
        PretrainConfig()
    with pytest.raises(ConfigError, match="steps must be > 0"):
        build_config(PretrainConfig, {"data": "x", "steps": 0})
    with pytest.raises(ConfigError, match="unknown option"):
        build_config(PretrainConfig, {"data": "x", "icvf.expectiles": 0.3})
    with pytest.raises(ConfigError, match=r"icvf\.expectile must be in"):
        build_config(PretrainConfig, {"data": "x", "icvf.expectile": 1.5})


def test_cli_missing_data_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vptr.cli", "pretrain", "--data",
                        str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vptr: error:") and "nope" in lines[0]
