"""Gymnasium wrapper around robosuite 1.5 manipulation tasks (Panda, BASIC/OSC_POSE).

    env = RobosuiteEnv(task="Lift", image_size=64, render_quality="cheap")
    obs, info = env.reset(seed=0)
    # obs = {"state": (23,) float32, "pixels": {"agentview": (64, 64, 3) uint8}}
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

Design notes
- robosuite is imported lazily in the constructor (STYLE rule 4), so ``import sim`` stays
  cheap; its import-time and controller-config log chatter is filtered (see
  :func:`_quiet_robosuite_logs`).
- Images are rendered by our own :class:`mujoco.Renderer` on robosuite's model, not by
  robosuite's camera observables: one render per camera per step, full control over the
  quality flags, and MuJoCo's renderer already returns upright images (robosuite's own
  camera observables are bottom-up, OpenGL convention). Collision geoms (group 0) are
  hidden and visual geoms (group 1) shown, as robosuite does.
- ``render_quality="cheap"`` turns off shadows, reflections and multisample
  anti-aliasing and shrinks the shadow map. Measured on 2 shared CPU cores with OSMesa:
  the reflection pass and 4x MSAA each roughly halve the frame rate of the Panda scene
  (352k mesh vertices); image resolution barely matters because the cost is geometry.
- Seeding: robosuite's placement samplers and robot initial-joint noise draw from
  NumPy's *global* RNG. We swap a per-env ``RandomState`` into the global slot around
  robosuite's reset/construction (:func:`_swapped_global_rng`), so ``reset(seed=s)``
  gives the same object poses for the same ``s`` and the caller's global RNG is left
  untouched.
- robosuite is built with ``hard_reset=False`` (reset reuses the compiled model instead of
  re-parsing the XML: milliseconds instead of about a second, and the renderer stays
  valid) and ``ignore_done=True`` (Gymnasium's TimeLimit truncates episodes instead of
  robosuite's horizon). Consequence: objects whose size robosuite randomises at model
  build time (Lift's cube: 4.0-4.4 cm) keep the size drawn at construction, which is
  seeded (fixed seed 0) so every instance builds the same model.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim.robosuite.tasks import TASKS, RobosuiteTask
from vptr.config import helpfield
from vptr.errors import ConfigError, VptrError, unknown

ROBOT = "panda"
# MuJoCo physics step used by robosuite (robosuite.macros.SIMULATION_TIMESTEP = 0.002 s):
# a control period must be a whole number of physics steps.
PHYSICS_HZ = 500
MAX_IMAGE_SIZE = 1024
CHEAP_SHADOW_SIZE = 256  # texels; robosuite's default map is 4096 x 4096
ARM = "right"  # robosuite 1.5 names a single arm "right"

# Proprioception in ``obs["state"]``: robosuite observable -> our names.
# eef = the gripper's grip site (between the fingertips); quaternion is (x, y, z, w) as in
# robosuite's observations; joint angles as cos/sin so the encoding is continuous.
_STATE_LAYOUT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("robot0_eef_pos", ("eef_pos_x", "eef_pos_y", "eef_pos_z")),
    ("robot0_eef_quat", ("eef_quat_x", "eef_quat_y", "eef_quat_z", "eef_quat_w")),
    ("robot0_gripper_qpos", ("gripper_qpos_left", "gripper_qpos_right")),
    ("robot0_joint_pos_cos", tuple(f"joint{i}_pos_cos" for i in range(7))),
    ("robot0_joint_pos_sin", tuple(f"joint{i}_pos_sin" for i in range(7))),
)
STATE_NAMES: tuple[str, ...] = tuple(n for _, names in _STATE_LAYOUT for n in names)

# OSC_POSE delta action in the robot base frame, scaled by robosuite's BASIC config:
# +-1 -> +-0.05 m and +-0.5 rad (axis-angle) per control step; gripper -1 open, +1 close.
ACTION_NAMES: tuple[str, ...] = ("delta_x", "delta_y", "delta_z",
                                 "delta_rot_x", "delta_rot_y", "delta_rot_z", "gripper")
ACTION_POS_SCALE = 0.05  # metres per unit action (BASIC config output_max)
ACTION_ROT_SCALE = 0.5  # radians per unit action


@dataclass(frozen=True)
class RobosuiteEnvConfig:
    """Options of :class:`RobosuiteEnv` (validated in ``__post_init__``)."""

    task: str = helpfield("Lift", f"robosuite task; one of {', '.join(TASKS)}")
    image_size: int = helpfield(84, "height = width of camera images in pixels")
    cameras: tuple[str, ...] = helpfield(("agentview",), "robosuite camera names to render")
    render_images: bool = helpfield(True, "render camera images (False: state only, fast)")
    render_quality: Literal["default", "cheap"] = helpfield(
        "default", "cheap = no shadows, reflections or anti-aliasing; small shadow map")
    reward_type: Literal["sparse", "dense"] = helpfield(
        "sparse", "sparse: 1 on success else 0; dense: robosuite's shaped reward in [0, 1]")
    terminate_on_success: bool = helpfield(True, "end the episode when the task succeeds")
    render_mode: str | None = helpfield(None, "Gymnasium render mode: None or 'rgb_array'")
    control_freq: int = helpfield(20, f"control rate in Hz; must divide {PHYSICS_HZ}")

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise unknown("task", self.task, TASKS)
        if (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                or not 8 <= self.image_size <= MAX_IMAGE_SIZE):
            raise ConfigError(f"image_size must be an int in [8, {MAX_IMAGE_SIZE}], "
                              f"got {self.image_size!r}")
        if (not isinstance(self.cameras, tuple) or not self.cameras
                or not all(isinstance(c, str) and c for c in self.cameras)):
            raise ConfigError(f"cameras must be a non-empty tuple of camera names, "
                              f"got {self.cameras!r}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ConfigError(f"cameras has duplicates: {self.cameras!r}")
        if self.render_quality not in ("default", "cheap"):
            raise ConfigError(f"render_quality must be 'default' or 'cheap', "
                              f"got {self.render_quality!r}")
        if self.reward_type not in ("sparse", "dense"):
            raise ConfigError(f"reward_type must be 'sparse' or 'dense', got {self.reward_type!r}")
        if self.render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {self.render_mode!r}")
        if (isinstance(self.control_freq, bool) or not isinstance(self.control_freq, int)
                or not 1 <= self.control_freq <= PHYSICS_HZ
                or PHYSICS_HZ % self.control_freq):
            raise ConfigError(f"control_freq must be an int that divides the {PHYSICS_HZ} Hz "
                              f"physics rate (e.g. 10, 20, 25, 50), got {self.control_freq!r}")


class _QuietFilter(logging.Filter):
    """Drops robosuite's INFO lines and warnings that do not concern a Panda user."""

    _BENIGN = ("private macro file", "setup_macros.py", "robosuite_models", "mink-based")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        msg = record.getMessage()
        return not any(b in msg for b in self._BENIGN)


