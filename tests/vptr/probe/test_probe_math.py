"""The pure parts of the probes: ridge R^2, the split by episode, the invariance ratio,
the per-seed / pooled statistics and the table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vptr.diagnostics.probes import (
    choose_penalty,
    consecutive_pairs,
    episode_split,
    invariance_ratio,
    linear_probe,
    r2_scores,
    ridge_path,
)
from vptr.errors import DataError


def synthetic(n_episodes=20, length=25, dim=40, noise=0.5, seed=0):
    """Features x, targets y = x w + noise (known R^2), episode ids."""
    rng = np.random.default_rng(seed)
    n = n_episodes * length
    x = rng.normal(size=(n, dim))
    w = rng.normal(size=(dim, 2))
    clean = x @ w
    y = clean + noise * rng.normal(size=clean.shape) * clean.std(0)
    return x, y, np.repeat(np.arange(n_episodes), length), noise


def test_ridge_recovers_a_linear_map_and_r2_matches_the_noise_level():
    x, y, episodes, noise = synthetic()
    res = linear_probe(x, y, episodes, ["a", "b"])
    expected = 1.0 / (1.0 + noise ** 2)  # var(clean) / var(clean + noise)
    for name in ("a", "b"):
        assert res["r2"][name] == pytest.approx(expected, abs=0.06)
    assert res["train_episodes"] + res["val_episodes"] == 20
    assert res["train_frames"] + res["val_frames"] == len(x)


def test_features_unrelated_to_the_targets_score_about_zero():
    x, y, episodes, _ = synthetic()
    shuffled = np.random.default_rng(1).permutation(len(x))
    res = linear_probe(x[shuffled], y, episodes, ["a", "b"])
    assert res["r2_mean"] < 0.1


def test_ridge_path_matches_the_normal_equations_in_both_shapes():
    rng = np.random.default_rng(0)
    for n, d in ((50, 8), (8, 50)):  # n > d and d > n (the dual case)
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, 3))
        lam = 0.1
        (w,) = ridge_path(x, y, [lam])
        direct = np.linalg.solve(x.T @ x + lam * n * np.eye(d), x.T @ y)
        np.testing.assert_allclose(w, direct, rtol=1e-8, atol=1e-10)


def test_r2_against_a_baseline_mean():
    y = np.array([[1.0], [2.0], [3.0]])
    assert r2_scores(y, y)[0] == 1.0
    assert r2_scores(y, np.full_like(y, 2.0))[0] == pytest.approx(0.0)
    # out of sample: predicting the training mean (here 0) scores 0, the truth 1
    assert r2_scores(y, np.zeros_like(y), baseline=np.zeros(1))[0] == pytest.approx(0.0)
    assert math.isnan(r2_scores(np.ones((3, 1)), np.ones((3, 1)))[0])  # constant: undefined


def test_split_keeps_episodes_whole_and_both_sides_non_empty():
    episodes = np.repeat([3, 5, 7, 9], [4, 2, 6, 3])
    train, val = episode_split(episodes, 0.3, seed=0)
    assert not set(episodes[train]) & set(episodes[val])
    assert train.any() and val.any() and (train | val).all()
    _, val_all = episode_split(episodes, 0.99)  # at least one episode stays for training
    assert len(set(episodes[~val_all])) == 1
    with pytest.raises(DataError, match="needs >= 2 episodes"):
        episode_split(np.zeros(5), 0.3)


def test_penalty_choice_prefers_strong_shrinkage_for_noise_and_weak_for_signal():
    rng = np.random.default_rng(0)
    episodes = np.repeat(np.arange(12), 10)
    x = rng.normal(size=(120, 60))
    signal = x @ rng.normal(size=(60, 1))
    penalties = (1e-4, 1e-2, 1.0, 100.0)
    assert choose_penalty(x, signal, episodes, penalties) <= 1e-2
    assert choose_penalty(x, rng.normal(size=(120, 1)), episodes, penalties) >= 1.0


def test_invariance_ratio_on_a_hand_made_case():
    # two episodes of 3 frames moving 1 unit per step; the shifted copy is 0.5 away
    base = np.array([[0.0, 0], [1, 0], [2, 0], [10, 0], [11, 0], [12, 0]])
    shifted = base + np.array([0.0, 0.5])
    episodes = np.array([0, 0, 0, 1, 1, 1])
    res = invariance_ratio(base, shifted, episodes)
    assert res["step_distance"] == pytest.approx(1.0)  # the 2 -> 10 jump is not a step
    assert res["paired_distance"] == pytest.approx(0.5)
    assert res["ratio"] == pytest.approx(0.5)
    assert invariance_ratio(base, base, episodes)["ratio"] == 0.0
    np.testing.assert_array_equal(consecutive_pairs(episodes), [0, 1, 3, 4])
    with pytest.raises(DataError, match="consecutive"):
        invariance_ratio(base[:2], shifted[:2], np.array([0, 1]))


def test_invariance_ratio_does_not_depend_on_the_feature_scale():
    rng = np.random.default_rng(0)
    base, shifted = rng.normal(size=(20, 5)), rng.normal(size=(20, 5))
    episodes = np.repeat([0, 1], 10)
    a = invariance_ratio(base, shifted, episodes)["ratio"]
    assert invariance_ratio(7 * base, 7 * shifted, episodes)["ratio"] == pytest.approx(a)


# --------------------------------------------------------------------------- statistics


def _outcome(successes, first_seed=100_000):
    return {"successes": list(successes),
            "episode_seeds": list(range(first_seed, first_seed + len(successes)))}


def test_imitation_rows_pool_seeds_with_wilson_intervals_and_pair_with_the_baseline():
    from vptr.probe import Encoder, ProbeConfig, imitation_summary

    cfg = ProbeConfig(encoder="random", demos=(5,), seeds=(0, 1), shifts=(0.5,), episodes=4)
    enc = Encoder("e", "impala_small", 32)
    task = "vptr/Lift-v0"
    mine = {"0": _outcome([1, 1, 1, 0]), "0.5": _outcome([1, 0, 0, 0])}
    base = {"0": _outcome([1, 0, 0, 0]), "0.5": _outcome([0, 0, 0, 0])}
    results = {}
    for seed in (0, 1):
        results[(task, 5, "encoder-frozen", seed)] = {"eval": mine}
        results[(task, 5, "random-frozen", seed)] = {"eval": base}
    rows = imitation_summary(cfg, enc, results, {(task, 5): 5})
    assert len(rows) == 4  # 2 arms with results x 2 shift levels
    row = next(r for r in rows if r["arm"] == "encoder-frozen" and r["shift"] == 0.0)
    assert row["pooled"]["successes"] == 6 and row["pooled"]["episodes"] == 8
    lo, hi = row["pooled"]["ci95"]
    assert lo < 6 / 8 < hi
    assert [p["success_rate"] for p in row["per_seed"]] == [0.75, 0.75]
    vs = row["vs_baseline"]
    assert vs["baseline"] == "random-frozen" and vs["pairs"] == 8
    assert vs["difference"] == pytest.approx(0.5)
    assert vs["ci95"][0] < 0.5 < vs["ci95"][1]
    assert all("vs_baseline" not in r for r in rows if r["arm"] == "random-frozen")


def test_markdown_lists_every_probe():
    from vptr.diagnostics.probe_table import markdown

    report = {
        "encoder": {"label": "enc"}, "split_note": "Split 'val'", "machine": "m",
        "wall_s": 1.0, "notes": ["a note"],
        "config": {"shifts": [0.3], "steps": 10, "batch_size": 8, "seeds": [0],
                   "episodes": 2},
        "imitation": [{"task": "vptr/Lift-v0", "demos": 2, "demos_saved": 2, "arm": "scratch",
                       "label": "scratch", "shift": s, "per_seed": [{"success_rate": 0.5}],
                       "pooled": {"success_rate": 0.5, "ci95": [0.1, 0.9]}}
                      for s in (0.0, 0.3)],
        "frames": {"vptr/Lift-v0": {"targets": ["ee_x"], "frames": 10, "episodes": 2,
                                    "encoders": {"random init": {
                                        "seeds": 1, "linear": {"r2": {"ee_x": 0.5},
                                                               "r2_mean": 0.5},
                                        "invariance": {"0.3": {"ratio": 2.0}}}}}},
        "values": {"skipped": "not a run"}}
    text = markdown(report)
    for needle in ("Few-demo imitation", "50 [10-90] (50)", "Linear probe", "| 0.50 |",
                   "Invariance", "| 2.00 |", "Skipped: not a run", "a note"):
        assert needle in text, needle


def test_retrained_encoder_weights_invalidate_only_the_cells_that_read_them(tmp_path):
    from dataclasses import replace

    from vptr.probe import Encoder, ProbeConfig, imitation_cell

    cfg = ProbeConfig(encoder="random")
    old = Encoder("e", "impala_small", 32, init="enc", sha256="aa")
    new = replace(old, sha256="bb")
    key = lambda enc, arm: imitation_cell(cfg, enc, "vptr/Lift-v0", 10, arm, 0, tmp_path).key
    assert key(old, "encoder-frozen") != key(new, "encoder-frozen")
    assert key(old, "encoder-finetuned") != key(new, "encoder-finetuned")
    assert key(old, "scratch") == key(new, "scratch")
    assert key(old, "random-frozen") == key(new, "random-frozen")
    assert key(old, "scratch") != key(old, "random-frozen")


def test_validation_and_test_seeds_are_disjoint_from_each_other_and_the_demos():
    from vptr.probe import ProbeConfig

    val, test = (ProbeConfig(encoder="random", split=s, frame_episodes=500, episodes=500)
                 for s in ("val", "test"))
    ranges = {}
    for cfg in (val, test):
        evals = set(range(cfg.eval_seed, cfg.eval_seed + cfg.episodes))
        frames = set(cfg.frame_seeds())
        assert not evals & frames
        ranges[cfg.split] = evals | frames
    demos = set(range(max(val.demos)))
    assert not ranges["val"] & ranges["test"]
    assert not demos & (ranges["val"] | ranges["test"])
