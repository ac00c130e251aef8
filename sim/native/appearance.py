"""Domain randomisation: the dial between the robot domain and the "video" domain.

``domain_shift = 0`` restores the robot defaults exactly (camera, light, colours, no
distractors). Larger values scale every perturbation linearly (the usual visual domain
randomisation of Tobin et al. 2017, "Domain randomization for transferring deep neural
networks from simulation to the real world", section III.B): camera pose and field of
view, key-light direction/intensity/tint, headlight, table/floor/wall and object
colours, 0-3 visual distractors, and (with probability ``shift``) one distractor that
keeps moving during the episode (exogenous motion, as in the V-PTR / ICVF motivation:
video contains motion the agent does not cause).

Everything is written in place into ``model`` / ``data`` arrays at reset, so nothing is
recompiled, and drawn only from the generator passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mujoco
import numpy as np

from sim.native import scene

# Maximum perturbations at domain_shift = 1.
CAM_POS_JITTER = np.array([0.10, 0.15, 0.08])
CAM_TARGET_JITTER = np.array([0.05, 0.05, 0.03])
CAM_FOVY_JITTER = 6.0
LIGHT_DIR_JITTER = 0.6
LIGHT_GAIN = (-0.5, 0.4)
LIGHT_TINT = 0.15
SCENERY_RGB_JITTER = 0.30
OBJECT_RGB_JITTER = 0.20
DISTRACTOR_AREA = (np.array([0.12, -0.24]), np.array([0.46, 0.24]))
DISTRACTOR_CLEARANCE = 0.08


@dataclass
class Exogenous:
    """A distractor moving on a horizontal circle (one step of angle per env step)."""

    mocap: int = -1
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    radius: float = 0.0
    omega: float = 0.0
    phase: float = 0.0

    def apply(self, data: mujoco.MjData, t: int) -> None:
        if self.mocap < 0:
            return
        a = self.phase + self.omega * t
        p = data.mocap_pos[self.mocap]
        p[0] = self.center[0] + self.radius * math.cos(a)
        p[1] = self.center[1] + self.radius * math.sin(a)
        p[2] = self.center[2]


def _rest_height(model: mujoco.MjModel, geom: int) -> float:
    """Centre height of a box / cylinder / sphere resting on the table (z = 0)."""
    kind, size = model.geom_type[geom], model.geom_size[geom]
    if kind == mujoco.mjtGeom.mjGEOM_BOX:
        return float(size[2])
    if kind == mujoco.mjtGeom.mjGEOM_CYLINDER:
        return float(size[1])
    return float(size[0])


class Randomizer:
    """Captures the default appearance of ``model`` and re-draws it at every reset."""

    def __init__(self, model: mujoco.MjModel, object_geoms: tuple[str, ...]) -> None:
        self.model = model
        self.cam = model.camera("front").id
        self.light = model.light("key").id
        self.scenery = [model.geom(n).id for n in ("table", "floor", "wall")]
        self.objects = [model.geom(n).id for n in object_geoms]
        self.distractor_mocap = [model.body(f"distractor{i}").mocapid[0]
                                 for i in range(scene.N_DISTRACTORS)]
        self.distractor_geoms = [model.geom(f"distractor{i}").id for i in range(scene.N_DISTRACTORS)]
        self.distractor_z = [_rest_height(model, g) for g in self.distractor_geoms]
        self.defaults = {
            "cam_pos": model.cam_pos[self.cam].copy(),
            "cam_fovy": float(model.cam_fovy[self.cam]),
            "light_dir": model.light_dir[self.light].copy(),
            "light_diffuse": model.light_diffuse[self.light].copy(),
            "head_ambient": model.vis.headlight.ambient.copy(),
            "head_diffuse": model.vis.headlight.diffuse.copy(),
            "geom_rgba": model.geom_rgba.copy(),
        }
        self.default_cam_quat = model.cam_quat[self.cam].copy()
        self.exogenous = Exogenous()

    def params(self) -> dict[str, np.ndarray]:
        """The current appearance parameters (for tests and logging)."""
        m = self.model
        return {"cam_pos": m.cam_pos[self.cam].copy(), "cam_quat": m.cam_quat[self.cam].copy(),
                "cam_fovy": m.cam_fovy[self.cam].copy(),
                "light_dir": m.light_dir[self.light].copy(),
                "light_diffuse": m.light_diffuse[self.light].copy(),
                "head_ambient": m.vis.headlight.ambient.copy(),
                "head_diffuse": m.vis.headlight.diffuse.copy(),
                "geom_rgba": m.geom_rgba.copy()}

    def _restore(self, data: mujoco.MjData) -> None:
        m, d = self.model, self.defaults
        m.cam_pos[self.cam] = d["cam_pos"]
        m.cam_quat[self.cam] = self.default_cam_quat
        m.cam_fovy[self.cam] = d["cam_fovy"]
        m.light_dir[self.light] = d["light_dir"]
        m.light_diffuse[self.light] = d["light_diffuse"]
        m.vis.headlight.ambient[:] = d["head_ambient"]
        m.vis.headlight.diffuse[:] = d["head_diffuse"]
        m.geom_rgba[:] = d["geom_rgba"]
        for mocap in self.distractor_mocap:
            data.mocap_pos[mocap] = scene.HIDDEN_POS
        self.exogenous = Exogenous()

    def apply(self, data: mujoco.MjData, shift: float, rng: np.random.Generator,
              avoid_xy: list[np.ndarray]) -> None:
        """Restore the defaults, then perturb them by ``shift`` in [0, 1]."""
        self._restore(data)
        if shift <= 0.0:
            return
        m, d = self.model, self.defaults
        u = lambda lo, hi, n=None: rng.uniform(lo, hi, n)

        pos = d["cam_pos"] + shift * CAM_POS_JITTER * u(-1, 1, 3)
        target = np.array(scene.FRONT_CAM_TARGET) + shift * CAM_TARGET_JITTER * u(-1, 1, 3)
        m.cam_pos[self.cam] = pos
        m.cam_quat[self.cam] = scene.look_at_quat(pos, target)
        m.cam_fovy[self.cam] = d["cam_fovy"] + shift * CAM_FOVY_JITTER * u(-1, 1)

        direction = d["light_dir"] + shift * LIGHT_DIR_JITTER * u(-1, 1, 3)
        direction[2] = min(direction[2], -0.3)  # keep the key light above the table
        m.light_dir[self.light] = direction / np.linalg.norm(direction)
        gain = 1.0 + shift * u(*LIGHT_GAIN)
        tint = 1.0 + shift * LIGHT_TINT * u(-1, 1, 3)
        m.light_diffuse[self.light] = np.clip(d["light_diffuse"] * gain * tint, 0.0, 1.0)
        m.vis.headlight.ambient[:] = np.clip(d["head_ambient"] * (1 + shift * u(-0.5, 0.5)), 0, 1)
        m.vis.headlight.diffuse[:] = np.clip(d["head_diffuse"] * (1 + shift * u(-0.5, 0.5)), 0, 1)

        for ids, scale in ((self.scenery, SCENERY_RGB_JITTER), (self.objects, OBJECT_RGB_JITTER)):
            for g in ids:
                m.geom_rgba[g, :3] = np.clip(
                    d["geom_rgba"][g, :3] + shift * scale * u(-1, 1, 3), 0.0, 1.0)

        n = int(rng.integers(0, round(3 * shift) + 1))
        placed: list[np.ndarray] = [np.asarray(p, dtype=np.float64) for p in avoid_xy]
        for i in range(n):
            xy = u(*DISTRACTOR_AREA)
            for _ in range(30):
                if all(np.linalg.norm(xy - p) > DISTRACTOR_CLEARANCE for p in placed):
                    break
                xy = u(*DISTRACTOR_AREA)
            placed.append(xy)
            data.mocap_pos[self.distractor_mocap[i]] = (xy[0], xy[1], self.distractor_z[i])
            m.geom_rgba[self.distractor_geoms[i], :3] = u(0.05, 0.95, 3)
        if n > 0 and rng.random() < shift:
            i = 0
            self.exogenous = Exogenous(
                mocap=self.distractor_mocap[i], center=data.mocap_pos[self.distractor_mocap[i]].copy(),
                radius=float(u(0.02, 0.06)), omega=float(u(0.1, 0.3)) * (1 if rng.random() < 0.5 else -1),
                phase=float(u(0, 2 * math.pi)))
            self.exogenous.apply(data, 0)
