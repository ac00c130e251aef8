"""Policy evaluation: success rate with a Wilson interval, returns, lengths, videos, over
vectorised environments in worker processes. Imports no training code (finetuning spec,
"Evaluation"): ``vptr eval`` and the fine-tuning trainer both call :func:`evaluate`.

    report = evaluate(policy, "vptr/Lift-v0", episodes=50, num_workers=2,
                      env_kwargs={"image_size": 64}, execution="open_loop")

Policy protocol
    ``policy(obs) -> chunks``: ``obs`` is a dict of arrays batched over the n environments
    that need a new chunk now, keys as in :func:`flatten_observation` (``state``,
    ``pixels.front``, ``environment_state``...; only the keys of ``policy.spec`` when it has
    one), plus ``obs["env_index"]``, int64 (n,), the environment slot of each row (stable
    for an episode, in ``0 .. num_envs-1``). ``chunks`` is float (n, h, *action_shape).
    Optional ``policy.reset(indices)``: the slots that start a new episode, called before
    their first query. Optional ``policy.observe(obs)``: every observation a later query may
    need (each slot's reset observation and every step's but an episode's terminal one,
    batched with ``env_index``), for policies that stack frames between queries.
    Optional ``policy.spec``: ``{"observation": {key: {"shape", "dtype"}}, "action":
    {"shape": [Da]}}``, checked against the environment before any episode runs.

Execution (:func:`parse_execution`): ``open_loop`` (default: the critic scores open-loop
chunks) runs each whole chunk; ``receding:k`` runs the first k actions of each chunk;
``ensemble[:m]`` queries every step and averages every stored prediction for the current
step with weights ``exp(-m * i)``, i = 0 for the oldest prediction (ACT, Zhao et al. 2023,
section 3.3; m = 0.01 by default; m < 0 favours the newest prediction instead).

Processes and seeding: ``num_workers=0`` steps the environments in this process;
otherwise each of ``num_workers`` 'spawn' processes builds and owns ``envs_per_worker``
environments (MuJoCo/OSMesa contexts are created in the process that renders). All
environments are stepped together and the policy is queried once per step for every
environment that needs a chunk. Episode i always resets with seed ``seed + i`` and its
result is stored under i, so per-episode results do not depend on the number of workers
(for a policy whose output for a row does not depend on the rest of the batch). A policy
whose ``reset`` takes ``seeds`` is told each new episode's reset seed
(``reset(slots, seeds=...)``), so a stochastic policy can draw an episode's noise from its
own generator: then an evaluation repeats exactly, whatever the batching or the process.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import multiprocessing as mp
import signal
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from vptr.config import helpfield
from vptr.errors import ConfigError, DataError, VptrError

ENV_INDEX_KEY = "env_index"
# Away from the data generators' seeds (10000 * task + episode from 0), so evaluation
# layouts are not the layouts of the demonstrations.
DEFAULT_SEED = 1_000_000
VIDEO_CAMERAS = ("front", "agentview")  # preferred pixels.<camera> for videos


class WorkerError(VptrError):
    """An environment worker failed or died; the message names the worker and the cause."""


# --------------------------------------------------------------------------- specs


def flatten_observation(obs: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested observation dict -> flat dict with dotted keys (``pixels.front``)."""
    flat: dict[str, np.ndarray] = {}
    for key, value in obs.items():
        if isinstance(value, dict):
            flat.update(flatten_observation(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = np.array(value)  # a copy: envs may reuse buffers
    return flat


def _flatten_space(space: spaces.Space, prefix: str = "") -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, sub in space.spaces.items():
        if isinstance(sub, spaces.Dict):
            out.update(_flatten_space(sub, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = {"shape": list(sub.shape), "dtype": str(np.dtype(sub.dtype))}
    return out


def observation_spec(env_or_space) -> dict[str, dict[str, Any]]:
    """``{key: {"shape": [...], "dtype": "float32"}}`` of an env's (or a Dict space's)
    observations, keys as in :func:`flatten_observation`."""
    space = getattr(env_or_space, "observation_space", env_or_space)
    if not isinstance(space, spaces.Dict):
        raise ConfigError(f"expected a Dict observation space, got {space!r}")
    return _flatten_space(space)


def action_spec(env_or_space) -> dict[str, Any]:
    """``{"shape": [...], "low": [...], "high": [...]}`` of an env's (or a Box's) actions."""
    space = getattr(env_or_space, "action_space", env_or_space)
    if not isinstance(space, spaces.Box):
        raise ConfigError(f"expected a Box action space, got {space!r}")
    return {"shape": list(space.shape), "low": space.low.ravel().tolist(),
            "high": space.high.ravel().tolist()}


def env_spec(env) -> dict[str, Any]:
    """An environment's spec in the format of a policy spec (plus action bounds)."""
    return {"observation": observation_spec(env), "action": action_spec(env)}


def spec_mismatches(policy_spec: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """Every way ``policy_spec`` does not fit the environment ``spec``, in words."""
    if not isinstance(policy_spec, dict) or not isinstance(policy_spec.get("observation"), dict) \
            or not isinstance(policy_spec.get("action"), dict) \
            or "shape" not in policy_spec["action"]:
        raise ConfigError("a policy spec is {'observation': {key: {'shape': [...], 'dtype': ...}}, "
                          f"'action': {{'shape': [Da]}}}}, got {policy_spec!r}")
    env_obs, problems = spec["observation"], []
    for key, want in policy_spec["observation"].items():
        if key == ENV_INDEX_KEY:
            continue
        have = env_obs.get(key)
        if have is None:
            problems.append(f"observation {key!r} is missing (the environment gives "
                            f"{', '.join(sorted(env_obs))})")
            continue
        if "shape" in want and list(want["shape"]) != have["shape"]:
            problems.append(f"observation {key!r} has shape {have['shape']} in the environment, "
                            f"the policy expects {list(want['shape'])}")
        if "dtype" in want and np.dtype(want["dtype"]) != np.dtype(have["dtype"]):
            problems.append(f"observation {key!r} has dtype {have['dtype']} in the environment, "
                            f"the policy expects {np.dtype(want['dtype'])}")
    want_a, have_a = list(policy_spec["action"]["shape"]), spec["action"]["shape"]
    if want_a != have_a:
        problems.append(f"actions have shape {have_a} in the environment, the policy outputs "
                        f"{want_a}")
    return problems


def check_compatible(policy_spec: dict[str, Any], env_id: str,
                     env_kwargs: dict[str, Any] | None = None) -> list[str]:
    """Build ``env_id`` here once and list every mismatch with ``policy_spec``."""
    import sim

    env = sim.make(env_id, **(env_kwargs or {}))
    try:
        return spec_mismatches(policy_spec, env_spec(env))
    finally:
        env.close()


# --------------------------------------------------------------------------- statistics


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927); z = 1.96 for 95 %."""
    if n <= 0 or not 0 <= successes <= n:
        raise ConfigError(f"wilson_interval needs 0 <= successes <= n and n > 0, "
                          f"got {successes}/{n}")
    p, z2 = successes / n, z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


# --------------------------------------------------------------------------- execution


@dataclasses.dataclass(frozen=True)
class Execution:
    """How action chunks are executed; see :func:`parse_execution`."""

    mode: str  # open_loop | receding | ensemble
    k: int | None = None  # receding: actions run per chunk
    m: float = 0.01  # ensemble: weight exp(-m * i), i = 0 oldest

    def __str__(self) -> str:
        return {"open_loop": "open_loop", "receding": f"receding:{self.k}",
                "ensemble": f"ensemble:{self.m:g}"}[self.mode]


def parse_execution(text: str | Execution) -> Execution:
    """``open_loop`` | ``receding:k`` (k >= 1) | ``ensemble`` | ``ensemble:m``."""
    if isinstance(text, Execution):
        return text
    if not isinstance(text, str):
        raise ConfigError(f"execution must be a string, got {text!r}")
    mode, _, arg = text.partition(":")
    try:
        if mode == "open_loop" and not arg:
            return Execution("open_loop")
        if mode == "receding" and arg:
            if int(arg) >= 1:
                return Execution("receding", k=int(arg))
        elif mode == "ensemble":
            m = float(arg) if arg else 0.01
            if math.isfinite(m):
                return Execution("ensemble", m=m)
    except ValueError:
        pass
    raise ConfigError(f"execution must be open_loop, receding:k (k >= 1 actions per chunk) or "
                      f"ensemble[:m] (a finite weight decay), got {text!r}")


class ChunkExecutor:
    """Turns one environment's action chunks into one action per step."""

    def __init__(self, execution: Execution) -> None:
        self.execution = execution
        self.reset()

    def reset(self) -> None:
        self._queue: deque[np.ndarray] = deque()
        self._chunks: deque[tuple[int, np.ndarray]] = deque()  # ensemble: (start step, chunk)
        self._t = 0

    @property
    def needs_chunk(self) -> bool:
        return self.execution.mode == "ensemble" or not self._queue

    def add(self, chunk: np.ndarray) -> None:
        k = self.execution.k
        if len(chunk) == 0 or (k is not None and len(chunk) < k):
            raise ConfigError(f"execution {self.execution} needs chunks of at least {k or 1} "
                              f"action(s); the policy returned {len(chunk)}")
        if self.execution.mode == "ensemble":
            self._chunks.append((self._t, chunk))
        else:
            self._queue.extend(chunk[:k])

    def next_action(self) -> np.ndarray:
        t, self._t = self._t, self._t + 1
        if self.execution.mode != "ensemble":
            return self._queue.popleft()
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= t:
            self._chunks.popleft()  # predictions that no longer reach step t
        preds = np.stack([c[t - start] for start, c in self._chunks])  # oldest first
        w = np.exp(-self.execution.m * np.arange(len(preds)))
        return np.tensordot(w / w.sum(), preds, axes=1)


# --------------------------------------------------------------------------- environments


def _error_payload(e: BaseException) -> tuple[str, str, str, str]:
    kind = "config" if isinstance(e, ConfigError) else "data" if isinstance(e, DataError) \
        else "other"
    return kind, type(e).__name__, str(e), traceback.format_exc()


class _EnvGroup:
    """Some environments of one id, stepped by slot (used in-process and by each worker)."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], count: int,
                 max_steps: int | None) -> None:
        import sim

        extra = {} if max_steps is None else {"max_episode_steps": max_steps}
        self.envs: list = []
        try:
            for _ in range(count):
                self.envs.append(sim.make(env_id, **extra, **env_kwargs))
        except BaseException:
            self.close()
            raise

    def info(self) -> dict[str, Any]:
        env = self.envs[0]
        return {"spec": env_spec(env), "fps": float(env.unwrapped.metadata.get("render_fps", 20))}

    def _frame(self, i: int, render: bool):
        return self.envs[i].render() if render else None

    def reset(self, slots: list[int], seeds: list[int], render: list[bool]) -> list[tuple]:
        out = []
        for i, seed, r in zip(slots, seeds, render):
            obs, _info = self.envs[i].reset(seed=int(seed))
            out.append((flatten_observation(obs), self._frame(i, r)))
        return out

    def step(self, slots: list[int], actions: np.ndarray, render: list[bool]) -> list[tuple]:
        out = []
        for i, a, r in zip(slots, actions, render):
            obs, reward, term, trunc, info = self.envs[i].step(a)
            out.append((flatten_observation(obs), float(reward), bool(term), bool(trunc),
                        bool(info.get("is_success", False)), self._frame(i, r)))
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []


def _worker_main(conn, env_id: str, env_kwargs: dict, count: int, max_steps: int | None) -> None:
    """A worker process: builds its environments, then serves reset/step until closed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent shuts us down
    group = None
    try:
        try:
            group = _EnvGroup(env_id, env_kwargs, count, max_steps)
            conn.send(("ok", group.info()))
        except Exception as e:
            conn.send(("error", _error_payload(e)))
            return
        while True:
            cmd, args = conn.recv()
            if cmd not in ("reset", "step"):
                return
            try:
                result = ("ok", getattr(group, cmd)(*args))
            except Exception as e:
                result = ("error", _error_payload(e))
            conn.send(result)
    except (EOFError, OSError):  # the parent is gone: nothing to report to
        pass
    finally:
        if group is not None:
            group.close()
        conn.close()


class _WorkerPool:
    """Environment slots spread over worker processes (slot s -> worker s // per_worker)."""

    def __init__(self, env_id: str, env_kwargs: dict, max_steps: int | None, num_envs: int,
                 per_worker: int, start_method: str = "spawn") -> None:
        self.env_id, self.env_kwargs, self.per_worker = env_id, env_kwargs, per_worker
        ctx = mp.get_context(start_method)
        self.procs: list = []
        self.conns: list = []
        try:
            for w, first in enumerate(range(0, num_envs, per_worker)):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_worker_main, name=f"vptr-eval-worker-{w}", daemon=True,
                                args=(child, env_id, env_kwargs,
                                      min(per_worker, num_envs - first), max_steps))
                p.start()
                child.close()  # so that a dead worker reads as EOF here
                self.procs.append(p)
                self.conns.append(parent)
            infos = [self._recv(w, "making the environments") for w in range(len(self.conns))]
            self._info = infos[0]
        except BaseException:
            self.close()
            raise

    def info(self) -> dict[str, Any]:
        return self._info

    def _recv(self, w: int, doing: str):
        conn, proc = self.conns[w], self.procs[w]
        try:
            while not conn.poll(0.5):
                if not proc.is_alive():
                    raise EOFError
            status, payload = conn.recv()
        except (EOFError, ConnectionError):
            hint = ("; its error is printed above (a script that evaluates with workers needs "
                    "an `if __name__ == '__main__':` guard)") if doing.startswith("making") else ""
            raise WorkerError(f"environment worker {w} ({self.env_id}) exited unexpectedly "
                              f"while {doing} (exit code {proc.exitcode}){hint}") from None
        if status == "ok":
            return payload
        kind, name, message, tb = payload
        where = f"{self.env_id} with {self.env_kwargs} in environment worker {w}, {doing}"
        if kind == "config":
            raise ConfigError(f"{where}: {message}")
        if kind == "data":
            raise DataError(f"{where}: {message}")
        raise WorkerError(f"{where}: {name}: {message}\n--- worker traceback ---\n{tb.rstrip()}")

    def _call(self, cmd: str, slots: list[int], *columns) -> list:
        groups: dict[int, list[int]] = {}
        for j, s in enumerate(slots):
            groups.setdefault(s // self.per_worker, []).append(j)
        for w, rows in groups.items():  # send everything first: the workers run in parallel
            args = [[slots[j] % self.per_worker for j in rows]]
            args += [[col[j] for j in rows] for col in columns]
            self.conns[w].send((cmd, args))
        out: list = [None] * len(slots)
        for w, rows in groups.items():
            for j, result in zip(rows, self._recv(w, cmd)):
                out[j] = result
        return out

    def reset(self, slots, seeds, render):
        return self._call("reset", slots, seeds, render)

    def step(self, slots, actions, render):
        return self._call("step", slots, list(actions), render)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close", None))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5.0
        for p, conn in zip(self.procs, self.conns):
            while p.is_alive() and time.monotonic() < deadline:
                try:  # drain a reply in flight, so a worker blocked in send() can exit
                    while conn.poll():
                        conn.recv()
                except (EOFError, OSError):
                    pass
                p.join(timeout=0.05)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []


# --------------------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Options of :func:`evaluate` (validated on construction)."""

    episodes: int = helpfield(50, "episodes to run (>= 50 for reported numbers)")
    seed: int = helpfield(DEFAULT_SEED, "episode i resets with seed + i")
    num_workers: int = helpfield(0, "environment processes (0 = step in this process)")
    envs_per_worker: int = helpfield(1, "environments per process (or in-process when 0 workers)")
    execution: str = helpfield("open_loop", "open_loop, receding:k or ensemble[:m]")
    max_steps: int | None = helpfield(None, "episode step limit (default: the env's own)")
    video_dir: str | None = helpfield(None, "folder for the mp4 videos")
    videos: int = helpfield(0, "record the first N episodes (needs video_dir)")
    report_path: str | None = helpfield(None, "write the JSON report here")
    progress: bool = helpfield(True, "show a progress bar over episodes")

    def __post_init__(self) -> None:
        def integer(name: str, low: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")

        integer("episodes", 1)
        integer("seed", 0)
        integer("num_workers", 0)
        integer("envs_per_worker", 1)
        integer("videos", 0)
        if self.max_steps is not None:
            integer("max_steps", 1)
        parse_execution(self.execution)
        if self.videos > self.episodes:
            raise ConfigError(f"videos={self.videos} is more than episodes={self.episodes}")
        if (self.videos > 0) != (self.video_dir is not None):
            raise ConfigError(f"videos={self.videos} and video_dir={self.video_dir!r}: give both "
                              "(a number of episodes to record and a folder) or neither")

    @property
    def num_envs(self) -> int:
        return min(max(self.num_workers, 1) * self.envs_per_worker, self.episodes)


# --------------------------------------------------------------------------- rollouts


@dataclasses.dataclass
class _Episode:
    index: int
    seed: int
    ret: float = 0.0
    length: int = 0
    success: bool = False
    frames: list | None = None

    def record(self) -> dict[str, Any]:
        return {"episode": self.index, "seed": self.seed, "success": self.success,
                "return": self.ret, "length": self.length}


def _takes(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


class _Rollouts:
    """Runs ``cfg.episodes`` episodes of ``policy`` on the slots of ``envs``."""

    def __init__(self, policy, envs, cfg: EvalConfig, keys: list[str], action_shape: list[int],
                 video, bar) -> None:
        self.policy, self.envs, self.cfg, self.keys, self.video = policy, envs, cfg, keys, video
        self.action_shape, self.bar = tuple(action_shape), bar
        self.executors = [ChunkExecutor(parse_execution(cfg.execution))
                          for _ in range(cfg.num_envs)]
        self.episodes: list[_Episode | None] = [None] * cfg.num_envs  # per slot
        self.obs: list[dict | None] = [None] * cfg.num_envs
        self.results: list[dict | None] = [None] * cfg.episodes
        self.next_episode, self.policy_calls = 0, 0
        reset = getattr(policy, "reset", None)
        self._reset_seeds = reset is not None and _takes(reset, "seeds")

    def run(self) -> list[dict]:
        self._start(list(range(self.cfg.num_envs)))
        while any(e is not None for e in self.episodes):
            active = [s for s, e in enumerate(self.episodes) if e is not None]
            need = [s for s in active if self.executors[s].needs_chunk]
            if need:
                for s, chunk in zip(need, self._query(need)):
                    self.executors[s].add(chunk)
            actions = np.stack([self.executors[s].next_action() for s in active])
            render = [self._renders(s) for s in active]
            finished = []
            for s, out in zip(active, self.envs.step(active, actions, render)):
                obs, reward, term, trunc, success, frame = out
                ep = self.episodes[s]
                ep.ret, ep.length = ep.ret + reward, ep.length + 1
                ep.success = ep.success or success
                self.obs[s] = obs
                self._add_frame(ep, obs, frame)
                if term or trunc:
                    self._finish(s)
                    finished.append(s)
            self._observe([s for s in active if s not in finished])
            self._start(finished)
        return self.results

    def _renders(self, slot: int) -> bool:
        ep = self.episodes[slot]
        return self.video.key is None and ep is not None and ep.frames is not None

    def _add_frame(self, ep: _Episode, obs: dict, frame) -> None:
        if ep.frames is not None:
            ep.frames.append(obs[self.video.key] if self.video.key is not None else frame)

    def _start(self, slots: list[int]) -> None:
        slots = slots[:max(0, self.cfg.episodes - self.next_episode)]
        if not slots:
            return
        for s in slots:
            i = self.next_episode
            self.next_episode += 1
            self.episodes[s] = _Episode(i, self.cfg.seed + i,
                                        frames=[] if i < self.cfg.videos else None)
            self.executors[s].reset()
        seeds = [self.episodes[s].seed for s in slots]
        outs = self.envs.reset(slots, seeds, [self._renders(s) for s in slots])
        for s, (obs, frame) in zip(slots, outs):
            self.obs[s] = obs
            self._add_frame(self.episodes[s], obs, frame)
        if self._reset_seeds:
            self.policy.reset(np.asarray(slots, dtype=np.int64),
                              seeds=np.asarray(seeds, dtype=np.int64))
        elif hasattr(self.policy, "reset"):
            self.policy.reset(np.asarray(slots, dtype=np.int64))
        self._observe(slots)

    def _finish(self, slot: int) -> None:
        ep = self.episodes[slot]
        self.results[ep.index] = ep.record()
        if ep.frames is not None:
            self.video.write(ep)
        self.episodes[slot] = None
        self.bar.update(1)
        done = [r for r in self.results if r is not None]
        self.bar.set_postfix(success=f"{np.mean([r['success'] for r in done]):.2f}")

    def _batch(self, slots: list[int]) -> dict[str, np.ndarray]:
        batch = {k: np.stack([self.obs[s][k] for s in slots]) for k in self.keys}
        batch[ENV_INDEX_KEY] = np.asarray(slots, dtype=np.int64)
        return batch

    def _observe(self, slots: list[int]) -> None:
        if slots and hasattr(self.policy, "observe"):
            self.policy.observe(self._batch(slots))

    def _query(self, slots: list[int]) -> np.ndarray:
        chunks = np.asarray(self.policy(self._batch(slots)), dtype=np.float64)
        self.policy_calls += 1
        if chunks.ndim != 2 + len(self.action_shape) or chunks.shape[0] != len(slots) \
                or chunks.shape[2:] != self.action_shape:
            raise ConfigError(f"the policy returned shape {list(chunks.shape)} for a batch of "
                              f"{len(slots)} observations; expected (n={len(slots)}, h, "
                              f"{', '.join(map(str, self.action_shape))})")
        if not np.isfinite(chunks).all():
            raise DataError(f"the policy returned non-finite actions for env slots {slots}")
        return chunks


@dataclasses.dataclass
class _VideoWriter:
    """Where episode frames come from (an observation key, or env.render() when None)."""

    key: str | None
    folder: Path | None
    fps: float
    paths: list[str] = dataclasses.field(default_factory=list)

    def write(self, ep: _Episode) -> None:
        from sim.generate import write_mp4

        frames = np.stack(ep.frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] % 2 or frames.shape[2] % 2:
            raise ConfigError(f"videos need RGB frames with even height and width, got "
                              f"{list(frames.shape[1:])}")
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"episode_{ep.index:06d}.mp4"
        write_mp4(path, frames, self.fps)
        self.paths.append(str(path))


def _video_source(obs_spec: dict, env_kwargs: dict, cfg: EvalConfig, fps: float) -> _VideoWriter:
    folder = Path(cfg.video_dir) if cfg.video_dir is not None else None
    if cfg.videos == 0:
        return _VideoWriter(None, folder, fps)
    cams = [k for k in obs_spec if k.startswith("pixels.")]
    preferred = [f"pixels.{c}" for c in VIDEO_CAMERAS if f"pixels.{c}" in cams]
    if preferred or cams:
        key = (preferred or cams)[0]
        shape = obs_spec[key]["shape"]
        if len(shape) != 3 or shape[2] != 3 or shape[0] % 2 or shape[1] % 2:
            raise ConfigError(f"videos need RGB frames with even height and width; {key} has "
                              f"shape {shape}")
        return _VideoWriter(key, folder, fps)
    if env_kwargs.get("render_mode") != "rgb_array":
        raise ConfigError("videos need camera images: the observations have no pixels.* entry; "
                          "pass env_kwargs render_images=True or render_mode='rgb_array'")
    return _VideoWriter(None, folder, fps)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


def _report(env_id, env_kwargs, cfg: EvalConfig, results, times, calls, video) -> dict:
    n = len(results)
    succ = sum(r["success"] for r in results)
    rets = np.array([r["return"] for r in results])
    lengths = np.array([r["length"] for r in results])
    wall, startup = times
    rollout = max(wall - startup, 1e-9)
    low, high = wilson_interval(succ, n)
    return _jsonable({
        "env_id": env_id, "env_kwargs": env_kwargs, "execution": str(parse_execution(cfg.execution)),
        "episodes": n, "seed": cfg.seed, "num_workers": cfg.num_workers,
        "envs_per_worker": cfg.envs_per_worker, "num_envs": cfg.num_envs, "max_steps": cfg.max_steps,
        "successes": succ, "success_rate": succ / n, "success_ci95": [low, high],
        "return_mean": float(rets.mean()), "return_std": float(rets.std()),
        "length_mean": float(lengths.mean()), "steps": int(lengths.sum()),
        "policy_calls": calls, "wall_time_s": wall, "startup_s": startup,
        "episodes_per_s": n / wall, "rollout_episodes_per_s": n / rollout,
        "steps_per_s": float(lengths.sum()) / rollout,
        "videos": video.paths, "per_episode": results,
    })


def evaluate(policy, env_id: str, episodes: int = 50, seed: int = DEFAULT_SEED,
             env_kwargs: dict[str, Any] | None = None, num_workers: int = 0,
             execution: str = "open_loop", max_steps: int | None = None,
             video_dir: str | Path | None = None, videos: int = 0,
             report_path: str | Path | None = None, progress: bool = True,
             envs_per_worker: int = 1) -> dict[str, Any]:
    """Run ``episodes`` episodes of ``policy`` and return (and optionally write) the report.

    Report keys: env_id, env_kwargs, execution, episodes, seed, num_workers,
    envs_per_worker, num_envs (environments stepped together),
    max_steps, successes, success_rate, success_ci95 (Wilson), return_mean, return_std
    (population), length_mean, steps, policy_calls, wall_time_s, startup_s (building the
    environments), episodes_per_s (over the wall time), rollout_episodes_per_s and
    steps_per_s (after startup), videos (mp4 paths), per_episode [{episode, seed,
    success (is_success at any step), return, length}].
    """
    cfg = EvalConfig(episodes=episodes, seed=seed, num_workers=num_workers,
                     envs_per_worker=envs_per_worker, execution=execution, max_steps=max_steps,
                     video_dir=None if video_dir is None else str(video_dir), videos=videos,
                     report_path=None if report_path is None else str(report_path),
                     progress=progress)
    return run_evaluation(policy, env_id, env_kwargs or {}, cfg)


def run_evaluation(policy, env_id: str, env_kwargs: dict[str, Any], cfg: EvalConfig) -> dict:
    """:func:`evaluate` with the options as an :class:`EvalConfig`."""
    from tqdm.auto import tqdm

    import sim

    if env_id not in sim.ENV_IDS:
        sim.make(env_id)  # raises the registry's "unknown task id" error
    if not isinstance(env_kwargs, dict):
        raise ConfigError(f"env_kwargs must be a dict, got {env_kwargs!r}")
    t0 = time.perf_counter()
    if cfg.num_workers == 0:
        envs = _EnvGroup(env_id, env_kwargs, cfg.num_envs, cfg.max_steps)
    else:
        envs = _WorkerPool(env_id, env_kwargs, cfg.max_steps, cfg.num_envs, cfg.envs_per_worker)
    try:
        info = envs.info()
        spec, policy_spec = info["spec"], getattr(policy, "spec", None)
        if policy_spec is not None:
            problems = spec_mismatches(policy_spec, spec)
            if problems:
                raise ConfigError(f"the policy does not fit {env_id} {env_kwargs}: "
                                  + "; ".join(problems))
        keys = [k for k in (policy_spec or spec)["observation"] if k != ENV_INDEX_KEY]
        video = _video_source(spec["observation"], env_kwargs, cfg, info["fps"])
        startup = time.perf_counter() - t0
        with tqdm(total=cfg.episodes, desc=f"eval {env_id}", unit="ep", dynamic_ncols=True,
                  leave=False, disable=not cfg.progress) as bar:
            rollouts = _Rollouts(policy, envs, cfg, keys, spec["action"]["shape"], video, bar)
            results = rollouts.run()
    finally:
        envs.close()
    wall = time.perf_counter() - t0
    report = _report(env_id, env_kwargs, cfg, results, (wall, startup), rollouts.policy_calls,
                     video)
    if cfg.report_path is not None:
        path = Path(cfg.report_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    return report


# --------------------------------------------------------------------------- throughput


class ConstantPolicy:
    """Always the same action, in chunks of ``horizon`` (throughput and smoke tests)."""

    def __init__(self, action, horizon: int = 1) -> None:
        self.action = np.asarray(action, dtype=np.float32)
        self.horizon = int(horizon)

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        n = len(obs[ENV_INDEX_KEY])
        return np.broadcast_to(self.action, (n, self.horizon, *self.action.shape)).copy()


def measure_throughput(env_id: str, num_workers: int, episodes: int = 20,
                       env_kwargs: dict[str, Any] | None = None, envs_per_worker: int = 1,
                       horizon: int = 1, max_steps: int | None = None,
                       seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Episodes/s of a zero-action policy for ``num_workers`` (for benchmarks)."""
    import sim

    env = sim.make(env_id, **(env_kwargs or {}))
    try:
        shape = env_spec(env)["action"]["shape"]
    finally:
        env.close()
    r = evaluate(ConstantPolicy(np.zeros(shape), horizon), env_id, episodes=episodes, seed=seed,
                 env_kwargs=env_kwargs, num_workers=num_workers, max_steps=max_steps,
                 progress=False, envs_per_worker=envs_per_worker)
    return {k: r[k] for k in ("env_id", "num_workers", "num_envs", "episodes", "steps",
                              "wall_time_s", "startup_s", "episodes_per_s",
                              "rollout_episodes_per_s", "steps_per_s")}