@contextlib.contextmanager
def _quiet_robosuite_logs() -> Iterator[None]:
    """Filter robosuite's logger while it is imported / builds an env, then restore it.

    robosuite logs through the ``robosuite_logs`` logger (robosuite/utils/log_utils.py);
    its import warns about an optional private macro file and optional packages
    (robosuite_models, mink) that the Panda tasks do not use.
    """
    logger = logging.getLogger("robosuite_logs")
    filt = _QuietFilter()
    logger.addFilter(filt)
    try:
        yield
    finally:
        logger.removeFilter(filt)


@contextlib.contextmanager
def _swapped_global_rng(rs: np.random.RandomState) -> Iterator[None]:
    """Run a block with ``rs`` as NumPy's global RNG; ``rs`` keeps the advanced state."""
    saved = np.random.get_state()
    np.random.set_state(rs.get_state())
    try:
        yield
    finally:
        rs.set_state(np.random.get_state())
        np.random.set_state(saved)


def _controller_config(robosuite_module) -> dict[str, Any]:
    """robosuite's BASIC composite controller (arm = OSC_POSE, gripper = GRIP), Panda parts.

    BASIC also lists torso/head/base/legs/left parts for other robots; keeping only the
    single arm avoids robosuite warning once per missing part.
    """
    cfg = robosuite_module.load_composite_controller_config(controller="BASIC")
    arm = cfg["body_parts"][ARM]
    if arm["type"] != "OSC_POSE":
        raise RuntimeError(f"robosuite BASIC controller arm is {arm['type']}, expected OSC_POSE")
    cfg["body_parts"] = {ARM: arm}
    return cfg


