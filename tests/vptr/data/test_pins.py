"""Pinned datasets: a grid or probe folder keeps its data across edits of sim/ (cells are
keyed by data paths), regenerates when the config changes or the data are gone."""

import json

import pytest

import sim.generate
from sim.generate import RobotDataConfig
from vptr.data.pins import PINS_FILE, pinned_dataset
from vptr.errors import DataError


@pytest.fixture
def maker(tmp_path):
    calls = []

    def make(tag):
        def build():
            out = tmp_path / "data" / f"{tag}-{len(calls)}"
            out.mkdir(parents=True)
            calls.append(tag)
            return out
        return build
    return make, calls


def test_a_pinned_dataset_survives_an_edit_of_the_simulator(tmp_path, maker, monkeypatch):
    make, calls = maker
    pins, logs = tmp_path / "grid" / PINS_FILE, []
    cfg = RobotDataConfig(tasks=("vptr/Lift-v0",), episodes_per_task=3, data_dir=tmp_path / "a")
    first = pinned_dataset(pins, "robot", cfg, make("robot"), logs.append)
    assert calls == ["robot"] and first.exists()
    entry = json.loads(pins.read_text())["robot"]
    assert entry["path"] == str(first) and "data_dir" not in entry["config"]
    # same config, another data_dir and other simulator sources: the pinned data, with a note
    monkeypatch.setattr(sim.generate, "sim_code_fingerprint", lambda: "0ther000")
    moved = RobotDataConfig(tasks=("vptr/Lift-v0",), episodes_per_task=3, data_dir=tmp_path / "b")
    assert pinned_dataset(pins, "robot", moved, make("robot"), logs.append) == first
    assert calls == ["robot"] and "other simulator sources" in logs[-1]
    # another dataset of the same folder is pinned beside it
    prior = pinned_dataset(pins, "prior", moved, make("prior"), logs.append)
    assert set(json.loads(pins.read_text())) == {"robot", "prior"} and prior != first
    # a changed config regenerates and re-pins
    more = RobotDataConfig(tasks=("vptr/Lift-v0",), episodes_per_task=4, data_dir=tmp_path / "a")
    second = pinned_dataset(pins, "robot", more, make("robot"), logs.append)
    assert second != first and calls == ["robot", "prior", "robot"]
    assert json.loads(pins.read_text())["robot"]["sim_code"] == "0ther000"
    # pinned data that are gone are generated again
    second.rmdir()
    third = pinned_dataset(pins, "robot", more, make("robot"), logs.append)
    assert third.exists() and "are gone" in logs[-1]


def test_a_corrupt_pins_file_is_refused_naming_it(tmp_path, maker):
    make, _ = maker
    pins = tmp_path / PINS_FILE
    pins.write_text("{not json")
    with pytest.raises(DataError, match=f"{pins}: not a readable pins file"):
        pinned_dataset(pins, "robot", RobotDataConfig(), make("robot"))


def test_the_evaluation_harness_does_not_key_generated_data(monkeypatch, tmp_path):
    """An edit of sim/evaluate.py leaves every cached dataset where it was; one of the
    environments' sources does not."""
    import shutil
    from pathlib import Path

    src = Path(sim.generate.__file__).parent
    copy = tmp_path / "sim"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(sim.generate, "__file__", str(copy / "generate.py"))
    fingerprint = sim.generate.sim_code_fingerprint.__wrapped__  # not the cached value
    before = fingerprint()
    (copy / "evaluate.py").write_text((copy / "evaluate.py").read_text() + "\n# edited\n")
    assert fingerprint() == before
    (copy / "native" / "env.py").write_text((copy / "native" / "env.py").read_text() + "\n# x\n")
    assert fingerprint() != before
