"""Real-Time Chunking math: prefix weights (paper eq. 5), hold padding, guided sampling."""

import math

import numpy as np
import pytest
import torch
from vptr_runtime_helpers import OBS, io

from vptr.errors import ConfigError
from vptr.runtime.reference import GaussianChunkFlow
from vptr.runtime.rtc import guidance_weight, hold_padded, prefix_weights


def test_prefix_weights_follow_eq_5():
    w = prefix_weights(10, frozen=3, overlap=7, schedule="exp")
    assert list(w[:3]) == [1.0, 1.0, 1.0] and list(w[7:]) == [0.0, 0.0, 0.0]
    c = (7 - np.arange(3, 7)) / (7 - 3 + 1)  # 0.8, 0.6, 0.4, 0.2
    np.testing.assert_allclose(w[3:7], c * (np.exp(c) - 1) / (math.e - 1))
    assert np.all(np.diff(w[3:7]) < 0)
    np.testing.assert_allclose(prefix_weights(10, 3, 7, "linear")[3:7], c)
    np.testing.assert_allclose(prefix_weights(10, 3, 7, "ones"), [1] * 7 + [0] * 3)
    np.testing.assert_allclose(prefix_weights(10, 3, 7, "zeros"), [1] * 3 + [0] * 7)
    # an overlap shorter than the frozen part is raised to it (frozen to held actions)
    np.testing.assert_allclose(prefix_weights(6, 4, 2), [1, 1, 1, 1, 0, 0])
    with pytest.raises(ConfigError):
        prefix_weights(4, 5, 4)
    with pytest.raises(ConfigError, match="schedule"):
        prefix_weights(4, 1, 3, "cosine")


def test_a_short_prefix_is_padded_by_holding_the_last_action_not_zeros():
    pending = np.array([[0.3, -2.0], [0.4, -2.5]])
    y = hold_padded(pending, 5)
    np.testing.assert_array_equal(y, [[0.3, -2.0], [0.4, -2.5], [0.4, -2.5], [0.4, -2.5], [0.4, -2.5]])
    np.testing.assert_array_equal(hold_padded(np.arange(12.0).reshape(6, 2), 3), [[0, 1], [2, 3], [4, 5]])
    with pytest.raises(ConfigError, match="at least one pending action"):
        hold_padded(np.zeros((0, 2)), 4)


def test_guidance_weight_is_pigdm_s_clipped_at_beta():
    # (1 - tau) / (tau r^2) = (tau^2 + (1 - tau)^2) / (tau (1 - tau)): 2 at tau = 0.5,
    # unbounded at both ends, where beta clips it
    assert guidance_weight(0.0, 5.0) == 5.0
    assert guidance_weight(0.5, 100.0) == pytest.approx(2.0)
    assert guidance_weight(0.25, 100.0) == pytest.approx((0.0625 + 0.5625) / (0.25 * 0.75))
    assert guidance_weight(0.999, 5.0) == 5.0


def _flow(h=16, mean=0.0, seed=0):
    return GaussianChunkFlow(io(h), lambda obs: np.full((h, 1), mean), offset_std=0.5, ramp_std=0.05,
                             white_std=0.01, steps=10, seed=seed)


def test_unguided_samples_have_the_policy_mean_and_spread():
    p = _flow(mean=0.7)
    x = np.stack([p.sample(OBS) for _ in range(200)])[:, :, 0]
    assert abs(x.mean() - 0.7) < 0.1
    assert 0.35 < x[:, 0].std() < 0.65  # offset std 0.5 dominates
    assert np.abs(np.diff(x, axis=1)).max() < 0.1  # smooth in time, like demonstrations


def test_guided_samples_follow_the_frozen_prefix_and_return_to_the_policy_after_it():
    h, target = 16, 1.0
    p = _flow(h=h, mean=-0.5, seed=3)
    prefix = hold_padded(np.full((10, 1), target), h)
    w = prefix_weights(h, frozen=6, overlap=10)
    x = np.stack([p.sample(OBS, prefix, w, 10.0) for _ in range(20)])[:, :, 0]
    free = np.stack([p.sample(OBS) for _ in range(20)])[:, :, 0]
    # 1.5 = 3 prior std from the policy's mean, pulled to within a few hundredths
    assert np.abs(x[:, :6] - target).max() < 0.12
    assert np.abs(free[:, :6] - target).mean() > 1.0
    # the guidance moves the whole chunk consistently: still smooth across the mask edge
    assert np.abs(np.diff(x, axis=1)).max() < 0.12


def test_guided_sampling_works_under_no_grad_and_leaves_grad_mode_alone():
    p = _flow(mean=0.0)
    target = hold_padded(np.full((8, 1), 1.0), 16)
    with torch.no_grad():  # callers often wrap inference like this: guidance enables grad itself
        x = p.sample(OBS, target, prefix_weights(16, 8, 8), 10.0)
    assert torch.is_grad_enabled()
    assert np.abs(x[:8, 0] - 1.0).max() < 0.15
