"""The evaluation harness: statistics, specs, chunk execution, workers, seeding, videos."""

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import sim
from sim.evaluate import (
    ENV_INDEX_KEY,
    ChunkExecutor,
    ConstantPolicy,
    EvalConfig,
    WorkerError,
    check_compatible,
    evaluate,
    flatten_observation,
    measure_throughput,
    observation_spec,
    parse_execution,
    wilson_interval,
)
from vptr.errors import ConfigError

REACH = "vptr/Reach-v0"
SMALL = {"image_size": 32}
COUNT = "vptr-test/Count-v0"


class CountEnv(gym.Env):
    """Episode of seed s: the goal is s % 5 + 1 positive actions; reward 1 per step."""

    def __init__(self):
        self.observation_space = spaces.Dict({
            "state": spaces.Box(-np.inf, np.inf, (1,), np.float32),
            "environment_state": spaces.Box(-np.inf, np.inf, (1,), np.float32),
            "pixels": spaces.Dict({"front": spaces.Box(0, 255, (8, 8, 3), np.uint8)})})
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)

    def _obs(self):
        return {"state": np.array([self.count], np.float32),
                "environment_state": np.array([self.goal], np.float32),
                "pixels": {"front": np.full((8, 8, 3), 10 * self.count, np.uint8)}}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.count, self.goal = 0, seed % 5 + 1
        return self._obs(), {"is_success": False}

    def step(self, action):
        self.count += int(action[0] > 0)
        success = self.count >= self.goal
        return self._obs(), 1.0, success, False, {"is_success": success}


@pytest.fixture
def count_env(monkeypatch):
    """A tiny registered env (in-process only: spawned workers do not see it)."""
    if COUNT not in gym.registry:
        gym.register(COUNT, entry_point=CountEnv, max_episode_steps=4, disable_env_checker=True)
    monkeypatch.setitem(sim.ENV_IDS, COUNT, ("tests", {}))
    return COUNT


class ReachTowards:
    """Deterministic state feedback for Reach: move the tool towards a fixed point, in
    chunks of h (each row depends only on its own state). Records calls and resets."""

    point = np.array([0.30, 0.05, 0.10])

    def __init__(self, h=4):
        self.h, self.calls, self.resets, self.observed, self.events = h, [], [], [], []

    def __call__(self, obs):
        assert obs["state"].dtype == np.float32 and obs["state"].shape[1:] == (15,)
        self.calls.append(obs[ENV_INDEX_KEY].copy())
        self.events.append(("call", obs[ENV_INDEX_KEY].copy(), obs["state"][:, 10:13].copy()))
        ee = obs["state"][:, 10:13].astype(np.float64)
        chunk = np.zeros((len(ee), self.h, 5))
        for j in range(self.h):  # aim the j-th action at where the tool will be
            chunk[:, j, :3] = np.clip((self.point - ee) / 0.02 / (j + 1), -1, 1)
        return chunk

    def reset(self, indices):
        assert indices.dtype == np.int64
        self.resets.append(indices.tolist())

    def observe(self, obs):
        self.observed.append((obs[ENV_INDEX_KEY].copy(), obs["state"][:, 10:13].copy()))
        self.events.append(("observe", *self.observed[-1]))


