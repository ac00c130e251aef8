"""The value-evaluation numbers on hand-made cases where the answer is known."""

import numpy as np
import pytest
import torch

from vptr.data.batch import stack_frames
from vptr.diagnostics.values import (
    effective_rank,
    evaluate_values,
    pixel_l2_value,
    plot_value_curves,
    true_values,
)


def test_true_values_shape_and_ends():
    v = true_values(51, 0.99)
    assert v[-1] == 0.0 and v[0] == pytest.approx(-(1 - 0.99**50) / 0.01)
    assert np.all(np.diff(v) > 0)


def _traj(T=20, size=8):
    # a bright square sliding to the right: pixel distance to the last frame shrinks with t
    frames = np.zeros((T, size, size, 3), np.uint8)
    for t in range(T):
        x = int(round(t * (size - 3) / (T - 1)))
        frames[t, 2:5, x:x + 3] = 255
        frames[t, 0, 0, 1] = t  # the frame index, readable by an oracle
    return frames


def test_oracle_value_scores_perfectly():
    gamma = 0.9
    trajs = [_traj(20), _traj(15)]

    def oracle(obs, goal):  # exact V*: read t and T from the marker pixel
        t, T = obs[:, 1, 0, 0].long(), int(goal[0, 1, 0, 0]) + 1
        return torch.from_numpy(true_values(T, gamma))[t]

    rep = evaluate_values("oracle", oracle, trajs, gamma)
    assert rep.spearman == pytest.approx(1.0)
    assert rep.spread == pytest.approx(1.0, abs=1e-6)
    assert rep.goal_value == pytest.approx(0.0)
    assert rep.inverted == 0.0
    assert [len(c) for c in rep.curves] == [20, 15]  # one value per frame, per episode
    assert rep.true_range == pytest.approx(np.mean([(1 - gamma**19) / (1 - gamma),
                                                    (1 - gamma**14) / (1 - gamma)]))


def test_constant_value_is_flagged_degenerate():
    rep = evaluate_values("const", lambda o, g: torch.full((len(o),), -1.0), [_traj()], 0.99)
    assert rep.spearman == 0.0 and rep.spread == 0.0 and rep.value_std == 0.0


def test_pixel_l2_and_inversion():
    rep = evaluate_values("l2", pixel_l2_value, [_traj()], 0.99)
    assert rep.spearman > 0.8 and rep.goal_value == 0.0
    neg = evaluate_values("neg", lambda o, g: -pixel_l2_value(o, g), [_traj()], 0.99)
    assert neg.inverted == 1.0 and neg.spearman < -0.8


def test_stack_frames_repeats_first():
    f = np.arange(4)[:, None, None, None] * np.ones((4, 2, 2, 3), np.uint8)
    s = stack_frames(f, 3)
    assert s.shape == (4, 9, 2, 2)
    assert s[0, :, 0, 0].tolist() == [0] * 9
    assert s[2, :, 0, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_effective_rank_bounds():
    torch.manual_seed(0)
    full = torch.randn(512, 8)
    collapsed = torch.randn(512, 1) * torch.ones(1, 8)
    assert effective_rank(full) > 7.0
    assert effective_rank(collapsed) < 1.1


def test_plot_writes_png(tmp_path):
    rep = evaluate_values("l2", pixel_l2_value, [_traj(), _traj(12)], 0.99)
    path = plot_value_curves([rep, rep], [20, 12], 0.99, tmp_path / "v.png", "test")
    assert path.stat().st_size > 1000
