"""Headless rendering of the open3d anomaly viewer (``OffscreenRenderer``, no display needed); the
interactive window is :mod:`segood.viz.window`.

Camera convention (:class:`RenderCamera`): a pinhole ``K`` and a world->camera ``extrinsic`` in the
OpenCV frame (x right, y down, z forward), world = the LiDAR frame (x forward, y left, z up). The
same camera is given to open3d and used by :meth:`RenderCamera.project`, so a point's pixel in the
render is known (tests check colours there).

Headless rendering uses Filament through Vulkan (Mesa's llvmpipe on machines without a GPU:
``apt-get install libvulkan1 mesa-vulkan-drivers``). Filament prints its start-up banner on stdout;
it is silenced so that the command's own output stays clean.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segood.atomic import atomic_write
from segood.viz.colors import BACKGROUND_RGB


@dataclass(frozen=True)
class RenderCamera:
    K: np.ndarray  # (3, 3) intrinsics
    extrinsic: np.ndarray  # (4, 4) world (LiDAR) -> camera (OpenCV axes)
    width: int
    height: int

    @classmethod
    def look_at(cls, eye, target, width: int = 1280, height: int = 720, vfov_deg: float = 60.0,
                up=(0.0, 0.0, 1.0)) -> RenderCamera:
        """A camera at ``eye`` looking at ``target`` with ``up`` pointing up in the image."""
        eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
        f = target - eye
        f /= np.linalg.norm(f)
        x = np.cross(f, up)
        if np.linalg.norm(x) < 1e-9:
            raise ValueError(f"up {up.tolist()} is parallel to the viewing direction {f.tolist()}")
        x /= np.linalg.norm(x)
        y = np.cross(f, x)
        rot = np.stack([x, y, f])
        ext = np.eye(4)
        ext[:3, :3], ext[:3, 3] = rot, -rot @ eye
        fy = 0.5 * height / math.tan(math.radians(vfov_deg) / 2)
        k = np.array([[fy, 0.0, width / 2], [0.0, fy, height / 2], [0.0, 0.0, 1.0]])
        return cls(k, ext, int(width), int(height))

    @classmethod
    def preset(cls, name: str, width: int = 1280, height: int = 720) -> RenderCamera:
        """``chase``: behind and above the sensor, looking ahead; ``bev``: straight down, forward = up."""
        if name == "chase":
            return cls.look_at((-12.0, 0.0, 10.0), (16.0, 0.0, 0.0), width, height, 60.0)
        if name == "bev":
            return cls.look_at((0.0, 0.0, 90.0), (0.0, 0.0, 0.0), width, height, 50.0, up=(1.0, 0.0, 0.0))
        raise ValueError(f"unknown camera preset '{name}' (chase, bev)")

    def project(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uv (N, 2) pixel coordinates, depth (N,)) of world points; depth <= 0 is behind the camera."""
        cam = np.asarray(xyz, dtype=np.float64) @ self.extrinsic[:3, :3].T + self.extrinsic[:3, 3]
        depth = cam[:, 2]
        uv = cam[:, :2] / np.where(np.abs(depth) < 1e-9, 1e-9, depth)[:, None] @ self.K[:2, :2].T + self.K[:2, 2]
        return uv, depth


@contextlib.contextmanager
def _quiet_stdout():
    """Silence C-level writes to stdout (Filament's banner) for the duration of the block."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # stdout replaced by an object without a descriptor
        yield
        return
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def ensure_runtime_dir() -> None:
    """Give the process a private ``XDG_RUNTIME_DIR`` when it has none (e.g. under sudo, ssh or a CI
    runner): Mesa's drivers otherwise print "error: XDG_RUNTIME_DIR is invalid or not set in the
    environment." on every window or renderer. Only that variable is touched, and only when unset
    or not a folder."""
    current = os.environ.get("XDG_RUNTIME_DIR")
    if current and os.path.isdir(current):
        return
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix=f"segood-runtime-{os.getuid()}-")  # mode 0700, as the spec asks
    os.environ["XDG_RUNTIME_DIR"] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)


_RENDERER: dict[str, object] = {}


def _renderer(width: int, height: int):
    """The process's OffscreenRenderer, kept between renders of one size (creating one costs ~0.5 s).

    Only one exists at a time and it is released before the interpreter exits: Filament aborts the
    process when renderers are destroyed in the wrong order during interpreter teardown.
    """
    import open3d as o3d

    if _RENDERER.get("size") != (width, height):
        release_renderer()
        ensure_runtime_dir()
        check_offscreen()
        o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
        with _quiet_stdout():
            r = o3d.visualization.rendering.OffscreenRenderer(width, height)
        r.scene.view.set_post_processing(False)  # exact colours: no tone mapping / anti-aliasing
        if not _RENDERER.get("atexit"):
            atexit.register(release_renderer)
        _RENDERER.update(size=(width, height), renderer=r, atexit=True)
    return _RENDERER["renderer"]


_PROBE = """
import open3d as o3d
o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
o3d.visualization.rendering.OffscreenRenderer(8, 8)
"""


@functools.cache
def check_offscreen() -> None:
    """Create a renderer once in a child process first: without a Vulkan driver Filament aborts the
    whole process (C++ terminate) instead of raising, so the failure is turned into a RuntimeError."""
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise RuntimeError("open3d offscreen rendering did not start within 120 s") from None
    if r.returncode != 0:
        reason = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RuntimeError(f"open3d cannot render offscreen here ({reason}); install a Vulkan driver "
                           "(Debian/Ubuntu: apt-get install libvulkan1 mesa-vulkan-drivers libegl1 libgl1)")


def release_renderer() -> None:
    """Destroy the cached OffscreenRenderer (if any)."""
    r = _RENDERER.pop("renderer", None)
    _RENDERER.pop("size", None)
    if r is not None:
        r.scene.clear_geometry()
        del r
        gc.collect()


def render_image(xyz: np.ndarray, rgb: np.ndarray, camera: RenderCamera, point_size: float = 2.0,
                 background=BACKGROUND_RGB, overlay: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Render points with per-point colours from ``camera``: (H, W, 3) uint8 RGB.

    ``overlay`` = (xyz, rgb) of points drawn on top with twice the point size (e.g. anomalies).
    """
    import open3d as o3d

    r = _renderer(camera.width, camera.height)
    scene = r.scene
    scene.clear_geometry()
    scene.set_background([*background, 1.0])
    layers = [(xyz, rgb, point_size)] + ([(overlay[0], overlay[1], 2 * point_size)] if overlay is not None else [])
    for k, (pts, col, size) in enumerate(layers):
        if len(pts) == 0:
            continue
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(pts, dtype=np.float64)))
        pcd.colors = o3d.utility.Vector3dVector(np.asarray(col, dtype=np.float64))
        mat = o3d.visualization.rendering.MaterialRecord()
        mat.shader, mat.point_size = "defaultUnlit", float(size)
        scene.add_geometry(f"layer{k}", pcd, mat)
    r.setup_camera(camera.K, camera.extrinsic, camera.width, camera.height)
    img = np.asarray(r.render_to_image())
    scene.clear_geometry()
    return img[:, :, :3].copy()


def write_png(path: str | Path, img: np.ndarray) -> Path:
    """Write an RGB image as PNG, atomically."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    return atomic_write(path, lambda p: p.write_bytes(buf.tobytes()))
