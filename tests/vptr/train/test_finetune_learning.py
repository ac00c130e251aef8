"""Fine-tuning learns (issue 9, CI acceptance) on the native Lift task, 50 scripted
demonstrations (noise 0.1), 50 evaluation episodes, chunked flow BC trained the same way as
the reference in the same test:

* QC from state reaches >= 90 % success. State = proprioception + the object pose the
  generator records (``observation.environment_state``). Settings are the measured ones of
  benchmarks/RESULTS.md ("Session 5"): 1,500 updates at batch 128, 4 candidates in the QC
  target.
* QC from 64x64 images (front camera + proprioception) reaches >= 80 % success. The image
  trunk is a frozen, video-pretrained ICVF Impala shipped as a fixture
  (tests/fixtures/encoders/icvf_impala64, PROVENANCE.md says how it was made), so its
  embeddings are computed once and the run costs a few minutes: 3,000 updates (at 2,000,
  runs that differed only in seed scored 78-92 %, too close to the bar; at 3,000 every
  run we made scored 90-92 %, benchmarks/RESULTS.md "Sessions 14-15"). End-to-end
  QC from pixels needs ~4,000 updates and ~20 core-minutes for 80 % (benchmarks/RESULTS.md,
  "Session 5"), more than the 30-minute suite can carry next to the pretraining learning
  test; a frozen *random* trunk scores about half (RESULTS, "Sessions 14-15").

Each pair runs as `vptr finetune` processes side by side with one torch thread each (the
command a user runs).
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

AGENTS = ("qc", "flowbc")
STATE_STEPS = 1500
IMAGE_STEPS = 3000
ENCODER = Path(__file__).resolve().parents[2] / "fixtures" / "encoders" / "icvf_impala64"
ENCODER_SHA256 = "f51c26ea9ead66927cd976847f0b0b606b6572c079d6032de4a55b6bf8c998e5"


@pytest.fixture(scope="module")
def lift50(tmp_path_factory):
    from sim.generate import RobotDataConfig, generate_robot

    root = tmp_path_factory.mktemp("finetune_learning")
    data, _ = generate_robot(RobotDataConfig(tasks=("vptr/Lift-v0",), episodes_per_task=50,
                                             image_size=64, data_dir=root / "data"),
                             log=lambda m: None)
    return root, data


def _side_by_side(root: Path, data: Path, tag: str, steps: int, args: list[str]) -> dict:
    """Train QC and flow BC at once (one thread each); their final evaluation reports."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = {}
    for agent in AGENTS:
        cmd = [sys.executable, "-m", "vptr", "finetune", "--data", str(data), "--agent", agent,
               "--steps", str(steps), "--qc.target-samples", "4", *args,
               "--eval-env", "vptr/Lift-v0", "--eval-episodes", "50", "--videos", "0",
               "--out-dir", str(root / "runs"), "--run-name", f"{tag}-{agent}",
               "--threads", "1", "--no-progress", "--checkpoint-every", "500"]
        procs[agent] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env)
    out = {}
    for agent, proc in procs.items():
        stdout, err = proc.communicate(timeout=3600)
        assert proc.returncode == 0, err[-3000:]
        report = root / "runs" / f"{tag}-{agent}" / "eval" / f"step_{steps:07d}.json"
        out[agent] = json.loads(report.read_text())
        print(f"{tag} {agent}: {stdout.strip().splitlines()[-1]}")
    return out


def _check_pair(reports: dict, bar: float) -> None:
    qc, bc = reports["qc"], reports["flowbc"]
    assert qc["episodes"] == 50 and bc["episodes"] == 50
    assert qc["success_rate"] >= bar, qc["success_rate"]
    # the reference ran and was evaluated the same way (its number is reported, not barred)
    seeds = [[e["seed"] for e in r["per_episode"]] for r in (qc, bc)]
    assert seeds[0] == seeds[1]  # same evaluation episodes


@pytest.mark.slow
def test_qc_from_state_solves_native_lift(lift50):
    root, data = lift50
    reports = _side_by_side(root, data, "state", STATE_STEPS, [
        "--no-source.images", "--source.state-keys", "observation.state",
        "observation.environment_state"])
    _check_pair(reports, 0.9)


@pytest.mark.slow
def test_qc_from_64x64_images_solves_native_lift(lift50):
    weights = (ENCODER / "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == ENCODER_SHA256, "fixture encoder changed"
    root, data = lift50
    reports = _side_by_side(root, data, "images", IMAGE_STEPS, [
        "--encoder.init", str(ENCODER), "--encoder.mode", "frozen", "--shift-pad", "0"])
    for r in reports.values():  # the policies acted on the 64x64 camera
        assert r["env_kwargs"] == {"cameras": ["front"], "image_size": 64}, r["env_kwargs"]
    _check_pair(reports, 0.8)
