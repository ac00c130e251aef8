"""Every shipped config in configs/ parses into its typed config (no stale keys)."""

from pathlib import Path

import pytest

from vptr.config import build_config, flatten, load_toml

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.toml")), ids=lambda p: p.name)
def test_config_parses(path):
    from sim.generate import RobotDataConfig, VideoDataConfig
    from vptr.train.pretrain_loop import PretrainConfig

    values = flatten(load_toml(path))
    if path.parent.name == "pretrain":
        cfg = build_config(PretrainConfig, {"data": "videos/", **values}, where=str(path))
        assert cfg.objective in path.name
    elif path.name.startswith("robot"):
        build_config(RobotDataConfig, values, where=str(path))
    elif path.name.startswith("video"):
        build_config(VideoDataConfig, values, where=str(path))
    elif path.parent.name == "experiments":
        from vptr.experiment import ExperimentConfig, plan, validate_cells

        grid = build_config(ExperimentConfig, values, where=str(path))
        validate_cells(plan(grid, Path("video"), Path("robot"), Path("prior")))  # every cell
        from vptr.experiment import data_configs

        data_configs(grid)  # the [video], [robot] and [prior] tables
    else:
        pytest.fail(f"{path}: no config class is known for this file")