def _make_scene_option():
    import mujoco

    opt = mujoco.MjvOption()
    # robosuite's convention: group 0 = collision geoms (hidden), group 1 = visual meshes.
    opt.geomgroup[0] = 0
    opt.geomgroup[1] = 1
    return opt


def _make_renderer(model, image_size: int, quality: str):
    """An offscreen :class:`mujoco.Renderer` for robosuite's model at the given quality."""
    import mujoco

    model.vis.global_.offwidth = max(model.vis.global_.offwidth, image_size)
    model.vis.global_.offheight = max(model.vis.global_.offheight, image_size)
    if quality == "cheap":
        # Read by mjr_makeContext, so they must be set before the renderer exists.
        model.vis.quality.shadowsize = CHEAP_SHADOW_SIZE
        model.vis.quality.offsamples = 0  # no multisample anti-aliasing
    try:
        renderer = mujoco.Renderer(model, height=image_size, width=image_size)
    except Exception as e:  # mujoco raises FatalError / RuntimeError without a hint
        raise VptrError(
            f"cannot create an offscreen OpenGL context for robosuite images "
            f"(MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}; robosuite sets it to 'egl' on import "
            f"unless it is 'osmesa' or 'glx'): {e}. "
            "On a CPU machine export MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa, on a GPU "
            "machine MUJOCO_GL=egl, before starting Python; or pass render_images=False."
        ) from e
    if quality == "cheap":
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    return renderer


