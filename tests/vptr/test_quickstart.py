"""`vptr quickstart` end to end at a tiny scale (the README command runs the full one)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quickstart_tiny(tmp_path):
    cmd = [sys.executable, "-m", "vptr.cli", "quickstart", "--data-dir", str(tmp_path / "data"),
           "--out-dir", str(tmp_path / "runs"), "--robot-episodes", "2", "--video-episodes", "2",
           "--eval-episodes", "1", "--image-size", "32", "--pretrain-steps", "6",
           "--finetune-steps", "4", "--policy-episodes", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False,
                       cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for name in ("robot", "video", "eval_hand", "eval_arm"):
        assert f"\n{name} " in out
    assert "Spearman(V, t)" in out and "quickstart finished" in out
    assert "policy on vptr/Lift-v0: success" in out
    assert "deployed in" in out and "vs vptr eval" in out
    runs = [p for p in (tmp_path / "runs").iterdir() if p.name not in ("finetune", "export")]
    assert len(runs) == 1
    (ft,) = (tmp_path / "runs" / "finetune").iterdir()
    assert (ft / "policy" / "policy.json").exists() and list((ft / "eval").glob("*.json"))
    (art,) = (tmp_path / "runs" / "export").iterdir()
    doc = json.loads((art / "policy.json").read_text())
    assert doc["provenance"]["eval"]["episodes"] == 2 and doc["integrity"]["weights_sha256"]
    report = json.loads((runs[0] / "values" / "eval.json").read_text())
    assert set(report["sets"]) == {"hand", "arm"}
    # a second run reuses the data and the finished pretraining run
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False,
                        cwd=Path(__file__).parents[2])
    assert r2.returncode == 0 and "resuming" in r2.stdout
