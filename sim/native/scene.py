"""Shared scene geometry: table, cameras, lights, distractors and the MJCF assembly.

Conventions used by every task and embodiment (all in metres, world frame):

* the table top is the plane z = 0; the robot base stands at the origin and faces +x;
* the *tool frame* ("tcp" site) has its z axis pointing down, along the fingers, and its
  y axis along the finger opening direction. Its orientation is always
  ``Rz(yaw) @ Ry(pi)`` (top-down grasps only), so one scalar ``yaw`` describes it;
* collision filtering uses four bits (MuJoCo collides two geoms when
  ``contype_a & conaffinity_b or contype_b & conaffinity_a``): static scenery (1),
  free objects (2), gripper/hand fingers (4), articulated furniture (8). Arm links and
  decorations collide with nothing, which keeps the contact count (and so the cost of a
  physics step) small.
"""

from __future__ import annotations

import math

import numpy as np

# Physics / control rates: 20 Hz control, 5 substeps of 10 ms (stable with the implicit
# integrator and the gains below; see the determinism and expert tests).
TIMESTEP = 0.01
SUBSTEPS = 5
CONTROL_HZ = 1.0 / (TIMESTEP * SUBSTEPS)

# Workspace of the tool-centre point (tcp), shared by both embodiments; the arm reaches
# all of it with the tool pointing down (its far corners are near full extension).
WORKSPACE_LOW = np.array([0.10, -0.22, 0.02])
WORKSPACE_HIGH = np.array([0.45, 0.22, 0.30])
# Region where task objects are spawned (inside the workspace, reachable from above).
SPAWN_LOW = np.array([0.18, -0.14])
SPAWN_HIGH = np.array([0.38, 0.14])

TABLE_RGBA = (0.62, 0.52, 0.40, 1.0)
FLOOR_RGBA = (0.30, 0.32, 0.36, 1.0)
WALL_RGBA = (0.78, 0.80, 0.83, 1.0)

# Front camera: beside the table, looking across the workspace from the robot's right so
# that the arm, the objects and the drawer front are all visible; the far table edge and
# the floor fill the top of the image.
FRONT_CAM_POS = (0.26, -0.54, 0.44)
FRONT_CAM_TARGET = (0.28, 0.04, 0.05)
FRONT_CAM_FOVY = 45.0

# Key light (directional, no shadows: shadows cost a second render pass).
LIGHT_DIR = (-0.3, 0.2, -1.0)
LIGHT_DIFFUSE = (0.65, 0.65, 0.65)
HEADLIGHT_DIFFUSE = (0.35, 0.35, 0.35)
HEADLIGHT_AMBIENT = (0.30, 0.30, 0.30)

N_DISTRACTORS = 3
HIDDEN_POS = (0.0, 0.0, -2.0)  # below the floor: invisible from every camera


def fmt(values) -> str:
    """Numbers -> the space separated string MJCF attributes expect."""
    return " ".join(f"{float(v):.6g}" for v in values)