class RobosuiteEnv(gym.Env):
    """A robosuite task as a Gymnasium env with dict observations (see module docstring).

    Observation: ``{"state": float32 (23,), "pixels": {camera: uint8 (H, W, 3)}}``; the
    ``pixels`` entry is absent when ``render_images=False``. Action: ``Box(-1, 1, (7,))``,
    see :data:`ACTION_NAMES`. ``info["is_success"]`` is robosuite's ``_check_success()``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, task: str, image_size: int = 84,
                 cameras: tuple[str, ...] | list[str] | str = ("agentview",),
                 render_images: bool = True,
                 render_quality: Literal["default", "cheap"] = "default",
                 reward_type: Literal["sparse", "dense"] = "sparse",
                 terminate_on_success: bool = True, render_mode: str | None = None,
                 control_freq: int = 20) -> None:
        cameras = (cameras,) if isinstance(cameras, str) else tuple(cameras)
        self.config = RobosuiteEnvConfig(
            task=task, image_size=image_size, cameras=cameras, render_images=render_images,
            render_quality=render_quality, reward_type=reward_type,
            terminate_on_success=terminate_on_success, render_mode=render_mode,
            control_freq=control_freq)
        self.task_info: RobosuiteTask = TASKS[task]
        self.task = task
        self.task_description = self.task_info.description
        self.embodiment = ROBOT
        self.control_hz = control_freq
        self.state_names = STATE_NAMES
        self.action_names = ACTION_NAMES
        self.render_mode = render_mode
        self.metadata = {**type(self).metadata, "render_fps": control_freq}

        with _quiet_robosuite_logs():
            import robosuite

            # Construction samples object sizes (e.g. Lift's cube) and a first placement
            # from the global RNG: fix it so every instance builds the same model.
            with _swapped_global_rng(np.random.RandomState(0)):
                self._env = robosuite.make(
                    self.task_info.robosuite_name,
                    robots="Panda",
                    controller_configs=_controller_config(robosuite),
                    has_renderer=False,
                    has_offscreen_renderer=False,
                    use_camera_obs=False,
                    use_object_obs=False,  # experts read object state from the sim
                    reward_shaping=reward_type == "dense",
                    reward_scale=1.0,  # robosuite normalises the max reward to 1
                    control_freq=control_freq,
                    ignore_done=True,
                    hard_reset=False,
                    renderer="mujoco",
                    **self.task_info.robosuite_kwargs,
                )
        self._model = self._env.sim.model._model
        self._data = self._env.sim.data._data
        known_cams = [self._env.sim.model.camera_id2name(i) for i in range(self._model.ncam)]
        for cam in cameras:
            if cam not in known_cams:
                self._env.close()
                raise unknown(f"camera for task {task}", cam, known_cams)

        self._renderer = None
        self._scene_option = None
        if render_images or render_mode == "rgb_array":
            self._renderer = _make_renderer(self._model, image_size, render_quality)
            self._scene_option = _make_scene_option()

        state_space = spaces.Box(-np.inf, np.inf, (len(STATE_NAMES),), np.float32)
        obs_spaces: dict[str, spaces.Space] = {"state": state_space}
        if render_images:
            obs_spaces["pixels"] = spaces.Dict({
                cam: spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
                for cam in cameras})
        self.observation_space = spaces.Dict(obs_spaces)
        if self._env.action_dim != len(ACTION_NAMES):
            raise RuntimeError(f"robosuite action dim {self._env.action_dim} != {len(ACTION_NAMES)}")
        self.action_space = spaces.Box(-1.0, 1.0, (len(ACTION_NAMES),), np.float32)

        self._robosuite_rng: np.random.RandomState | None = None  # see reset()
        self.episode_index = -1  # incremented by reset; experts use it to notice new episodes
        self._last_rs_obs: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if options:
            raise ConfigError(f"RobosuiteEnv.reset takes no options, got {sorted(options)}")
        super().reset(seed=seed)
        if seed is not None or self._robosuite_rng is None:
            # Derived from Gymnasium's seeded generator (fresh entropy if never seeded);
            # later unseeded resets continue this stream, as Gymnasium envs do.
            self._robosuite_rng = np.random.RandomState(int(self.np_random.integers(2**32)))
        with _quiet_robosuite_logs(), _swapped_global_rng(self._robosuite_rng):
            rs_obs = self._env.reset()
        self.episode_index += 1
        self._last_rs_obs = rs_obs
        return self._observation(rs_obs), {"is_success": self.is_success()}

    def step(self, action):
        if self._last_rs_obs is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (len(ACTION_NAMES),):
            raise ValueError(f"action must have shape ({len(ACTION_NAMES)},), got {action.shape}")
        rs_obs, rs_reward, _, _ = self._env.step(np.clip(action, -1.0, 1.0))
        self._last_rs_obs = rs_obs
        success = self.is_success()
        if self.config.reward_type == "sparse":
            reward = 1.0 if success else 0.0
        else:
            reward = float(rs_reward)
        terminated = success and self.config.terminate_on_success
        return self._observation(rs_obs), reward, terminated, False, {"is_success": success}

    def render(self):
        if self.render_mode != "rgb_array":
            raise ConfigError("render() needs the env to be made with render_mode='rgb_array'")
        return self.render_camera(self.config.cameras[0])

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        if getattr(self, "_env", None) is not None:
            self._env.close()
            self._env = None

    # ------------------------------------------------------------------ helpers
    def is_success(self) -> bool:
        return bool(self._env._check_success())

    def render_camera(self, camera: str) -> np.ndarray:
        """Upright uint8 (H, W, 3) image of the current state from robosuite camera ``camera``."""
        if self._renderer is None:
            raise ConfigError("this env was made with render_images=False and no render_mode")
        self._renderer.update_scene(self._data, camera=camera, scene_option=self._scene_option)
        return self._renderer.render()

    def _observation(self, rs_obs: dict[str, np.ndarray]) -> dict[str, Any]:
        state = np.concatenate([np.asarray(rs_obs[key], dtype=np.float32)
                                for key, _ in _STATE_LAYOUT])
        obs: dict[str, Any] = {"state": state}
        if self.config.render_images:
            obs["pixels"] = {cam: self.render_camera(cam) for cam in self.config.cameras}
        return obs

    @property
    def robosuite_env(self):
        """The wrapped robosuite env (privileged access for experts and tests)."""
        return self._env

    def scripted_expert(self, noise: float = 0.0, seed: int | None = None):
        """A waypoint expert for this task that reads privileged object state."""
        from sim.robosuite.experts import make_expert

        return make_expert(self, noise=noise, seed=seed)
