"""Value learning at reduced scale (issue 3, CI acceptance): ICVF on the default action-free
video of the video embodiment, 32x32 frames and the slim Impala CNN, a few minutes on 2
cores. On held-out episodes of the video embodiment V(s_t, g = last frame) must beat every
untrained seed on Spearman's rho and reach a spread of at least 25 % of the true discounted
time-to-goal range (numbers from the same evaluation script as benchmarks/RESULTS.md)."""

from pathlib import Path

import pytest

from vptr.config import build_config, flatten, load_toml
from vptr.diagnostics.evaluate import EvaluateValuesConfig, evaluate_run
from vptr.quickstart import CONFIGS, QuickstartConfig, data_configs
from vptr.train.pretrain import PretrainConfig, train


@pytest.mark.slow
def test_icvf_reduced_scale_learns_values(tmp_path):
    from sim.generate import generate_video

    dcfg = data_configs(QuickstartConfig(data_dir=tmp_path / "data"))
    video, _ = generate_video(dcfg["video"], log=lambda m: None)
    held_out, _ = generate_video(dcfg["eval_hand"], log=lambda m: None)
    values = flatten(load_toml(CONFIGS / "pretrain" / "icvf_reduced.toml"))
    values.update({"data": str(video), "eval_data": (f"hand={held_out}",),
                   "out_dir": str(tmp_path / "runs"), "progress": False,
                   "source.cache_dir": str(tmp_path / "cache"), "source.progress": False})
    cfg = build_config(PretrainConfig, values)
    result = train(cfg)
    report = evaluate_run(EvaluateValuesConfig(run=Path(result["run_dir"]), episodes=25,
                                               untrained_seeds=5))
    hand = report["sets"]["hand"]
    trained = next(v for k, v in hand["methods"].items() if k.startswith("icvf"))
    assert hand["verdict"]["beats_every_untrained_seed"], hand
    assert trained["spread"] >= 0.25, hand
    assert trained["inverted"] < 0.5
