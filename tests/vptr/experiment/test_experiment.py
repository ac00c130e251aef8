"""`vptr experiment` on the tiny grid (configs/experiments/tiny.toml, with V-PTR's phases):
end to end through the CLI, resumption without redoing finished cells, an interrupted cell
resumed from its checkpoint, phase 3 started from phase 2 with prior/target mixing, a
changed phase 2 rerunning what depends on it, the summary's intervals, and the
paired-difference statistics."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vptr.errors import ConfigError
from vptr.experiment import newcombe_paired, wilson

ROOT = Path(__file__).resolve().parents[3]
GRID = ROOT / "configs" / "experiments" / "tiny.toml"


def vptr_experiment(tmp: Path, *extra: str, grid: Path = GRID) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vptr", "experiment", "--config", str(grid), "--out-dir",
           str(tmp / "exp"), "--data-dir", str(tmp / "data"), "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env=dict(os.environ, PYTHONHASHSEED="0"))


@pytest.mark.slow
def test_tiny_grid_end_to_end_resumes_without_redoing_cells(tmp_path):
    # a first sitting runs one cell only (the pretraining), as if the machine went away
    r = vptr_experiment(tmp_path, "--max-cells", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cells: 1 run now" in r.stdout
    assert "%|" not in r.stdout + r.stderr  # --no-progress: no bar (data generation included)
    cells = tmp_path / "exp" / "tiny" / "cells"
    pre = cells / "pretrain" / "icvf" / "seed0" / "cell.json"
    first = pre.stat().st_mtime_ns
    values = json.loads(pre.read_text())["result"]["values"]["arm"]  # scored on held-out video
    assert values["episodes"] == 2 and -1.0 <= values["trained"]["spearman"] <= 1.0
    assert len(values["untrained"]) == 1 and "spearman" in values["pixel_l2"]
    pins = json.loads((tmp_path / "exp" / "tiny" / "data.json").read_text())
    assert set(pins) == {"video", "robot", "prior", "values_arm"}  # kept across edits of sim/
    assert all(Path(p["path"]).exists() for p in pins.values())
    # the second sitting does the rest (phase 2 on the prior data, then the target) and does
    # not redo the pretraining
    r = vptr_experiment(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cells: 4 run now, 1 done before" in r.stdout
    assert pre.stat().st_mtime_ns == first
    # phase 3 started every network from its phase-2 run and mixed the prior data in
    for arm in ("none", "icvf"):
        phase2 = json.loads((cells / "prior" / arm / "flowbc" / "seed0" / "cell.json")
                            .read_text())
        phase3 = json.loads((cells / "finetune" / arm / "flowbc" / "seed0" / "cell.json")
                            .read_text())
        run3 = json.loads((Path(phase3["result"]["run_dir"]) / "config.json").read_text())
        assert run3["init"]["run"] == phase2["result"]["run_dir"]
        assert run3["prior"] == {"data": [phase2["config"]["data"]], "fraction": 0.75}
        assert run3["encoder"]["init"] == ""
        run2 = json.loads((Path(phase2["result"]["run_dir"]) / "config.json").read_text())
        assert run2["encoder"]["init"] == ("" if arm == "none" else json.loads(
            pre.read_text())["result"]["run_dir"])
        assert run2["steps"] == 4 and run2["eval_env"] == ""
        doc = json.loads((Path(phase3["result"]["run_dir"]) / "policy" / "policy.json")
                         .read_text())
        assert doc["tasks"] == ["reach the red ball", "pick up the red cube",
                                "push the red cube onto the green square"]
        assert phase3["result"]["task"] == 0  # tested on the target's task
    # a fine-tuning cell killed mid-way (no cell.json, a checkpoint on disk) resumes
    ft = cells / "finetune" / "none" / "flowbc" / "seed0"
    (ft / "cell.json").unlink()
    r = vptr_experiment(tmp_path)
    assert r.returncode == 0 and "cells: 1 run now, 4 done before" in r.stdout, r.stdout
    assert "resuming" in r.stdout + r.stderr
    # the summary: one row per cell and seed, intervals that contain the observed rates
    root = tmp_path / "exp" / "tiny"
    rows = list(csv.DictReader(open(root / "summary.csv")))
    assert {(r["pretraining"], r["agent"], r["seed"]) for r in rows} == {
        ("none", "flowbc", "0"), ("icvf", "flowbc", "0")}
    for row in rows:
        k, n = int(row["successes"]), int(row["episodes"])
        assert n == 3 and float(row["ci_low"]) <= k / n <= float(row["ci_high"])
        lo, hi = wilson(k, n)
        assert abs(float(row["ci_low"]) - lo) < 1e-4 and abs(float(row["ci_high"]) - hi) < 1e-4
    summary = json.loads((root / "summary.json").read_text())
    icvf = next(p for p in summary["pooled"] if p["pretraining"] == "icvf")
    vs = icvf["vs_none"]
    assert vs["pairs"] == 3 and vs["ci_low"] <= vs["difference"] <= vs["ci_high"]
    assert (root / "summary.png").stat().st_size > 1000
    md = (root / "summary.md").read_text()
    assert "| icvf | flowbc |" in md and "vs none" in md
    assert "75 % prior chunks per batch" in md
    assert "## Value curves of the pretraining cells" in md and "| icvf | 1 | " in md
    assert summary["values"][0]["set"] == "arm" and summary["values"][0]["seeds"] == [0]
    assert all(float(r["prior_wall_s"]) > 0 for r in rows)
    # a grid given shifted test evaluations evaluates the done policies again at that visual
    # shift (same episodes), retrains nothing, and summarises each level with its own pairs
    policy_file = Path(phase3["result"]["run_dir"]) / "policy" / "model.safetensors"
    before = policy_file.stat().st_mtime_ns
    r = vptr_experiment(tmp_path, "--eval-shifts", "0.5")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cells: 0 run now, 5 done before" in r.stdout, r.stdout
    assert "2 done cells given their missing evaluations" in r.stdout
    assert policy_file.stat().st_mtime_ns == before
    rows = list(csv.DictReader(open(root / "summary.csv")))
    assert sorted((r["pretraining"], r["shift"]) for r in rows) == [
        ("icvf", "0.0000"), ("icvf", "0.5000"), ("none", "0.0000"), ("none", "0.5000")]
    shifted = json.loads((cells / "finetune" / "icvf" / "flowbc" / "seed0" / "cell.json")
                         .read_text())["result"]["shifted"]["0.5"]
    assert shifted["episode_seeds"] == [300000, 300001, 300002]
    pooled = json.loads((root / "summary.json").read_text())["pooled"]
    icvf05 = next(p for p in pooled if p["pretraining"] == "icvf" and p["shift"] == 0.5)
    assert icvf05["vs_none"]["pairs"] == 3 and icvf05["episodes"] == 3
    assert "| icvf | flowbc | 0.5 |" in (root / "summary.md").read_text()
    r = vptr_experiment(tmp_path, "--eval-shifts", "0.5")  # nothing left to do
    assert "missing evaluations" not in r.stdout
    # a changed phase 2 reruns phase 2 and what starts from it, not the pretraining
    changed = tmp_path / "tiny.toml"
    text = re.sub(r"(\[prior_finetune\][^\n]*\n)steps = 4", r"\1steps = 3", GRID.read_text())
    assert text != GRID.read_text()
    changed.write_text(text)
    r = vptr_experiment(tmp_path, "--cells", "pretrain/*", "prior/none/*", "finetune/none/*",
                        grid=changed)
    assert r.returncode == 0 and "cells: 2 run now, 1 done before" in r.stdout, r.stdout


@pytest.mark.slow
def test_a_grid_continued_on_a_fresh_machine_reads_the_results_folder(tmp_path):
    # a first machine runs part of the grid and keeps each finished cell's record in a
    # results folder (in the repository, for a grid filled over several sittings)
    results = tmp_path / "results"
    one = ("--results-dir", str(results))
    r = vptr_experiment(tmp_path, *one, "--cells", "pretrain/*", "*/none/*")
    assert r.returncode == 0 and "cells: 3 run now" in r.stdout, r.stdout + r.stderr[-3000:]
    kept = sorted(str(p.relative_to(results)) for p in results.rglob("*.json"))
    assert kept == ["finetune/none/flowbc/seed0.json", "pretrain/icvf/seed0.json",
                    "prior/none/flowbc/seed0.json"]
    rec = json.loads((results / "finetune/none/flowbc/seed0.json").read_text())
    assert rec["status"] == "done" and len(rec["result"]["successes"]) == 3
    assert rec["produced_by"]["cpu"]
    # the machine goes away: the cells folder and the generated data are lost, the results
    # folder is kept; the next machine (another --data-dir) redoes only what a cell still to
    # run needs: the pretraining (phase 2 of icvf starts from its run), not scratch's cells
    import shutil

    shutil.rmtree(tmp_path / "exp")
    shutil.rmtree(tmp_path / "data")
    r = subprocess.run([sys.executable, "-m", "vptr", "experiment", "--config", str(GRID),
                        "--out-dir", str(tmp_path / "exp2"), "--data-dir", str(tmp_path / "d2"),
                        "--no-progress", *one], capture_output=True, text=True, timeout=900,
                       cwd=ROOT, env=dict(os.environ, PYTHONHASHSEED="0"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cells: 3 run now, 2 done before (2 from the results folder" in r.stdout, r.stdout
    assert "pretrain/icvf/seed0: running again" in r.stdout
    rows = list(csv.DictReader(open(tmp_path / "exp2" / "tiny" / "summary.csv")))
    assert {(row["pretraining"], row["agent"]) for row in rows} == {("none", "flowbc"),
                                                                   ("icvf", "flowbc")}
    none = next(row for row in rows if row["pretraining"] == "none")
    assert int(none["successes"]) == sum(rec["result"]["successes"])
    # --summary-only from the results folder alone (no cells folder at all)
    r = vptr_experiment(tmp_path, *one, "--summary-only", "--out-dir", str(tmp_path / "exp3"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "summary of 2 fine-tuning cells" in r.stdout, r.stdout


def test_a_bad_grid_is_refused_before_any_cell_runs(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(GRID.read_text().replace("[finetune]\n", "[finetune]\nstepz = 3\n"))
    r = subprocess.run([sys.executable, "-m", "vptr", "experiment", "--config", str(bad),
                        "--out-dir", str(tmp_path / "exp"), "--data-dir", str(tmp_path / "data")],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "stepz" in r.stderr
    assert not (tmp_path / "exp").exists()


def test_newcombe_paired_difference_interval():
    diff, lo, hi = newcombe_paired(a=40, b=8, c=2, d=0)  # 48/50 vs 42/50
    assert diff == pytest.approx(0.12) and lo < diff < hi
    assert lo < 0  # 8 vs 2 discordant pairs: McNemar's exact p = 0.11, not significant
    assert newcombe_paired(a=30, b=15, c=1, d=4)[1] > 0  # 15 vs 1: clearly positive
    d2, lo2, hi2 = newcombe_paired(a=40, b=2, c=8, d=0)
    assert d2 == pytest.approx(-diff) and lo2 == pytest.approx(-hi) and hi2 == pytest.approx(-lo)
    same = newcombe_paired(a=25, b=0, c=0, d=25)
    assert same[0] == 0 and same[1] < 0 < same[2] and same[2] - same[1] < 0.2
    # more discordant pairs -> a wider interval for the same difference
    wide = newcombe_paired(a=20, b=16, c=10, d=4)
    assert (wide[2] - wide[1]) > (hi - lo)


def test_scratch_trains_its_trunk_whatever_mode_the_pretrained_arms_use():
    from vptr.experiment import ExperimentConfig, plan

    def modes(**tables):
        cfg = ExperimentConfig(pretrainings=("none", "vip"), agents=("flowbc",), seeds=(0,),
                               finetune={"encoder": {"mode": "frozen"}, "shift_pad": 0},
                               prior={"tasks": ["vptr/Reach-v0", "vptr/Push-v0"]}, **tables)
        cells = {c.id: c.config for c in plan(cfg, Path("video"), Path("robot"))}
        return {cid: (c["encoder.mode"], c["shift_pad"]) for cid, c in cells.items()
                if not cid.startswith("pretrain/")}

    for phase in ("prior", "finetune"):
        got = modes()
        assert got[f"{phase}/none/flowbc/seed0"] == ("finetune", 0)
        assert got[f"{phase}/vip/flowbc/seed0"] == ("frozen", 0)
        got = modes(finetune_arms={"none": {"shift_pad": 2}, "vip": {"encoder.mode": "scaled"}})
        assert got[f"{phase}/none/flowbc/seed0"] == ("finetune", 2)
        assert got[f"{phase}/vip/flowbc/seed0"] == ("scaled", 0)
        got = modes(finetune_arms={"none": {"encoder": {"mode": "frozen"}}})  # said explicitly
        assert got[f"{phase}/none/flowbc/seed0"] == ("frozen", 0)
    with pytest.raises(ConfigError, match="finetune_arms"):
        modes(finetune_arms={"tcn": {"shift_pad": 2}})


def test_scratch_trains_the_trunk_architecture_the_pretrained_arms_start_from():
    from vptr.experiment import ExperimentConfig, plan

    def trunks(**over):
        tables = dict(pretrainings=("none", "icvf", "vip"), agents=("flowbc",), seeds=(0,),
                      pretrain={"encoder": "impala"}, prior={"tasks": ["vptr/Reach-v0",
                                                                       "vptr/Push-v0"]})
        cfg = ExperimentConfig(**{**tables, **over})
        return {c.id: c.config.get("encoder.name", "<default impala_small>")
                for c in plan(cfg, Path("video"), Path("robot")) if "/none/" in c.id}

    got = trunks()  # the full-scale grid: release Impala pretrained -> scratch on it too
    assert set(got) == {"prior/none/flowbc/seed0", "finetune/none/flowbc/seed0"}
    assert set(got.values()) == {"impala"}
    # the reduced grid's trunk is the fine-tuning default: the scratch cells' keys stay as
    # they were (recorded results are not invalidated)
    assert set(trunks(pretrain={"config": "configs/pretrain/icvf_reduced.toml"}).values()) == {
        "<default impala_small>"}
    # arms on different trunks: the scratch trunk must be named, else refused before any work
    split = dict(pretrain_arms={"vip": {"encoder": "impala_small"}})
    with pytest.raises(ConfigError, match="encoder.name"):
        trunks(**split)
    named = trunks(**split, finetune_arms={"none": {"encoder.name": "impala_small"}})
    assert set(named.values()) == {"impala_small"}


def test_eval_shifts_are_distinct_levels_in_0_1():
    from vptr.experiment import ExperimentConfig

    assert ExperimentConfig(eval_shifts=(0.3, 0.6)).eval_shifts == (0.3, 0.6)
    for bad in ((0.0,), (1.5,), (0.3, 0.3)):
        with pytest.raises(ConfigError, match="eval_shifts"):
            ExperimentConfig(eval_shifts=bad)


def test_pretrain_only_arms_get_pretraining_cells_and_nothing_downstream():
    from vptr.experiment import ExperimentConfig, plan

    cfg = ExperimentConfig(pretrainings=("none", "icvf", "icvf_nointent"), agents=("flowbc",),
                           seeds=(0, 1), pretrain_only=("icvf_nointent",),
                           pretrain_arms={"icvf_nointent": {"objective": "icvf",
                                                            "icvf.use_intent": False}},
                           prior={"tasks": ["vptr/Reach-v0", "vptr/Push-v0"]})
    ids = [c.id for c in plan(cfg)]
    assert "pretrain/icvf_nointent/seed1" in ids and "finetune/icvf/flowbc/seed1" in ids
    assert not [i for i in ids if "icvf_nointent" in i and not i.startswith("pretrain/")]
    cell = next(c for c in plan(cfg) if c.id == "pretrain/icvf_nointent/seed0")
    assert cell.config["objective"] == "icvf" and cell.config["icvf.use_intent"] is False
    for bad in (("none",), ("tcn",)):
        with pytest.raises(ConfigError, match="pretrain_only"):
            ExperimentConfig(pretrainings=("none", "icvf"), pretrain_only=bad)


def test_cell_keys_do_not_depend_on_where_the_data_are(tmp_path):
    from vptr.experiment import ExperimentConfig, plan

    cfg = ExperimentConfig(pretrainings=("none", "icvf"), agents=("flowbc",), seeds=(0,),
                           video={"episodes_per_task": 2}, robot={"episodes_per_task": 2})
    here = {c.id: c.key for c in plan(cfg, Path("/a/video"), Path("/a/robot"), None)}
    there = {c.id: c.key for c in plan(cfg, tmp_path / "v", tmp_path / "r", None)}
    assert here == there
    other = ExperimentConfig(pretrainings=("none", "icvf"), agents=("flowbc",), seeds=(0,),
                             video={"episodes_per_task": 3}, robot={"episodes_per_task": 2})
    changed = {c.id: c.key for c in plan(other, Path("/a/video"), Path("/a/robot"), None)}
    assert changed["pretrain/icvf/seed0"] != here["pretrain/icvf/seed0"]  # other video
    assert changed["finetune/none/flowbc/seed0"] == here["finetune/none/flowbc/seed0"]


def test_an_arm_can_have_its_own_share_of_prior_chunks_and_other_keys_stay():
    from vptr.config import build_config, flatten
    from vptr.experiment import ExperimentConfig, plan

    base = dict(pretrainings=("none", "icvf", "vip"), agents=("flowbc",), seeds=(0,),
                prior={"tasks": ["vptr/Reach-v0", "vptr/Push-v0"]}, prior_fraction=0.5)

    def cells(**over):
        return {c.id: c for c in plan(ExperimentConfig(**{**base, **over}), Path("video"),
                                      Path("robot"), Path("prior"))}

    before = cells()
    after = cells(prior_fraction_arms={"vip": 0.1})
    frac = {cid: c.config.get("prior.fraction") for cid, c in after.items()}
    assert frac["finetune/vip/flowbc/seed0"] == 0.1
    assert frac["finetune/icvf/flowbc/seed0"] == frac["finetune/none/flowbc/seed0"] == 0.5
    assert "prior.fraction" not in after["prior/vip/flowbc/seed0"].config  # phase 2 unchanged
    changed = {cid for cid in after if after[cid].key != before[cid].key}
    assert changed == {"finetune/vip/flowbc/seed0"}  # recorded cells of the others stay valid
    # from a TOML file (the CLI flattens tables into dotted keys)
    flat = flatten({**base, "prior_fraction_arms": {"vip": 0.25}})
    assert build_config(ExperimentConfig, flat).prior_fraction_arms == {"vip": 0.25}
    for bad, what in (({"tcn": 0.1}, "not in pretrainings"), ({"vip": 1.0}, r"\(0, 1\)"),
                      ({"vip": "low"}, r"\(0, 1\)")):
        with pytest.raises(ConfigError, match=what):
            ExperimentConfig(**{**base, "prior_fraction_arms": bad})
    with pytest.raises(ConfigError, match=r"\[prior\]"):
        ExperimentConfig(pretrainings=("none", "vip"), prior_fraction_arms={"vip": 0.1})