def _child_pids():
    """Spawned worker processes of this process still alive (the resource tracker aside)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"spawn_main" in cmd:
            pids.append(int(d.name))
    return pids


def _no_workers_left():
    assert mp.active_children() == []
    assert _child_pids() == []


# --------------------------------------------------------------------------- statistics


def test_wilson_interval_known_values():
    # Reference values: Wilson (1927); e.g. Newcombe (1998), Stat. Med. 17, table I.
    for (s, n), (lo, hi) in {(0, 10): (0.0, 0.2775), (5, 10): (0.2366, 0.7634),
                             (10, 10): (0.7225, 1.0), (45, 50): (0.7864, 0.9565),
                             (1, 29): (0.0061, 0.1718)}.items():
        assert wilson_interval(s, n) == pytest.approx((lo, hi), abs=5e-5), (s, n)
    from scipy.stats import binomtest

    for s, n in [(3, 7), (17, 50), (49, 50)]:
        ci = binomtest(s, n).proportion_ci(method="wilson")  # z = norm.ppf(0.975), not 1.96
        assert wilson_interval(s, n, z=1.959963984540054) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert wilson_interval(5, 10, z=1.0)[1] - wilson_interval(5, 10, z=1.0)[0] < 0.7634 - 0.2366
    for bad in [(0, 0), (11, 10), (-1, 5)]:
        with pytest.raises(ConfigError, match="successes"):
            wilson_interval(*bad)


# --------------------------------------------------------------------------- specs


def test_flatten_observation_and_spec_use_the_same_dotted_keys():
    env = sim.make(REACH, image_size=32, cameras=("front", "wrist"))
    try:
        obs, _ = env.reset(seed=0)
        flat = flatten_observation(obs)
        spec = observation_spec(env)
        assert spec == observation_spec(env.observation_space)
    finally:
        env.close()
    assert set(flat) == set(spec) == {"state", "pixels.front", "pixels.wrist"}
    assert spec["state"] == {"shape": [15], "dtype": "float32"}
    assert spec["pixels.wrist"] == {"shape": [32, 32, 3], "dtype": "uint8"}
    for k, v in flat.items():
        assert list(v.shape) == spec[k]["shape"] and str(v.dtype) == spec[k]["dtype"]
    nested = {"a": {"b": {"c": np.zeros(2)}}, "environment_state": np.ones(3, np.float32)}
    assert set(flatten_observation(nested)) == {"a.b.c", "environment_state"}


def test_incompatible_policy_is_refused_with_every_mismatch_named():
    spec = {"observation": {"state": {"shape": [20], "dtype": "float32"},
                            "pixels.front": {"shape": [32, 32, 3], "dtype": "float32"},
                            "pixels.wrist": {"shape": [32, 32, 3], "dtype": "uint8"}},
            "action": {"shape": [7]}}
    problems = check_compatible(spec, REACH, SMALL)
    assert len(problems) == 4, problems
    text = " | ".join(problems)
    for words in ("'pixels.wrist' is missing", "'state' has shape [15]", "expects [20]",
                  "dtype uint8", "actions have shape [5]", "outputs [7]"):
        assert words in text, (words, text)
    fine = {"observation": {"state": {"shape": [15], "dtype": "float32"}},  # a subset is fine
            "action": {"shape": [5]}}
    assert check_compatible(fine, REACH, SMALL) == []

    policy = ReachTowards()
    policy.spec = spec
    with pytest.raises(ConfigError) as e:
        evaluate(policy, REACH, episodes=2, env_kwargs=SMALL, progress=False)
    assert all(p in str(e.value) for p in problems)
    assert policy.calls == [] and policy.resets == []  # nothing ran
    with pytest.raises(ConfigError, match="policy spec"):
        check_compatible({"observation": {}}, REACH, SMALL)


def test_policy_with_a_spec_sees_only_its_keys(count_env):
    seen = []

    def policy(obs):
        seen.append(sorted(obs))
        return np.ones((len(obs[ENV_INDEX_KEY]), 1, 2))

    policy.spec = {"observation": {"environment_state": {"shape": [1]}}, "action": {"shape": [2]}}
    evaluate(policy, count_env, episodes=2, seed=0, progress=False)
    assert seen and all(s == ["env_index", "environment_state"] for s in seen)


# --------------------------------------------------------------------------- execution


def test_execution_strings():
    assert str(parse_execution("open_loop")) == "open_loop"
    assert parse_execution("receding:3").k == 3
    assert parse_execution("ensemble").m == 0.01 and parse_execution("ensemble:0.5").m == 0.5
    for bad in ["closed", "receding", "receding:0", "receding:x", "ensemble:nan", "open_loop:2"]:
        with pytest.raises(ConfigError, match="execution"):
            parse_execution(bad)


def test_chunk_executor_modes_and_ensemble_weights():
    chunk = np.arange(12, dtype=float).reshape(4, 3)
    ex = ChunkExecutor(parse_execution("receding:2"))
    assert ex.needs_chunk
    ex.add(chunk)
    assert not ex.needs_chunk
    np.testing.assert_array_equal([ex.next_action(), ex.next_action()], chunk[:2])
    assert ex.needs_chunk
    with pytest.raises(ConfigError, match="at least 2"):
        ex.add(chunk[:1])

    # ensemble: the query at step q predicts value 10 * q + j for step q + j (h = 3)
    m = 0.7
    ex = ChunkExecutor(parse_execution(f"ensemble:{m}"))
    got = []
    for q in range(6):
        assert ex.needs_chunk
        ex.add(np.array([[10.0 * q + j] for j in range(3)]))
        got.append(ex.next_action()[0])
    for t, value in enumerate(got):
        starts = list(range(max(0, t - 2), t + 1))  # queries still covering step t, oldest first
        w = np.exp(-m * np.arange(len(starts)))
        preds = np.array([10.0 * q + (t - q) for q in starts])
        assert value == pytest.approx((w * preds).sum() / w.sum()), t
    ex.reset()
    ex.add(np.array([[5.0]]))
    assert ex.next_action()[0] == 5.0


@pytest.mark.parametrize("execution, calls_per_episode", [
    ("open_loop", 3), ("receding:1", 12), ("receding:3", 4), ("ensemble", 12)])
def test_policy_call_counts(execution, calls_per_episode):
    policy = ReachTowards(h=4)
    r = evaluate(policy, REACH, episodes=2, seed=3, env_kwargs=SMALL, max_steps=12,
                 execution=execution, progress=False)
    assert [e["length"] for e in r["per_episode"]] == [12, 12]
    assert len(policy.calls) == r["policy_calls"] == 2 * calls_per_episode
    assert r["execution"] == str(parse_execution(execution))


def test_environments_needing_a_chunk_are_queried_together():
    policy = ReachTowards(h=4)
    r = evaluate(policy, REACH, episodes=4, env_kwargs=SMALL, max_steps=8, envs_per_worker=2,
                 progress=False)
    assert r["num_envs"] == 2
    assert [c.tolist() for c in policy.calls] == [[0, 1]] * 4
    assert policy.resets == [[0, 1], [0, 1]]


def test_policy_output_is_checked():
    bad = ConstantPolicy(np.zeros(4), horizon=2)  # 4 actions instead of 5
    with pytest.raises(ConfigError, match=r"returned shape \[1, 2, 4\]"):
        evaluate(bad, REACH, episodes=1, env_kwargs=SMALL, max_steps=3, progress=False)
    with pytest.raises(ConfigError, match="at least 8"):
        evaluate(ConstantPolicy(np.zeros(5), horizon=4), REACH, episodes=1, env_kwargs=SMALL,
                 max_steps=3, execution="receding:8", progress=False)


# --------------------------------------------------------------------------- episodes


def test_success_return_length_and_resets_with_uneven_episodes(count_env):
    class Up(ConstantPolicy):
        resets: list

        def reset(self, indices):
            self.resets.append(indices.tolist())

    policy = Up(np.ones(2), horizon=2)
    policy.resets = []
    r = evaluate(policy, count_env, episodes=7, seed=0, envs_per_worker=3, progress=False)
    goals = [(0 + i) % 5 + 1 for i in range(7)]  # time limit 4: goal 5 is never reached
    assert [e["seed"] for e in r["per_episode"]] == list(range(7))
    assert [e["success"] for e in r["per_episode"]] == [g <= 4 for g in goals]
    assert [e["length"] for e in r["per_episode"]] == [min(g, 4) for g in goals]
    assert [e["return"] for e in r["per_episode"]] == [float(min(g, 4)) for g in goals]
    assert r["successes"] == 6 and r["success_rate"] == pytest.approx(6 / 7)
    assert r["success_ci95"] == list(wilson_interval(6, 7))
    # slots 0-2 start episodes 0-2 (goals 1, 2, 3); episode 3 (goal 4) goes to slot 0 after
    # step 1, episode 4 to slot 1 after step 2, episodes 5 and 6 to slot 2 after steps 3, 4
    assert policy.resets == [[0, 1, 2], [0], [1], [2], [2]]
    assert sum(map(len, policy.resets)) == 7


def test_a_policy_whose_reset_takes_seeds_is_told_each_episodes_reset_seed(count_env):
    class Seeded(ConstantPolicy):
        def reset(self, indices, seeds):
            assert seeds.dtype == np.int64 and len(seeds) == len(indices)
            self.told.extend(zip(indices.tolist(), seeds.tolist()))

    policy = Seeded(np.ones(2), horizon=2)
    policy.told = []
    r = evaluate(policy, count_env, episodes=7, seed=40, envs_per_worker=3, progress=False)
    # the same slot order as above, each slot told the seed its new episode resets with
    assert policy.told == [(0, 40), (1, 41), (2, 42), (0, 43), (1, 44), (2, 45), (2, 46)]
    assert [e["seed"] for e in r["per_episode"]] == list(range(40, 47))


def test_observe_sees_every_observation():
    policy = ReachTowards(h=4)
    r = evaluate(policy, REACH, episodes=3, env_kwargs=SMALL, max_steps=5, envs_per_worker=2,
                 progress=False)
    # the reset observation and every later one but the terminal one: as many as steps
    assert sum(len(idx) for idx, _ in policy.observed) == r["steps"]
    # every query shows the slot's latest observation
    last, events = {}, iter(policy.events)
    for kind, idx, ee in events:
        if kind == "observe":
            last.update({int(i): e for i, e in zip(idx, ee)})
        else:
            for i, e in zip(idx, ee):
                np.testing.assert_array_equal(e, last[int(i)])


def test_results_do_not_depend_on_the_number_of_workers():
    runs = {}
    for workers, per_worker in [(0, 1), (0, 3), (1, 1), (2, 1)]:
        r = evaluate(ReachTowards(h=3), REACH, episodes=5, seed=11, max_steps=15,
                     env_kwargs={**SMALL, "reward_type": "dense"}, num_workers=workers,
                     envs_per_worker=per_worker, progress=False)
        runs[workers, per_worker] = r["per_episode"]
    first = runs[0, 1]
    assert [e["seed"] for e in first] == [11 + i for i in range(5)]
    assert len({e["return"] for e in first}) == 5  # the episodes do differ
    for key, per_episode in runs.items():
        assert per_episode == first, key
    _no_workers_left()


# --------------------------------------------------------------------------- workers


def test_worker_construction_error_is_clear_and_leaves_no_processes():
    with pytest.raises(ConfigError, match=r"in environment worker \d.*image_size must be"):
        evaluate(ReachTowards(), REACH, episodes=2, env_kwargs={"image_size": 3},
                 num_workers=2, progress=False)
    _no_workers_left()
    with pytest.raises(ConfigError, match="unexpected keyword argument 'bogus'"):
        evaluate(ReachTowards(), REACH, episodes=1, env_kwargs={"bogus": 1}, num_workers=1,
                 progress=False)
    _no_workers_left()
    with pytest.raises(ConfigError, match="unknown task id"):
        evaluate(ReachTowards(), "vptr/Nope-v0", episodes=1, num_workers=1, progress=False)


def test_interrupt_during_rollouts_shuts_the_workers_down():
    class Interrupted(ReachTowards):
        def __call__(self, obs):
            if len(self.calls) == 2:
                raise KeyboardInterrupt
            return super().__call__(obs)

    with pytest.raises(KeyboardInterrupt):
        evaluate(Interrupted(h=1), REACH, episodes=4, env_kwargs=SMALL, num_workers=2,
                 progress=False)
    _no_workers_left()


def test_a_dying_worker_is_a_clear_error():
    class Killer(ReachTowards):
        def __call__(self, obs):
            if len(self.calls) == 1:
                os.kill(mp.active_children()[0].pid, signal.SIGKILL)
            return super().__call__(obs)

    with pytest.raises(WorkerError, match="exited unexpectedly while step"):
        evaluate(Killer(h=1), REACH, episodes=2, env_kwargs=SMALL, num_workers=2, progress=False)
    _no_workers_left()


# --------------------------------------------------------------------------- outputs


def test_videos_and_report_round_trip(tmp_path):
    import av

    report_path = tmp_path / "out" / "report.json"
    r = evaluate(ReachTowards(h=2), REACH, episodes=3, seed=5, env_kwargs=SMALL, max_steps=10,
                 video_dir=tmp_path / "videos", videos=2, report_path=report_path,
                 progress=False)
    assert r["videos"] == [str(tmp_path / "videos" / f"episode_{i:06d}.mp4") for i in range(2)]
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == \
        ["episode_000000.mp4", "episode_000001.mp4"]
    for path, ep in zip(r["videos"], r["per_episode"]):
        with av.open(path) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == ep["length"] + 1  # the reset observation and one per step
        assert frames[0].shape == (32, 32, 3) and frames[0].std() > 0
        assert np.abs(frames[0].astype(int) - frames[-1]).mean() > 1  # the arm moved
    assert json.loads(report_path.read_text()) == r
    for key in ("success_rate", "success_ci95", "return_mean", "return_std", "length_mean",
                "wall_time_s", "episodes_per_s", "env_id", "env_kwargs", "execution"):
        assert key in r
    assert r["env_kwargs"] == {"image_size": 32} and r["episodes"] == 3
    assert r["length_mean"] == np.mean([e["length"] for e in r["per_episode"]])


def test_videos_from_render_without_image_observations(tmp_path):
    kw = {"image_size": 32, "render_images": False, "render_mode": "rgb_array"}
    r = evaluate(ReachTowards(h=2), REACH, episodes=1, env_kwargs=kw, max_steps=4,
                 video_dir=tmp_path, videos=1, progress=False)
    assert Path(r["videos"][0]).stat().st_size > 0
    with pytest.raises(ConfigError, match="videos need camera images"):
        evaluate(ReachTowards(), REACH, episodes=1, env_kwargs={"render_images": False},
                 max_steps=4, video_dir=tmp_path, videos=1, progress=False)


def test_bad_options_are_config_errors(tmp_path):
    for kw, words in [({"episodes": 0}, "episodes"), ({"videos": 2}, "video_dir"),
                      ({"videos": 5, "episodes": 2, "video_dir": "x"}, "more than"),
                      ({"num_workers": -1}, "num_workers"), ({"execution": "greedy"}, "execution"),
                      ({"max_steps": 0}, "max_steps")]:
        with pytest.raises(ConfigError, match=words):
            EvalConfig(**kw)


def test_measure_throughput():
    t = measure_throughput(REACH, num_workers=0, episodes=2, env_kwargs=SMALL, max_steps=5)
    assert t["steps"] == 10 and t["episodes_per_s"] > 0 and t["steps_per_s"] > 0


def test_the_harness_imports_no_training_code():
    code = ("import sys, sim.evaluate; print(sorted(m for m in sys.modules "
            "if m.startswith(('vptr.train', 'vptr.finetune', 'torch'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])
