"""Index sampling (pure numpy): ICVF goal mixture, geometric futures, stacking, configs."""

from __future__ import annotations

import numpy as np
import pytest

from vptr.config import build_config
from vptr.data.config import SamplerConfig, VideoSourceConfig
from vptr.data.sampling import (
    GOAL_CURRENT,
    GOAL_RANDOM,
    GOAL_TRAJECTORY,
    IMAGE_KEYS,
    sample_frames,
    sample_future_offsets,
    sample_goals,
    sample_index_batch,
    sample_near_far_times,
    stack_rows,
)
from vptr.errors import ConfigError

LENGTHS = np.array([5, 40, 1, 17, 60])
OFFSETS = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]])
N = 20_000


def _batch(cfg=None, n=N, seed=0):
    return sample_index_batch(np.random.default_rng(seed), OFFSETS, LENGTHS,
                              cfg or SamplerConfig(), n)


def test_frames_are_uniform_over_the_dataset():
    traj, t = sample_frames(np.random.default_rng(0), LENGTHS, N)
    assert np.all((t >= 0) & (t < LENGTHS[traj]))
    freq = np.bincount(traj, minlength=len(LENGTHS)) / N
    np.testing.assert_allclose(freq, LENGTHS / LENGTHS.sum(), atol=0.02)


def test_goal_kinds_match_the_configured_probabilities():
    rng = np.random.default_rng(1)
    traj, t = sample_frames(rng, LENGTHS, N)
    g_traj, g_t, kind = sample_goals(rng, traj, t, LENGTHS, (0.2, 0.5, 0.3))
    np.testing.assert_allclose(np.bincount(kind, minlength=3) / N, [0.2, 0.5, 0.3], atol=0.02)
    cur, tr, rnd = kind == GOAL_CURRENT, kind == GOAL_TRAJECTORY, kind == GOAL_RANDOM
    assert np.all(g_traj[cur] == traj[cur]) and np.all(g_t[cur] == t[cur])
    # trajectory goals: same trajectory, between t and the end (inclusive)
    assert np.all(g_traj[tr] == traj[tr])
    assert np.all((g_t[tr] >= t[tr]) & (g_t[tr] <= LENGTHS[traj[tr]] - 1))
    # random goals come from every trajectory in proportion to its length
    freq = np.bincount(g_traj[rnd], minlength=len(LENGTHS)) / rnd.sum()
    np.testing.assert_allclose(freq, LENGTHS / LENGTHS.sum(), atol=0.03)
    assert np.all(g_t < LENGTHS[g_traj])


def test_trajectory_goals_are_uniform_on_t_to_end():
    lengths = np.array([10])
    t = np.zeros(N, dtype=np.int64)
    _, g_t, _ = sample_goals(np.random.default_rng(2), np.zeros(N, np.int64), t, lengths,
                             (0.0, 1.0, 0.0))
    np.testing.assert_allclose(np.bincount(g_t, minlength=10) / N, 0.1, atol=0.02)
    t = np.full(N, 7, dtype=np.int64)
    _, g_t, _ = sample_goals(np.random.default_rng(3), np.zeros(N, np.int64), t, lengths,
                             (0.0, 1.0, 0.0))
    np.testing.assert_allclose(np.bincount(g_t, minlength=10)[7:] / N, 1 / 3, atol=0.02)


def test_batch_goal_and_intent_mixture_and_reached_flags():
    b = _batch()
    for kind in (b["goal_kind"], b["intent_kind"]):
        np.testing.assert_allclose(np.bincount(kind, minlength=3) / N, [0.2, 0.5, 0.3],
                                   atol=0.02)
    # s+ = s_z with p_samegoal = 0.5 (plus independent coincidences)
    same = np.mean(b["goal_index"] == b["intent_index"])
    assert 0.5 <= same <= 0.5 + 0.5 * 0.25
    np.testing.assert_array_equal(b["goal_reached"], b["obs_index"] == b["goal_index"])
    np.testing.assert_array_equal(b["intent_reached"], b["obs_index"] == b["intent_index"])
    # a current-frame goal is always reached; a reached goal is the same frame
    assert np.all(b["goal_reached"][b["goal_kind"] == GOAL_CURRENT])
    # P(reached) = p_curr + p_traj * E[1/(T-t)] + tiny: at least p_currgoal
    assert 0.2 - 0.02 < b["goal_reached"].mean() < 0.6
    only_current = _batch(SamplerConfig(p_currgoal=1, p_trajgoal=0, p_randomgoal=0))
    assert only_current["goal_reached"].all() and only_current["intent_reached"].all()
    never_same = _batch(SamplerConfig(p_samegoal=0.0, p_currgoal=0, p_trajgoal=0,
                                      p_randomgoal=1))
    assert np.mean(never_same["goal_index"] == never_same["intent_index"]) < 0.05