def look_at_quat(pos, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Quaternion (w, x, y, z) of a MuJoCo camera at ``pos`` looking at ``target``.

    MuJoCo cameras look along their -z axis with +y up (MuJoCo docs, "camera").
    """
    pos, target, up = (np.asarray(v, dtype=np.float64) for v in (pos, target, up))
    fwd = target - pos
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, fwd)
    return mat_to_quat(np.stack([right, cam_up, -fwd], axis=1))


def mat_to_quat(mat: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (w, x, y, z), w >= 0 (Shepperd's method)."""
    m = np.asarray(mat, dtype=np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * math.sqrt(1.0 + tr)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def yaw_quat(yaw: float) -> np.ndarray:
    """Quaternion of a rotation by ``yaw`` about world z (for free objects)."""
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def tool_quat(yaw: float) -> np.ndarray:
    """Quaternion of the top-down tool frame ``Rz(yaw) @ Ry(pi)``."""
    # (cos(y/2), 0, 0, sin(y/2)) * (0, 0, 1, 0), expanded by hand.
    return np.array([0.0, -math.sin(yaw / 2), math.cos(yaw / 2), 0.0])


def tool_mat(yaw: float) -> np.ndarray:
    """Rotation matrix ``Rz(yaw) @ Ry(pi)`` of the top-down tool frame."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[-c, -s, 0.0], [-s, c, 0.0], [0.0, 0.0, -1.0]])


def quat_yaw(quat) -> float:
    """Yaw (rotation about world z) of a quaternion (w, x, y, z) of an upright body."""
    w, x, y, z = quat
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def _defaults_xml() -> str:
    return """
  <default>
    <geom contype="0" conaffinity="0" group="0" solref="0.02 1"/>
    <default class="static"><geom contype="1" conaffinity="0"/></default>
    <default class="object"><geom contype="2" conaffinity="7" friction="1.0 0.005 0.0001"/></default>
    <default class="grip"><geom contype="4" conaffinity="1" friction="1.5 0.01 0.0002" condim="4"/></default>
    <default class="furniture"><geom contype="8" conaffinity="4" friction="1.0 0.005 0.0001"/></default>
    <site group="5"/>
  </default>"""


def _environment_xml() -> str:
    cam_quat = look_at_quat(FRONT_CAM_POS, FRONT_CAM_TARGET)
    distractors = []
    shapes = ('type="box" size="0.022 0.022 0.022"', 'type="cylinder" size="0.022 0.03"',
              'type="sphere" size="0.025"')
    for i in range(N_DISTRACTORS):
        distractors.append(
            f'<body name="distractor{i}" mocap="true" pos="{fmt(HIDDEN_POS)}">'
            f'<geom name="distractor{i}" {shapes[i % len(shapes)]} rgba="0.5 0.5 0.5 1"/></body>')
    return f"""
    <geom name="floor" type="box" size="3 3 0.05" pos="0 0 -0.8" rgba="{fmt(FLOOR_RGBA)}"/>
    <geom name="wall" type="box" size="0.02 1.5 0.8" pos="-0.75 0 0" rgba="{fmt(WALL_RGBA)}"/>
    <geom name="table" class="static" type="box" size="0.45 0.45 0.02" pos="0.25 0 -0.02"
          rgba="{fmt(TABLE_RGBA)}"/>
    <light name="key" directional="true" castshadow="false" pos="0.3 0 1.5"
           dir="{fmt(LIGHT_DIR)}" diffuse="{fmt(LIGHT_DIFFUSE)}" specular="0.1 0.1 0.1"/>
    <camera name="front" pos="{fmt(FRONT_CAM_POS)}" quat="{fmt(cam_quat)}" fovy="{FRONT_CAM_FOVY}"/>
    {"".join(distractors)}"""


def build_scene_xml(*, task_xml: str, robot_xml: str, actuator_xml: str, equality_xml: str,
                    image_size: int) -> str:
    """Assemble the full MJCF of one (task, embodiment) pair.

    Rendering is done on the CPU (OSMesa), where vertex count dominates the cost: curved
    primitives are tessellated coarsely (10 slices x 4 stacks instead of 28 x 16: six
    capsules went from 0.9 ms to 0.13 ms per 64x64 frame), the floor is a box rather than
    a subdivided plane, there is no multisampling and no shadow map, and the offscreen
    framebuffer is exactly ``image_size`` square.
    """
    size = max(int(image_size), 1)
    return f"""<mujoco model="vptr_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP}" integrator="implicitfast" iterations="30" ls_iterations="8"/>
  <statistic extent="1.0" center="0.25 0 0.1"/>
  <visual>
    <global offwidth="{size}" offheight="{size}"/>
    <quality shadowsize="0" offsamples="0" numslices="10" numstacks="4" numquads="1"/>
    <map znear="0.02" zfar="10"/>
    <headlight ambient="{fmt(HEADLIGHT_AMBIENT)}" diffuse="{fmt(HEADLIGHT_DIFFUSE)}" specular="0 0 0"/>
  </visual>
  {_defaults_xml()}
  <worldbody>
    {_environment_xml()}
    {robot_xml}
    {task_xml}
  </worldbody>
  <equality>{equality_xml}</equality>
  <actuator>{actuator_xml}</actuator>
</mujoco>
"""
