"""The benchmarks run as a user runs them and exit cleanly (smoke test, seconds)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pretrain_benchmark_times_the_trainer_step_and_exits_cleanly(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pretrain.py"), "--tiny",
                        "--steps", "1", "--warmup", "0", "--threads", "1",
                        "--data-dir", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "c")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # a loader worker or thread alive at interpreter exit shows up as this C++ abort message
    assert "terminate called" not in r.stderr, r.stderr[-3000:]
    machine = next(ln for ln in r.stdout.splitlines() if ln.startswith("machine:"))
    from vptr.diagnostics.machine import describe

    assert describe().split(",")[0] in machine  # the CPU model is stated with the figures
    assert "ICVF, Impala small (tiny)" in r.stdout


def test_pretrain_benchmark_imports_the_trainer_step():
    text = (ROOT / "benchmarks" / "pretrain.py").read_text()
    assert "from vptr.train.pretrain_loop import PretrainConfig, build_training" in text
    assert "loss.backward()" not in text  # no re-implemented step


def test_finetune_benchmark_runs_tiny():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "finetune.py"), "--tiny",
                        "--amp", "off", "bf16"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "QC frozen-cached / fine-tuned encoder (amp bf16, compile off)" in r.stdout
    assert "bf16 / fp32 updates/s, qc finetune ours" in r.stdout
    assert "eval workers" in r.stdout and "peak resident memory" in r.stdout