def test_intent_sametraj_draws_intentions_from_the_observations_own_trajectory():
    b = _batch(SamplerConfig(intent_sametraj=True))
    kinds = np.bincount(b["intent_kind"], minlength=3) / N
    np.testing.assert_allclose(kinds, [0.2, 0.8, 0.0], atol=0.02)  # no random intentions
    starts = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]])
    int_traj = np.searchsorted(np.cumsum(LENGTHS), b["intent_index"], side="right")
    assert np.all(int_traj == b["traj_index"])
    assert np.all(b["intent_index"] - starts[int_traj] >= b["t"])  # at or after s
    # outcomes keep the release mixture (random goals too, or the intention with p_samegoal)
    assert np.mean(b["goal_kind"] == GOAL_RANDOM) > 0.1


def test_indices_point_into_the_right_trajectories():
    b = _batch(SamplerConfig(frame_skip=3), n=5000)
    start, last = OFFSETS[b["traj_index"]], OFFSETS[b["traj_index"]] + b["traj_len"] - 1
    assert np.all(b["traj_len"] == LENGTHS[b["traj_index"]])
    assert np.all(b["obs_index"] == start + b["t"])
    assert np.all(b["next_obs_index"] == np.minimum(b["obs_index"] + 3, last))
    assert np.all(b["initial_index"] == start) and np.all(b["final_index"] == last)
    assert np.all((b["future_index"] > b["obs_index"]) | (b["obs_index"] == last))
    assert np.all(b["future_index"] <= last)
    rows = b["rows"]
    assert rows.shape == (len(IMAGE_KEYS), 5000, 1)
    assert np.all(rows[IMAGE_KEYS.index("goal"), :, 0] == b["goal_index"])


def test_geometric_future_offsets_have_mean_one_over_one_minus_gamma():
    for gamma in (0.5, 0.9, 0.98):
        j = sample_future_offsets(np.random.default_rng(4), 50_000, gamma)
        assert j.min() >= 1
        assert abs(j.mean() - 1 / (1 - gamma)) < 0.03 / (1 - gamma)
    # clipped at the trajectory end inside a batch
    b = _batch(SamplerConfig(future_gamma=0.9), n=5000)
    last = OFFSETS[b["traj_index"]] + b["traj_len"] - 1
    expected = np.minimum(b["obs_index"] + 1, last)
    assert np.all(b["future_index"] >= expected)
    uni = _batch(SamplerConfig(future_dist="uniform"), n=5000)
    last = OFFSETS[uni["traj_index"]] + uni["traj_len"] - 1
    inner = uni["obs_index"] < last
    assert np.all(uni["future_index"][inner] > uni["obs_index"][inner])


def test_frame_stacking_repeats_the_first_frame_at_a_trajectory_start():
    offsets = np.array([0, 10])
    rows = stack_rows(offsets, np.array([1, 1, 1, 0]), np.array([0, 1, 5, 2]), 3)
    assert rows.tolist() == [[10, 10, 10], [10, 10, 11], [13, 14, 15], [0, 1, 2]]
    b = _batch(SamplerConfig(frame_stack=3), n=5000)
    r = b["rows"]
    assert r.shape == (len(IMAGE_KEYS), 5000, 3)
    # newest frame is the indexed one; all frames of a stack in the same trajectory, ordered
    assert np.all(r[0, :, -1] == b["obs_index"]) and np.all(np.diff(r, axis=2) >= 0)
    start = OFFSETS[b["traj_index"]]
    assert np.all(r[0] >= start[:, None])
    init = r[IMAGE_KEYS.index("initial_obs")]
    assert np.all(init == start[:, None])


# lengths down to 1 frame: anchors without a later frame and videos too short for a far one
NEAR_FAR_LENGTHS = np.array([1, 2, 3, 4, 5, 17, 40, 60])
NEAR_FAR_OFFSETS = np.concatenate([[0], np.cumsum(NEAR_FAR_LENGTHS)[:-1]])


@pytest.mark.parametrize("window", [1, 3, 8])
def test_tcn_near_frame_in_window_far_frame_farther_same_video(window):
    b = sample_index_batch(np.random.default_rng(window), NEAR_FAR_OFFSETS, NEAR_FAR_LENGTHS,
                           SamplerConfig(), N, near_window=window)
    start = NEAR_FAR_OFFSETS[b["traj_index"]]
    last = start + b["traj_len"] - 1
    obs, near, far = b["obs_index"], b["near_index"], b["far_index"]
    for idx in (near, far):  # nothing indexes outside the anchor's own video
        assert np.all((idx >= start) & (idx <= last))
    ok, far_ok = b["near_valid"], b["far_valid"]
    np.testing.assert_array_equal(ok, obs < last)  # only the last frame has no later one
    d = near - obs
    assert np.all((d[ok] >= 1) & (d[ok] <= window))  # near in (t, t + k]
    assert np.all(near[~ok] == obs[~ok])
    # a far frame exists exactly when some frame is farther from t than d; then it is one
    exists = ok & ((obs + d < last) | (obs - d > start))
    np.testing.assert_array_equal(far_ok, exists)
    assert np.all(np.abs(far - obs)[far_ok] > d[far_ok])
    assert np.all(far[~far_ok] == near[~far_ok])
    # beyond the positive whenever the video goes on after it, else before the anchor
    beyond = far_ok & (near < last)
    assert np.all(far[beyond] > near[beyond])
    assert np.all(far[far_ok & ~beyond] < obs[far_ok & ~beyond])
    assert np.all(b["rows"][IMAGE_KEYS.index("far_obs"), :, -1] == far)
    assert ok.mean() > 0.9 and far_ok.mean() > 0.85  # the fallbacks stay rare


