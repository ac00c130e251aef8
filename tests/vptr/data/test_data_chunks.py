"""Action chunks: valid starts, padding at terminals, truncation, chunk returns (by hand)."""

import numpy as np
import pytest

from vptr.data.chunks import chunk_index, chunk_returns, valid_starts
from vptr.errors import ConfigError

# episode 0: 5 rows ending in a terminal; episode 1: 4 rows truncated by a time limit
OFFSETS, LENGTHS, TERMINAL = np.array([0, 5]), np.array([5, 4]), np.array([True, False])


def test_terminal_episodes_keep_every_start_truncated_ones_only_bootstrappable():
    ep, t = valid_starts(LENGTHS, TERMINAL, h=3)
    assert list(zip(ep.tolist(), t.tolist())) == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4),
                                                  (1, 0)]
    ep, t = valid_starts(LENGTHS, TERMINAL, h=1)  # h = 1: one-step TD
    assert t[ep == 1].tolist() == [0, 1, 2]  # the truncated last row has no next state
    ep, t = valid_starts(LENGTHS, TERMINAL, h=9)  # longer than the truncated episode
    assert set(ep.tolist()) == {0}


def test_chunk_rows_padding_and_bootstrap_mask():
    ep, t = valid_starts(LENGTHS, TERMINAL, h=3)
    idx = chunk_index(OFFSETS, LENGTHS, TERMINAL, ep, t, h=3)
    assert idx.obs_row.tolist() == [0, 1, 2, 3, 4, 5]
    assert idx.action_rows.tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4], [4, 4, 4],
                                        [5, 6, 7]]  # past the terminal: the last action
    assert idx.action_mask.tolist() == [[True] * 3, [True] * 3, [True] * 3,
                                        [True, True, False], [True, False, False], [True] * 3]
    # chunk 0 bootstraps from s_3; chunk 2 ends exactly at the terminal: m = 0
    assert idx.next_row[[0, 1, 5]].tolist() == [3, 4, 8]
    assert idx.bootstrap_mask.tolist() == [1, 1, 0, 0, 0, 1]


def test_starts_past_a_truncation_are_refused():
    with pytest.raises(ValueError, match="valid starts"):
        chunk_index(OFFSETS, LENGTHS, TERMINAL, np.array([1]), np.array([1]), h=3)
    with pytest.raises(ConfigError, match="h must be >= 1"):
        valid_starts(LENGTHS, TERMINAL, h=0)


def test_chunk_returns_stop_at_the_terminal():
    r = np.array([[-1.0, -1.0, -1.0], [-1.0, 0.0, 5.0]])
    mask = np.array([[True, True, True], [True, True, False]])
    got = chunk_returns(r, mask, gamma=0.9)
    np.testing.assert_allclose(got, [-1 - 0.9 - 0.81, -1.0 + 0.0])
    with pytest.raises(ConfigError):
        chunk_returns(r, mask, gamma=1.5)
