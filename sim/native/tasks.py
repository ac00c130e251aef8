"""Task definitions: objects (MJCF), randomised initial poses, success and dense reward.

Each task is a small class with the same methods, bound to one compiled model. Success
checks are sparse geometric tests on the simulator state; dense rewards are staged
shaping terms in [0, 1] that reach 1 exactly on success (robosuite-style staging:
reach -> grasp -> lift/place, Zhu et al. 2020, robosuite, section 4).

Poses are drawn only from the ``rng`` passed to :meth:`Task.reset`, with a fixed number
of draws per attempt, so a seed fixes the layout whatever the embodiment or domain shift.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np

from sim.native import scene

RED = (0.85, 0.16, 0.12, 1.0)
GREEN = (0.16, 0.68, 0.26, 1.0)
BLUE = (0.20, 0.36, 0.80, 1.0)
WOOD = (0.55, 0.36, 0.20, 1.0)
DARK_WOOD = (0.42, 0.26, 0.14, 1.0)
METAL = (0.75, 0.75, 0.78, 1.0)

CUBE_HALF = 0.02
BASE_HALF = 0.025  # the (green) cube that gets stacked on


def _cube_xml(name: str, half: float, rgba) -> str:
    return (f'<body name="{name}" pos="0.3 0 {half}"><freejoint name="{name}"/>'
            f'<geom name="{name}" class="object" type="box" size="{half} {half} {half}" '
            f'rgba="{scene.fmt(rgba)}" density="800"/></body>')


def _tanh_closeness(dist: float, scale: float = 10.0) -> float:
    return 1.0 - math.tanh(scale * dist)


class Task:
    """Base class: see the module docstring."""

    name = ""
    description = ""
    color_geoms: tuple[str, ...] = ()  # geoms whose colour domain randomisation perturbs

    def xml(self) -> str:
        raise NotImplementedError

    def bind(self, model: mujoco.MjModel) -> None:
        self.model = model

    def reset(self, model: mujoco.MjModel, data: mujoco.MjData, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def success(self, data: mujoco.MjData, emb) -> bool:
        raise NotImplementedError

    def dense_reward(self, data: mujoco.MjData, emb) -> float:
        raise NotImplementedError

    def privileged(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        """Object state for the scripted experts (and privileged-state baselines)."""
        raise NotImplementedError

    def object_xy(self, data: mujoco.MjData) -> list[np.ndarray]:
        """Table positions that distractors must keep clear of."""
        return [v[:2] for k, v in self.privileged(data).items() if k.endswith("_pos")]

    # helpers -----------------------------------------------------------------------------
    def _free_adr(self, name: str) -> int:
        return int(self.model.joint(name).qposadr[0])

    @staticmethod
    def _set_free(data: mujoco.MjData, adr: int, pos, yaw: float) -> None:
        data.qpos[adr:adr + 3] = pos
        data.qpos[adr + 3:adr + 7] = scene.yaw_quat(yaw)


def _grasp_score(emb, obj_pos: np.ndarray, half: float) -> float:
    """1 when the object sits between (partly) closed fingers, else 0."""
    near = np.linalg.norm(emb.tcp_pos - obj_pos) < half
    return float(near and emb.opening() < 2 * half + 0.006)


class Reach(Task):
    name = "reach"
    description = "reach the red ball"
    color_geoms = ("target",)
    radius = 0.025

    def xml(self) -> str:
        return (f'<body name="target" mocap="true" pos="0.3 0 0.1"><geom name="target" '
                f'type="sphere" size="0.018" rgba="{scene.fmt(RED)}"/></body>')

    def bind(self, model):
        super().bind(model)
        self.mocap = model.body("target").mocapid[0]

    def reset(self, model, data, rng):
        xy = rng.uniform(scene.SPAWN_LOW, scene.SPAWN_HIGH)
        data.mocap_pos[self.mocap] = (xy[0], xy[1], rng.uniform(0.04, 0.20))

    def _dist(self, data, emb) -> float:
        return float(np.linalg.norm(emb.tcp_pos - data.mocap_pos[self.mocap]))

    def success(self, data, emb):
        return self._dist(data, emb) < self.radius

    def dense_reward(self, data, emb):
        return 1.0 if self.success(data, emb) else 0.9 * _tanh_closeness(self._dist(data, emb))

    def privileged(self, data):
        return {"target_pos": data.mocap_pos[self.mocap].copy()}


class _CubeTask(Task):
    """Tasks with one red cube ("cube") on the table."""

    def bind(self, model):
        super().bind(model)
        self.cube_body = model.body("cube").id
        self.cube_adr = self._free_adr("cube")

    def cube_pos(self, data) -> np.ndarray:
        return data.xpos[self.cube_body]

    def cube_yaw(self, data) -> float:
        return scene.quat_yaw(data.xquat[self.cube_body])


class Push(_CubeTask):
    name = "push"
    description = "push the red cube onto the green square"
    color_geoms = ("cube", "goal")
    tolerance = 0.03

    def xml(self):
        return (_cube_xml("cube", CUBE_HALF, RED)
                + f'<body name="goal" mocap="true" pos="0.3 0 0.0008"><geom name="goal" '
                  f'type="box" size="0.04 0.04 0.0008" rgba="{scene.fmt(GREEN)}"/></body>')

    def bind(self, model):
        super().bind(model)
        self.goal_mocap = model.body("goal").mocapid[0]

    def reset(self, model, data, rng):
        for _ in range(100):
            cube = rng.uniform((0.22, -0.11), (0.34, 0.11))
            angle, dist = rng.uniform(-math.pi, math.pi), rng.uniform(0.10, 0.15)
            goal = cube + dist * np.array([math.cos(angle), math.sin(angle)])
            if np.all(goal >= (0.18, -0.15)) and np.all(goal <= (0.40, 0.15)):
                break
        self._set_free(data, self.cube_adr, (cube[0], cube[1], CUBE_HALF),
                       rng.uniform(-math.pi / 4, math.pi / 4))
        data.mocap_pos[self.goal_mocap] = (goal[0], goal[1], 0.0008)

    def _cube_goal(self, data) -> float:
        return float(np.linalg.norm(self.cube_pos(data)[:2] - data.mocap_pos[self.goal_mocap][:2]))

    def success(self, data, emb):
        return self._cube_goal(data) < self.tolerance

    def dense_reward(self, data, emb):
        if self.success(data, emb):
            return 1.0
        reach = _tanh_closeness(float(np.linalg.norm(emb.tcp_pos - self.cube_pos(data))))
        return 0.3 * reach + 0.6 * _tanh_closeness(self._cube_goal(data), 5.0)

    def privileged(self, data):
        return {"cube_pos": self.cube_pos(data).copy(), "cube_yaw": np.array([self.cube_yaw(data)]),
                "goal_pos": data.mocap_pos[self.goal_mocap].copy()}


class Lift(_CubeTask):
    name = "lift"
    description = "pick up the red cube"
    color_geoms = ("cube",)
    height = 0.08  # cube centre height for success: lifted by 6 cm

    def xml(self):
        return _cube_xml("cube", CUBE_HALF, RED)

    def reset(self, model, data, rng):
        xy = rng.uniform(scene.SPAWN_LOW, scene.SPAWN_HIGH)
        self._set_free(data, self.cube_adr, (xy[0], xy[1], CUBE_HALF),
                       rng.uniform(-math.pi / 4, math.pi / 4))

    def success(self, data, emb):
        return bool(self.cube_pos(data)[2] > self.height)

    def dense_reward(self, data, emb):
        if self.success(data, emb):
            return 1.0
        cube = self.cube_pos(data)
        reach = _tanh_closeness(float(np.linalg.norm(emb.tcp_pos - cube)))
        lift = min(max((cube[2] - CUBE_HALF) / (self.height - CUBE_HALF), 0.0), 1.0)
        return 0.25 * reach + 0.25 * _grasp_score(emb, cube, CUBE_HALF) + 0.45 * lift

    def privileged(self, data):
        return {"cube_pos": self.cube_pos(data).copy(), "cube_yaw": np.array([self.cube_yaw(data)])}


class PickPlace(_CubeTask):
    name = "pickplace"
    description = "put the red cube in the blue bin"
    color_geoms = ("cube", "bin_floor", "bin_w0", "bin_w1", "bin_w2", "bin_w3")
    inner = 0.065     # inner half width of the bin
    wall_h = 0.025    # half height of the walls
    floor_top = 0.004

    def xml(self):
        rgba = f'rgba="{scene.fmt(BLUE)}"'
        t, h, w = 0.005, self.wall_h, self.inner + 0.005
        walls = "".join(
            f'<geom name="bin_w{i}" class="static" type="box" size="{sx} {sy} {h}" '
            f'pos="{px} {py} {h}" {rgba}/>'
            for i, (sx, sy, px, py) in enumerate([(t, w, w, 0), (t, w, -w, 0),
                                                  (w, t, 0, w), (w, t, 0, -w)]))
        return (_cube_xml("cube", CUBE_HALF, RED)
                + f'<body name="bin" pos="0.3 0.1 0"><geom name="bin_floor" class="static" '
                  f'type="box" size="{w} {w} {self.floor_top / 2}" pos="0 0 {self.floor_top / 2}" '
                  f'{rgba}/>{walls}</body>')

    def bind(self, model):
        super().bind(model)
        self.bin_body = model.body("bin").id

    def reset(self, model, data, rng):
        for _ in range(100):
            cube = rng.uniform(scene.SPAWN_LOW, scene.SPAWN_HIGH)
            bin_xy = rng.uniform((0.22, -0.13), (0.36, 0.13))
            if np.linalg.norm(cube - bin_xy) > 0.15:
                break
        model.body_pos[self.bin_body] = (bin_xy[0], bin_xy[1], 0.0)
        self._set_free(data, self.cube_adr, (cube[0], cube[1], CUBE_HALF),
                       rng.uniform(-math.pi / 4, math.pi / 4))

    def _in_bin(self, data) -> bool:
        off = np.abs(self.cube_pos(data)[:2] - self.model.body_pos[self.bin_body][:2])
        return bool(np.all(off < self.inner - 0.01))

    def success(self, data, emb):
        # In the bin and resting low (not held above it).
        return self._in_bin(data) and bool(self.cube_pos(data)[2] < self.floor_top + 0.04)

    def dense_reward(self, data, emb):
        if self.success(data, emb):
            return 1.0
        cube = self.cube_pos(data)
        reach = _tanh_closeness(float(np.linalg.norm(emb.tcp_pos - cube)))
        place = _tanh_closeness(
            float(np.linalg.norm(cube[:2] - self.model.body_pos[self.bin_body][:2])), 5.0)
        return 0.2 * reach + 0.2 * _grasp_score(emb, cube, CUBE_HALF) + 0.5 * place

    def privileged(self, data):
        return {"cube_pos": self.cube_pos(data).copy(), "cube_yaw": np.array([self.cube_yaw(data)]),
                "bin_pos": self.model.body_pos[self.bin_body].copy()}


class Stack(_CubeTask):
    name = "stack"
    description = "stack the red cube on the green cube"
    color_geoms = ("cube", "base")

    def xml(self):
        return _cube_xml("cube", CUBE_HALF, RED) + _cube_xml("base", BASE_HALF, GREEN)

    def bind(self, model):
        super().bind(model)
        self.base_body = model.body("base").id
        self.base_adr = self._free_adr("base")

    def reset(self, model, data, rng):
        for _ in range(100):
            cube = rng.uniform(scene.SPAWN_LOW, scene.SPAWN_HIGH)
            base = rng.uniform(scene.SPAWN_LOW, scene.SPAWN_HIGH)
            if np.linalg.norm(cube - base) > 0.10:
                break
        yaws = rng.uniform(-math.pi / 4, math.pi / 4, size=2)
        self._set_free(data, self.cube_adr, (cube[0], cube[1], CUBE_HALF), yaws[0])
        self._set_free(data, self.base_adr, (base[0], base[1], BASE_HALF), yaws[1])

    def _on_base(self, data) -> bool:
        cube, base = self.cube_pos(data), data.xpos[self.base_body]
        return bool(np.linalg.norm(cube[:2] - base[:2]) < 0.02
                    and abs(cube[2] - base[2] - CUBE_HALF - BASE_HALF) < 0.01)

    def success(self, data, emb):
        # Resting on the base and released (fingers open wider than the cube).
        return self._on_base(data) and emb.opening() > 2 * CUBE_HALF + 0.008

    def dense_reward(self, data, emb):
        if self.success(data, emb):
            return 1.0
        cube, base = self.cube_pos(data), data.xpos[self.base_body]
        reach = _tanh_closeness(float(np.linalg.norm(emb.tcp_pos - cube)))
        above = base + np.array([0.0, 0.0, CUBE_HALF + BASE_HALF])
        place = _tanh_closeness(float(np.linalg.norm(cube - above)), 5.0)
        return 0.2 * reach + 0.2 * _grasp_score(emb, cube, CUBE_HALF) + 0.5 * place

    def privileged(self, data):
        return {"cube_pos": self.cube_pos(data).copy(), "cube_yaw": np.array([self.cube_yaw(data)]),
                "base_pos": data.xpos[self.base_body].copy(),
                "base_yaw": np.array([scene.quat_yaw(data.xquat[self.base_body])])}


class Drawer(Task):
    name = "drawer"
    description = "open the drawer"
    color_geoms = ("cab_top", "cab_left", "cab_right", "cab_back", "drawer_front")
    travel = 0.16          # slide range of the drawer
    open_success = 0.08    # success once pulled out this far
    standoff = 0.045       # handle bar centre to drawer front face
    bar_z = 0.06

    def xml(self):
        wood, dark, metal = (f'rgba="{scene.fmt(c)}"' for c in (WOOD, DARK_WOOD, METAL))
        # Cabinet (static) 0.18 deep x 0.22 wide x 0.105 high, open towards -x (the robot).
        # The drawer slides along -x; its walls only collide with the gripper (class
        # "furniture"), so drawer-cabinet contacts never need to be solved.
        front_x = -0.096
        bar_x = front_x - self.standoff
        return f"""
    <body name="cabinet" pos="0.5 0 0">
      <geom name="cab_top" class="static" type="box" size="0.08 0.11 0.006" pos="0.01 0 0.099" {wood}/>
      <geom name="cab_left" class="static" type="box" size="0.09 0.006 0.05" pos="0 0.104 0.05" {wood}/>
      <geom name="cab_right" class="static" type="box" size="0.09 0.006 0.05" pos="0 -0.104 0.05" {wood}/>
      <geom name="cab_back" class="static" type="box" size="0.006 0.11 0.05" pos="0.084 0 0.05" {wood}/>
      <body name="drawer" pos="0 0 0">
        <joint name="drawer" type="slide" axis="-1 0 0" range="0 {self.travel}" damping="3"
               armature="0.05" frictionloss="0.2"/>
        <geom name="drawer_front" class="furniture" type="box" size="0.006 0.098 0.037"
              pos="-0.09 0 0.047" {dark}/>
        <geom class="furniture" type="box" size="0.08 0.09 0.004" pos="0 0 0.012" density="300" {wood}/>
        <geom class="furniture" type="box" size="0.08 0.004 0.025" pos="0 0.09 0.035" density="300" {wood}/>
        <geom class="furniture" type="box" size="0.08 0.004 0.025" pos="0 -0.09 0.035" density="300" {wood}/>
        <geom class="furniture" type="box" size="0.004 0.09 0.025" pos="0.08 0 0.035" density="300" {wood}/>
        <geom name="handle_bar" class="furniture" type="box" size="0.006 0.055 0.006"
              pos="{bar_x} 0 {self.bar_z}" {metal}/>
        <geom class="furniture" type="box" size="{self.standoff / 2} 0.005 0.005"
              pos="{front_x - self.standoff / 2} 0.05 {self.bar_z}" {metal}/>
        <geom class="furniture" type="box" size="{self.standoff / 2} 0.005 0.005"
              pos="{front_x - self.standoff / 2} -0.05 {self.bar_z}" {metal}/>
      </body>
    </body>"""

    def bind(self, model):
        super().bind(model)
        self.cabinet = model.body("cabinet").id
        self.slide_adr = int(model.joint("drawer").qposadr[0])
        self.bar = model.geom("handle_bar").id

    def reset(self, model, data, rng):
        x, y = rng.uniform(0.48, 0.52), rng.uniform(-0.12, 0.12)
        model.body_pos[self.cabinet] = (x, y, 0.0)
        data.qpos[self.slide_adr] = rng.uniform(0.0, 0.02)

    def opened(self, data) -> float:
        return float(data.qpos[self.slide_adr])

    def success(self, data, emb):
        return self.opened(data) > self.open_success

    def dense_reward(self, data, emb):
        if self.success(data, emb):
            return 1.0
        reach = _tanh_closeness(float(np.linalg.norm(emb.tcp_pos - data.geom_xpos[self.bar])))
        return 0.3 * reach + 0.6 * min(self.opened(data) / self.open_success, 1.0)

    def privileged(self, data):
        return {"handle_pos": data.geom_xpos[self.bar].copy(),
                "drawer_open": np.array([self.opened(data)]),
                "cabinet_pos": self.model.body_pos[self.cabinet].copy()}


TASKS: dict[str, type[Task]] = {t.name: t for t in (Reach, Push, Lift, PickPlace, Stack, Drawer)}