def test_tcn_near_offsets_uniform_far_uniform_beyond_and_before_at_the_end():
    n = 40_000
    # mid-video: d uniform on 1..4, far uniform on near+1 .. T-1
    near, far, ok, far_ok = sample_near_far_times(np.random.default_rng(0), np.full(n, 2),
                                                  np.full(n, 20), 4)
    assert ok.all() and far_ok.all()
    np.testing.assert_allclose(np.bincount(near - 2, minlength=5)[1:] / n, 0.25, atol=0.01)
    for dd in (1, 4):
        sel = near - 2 == dd
        counts = np.bincount(far[sel], minlength=20)[2 + dd + 1:]
        np.testing.assert_allclose(counts / sel.sum(), 1 / len(counts), atol=0.015)
    # second-to-last frame: the window is truncated (near = T-1, never clipped onto it from
    # farther), and the far frame is uniform on 0 .. t-2 (before the anchor, farther than 1)
    near, far, ok, far_ok = sample_near_far_times(np.random.default_rng(1), np.full(n, 8),
                                                  np.full(n, 10), 3)
    assert ok.all() and far_ok.all() and np.all(near == 9)
    np.testing.assert_allclose(np.bincount(far, minlength=7) / n, 1 / 7, atol=0.01)
    # a 2-frame video: the anchor at 0 has a near frame but nothing farther
    near, far, ok, far_ok = sample_near_far_times(np.random.default_rng(2), np.array([0, 1]),
                                                  np.array([2, 2]), 3)
    assert near.tolist() == [1, 1] and ok.tolist() == [True, False]
    assert far.tolist() == [1, 1] and not far_ok.any()
    with pytest.raises(ConfigError, match="window"):
        sample_near_far_times(np.random.default_rng(0), np.zeros(1, np.int64), np.ones(1), 0)


def test_tcn_near_frame_is_rarely_the_final_frame():
    """The earlier TCN positive (future_obs, Geometric(0.01)) was the final frame 86 % of the
    time on the quickstart video; the near frame is only as often as the window allows."""
    lengths = np.full(20, 200)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    b = sample_index_batch(np.random.default_rng(5), offsets, lengths, SamplerConfig(), N,
                           near_window=3)
    # positives used: anchors with a later frame (an anchor at the final frame has none)
    final = (b["near_index"] == b["final_index"])[b["near_valid"]]
    # window 3: anchors at T-2, T-3, T-4 pick the final frame w.p. 1, 1/2, 1/3 -> 1.83/(T-1)
    assert final.mean() == pytest.approx(1.83 / 199, abs=0.003)
    assert np.mean(b["future_index"] == b["final_index"]) > 0.3  # the old positive


def test_sampler_config_validation():
    with pytest.raises(ConfigError, match="must sum to 1"):
        SamplerConfig(p_currgoal=0.3)
    with pytest.raises(ConfigError, match=r"p_samegoal must be in \[0, 1\]"):
        SamplerConfig(p_samegoal=1.5)
    with pytest.raises(ConfigError, match="frame_stack"):
        SamplerConfig(frame_stack=4)
    with pytest.raises(ConfigError, match="frame_skip"):
        SamplerConfig(frame_skip=0)
    with pytest.raises(ConfigError, match="future_gamma"):
        SamplerConfig(future_gamma=1.0)
    with pytest.raises(ConfigError, match="shift_pad"):
        SamplerConfig(shift_pad=-1)
    cfg = build_config(SamplerConfig, {"p_currgoal": 0, "p_trajgoal": 1, "p_randomgoal": 0,
                                       "frame_stack": "3"})
    assert cfg.goal_probs == (0, 1, 0) and cfg.frame_stack == 3
    with pytest.raises(ConfigError, match="unknown option"):
        build_config(SamplerConfig, {"p_goal": 0.1})


def test_video_source_config_validation():
    for bad in ({"image_size": 0}, {"fps": -1.0}, {"frames_fps": 0.0}, {"min_frames": 0},
                {"decode_workers": -1}, {"camera_keys": ("",)}):
        with pytest.raises(ConfigError):
            VideoSourceConfig(**bad)
    cfg = build_config(VideoSourceConfig, {"fps": 10, "camera_keys": ["a", "b"]})
    assert cfg.fps == 10.0 and cfg.camera_keys == ("a", "b")
    # only pixel-changing fields key the cache
    assert cfg.pixel_config() == VideoSourceConfig(fps=10, camera_keys=("a", "b"),
                                                   decode_workers=3).pixel_config()
