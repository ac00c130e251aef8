"""Value learning at reduced scale (issue 3, CI acceptance): ICVF and intention-conditioned
TD-JEPA on the default action-free video of the video embodiment, 32x32 frames and the slim
Impala CNN, a few minutes each on 2 cores. On held-out episodes of the video embodiment
V(s_t, g = last frame) must beat every untrained seed on Spearman's rho and reach a spread
of at least 25 % of the true discounted time-to-goal range (numbers from the same
evaluation script as benchmarks/RESULTS.md; TD-JEPA's value, with the step cost of the
config, is on the same time-to-goal scale as ICVF's)."""

from pathlib import Path

import pytest

from vptr.config import build_config, flatten, load_toml
from vptr.diagnostics.evaluate import EvaluateValuesConfig, evaluate_run
from vptr.quickstart import CONFIGS, QuickstartConfig, data_configs
from vptr.train.pretrain_loop import PretrainConfig, train


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """(training video, held-out video) of the video embodiment, as the quickstart makes."""
    from sim.generate import generate_video

    root = tmp_path_factory.mktemp("learning")
    dcfg = data_configs(QuickstartConfig(data_dir=root / "data"))
    train_video, _ = generate_video(dcfg["video"], log=lambda m: None)
    held_out, _ = generate_video(dcfg["eval_hand"], log=lambda m: None)
    return root, train_video, held_out


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["icvf", "tdjepa"])
def test_reduced_scale_learns_values(video, objective):
    root, train_video, held_out = video
    values = flatten(load_toml(CONFIGS / "pretrain" / f"{objective}_reduced.toml"))
    values.update({"data": str(train_video), "eval_data": (f"hand={held_out}",),
                   "out_dir": str(root / "runs"), "run_name": objective, "progress": False,
                   "source.cache_dir": str(root / "cache"), "source.progress": False})
    cfg = build_config(PretrainConfig, values)
    assert cfg.objective == objective
    result = train(cfg)
    report = evaluate_run(EvaluateValuesConfig(run=Path(result["run_dir"]), episodes=25,
                                               untrained_seeds=5))
    hand = report["sets"]["hand"]
    trained = next(v for k, v in hand["methods"].items() if k.startswith(objective))
    assert hand["verdict"]["beats_every_untrained_seed"], hand
    assert trained["spread"] >= 0.25, hand
    assert trained["inverted"] < 0.5
