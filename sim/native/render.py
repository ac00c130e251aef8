"""A minimal offscreen renderer: one GL context, one MjvScene, preallocated buffers.

``mujoco.Renderer`` allocates a scene for 10,000 geoms, copies the render flags and
flips the image into a second buffer on every call; for 64x64 frames that overhead is
larger than the rendering itself. This class does only what the environment needs
(mjv_updateScene, mjr_render, mjr_readPixels) and returns an upright copy.
"""

from __future__ import annotations

import mujoco
import numpy as np


class FrameRenderer:
    """Renders named fixed cameras of ``model`` into ``size`` x ``size`` RGB frames."""

    def __init__(self, model: mujoco.MjModel, size: int, cameras: tuple[str, ...]) -> None:
        from mujoco import gl_context  # imported here: picks the backend from MUJOCO_GL

        self._model = model
        self._gl = gl_context.GLContext(size, size)
        self._gl.make_current()
        self._ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_50.value)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, self._ctx)
        # Room for every model geom plus decorations; far below Renderer's 10,000.
        self._scene = mujoco.MjvScene(model, maxgeom=model.ngeom + 32)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
        self._option = mujoco.MjvOption()
        self._rect = mujoco.MjrRect(0, 0, size, size)
        self._buf = np.empty((size, size, 3), dtype=np.uint8)
        self._catmask = mujoco.mjtCatBit.mjCAT_ALL.value
        self.cameras: dict[str, mujoco.MjvCamera] = {}
        for name in cameras:
            cam = mujoco.MjvCamera()
            cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
            cam.fixedcamid = model.camera(name).id
            self.cameras[name] = cam

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """A new (size, size, 3) uint8 array, row 0 at the top of the image."""
        if self._ctx is None:
            raise RuntimeError("render() called after close()")
        mujoco.mjv_updateScene(self._model, data, self._option, None, self.cameras[camera],
                               self._catmask, self._scene)
        # Several environments may share a process (vector envs): make ours current.
        self._gl.make_current()
        mujoco.mjr_render(self._rect, self._scene, self._ctx)
        mujoco.mjr_readPixels(self._buf, None, self._rect, self._ctx)
        return self._buf[::-1].copy()  # OpenGL rows start at the bottom

    def close(self) -> None:
        if self._ctx is not None:
            self._gl.make_current()
            self._ctx.free()
            self._ctx = None
        if self._gl is not None:
            self._gl.free()
            self._gl = None
