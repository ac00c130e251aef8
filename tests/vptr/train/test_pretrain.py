"""The pretraining loop: resume after SIGKILL, torchrun with 2 processes, CLI errors."""

import json
import math
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
from vptr.train.pretrain_loop import PretrainConfig, train


def tiny_args(data, out, cache, steps=12, objective="icvf", extra=()):
    return ["--data", str(data), "--objective", objective, "--encoder", "impala_small",
            "--source.image-size", "16", "--source.cache-dir", str(cache), "--steps", str(steps),
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
    from vptr.diagnostics.heldout import load_pretrained

    loaded = load_pretrained(run)
    assert loaded.step == 60 and loaded.objective.name == "vip"
    assert (run / "values" / "sq_step0000030.png").exists()
    with torch.no_grad():
        v = loaded.objective.value_fn(loaded.nets, torch.zeros(2, 3, 16, 16, dtype=torch.uint8),
                                      torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    assert torch.isfinite(v).all()


def test_in_process_short_run_and_diagnostics(square_videos, tmp_path):
    cfg = build_config(PretrainConfig, {
        "data": str(square_videos), "eval_data": (f"sq={square_videos}",),
        "encoder": "impala_small", "steps": 4, "batch_size": 4, "checkpoint_every": 2,
        "log_every": 2, "num_workers": 0, "out_dir": str(tmp_path), "progress": False,
        "source.image_size": 16, "source.cache_dir": str(tmp_path / "c"), "eval_episodes": 3})
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


def test_value_diagnostics_during_training_do_not_change_the_weights(square_videos, tmp_path):
    """``eval_every`` is not part of a run's hash: diagnosing at step 2 must leave the
    weights at step 4 bit-identical to a run that diagnoses only at the end (the loop runs
    the diagnosis inside ``checkpoint.rng_preserved``; today's diagnostics draw nothing at
    random, so this guards against one that would)."""
    weights = {}
    for name, every in (("a", 0), ("b", 2)):
        cfg = build_config(PretrainConfig, {
            "data": str(square_videos), "eval_data": (f"sq={square_videos}",),
            "encoder": "impala_small", "steps": 4, "batch_size": 4, "num_workers": 0,
            "out_dir": str(tmp_path / name), "progress": False, "eval_every": every,
            "deterministic": True, "source.image_size": 16,
            "source.cache_dir": str(tmp_path / "c"), "eval_episodes": 3})
        run = Path(train(cfg)["run_dir"])
        weights[name] = load_file(str(run / "encoder" / "model.safetensors"))
    assert list((tmp_path / "b").rglob("sq_step0000002.png"))  # it did diagnose at step 2
    assert not list((tmp_path / "a").rglob("sq_step0000002.png"))
    for k, v in weights["a"].items():
        torch.testing.assert_close(v, weights["b"][k], rtol=0, atol=0, msg=k)


def test_tcn_run_samples_with_its_positive_window(square_videos, tmp_path, monkeypatch):
    """`--objective tcn` trains end to end, and its sampler draws near frames in the
    objective's window (tcn.positive_window), not the sampler's default."""
    import vptr.data.loader as loader_mod

    windows = []

    class Recording(loader_mod.PretrainSampler):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            windows.append(self.near_window)

    monkeypatch.setattr(loader_mod, "PretrainSampler", Recording)
    cfg = _small_cfg(square_videos, tmp_path, objective="tcn", steps=3,
                     **{"tcn.positive_window": 5, "tcn.embed_dim": 8})
    result = train(cfg)
    assert windows == [5] and result["step"] == 3
    losses = [loss for _, loss in result["history"]]  # (step, mean loss) every 2 steps
    assert losses and all(math.isfinite(v) for v in losses)


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


def _small_cfg(data, tmp_path, **over):
    values = {"data": str(data), "encoder": "impala_small", "steps": 8, "batch_size": 4,
              "checkpoint_every": 2, "log_every": 2, "num_workers": 0, "progress": False,
              "out_dir": str(tmp_path / "runs"), "run_name": "r", "source.image_size": 16,
              "source.cache_dir": str(tmp_path / "c"), "source.progress": False, "threads": 1}
    return build_config(PretrainConfig, values | over)


def _tb_steps(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def _killed_then_resumed(data, tmp_path):
    """A run stopped without a final checkpoint (as by a kill: checkpoints at 2 and 4, then
    stopped after step 5), then resumed to its end (8 steps, logs every 2)."""
    cfg = _small_cfg(data, tmp_path)
    stopped = train(cfg, stop_after=5)
    assert stopped["stopped"] and stopped["step"] == 5
    run = Path(stopped["run_dir"])
    after_kill = json.loads((run / "history.json").read_text())
    return run, after_kill, train(cfg)


def test_history_survives_a_kill(square_videos, tmp_path):
    run, after_kill, result = _killed_then_resumed(square_videos, tmp_path)
    assert [s for s, _ in after_kill] == [2, 4]  # written with each checkpoint
    assert [s for s, _ in result["history"]] == [2, 4, 6, 8]
    assert [s for s, _ in json.loads((run / "history.json").read_text())] == [2, 4, 6, 8]


def test_tensorboard_keeps_the_checkpoint_step_after_resume(square_videos, tmp_path):
    run, _, _ = _killed_then_resumed(square_videos, tmp_path)
    assert _tb_steps(run, "icvf/loss") == [2, 4, 6, 8]


@pytest.mark.parametrize("data", ["missing", "empty", "junk"])
def test_failed_start_leaves_no_run_directory(tmp_path, data):
    from vptr.errors import DataError

    path = tmp_path / data
    if data != "missing":
        path.mkdir()
    if data == "junk":
        (path / "clip.mp4").write_bytes(b"not a video")
    cfg = _small_cfg(path, tmp_path)
    with pytest.raises(DataError):
        train(cfg)
    assert not cfg.run_dir().exists()


def test_unwritable_frame_cache_is_one_error_line(square_videos, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    env = dict(os.environ, VPTR_CACHE_DIR=str(blocker / "cache"))
    r = subprocess.run([sys.executable, "-m", "vptr", "pretrain", "--data", str(square_videos),
                        "--out-dir", str(tmp_path / "runs"), "--steps", "1"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vptr: error:"), r.stderr[-2000:]
    assert str(blocker / "cache") in lines[0] and "frame-cache directory" in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_evaluate_values_writes_to_out_dir_and_names_the_files(square_videos, tmp_path):
    cfg = _small_cfg(square_videos, tmp_path, steps=2,
                     eval_data=(f"sq={square_videos}",), eval_episodes=2)
    run = Path(train(cfg)["run_dir"])
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    out = tmp_path / "elsewhere"
    r = subprocess.run([sys.executable, "-m", "vptr", "evaluate-values", "--run", str(run),
                        "--episodes", "2", "--untrained-seeds", "1", "--out-dir", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "eval_sq.png"]
    assert "eval_sq.png" in r.stdout and "<set>" not in r.stdout
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # run left as it was
    report = json.loads((out / "eval.json").read_text())
    assert report["step"] == 2 and set(report["sets"]) == {"sq"}


def test_python_dash_m_vptr_is_the_command():
    r = subprocess.run([sys.executable, "-m", "vptr", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "pretrain" in r.stdout and "evaluate-values" in r.stdout


def test_run_dir_keeps_its_name_when_a_later_option_is_off():
    """Options added after runs existed (colour jitter) hash only when set: a run started
    before them resumes in its directory; setting one starts another run."""
    from vptr.config import build_config, config_hash
    from vptr.train.pretrain_loop import _NOT_IN_HASH, OBJECTIVES, PretrainConfig

    cfg = build_config(PretrainConfig, {"data": "videos", "out_dir": "runs"})
    others = tuple(o for o in OBJECTIVES if o != cfg.objective)
    before = config_hash(cfg, exclude=_NOT_IN_HASH + others + ("sampler.color_jitter",))
    assert cfg.run_dir().name.endswith(before)
    jitter = build_config(PretrainConfig, {"data": "videos", "out_dir": "runs",
                                           "sampler": {"color_jitter": 0.3}})
    assert jitter.run_dir() != cfg.run_dir()
