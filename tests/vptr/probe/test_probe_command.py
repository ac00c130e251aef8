"""``vptr probe`` through its command line: a tiny version of every probe, a rerun that
skips done cells, an encoder trained for the probe's own task scoring above a random one,
and bad input refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vptr.cli import main

SIZE = 32
TINY = ["--demos", "2", "--seeds", "0", "1", "--episodes", "3", "--steps", "6",
        "--batch-size", "8", "--frame-episodes", "6", "--shifts", "0.5",
        "--value-episodes", "4", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Demonstration and frame caches shared by the module's probes."""
    root = tmp_path_factory.mktemp("probe")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VPTR_CACHE_DIR", str(root / "frames"))
        yield root


@pytest.fixture(scope="module")
def pretrain_run(dirs, square_videos):
    """A (barely) pretrained ICVF run at the probe's image size, with held-out video."""
    from vptr.config import build_config
    from vptr.train.pretrain_loop import PretrainConfig, train

    cfg = build_config(PretrainConfig, {
        "data": str(square_videos), "eval_data": (f"square={square_videos}",),
        "objective": "icvf", "encoder": "impala_small", "steps": 3, "batch_size": 8,
        "checkpoint_every": 3, "log_every": 3, "eval_episodes": 4, "num_workers": 0,
        "source.image_size": SIZE, "out_dir": str(dirs / "pretrain"), "run_name": "icvf",
        "progress": False, "threads": 1})
    return train(cfg)["run_dir"]


def probe(dirs, *args: str) -> int:
    try:
        return main(["probe", "--data-dir", str(dirs / "data"), *args])
    except SystemExit as e:  # argparse refused the command line itself
        return int(e.code)


def test_tiny_probe_reports_every_probe_with_intervals(dirs, pretrain_run, capsys):
    out = dirs / "report_run"
    assert probe(dirs, "--encoder", str(pretrain_run), "--out", str(out), *TINY) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "%|" not in captured.out + captured.err  # --no-progress: no bar, data generation's too
    assert "Few-demo imitation" in printed and "Split 'val'" in printed
    assert "stored as robomimic HDF5" in printed  # frames as rendered: no codec loss
    report = json.loads((out / "report.json").read_text())
    assert report["split"] == "val" and report["eval_seed"] == 100_000
    pins = json.loads((Path(report["cells_dir"]) / "data.json").read_text())
    assert [n.split()[:3] for n in pins] == [["demos", "lift", "k2"]]  # kept across sim/ edits

    rows = report["imitation"]
    arms = {"encoder-frozen", "encoder-finetuned", "random-frozen", "scratch"}
    assert {(r["arm"], r["shift"]) for r in rows} == {(a, s) for a in arms for s in (0.0, 0.5)}
    for r in rows:
        assert [p["seed"] for p in r["per_seed"]] == [0, 1]
        for p in [*r["per_seed"], r["pooled"]]:
            lo, hi = p["ci95"]
            assert 0.0 <= lo <= p["success_rate"] <= hi <= 1.0
        assert r["pooled"]["episodes"] == 6
        if r["arm"].startswith("encoder"):
            vs = r["vs_baseline"]
            assert vs["pairs"] == 6
            base = next(b for b in rows if (b["arm"], b["shift"]) == (vs["baseline"], r["shift"]))
            # paired on the same episodes: the difference of the two pooled rates
            assert vs["difference"] == pytest.approx(r["pooled"]["success_rate"]
                                                     - base["pooled"]["success_rate"])
            lo, hi = vs["ci95"]
            assert -1.0 <= lo <= vs["difference"] <= hi <= 1.0 and hi - lo > 0.0

    frames = report["frames"]["vptr/Lift-v0"]
    assert set(frames["encoders"]) == {"encoder", "random init", "scratch-trained (K=2)",
                                       "encoder fine-tuned (K=2)"}
    for entry in frames["encoders"].values():
        assert set(entry["linear"]["r2"]) == set(frames["targets"])
        assert all(np.isfinite(v) for v in entry["linear"]["r2"].values())
        assert entry["invariance"]["0.5"]["ratio"] > 0.0
    assert frames["encoders"]["random init"]["seeds"] == 2

    values = report["values"]["sets"]["square"]
    for method in ("trained", "pixel_l2", "untrained_mean"):
        assert np.isfinite(values[method]["spearman"])
    md = (out / "report.md").read_text()
    for needle in ("Few-demo imitation", "Linear probe", "Invariance", "Value curves"):
        assert needle in md

    assert report["cells_run"] == 8 + 1 + 1  # imitation runs, frame probes, values
    # a rerun finds every cell done: nothing is trained or evaluated again
    done = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("cell.json")}
    assert len(done) == 10
    assert probe(dirs, "--encoder", str(pretrain_run), "--out", str(out), *TINY) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("cell.json")} == done
    again = json.loads((out / "report.json").read_text())
    assert (again["cells_run"], again["cells_reused"]) == (0, 10)
    assert again["imitation"] == rows

    # another encoder probed with the same cells folder reuses the baselines' runs
    other = dirs / "report_random"
    assert probe(dirs, "--encoder", "random", "--out", str(other), "--cells-dir",
                 str(out / "cells"), "--probes", "imitation", *TINY) == 0
    shared = json.loads((other / "report.json").read_text())
    assert (shared["cells_run"], shared["cells_reused"]) == (0, 4)
    assert shared["imitation"] == [r for r in rows if not r["arm"].startswith("encoder")]


