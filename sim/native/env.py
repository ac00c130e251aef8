"""`TabletopEnv`: one Gymnasium environment class for every native task and embodiment.

Observation: ``{"state": float32 (D,), "pixels": {camera: uint8 (H, W, 3)}}`` (no
"pixels" key when ``render_images=False``); ``state_names`` lists the state entries
(arm: joint positions and velocities, tool position, tool yaw, gripper opening in
metres; hand: tool position, yaw, opening, palm velocity).

With ``environment_state=True`` the observation also holds ``"environment_state"``:
float32 (:data:`ENV_STATE_DIM`,), the task's privileged object state
(:meth:`sim.native.tasks.Task.privileged`) for state-based policies (the proprioceptive
"state" holds no object pose, so Lift cannot be solved from it). Layout: the task's
entries in the order its ``privileged()`` declares them, each flattened (a 3-vector
``cube_pos`` becomes ``cube_pos_x, cube_pos_y, cube_pos_z``), then zeros up to
``ENV_STATE_DIM`` (named ``pad_0, pad_1, ...``), so every native task has the same width
and a multi-task dataset has one layout. ``environment_state_names`` names the entries:

=========  ===================================================  =====
task       entries                                              width
=========  ===================================================  =====
reach      target_pos                                           3
push       cube_pos, cube_yaw, goal_pos                         7
lift       cube_pos, cube_yaw                                   4
pickplace  cube_pos, cube_yaw, bin_pos                          7
stack      cube_pos, cube_yaw, base_pos, base_yaw               8
drawer     handle_pos, drawer_open, cabinet_pos                 7
=========  ===================================================  =====

Action: ``Box(-1, 1, (5,))`` = ``[dx, dy, dz, dyaw, grip]``: 1.0 moves the tool target
by 2 cm (or 0.15 rad) per 20 Hz step; grip -1 opens, +1 closes (see
:mod:`sim.native.embodiments`). Out-of-range actions are clipped.

Episodes end on success (``terminate_on_success``) or by the registered time limit.
``reset(seed)`` fixes object poses and (with ``domain_shift > 0``) the appearance;
everything, images included, is bit-for-bit reproducible from the seed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from sim.native import render as _render
from sim.native import scene
from sim.native.appearance import Randomizer
from sim.native.embodiments import ACTION_NAMES, EMBODIMENTS, Arm
from sim.native.tasks import TASKS
from vptr.config import helpfield
from vptr.errors import ConfigError, unknown

CAMERAS = ("front", "wrist")
START_JITTER = 0.03  # initial tool position: home +- 3 cm per axis
# Width of obs["environment_state"]: the widest task's privileged state (stack: two poses
# of position + yaw); narrower tasks are zero-padded to it (module docstring).
ENV_STATE_DIM = 8
_AXES = ("x", "y", "z")


@dataclasses.dataclass(frozen=True)
class TabletopConfig:
    """Options of :class:`TabletopEnv` (validated on construction)."""

    task: str = helpfield("lift", "task name: " + ", ".join(TASKS))
    embodiment: Literal["arm", "hand"] = helpfield("arm", "arm (robot) or hand (video body)")
    image_size: int = helpfield(64, "square image side in pixels (64-128 typical)")
    cameras: tuple[str, ...] = helpfield(("front",), "cameras to render: front, wrist (arm only)")
    render_images: bool = helpfield(True, "include camera images in observations")
    domain_shift: float = helpfield(0.0, "0 = robot appearance, 1 = largest visual gap")
    reward_type: Literal["sparse", "dense"] = helpfield("sparse", "sparse (0/1) or dense shaping")
    terminate_on_success: bool = helpfield(True, "end the episode when the task is solved")
    render_mode: str | None = helpfield(None, "None or rgb_array (render() = front image)")
    environment_state: bool = helpfield(
        False, f"add obs['environment_state']: the task's privileged object state, "
               f"zero-padded to {ENV_STATE_DIM} entries (names: environment_state_names)")

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise unknown("task", self.task, TASKS)
        if self.embodiment not in EMBODIMENTS:
            raise unknown("embodiment", self.embodiment, EMBODIMENTS)
        if (isinstance(self.image_size, bool) or not isinstance(self.image_size, (int, np.integer))
                or not 8 <= self.image_size <= 1024):
            raise ConfigError(f"image_size must be an integer in [8, 1024], got {self.image_size!r}")
        if isinstance(self.cameras, str) or not isinstance(self.cameras, (tuple, list)):
            raise ConfigError(f"cameras must be a tuple of camera names, got {self.cameras!r}")
        if len(self.cameras) == 0 or len(set(self.cameras)) != len(self.cameras):
            raise ConfigError(f"cameras must be non-empty and without repeats, got {self.cameras!r}")
        for cam in self.cameras:
            if cam not in CAMERAS:
                raise unknown("camera", cam, CAMERAS)
        if "wrist" in self.cameras and not EMBODIMENTS[self.embodiment].has_wrist_camera:
            raise ConfigError(f"cameras={tuple(self.cameras)!r}: the {self.embodiment!r} embodiment "
                              "has no 'wrist' camera (only the arm has one)")
        shift = self.domain_shift
        if isinstance(shift, bool) or not isinstance(shift, (int, float, np.floating, np.integer)) \
                or not (0.0 <= float(shift) <= 1.0):
            raise ConfigError(f"domain_shift must be a number in [0, 1], got {shift!r}")
        if self.reward_type not in ("sparse", "dense"):
            raise ConfigError(f"reward_type must be 'sparse' or 'dense', got {self.reward_type!r}")
        for name in ("render_images", "terminate_on_success", "environment_state"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {self.render_mode!r}")


class TabletopEnv(gym.Env):
    """A native MuJoCo tabletop task (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"],
                                          "render_fps": scene.CONTROL_HZ}
    control_hz = scene.CONTROL_HZ

    def __init__(self, task: str, embodiment: Literal["arm", "hand"] = "arm",
                 image_size: int = 64, cameras: tuple[str, ...] = ("front",),
                 render_images: bool = True, domain_shift: float = 0.0,
                 reward_type: Literal["sparse", "dense"] = "sparse",
                 terminate_on_success: bool = True, render_mode: str | None = None,
                 environment_state: bool = False) -> None:
        cfg = TabletopConfig(task=task, embodiment=embodiment, image_size=image_size,
                             cameras=tuple(cameras) if isinstance(cameras, list) else cameras,
                             render_images=render_images, domain_shift=domain_shift,
                             reward_type=reward_type, terminate_on_success=terminate_on_success,
                             render_mode=render_mode, environment_state=environment_state)
        self.config = cfg
        self.task, self.embodiment = cfg.task, cfg.embodiment
        self.render_mode = cfg.render_mode
        self._task = TASKS[cfg.task]()
        self._emb = EMBODIMENTS[cfg.embodiment]()
        self.task_description = self._task.description
        self.state_names = list(self._emb.state_names)
        self.action_names = list(ACTION_NAMES)
        self.cameras = tuple(cfg.cameras)
        self.image_size = int(cfg.image_size)
        self.domain_shift = float(cfg.domain_shift)

        robot_xml, actuator_xml, equality_xml = self._emb.xml()
        xml = scene.build_scene_xml(task_xml=self._task.xml(), robot_xml=robot_xml,
                                    actuator_xml=actuator_xml, equality_xml=equality_xml,
                                    image_size=self.image_size)
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        self._emb.bind(self.model, self.data)
        self._task.bind(self.model)
        self._randomizer = Randomizer(self.model, self._task.color_geoms)
        self.environment_state_names = environment_state_names(self._task.privileged(self.data))
        self._needs_com = isinstance(self._emb, Arm)  # the arm's IK needs cdof (mj_comPos)

        self._renderer: _render.FrameRenderer | None = None
        if cfg.render_images or cfg.render_mode == "rgb_array":
            cams = self.cameras if "front" in self.cameras else ("front",) + self.cameras
            self._renderer = _render.FrameRenderer(self.model, self.image_size, cams)

        n = len(self.state_names)
        obs = {"state": spaces.Box(-np.inf, np.inf, (n,), np.float32)}
        if cfg.environment_state:
            obs["environment_state"] = spaces.Box(-np.inf, np.inf, (ENV_STATE_DIM,), np.float32)
        if cfg.render_images:
            shape = (self.image_size, self.image_size, 3)
            obs["pixels"] = spaces.Dict(
                {c: spaces.Box(0, 255, shape, np.uint8) for c in self.cameras})
        self.observation_space = spaces.Dict(obs)
        self.action_space = spaces.Box(-1.0, 1.0, (len(ACTION_NAMES),), np.float32)
        self._t = 0
        self._episode = 0
        self._dense = cfg.reward_type == "dense"

    # -- gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        # Appearance uses its own stream so that object poses depend only on the seed,
        # not on domain_shift or the embodiment (paired robot / video episodes).
        appearance_rng = np.random.default_rng(int(rng.integers(2 ** 63)))
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self._task.reset(m, d, rng)
        start = Arm.home_pos + rng.uniform(-START_JITTER, START_JITTER, 3)
        self._emb.reset(start)  # ends with mj_forward
        self._randomizer.apply(d, self.domain_shift, appearance_rng, self._task.object_xy(d))
        mujoco.mj_forward(m, d)
        self._t = 0
        self._episode += 1
        return self._observation(), {"is_success": self._task.success(d, self._emb)}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (5,):
            raise ValueError(f"action must have shape (5,) {self.action_names}, got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"action must be finite, got {a}")
        a = np.clip(a, -1.0, 1.0)
        m, d = self.model, self.data
        self._emb.apply_action(a)
        self._t += 1
        self._randomizer.exogenous.apply(d, self._t)
        mujoco.mj_step(m, d, scene.SUBSTEPS)
        # mj_step leaves positions computed before its last integration: refresh them so
        # observations, success checks and the next IK step see the current state.
        mujoco.mj_kinematics(m, d)
        if self._needs_com:
            mujoco.mj_comPos(m, d)
        mujoco.mj_camlight(m, d)  # camera / light poses (the wrist camera moves)
        success = self._task.success(d, self._emb)
        if self._dense:
            reward = self._task.dense_reward(d, self._emb)
        else:
            reward = 1.0 if success else 0.0
        terminated = success and self.config.terminate_on_success
        return self._observation(), reward, terminated, False, {"is_success": success}

    def render(self):
        """The front camera image when ``render_mode="rgb_array"``, else None."""
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            raise RuntimeError("render() called after close()")
        return self._renderer.render(self.data, "front")

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # -- extras --------------------------------------------------------------------------
    def _observation(self) -> dict[str, Any]:
        obs: dict[str, Any] = {"state": self._emb.state()}
        if self.config.environment_state:
            obs["environment_state"] = flatten_environment_state(self.privileged_state())
        if self.config.render_images:
            r = self._renderer
            obs["pixels"] = {c: r.render(self.data, c) for c in self.cameras}
        return obs

    def privileged_state(self) -> dict[str, np.ndarray]:
        """Simulator state of the task objects (what the scripted experts use)."""
        return self._task.privileged(self.data)

    def appearance_params(self) -> dict[str, np.ndarray]:
        """Current camera / light / colour parameters (changed only by domain_shift)."""
        return self._randomizer.params()

    def scripted_expert(self, noise: float = 0.0, seed: int | None = None):
        """A privileged-state expert for this task; see :mod:`sim.native.experts`."""
        from sim.native.experts import make_expert

        return make_expert(self, noise=noise, seed=seed)

    @property
    def elapsed_steps(self) -> int:
        return self._t

    def __del__(self) -> None:
        # Free the GL context even if the user forgot close(). At interpreter shutdown
        # the GL library may already be unloaded, and __del__ must never raise.
        try:
            self.close()
        except Exception:
            pass


def environment_state_names(privileged: dict[str, np.ndarray]) -> list[str]:
    """Names of the :data:`ENV_STATE_DIM` entries of ``obs["environment_state"]``."""
    names: list[str] = []
    for key, value in privileged.items():
        n = int(np.size(value))
        if n == 1:
            names.append(key)
        else:
            names += [f"{key}_{_AXES[i]}" if n == 3 else f"{key}_{i}" for i in range(n)]
    if len(names) > ENV_STATE_DIM:  # a new task wider than the constant: raise the constant
        raise RuntimeError(f"privileged state has {len(names)} entries > ENV_STATE_DIM = "
                           f"{ENV_STATE_DIM}: {names}")
    return names + [f"pad_{i}" for i in range(ENV_STATE_DIM - len(names))]


def flatten_environment_state(privileged: dict[str, np.ndarray]) -> np.ndarray:
    """The privileged dict as float32 (ENV_STATE_DIM,): entries in order, zero-padded."""
    out = np.zeros(ENV_STATE_DIM, np.float32)
    flat = np.concatenate([np.ravel(v) for v in privileged.values()])
    out[:len(flat)] = flat
    return out
