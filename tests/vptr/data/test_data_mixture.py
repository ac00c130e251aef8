"""Prior/target mixing (vptr.data.mixture): one task vocabulary by string, the batch share of
prior chunks, rows of joined frame stores, and incompatible prior data refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vptr.data.chunk_sampler import ChunkSampler
from vptr.data.mixture import (
    JoinedFrames,
    check_compatible,
    join,
    positional,
    prior_count,
    target_tasks,
)
from vptr.data.robot import RobotDataset
from vptr.errors import DataError


class Store:
    """A frame store stand-in: frame value = row + base."""

    def __init__(self, n: int, base: int, size: int = 4):
        self.frames = (np.arange(n)[:, None, None, None] + base
                       + np.zeros((1, size, size, 3), np.int64)).astype(np.uint8)
        self.image_size = (size, size)


def dataset(name: str, lengths: list[int], tasks: list[str], task_of_episode: list[int],
            action_dim: int = 2, fps: float = 20.0, cameras: dict | None = None,
            base: int = 0) -> RobotDataset:
    lengths_a = np.array(lengths)
    n = int(lengths_a.sum())
    rng = np.random.default_rng(len(name))
    return RobotDataset(
        source=name, fps=fps, offsets=np.cumsum(lengths_a) - lengths_a, lengths=lengths_a,
        terminal=np.ones(len(lengths), bool), task_index=np.array(task_of_episode),
        tasks=list(tasks), state=rng.normal(size=(n, 3)).astype(np.float32),
        action=rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32),
        reward=np.zeros(n, np.float32), done=np.zeros(n, bool), success=None,
        cameras=cameras if cameras is not None else {"cam": Store(n, base)},
        feature_names={"action": [f"a{i}" for i in range(action_dim)],
                       "observation.state": ["x", "y", "z"], "state": ["x", "y", "z"]},
        state_widths=[3])


def test_task_indices_are_unified_by_string_with_the_target_first():
    target = dataset("target", [5, 5], ["lift"], [0, 0])
    prior_a = dataset("a", [6, 6, 6], ["push", "lift", "stack"], [2, 0, 1])
    prior_b = dataset("b", [4], ["drawer", "push"], [1])
    joined = join(target, [prior_a, prior_b])
    assert joined.tasks == ["lift", "push", "stack", "drawer"]
    # every episode keeps its instruction, whatever index its own dataset gave it
    assert [joined.tasks[i] for i in joined.task_index] == [
        "lift", "lift", "stack", "push", "lift", "push"]
    assert joined.part.tolist() == [0, 0, 1, 1, 1, 1]
    assert target_tasks(joined) == ["lift"]
    assert len(joined.action) == 10 + 18 + 4
    np.testing.assert_array_equal(joined.action[10:28], prior_a.action)


def test_statistics_are_those_of_the_joined_rows():
    target = dataset("target", [5], ["lift"], [0])
    prior = dataset("prior", [7, 7], ["push"], [0, 0])
    prior.action *= 3.0  # a wider range than the target's
    stats = join(target, [prior]).stats()
    both = np.concatenate([target.action, prior.action])
    np.testing.assert_allclose(stats["action"]["min"], both.min(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["mean"], both.mean(0), rtol=1e-5)


def test_joined_frames_read_each_dataset_by_row():
    target = dataset("target", [3], ["t"], [0], base=0)
    prior = dataset("prior", [4], ["p"], [0], base=100)
    frames = join(target, [prior]).cameras["cam"].frames
    assert isinstance(frames, JoinedFrames)
    got = frames[np.array([[0, 3], [6, 2]])]
    assert got.shape == (2, 2, 4, 4, 3)
    assert got[..., 0, 0, 0].tolist() == [[0, 100], [103, 2]]


def test_the_prior_fraction_holds_over_many_batches_and_is_deterministic():
    target = dataset("target", [20, 20], ["lift"], [0, 0])
    prior = dataset("prior", [30, 30, 30], ["push", "stack"], [0, 1, 0])
    joined = join(target, [prior])
    sampler = ChunkSampler(joined, 3, 0.99, images=False, seed=1, prior_fraction=0.9)
    shares = []
    for step in range(400):
        b = sampler.sample(10, step)
        from_prior = joined.part[b["episode"].numpy()] == 1
        shares.append(from_prior.mean())
        # the task of each chunk is its episode's unified task
        np.testing.assert_array_equal(b["task_index"].numpy(),
                                      joined.task_index[b["episode"].numpy()])
    assert abs(np.mean(shares) - 0.9) < 0.01
    assert set(np.round(shares, 1)) <= {0.9, 1.0}  # 9 or 10 of 10, never further off
    again = ChunkSampler(joined, 3, 0.99, images=False, seed=1, prior_fraction=0.9)
    for step in (0, 17, 399):  # batch `step` depends on (seed, rank, step) only
        np.testing.assert_array_equal(again.sample(10, step)["obs_row"],
                                      sampler.sample(10, step)["obs_row"])


def test_prior_count_is_exact_on_average_for_any_batch_size():
    rng = np.random.default_rng(0)
    for batch, frac in ((8, 0.9), (7, 0.25), (256, 0.9)):
        counts = [prior_count(rng, batch, frac) for _ in range(4000)]
        assert set(counts) <= {int(np.floor(frac * batch)), int(np.ceil(frac * batch))}
        assert abs(np.mean(counts) / batch - frac) < 0.01


@pytest.mark.parametrize("change, message", [
    ({"fps": 10.0}, "recorded at 10 fps, the target at 20 fps"),
    ({"action_dim": 3}, "action has 3 values per row, the target's 2"),
    ({"cameras": {}}, "cameras none, the target's ['cam']"),
    ({"cameras": {"cam": Store(8, 0, size=6)}}, "images are 6x6, the target's 4x4"),
])
def test_an_incompatible_prior_dataset_is_refused_naming_it_and_the_mismatch(change, message):
    target = dataset("target.parquet", [4], ["t"], [0])
    prior = dataset("prior_dir", [8], ["p"], [0], **change)
    with pytest.raises(DataError) as e:
        join(target, [prior])
    assert str(e.value).startswith("prior_dir: cannot be mixed with the target dataset "
                                   "target.parquet: ")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_feature_names_must_agree_unless_one_side_counts_positions():
    target = dataset("t", [4], ["t"], [0])
    renamed = dataset("p", [4], ["p"], [0])
    renamed.feature_names = dict(renamed.feature_names, **{"observation.state": ["x", "q", "z"]})
    with pytest.raises(DataError, match=r"'observation\.state' names its entry 1 'q', the "
                                        r"target 'y'"):
        check_compatible(target, renamed)
    generic = dataset("p", [4], ["p"], [0])
    generic.feature_names = dict(generic.feature_names,
                                 **{"observation.state": ["s_0", "s_1", "s_2"]})
    check_compatible(target, generic)  # a multi-task layout named by position: widths only
    assert positional(["environment_state_0", "environment_state_1"])
    assert positional(["a[0]", "a[1]"]) and not positional(["a[1]", "a[0]"])
    assert not positional(["cube_pos_0", "goal_0"]) and not positional([])


def test_a_sampler_refuses_mixing_without_prior_data():
    target = dataset("t", [6], ["t"], [0])
    with pytest.raises(ValueError, match="prior_fraction"):
        ChunkSampler(target, 2, 0.9, images=False, prior_fraction=0.5)
    no_target_chunks = dataclasses.replace(join(target, [dataset("p", [6], ["p"], [0])]))
    no_target_chunks.terminal[:] = False
    no_target_chunks.lengths = np.array([2, 6])  # the target episode is too short
    no_target_chunks.offsets = np.array([0, 2])
    with pytest.raises(DataError, match="the target data have no chunk"):
        ChunkSampler(no_target_chunks, 2, 0.9, images=False, prior_fraction=0.5)
