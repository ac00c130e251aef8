"""The safety filter: every command reaching the driver is finite, within limits and
within the per-step change limit, whatever the policy produced (property-based)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robots.base import ActionSpec
from vptr.errors import ConfigError
from vptr.runtime.safety import SafetyFilter

SPEC = ActionSpec(names=("j0", "j1", "dx", "grip"), low=(-1.0, -2.0, -0.5, 0.0), high=(1.0, 2.0, 0.5, 1.0),
                  max_step=(0.1, 0.2, 0.05, 0.5), max_velocity=(1.0, 10.0, 10.0, 10.0),
                  hold=(None, None, 0.0, None))
RATE = 20.0  # j0: velocity 1.0 / 20 Hz = 0.05 per step is tighter than max_step 0.1
STEP = np.array([0.05, 0.2, 0.05, 0.5])

wild = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                 st.sampled_from([0.0, 1e300, -1e300, np.nan, np.inf, -np.inf, 5e-324]))
actions = st.one_of(st.none(), st.lists(wild, min_size=4, max_size=4).map(np.array))


def _check_stream(f: SafetyFilter, start: np.ndarray, stream) -> list[np.ndarray]:
    prev = f.last
    assert np.allclose(prev, np.clip(start, f.low, f.high))
    out = []
    for a in stream:
        cmd = f(a)
        assert cmd.shape == (4,) and np.isfinite(cmd).all(), (a, cmd)
        assert np.all(cmd >= f.low) and np.all(cmd <= f.high), (a, cmd)
        assert np.all(np.abs(cmd - prev) <= f.max_step * (1 + 1e-12) + 1e-12), (a, prev, cmd)
        prev = cmd
        out.append(cmd)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=st.lists(st.floats(-3, 3), min_size=4, max_size=4).map(np.array),
       stream=st.lists(actions, min_size=1, max_size=40))
def test_every_command_is_finite_within_limits_and_within_the_step_limit(start, stream):
    f = SafetyFilter(SPEC, RATE)
    f.reset(start)
    np.testing.assert_allclose(f.max_step, STEP)
    _check_stream(f, start, stream)


@settings(max_examples=150, deadline=None)
@given(stream=st.lists(actions, min_size=1, max_size=30),
       ages=st.lists(st.one_of(st.none(), st.floats(0, 2)), min_size=30, max_size=30))
def test_the_guarantees_hold_with_stale_observations_too(stream, ages):
    f = SafetyFilter(SPEC, RATE, max_obs_age_s=0.5)
    f.reset(np.zeros(4))
    prev = f.last
    for a, age in zip(stream, ages):
        cmd = f(a, obs_age_s=age)
        assert np.isfinite(cmd).all() and np.all(cmd >= f.low) and np.all(cmd <= f.high)
        assert np.all(np.abs(cmd - prev) <= f.max_step + 1e-12)
        prev = cmd


@settings(max_examples=100, deadline=None)
@given(stream=st.lists(actions, min_size=1, max_size=30))
def test_explicitly_unlimited_still_never_forwards_a_non_finite_command(stream):
    f = SafetyFilter(ActionSpec(names=("a", "b", "c", "d")), RATE, unlimited=True)
    f.reset(np.zeros(4))
    for a in stream:
        cmd = f(a)
        assert np.isfinite(cmd).all()
        if a is not None and np.isfinite(a).all():
            np.testing.assert_array_equal(cmd, a)  # no limits: passed through unchanged


def test_non_finite_actions_hold_the_last_command_and_are_counted():
    f = SafetyFilter(SPEC, RATE)
    f.reset(np.array([0.5, 0.0, 0.0, 0.3]))
    f(np.array([0.52, 0.1, 0.02, 0.3]))
    held = f(np.array([np.nan, 0.0, 0.0, 0.0]))
    # absolute entries keep their last value, the relative one (dx) returns to 0
    np.testing.assert_allclose(held, [0.52, 0.1, 0.0, 0.3])
    f(np.array([0.5, np.inf, 0.0, 0.0]))
    assert f.interventions["nonfinite"] == 2


def test_a_huge_jump_is_clamped_then_rate_limited():
    f = SafetyFilter(SPEC, RATE)
    f.reset(np.zeros(4))
    cmd = f(np.array([1e9, -1e9, 0.3, 1.0]))
    np.testing.assert_allclose(cmd, [0.05, -0.2, 0.05, 0.5])
    assert f.interventions["clamp"] == 1 and f.interventions["rate"] == 1
    for _ in range(40):
        cmd = f(np.array([1e9, -1e9, 0.3, 1.0]))
    np.testing.assert_allclose(cmd, [1.0, -2.0, 0.3, 1.0])  # reaches the limit, slowly


def test_the_first_target_is_approached_slowly_from_the_current_pose():
    f = SafetyFilter(SPEC, RATE)
    f.reset(np.array([-0.9, 0.0, 0.0, 0.0]))
    traj = [f(np.array([0.9, 0.0, 0.0, 0.0]))[0] for _ in range(50)]
    assert traj[0] == pytest.approx(-0.85)
    assert np.all(np.diff(traj) <= 0.05 + 1e-12) and traj[-1] == pytest.approx(0.9)


def test_no_action_decelerates_a_relative_command_to_its_hold_value():
    f = SafetyFilter(SPEC, RATE)
    f.reset(np.zeros(4))
    for _ in range(10):
        f(np.array([0.0, 0.0, 0.5, 0.0]))
    assert f.last[2] == pytest.approx(0.5)
    dx = [f(None)[2] for _ in range(12)]
    np.testing.assert_allclose(dx[:3], [0.45, 0.40, 0.35])
    assert dx[-1] == 0.0 and f.interventions["hold"] == 12


def test_a_stale_observation_holds():
    f = SafetyFilter(SPEC, RATE, max_obs_age_s=0.2)
    f.reset(np.zeros(4))
    np.testing.assert_allclose(f(np.array([0.04, 0, 0, 0]), obs_age_s=0.1), [0.04, 0, 0, 0])
    np.testing.assert_allclose(f(np.array([0.08, 0, 0, 0]), obs_age_s=0.3), [0.04, 0, 0, 0])
    assert f.interventions["stale_obs"] == 1


def test_a_robot_without_limits_is_refused_unless_limits_are_given_or_none_asked_for():
    bare = ActionSpec(names=("a", "b"))
    with pytest.raises(ConfigError, match=r"no low limit for \['a', 'b'\].*unlimited=True"):
        SafetyFilter(bare, RATE)
    with pytest.raises(ConfigError, match="no per-step change limit for \\['b'\\]"):
        SafetyFilter(bare, RATE, low=-1, high=1, max_step={"a": 0.1})
    f = SafetyFilter(bare, RATE, low=-1, high=1, max_step=0.1)
    f.reset(np.zeros(2))
    np.testing.assert_allclose(f(np.array([5.0, -5.0])), [0.1, -0.1])
    SafetyFilter(bare, RATE, unlimited=True)  # explicit: accepted


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="unknown actions \\['nope'\\]"):
        SafetyFilter(SPEC, RATE, max_step={"nope": 1.0})
    with pytest.raises(ConfigError, match="low > high"):
        SafetyFilter(SPEC, RATE, low=2.0)
    f = SafetyFilter(SPEC, RATE)
    with pytest.raises(RuntimeError, match="reset"):
        f(np.zeros(4))
    f.reset(np.zeros(4))
    with pytest.raises(ConfigError, match="shape \\(4,\\)"):
        f(np.zeros(3))
    with pytest.raises(ConfigError, match="finite"):
        f.reset(np.array([np.nan, 0, 0, 0]))
