"""Paired frames for the invariance probe: the same simulator state, another appearance."""

from __future__ import annotations

import numpy as np
import pytest

from vptr.diagnostics.probes import collect_frames, encode, invariance_ratio, target_columns


@pytest.fixture(scope="module")
def frames():
    return collect_frames("vptr/Lift-v0", [150_000, 150_001], 32, (0.0, 0.6))


def test_a_twin_at_the_demos_appearance_renders_the_observed_frame_exactly(frames):
    np.testing.assert_array_equal(frames.shifted[0.0], frames.images)


def test_shifted_twins_show_the_same_state_with_another_appearance(frames):
    shifted = frames.shifted[0.6]
    assert shifted.shape == frames.images.shape
    diff = np.abs(shifted.astype(int) - frames.images).mean(axis=(1, 2, 3))
    assert (diff > 1.0).all()  # every frame looks different...
    # ...but the robot moves in both the same way: frame-to-frame motion is correlated
    motion = lambda x: np.abs(np.diff(x.astype(float), axis=0)).mean(axis=(1, 2, 3))
    assert np.corrcoef(motion(frames.images), motion(shifted))[0, 1] > 0.5


def test_targets_are_tool_gripper_and_object_positions_in_time_order(frames):
    assert frames.target_names == ["ee_x", "ee_y", "ee_z", "gripper_opening", "cube_pos_x",
                                   "cube_pos_y", "cube_pos_z"]
    assert frames.targets.shape == (len(frames.images), 7)
    assert list(np.unique(frames.episodes)) == [0, 1]
    first = frames.targets[frames.episodes == 0]
    assert first[-1, 6] > first[0, 6] + 0.03  # the expert lifted the cube (Lift succeeds)


def test_target_columns_skip_padding_and_yaw():
    st, env, names = target_columns(["a", "ee_x", "gripper_opening"],
                                    ["cube_pos_x", "cube_yaw", "bin_pos_y", "pad_0"])
    assert (st, env) == ([1, 2], [0, 2])
    assert names == ["ee_x", "gripper_opening", "cube_pos_x", "bin_pos_y"]


def test_features_of_identical_frames_do_not_move(frames):
    import torch

    from vptr.nets.encoders import make_encoder

    torch.manual_seed(0)
    enc = make_encoder("impala_small", 6, 32)  # a 2-frame stack
    base = encode(enc, frames.images, frames.episodes, 2)
    assert base.shape == (len(frames.images), enc.out_dim)
    same = encode(enc, frames.shifted[0.0], frames.episodes, 2)
    assert invariance_ratio(base, same, frames.episodes)["ratio"] == 0.0
    moved = encode(enc, frames.shifted[0.6], frames.episodes, 2)
    assert invariance_ratio(base, moved, frames.episodes)["ratio"] > 0.5
