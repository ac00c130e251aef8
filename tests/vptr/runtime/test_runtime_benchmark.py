"""benchmarks/control.py runs as a user runs it, states the machine and exits cleanly."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_control_benchmark_smoke():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "control.py"), "--tiny"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    from vptr.diagnostics.machine import describe

    machine = next(ln for ln in r.stdout.splitlines() if ln.startswith("machine:"))
    assert describe().split(",")[0] in machine
    for mode in ("chunk", "async", "rtc"):
        assert f" {mode} " in r.stdout
    assert "jitter p50 ms" in r.stdout and "largest seam" in r.stdout
    assert "LeRobot ACT" in r.stdout and "qc (N=32)" in r.stdout