def test_phi_of_a_pretraining_run_is_probed_with_baselines_of_its_architecture(dirs,
                                                                               pretrain_run):
    out = dirs / "report_phi"
    assert probe(dirs, "--encoder", str(pretrain_run), "--features", "phi", "--out", str(out),
                 "--probes", "imitation", "--arms", "frozen", *TINY) == 0
    report = json.loads((out / "report.json").read_text())
    arch = report["encoder"]["arch"]
    assert arch.startswith("impala_small+head:") and "φ" in report["encoder"]["label"]
    exported = json.loads((Path(report["encoder"]["init"]) / "config.json").read_text())
    assert exported["features"] == "phi" and exported["encoder"] == arch
    assert {r["arm"] for r in report["imitation"]} == {"encoder-frozen", "random-frozen"}
    assert report["cells_run"] == 4  # its own random baseline (trunk + head), not the trunk's
    # a run without a checkpoint, or an encoder that is not a run, is one clear error
    assert probe(dirs, "--encoder", "random", "--features", "phi", *TINY) == 2


def train_state_encoder(out, steps: int = 300):
    """An Impala trunk trained to regress the probe's targets (tool, gripper, cube
    positions) from frames of generator-seed episodes (not the probe's), exported."""
    from torch import nn

    from vptr.diagnostics.probes import collect_frames
    from vptr.nets.encoders import make_encoder
    from vptr.nets.weights import export_encoder

    frames = collect_frames("vptr/Lift-v0", range(16), SIZE, ())
    y = torch.tensor((frames.targets - frames.targets.mean(0)) / frames.targets.std(0),
                     dtype=torch.float32)
    x = torch.from_numpy(frames.images).permute(0, 3, 1, 2).contiguous()
    torch.manual_seed(0)
    trunk = make_encoder("impala_small", 3, SIZE)
    head = nn.Linear(trunk.out_dim, y.shape[1])
    opt = torch.optim.Adam([*trunk.parameters(), *head.parameters()], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(len(x), (64,), generator=g)
        loss = ((head(trunk(x[i])) - y[i]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return export_encoder(out, trunk.eval(), "impala_small", 1, SIZE,
                          objective="state regression (test)")


def test_frozen_arms_alone_train_no_trunk(dirs):
    out = dirs / "report_frozen"
    assert probe(dirs, "--encoder", "random", "--out", str(out), "--arms", "frozen",
                 "--probes", "imitation", *TINY) == 0
    rows = json.loads((out / "report.json").read_text())["imitation"]
    assert rows and {r["arm"] for r in rows} == {"random-frozen"}
    assert not list((out / "cells").glob("imitation/*/*/scratch"))
    # the test split evaluates the same policies on its own episodes, training nothing
    runs = sorted((out / "cells").glob("imitation/*/*/*/*/run"))
    test = dirs / "report_frozen_test"
    assert probe(dirs, "--encoder", "random", "--out", str(test), "--cells-dir",
                 str(out / "cells"), "--arms", "frozen", "--probes", "imitation", "--split",
                 "test", *TINY) == 0
    assert sorted((out / "cells").glob("imitation/*/*/*/*/run")) == runs
    report = json.loads((test / "report.json").read_text())
    assert report["split"] == "test" and report["eval_seed"] == 300_000
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("imitation/*/*/*/*/cell.json")]
    tested = [c["result"] for c in cells if c["config"]["eval"]["seed"] == 300_000]
    assert len(tested) == len(runs) and all("trained_in" in r for r in tested)
    assert all(min(r["eval"]["0"]["episode_seeds"]) == 300_000 for r in tested)


def test_an_encoder_trained_for_the_probe_task_beats_a_random_one(dirs, single_thread):
    folder = train_state_encoder(dirs / "state_encoder")
    out = dirs / "report_state"
    assert probe(dirs, "--encoder", str(folder), "--out", str(out), "--probes", "linear",
                 "--frame-episodes", "16", "--seeds", "0", "1", "--threads", "1",
                 "--no-progress") == 0
    encs = json.loads((out / "report.json").read_text())["frames"]["vptr/Lift-v0"]["encoders"]
    trained, random = encs["encoder"]["linear"], encs["random init"]["linear"]
    assert trained["r2_mean"] > random["r2_mean"] + 0.05, (trained["r2"], random["r2"])
    assert trained["r2"]["cube_pos_x"] > 0.8


@pytest.mark.parametrize("args, message", [
    (["--encoder", "{tmp}/missing"], "missing: encoder not found"),
    (["--encoder", "{tmp}"], "config.json"),
    (["--encoder", "{enc64}", "--image-size", "32"], "takes 64x64 images"),
    (["--encoder", "random", "--probes", "linear", "vision"], "probes: unknown ['vision']"),
    (["--encoder", "random", "--tasks", "vptr/NoSuch-v0"], "unknown task"),
    (["--encoder", "timm:resnet18", "--weights", "{tmp}/w.safetensors"],
     "w.safetensors: weights file not found"),
    (["--encoder", "random", "--split", "train"], "expected one of val, test"),
    (["--encoder", "random", "--arms", "warm"], "arms: choose from frozen, finetuned"),
])
def test_bad_input_is_one_error_line(dirs, tmp_path, capsys, args, message):
    from vptr.nets.encoders import make_encoder
    from vptr.nets.weights import export_encoder

    enc64 = export_encoder(tmp_path / "enc64", make_encoder("impala_small", 3, 64),
                           "impala_small", 1, 64)
    argv = [a.format(tmp=tmp_path / "empty", enc64=enc64) for a in args]
    (tmp_path / "empty").mkdir()
    assert probe(dirs, *argv, "--out", str(tmp_path / "out"), "--no-progress") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert message in err[0], err[0]
    assert not (tmp_path / "out").exists()  # nothing was written

