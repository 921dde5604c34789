"""The open3d anomaly viewer: a headless render (``OffscreenRenderer``, no display needed) and the
interactive window (keys switch views and move between frames).

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segood.atomic import atomic_write
from segood.viz.colors import BACKGROUND_RGB, VIEWS
from segood.viz.frame import VizFrame


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


_RENDERER: dict[str, object] = {}


def _renderer(width: int, height: int):
    """The process's OffscreenRenderer, kept between renders of one size (creating one costs ~0.5 s).

    Only one exists at a time and it is released before the interpreter exits: Filament aborts the
    process when renderers are destroyed in the wrong order during interpreter teardown.
    """
    import open3d as o3d

    if _RENDERER.get("size") != (width, height):
        release_renderer()
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


def add_caption(img: np.ndarray, text: str) -> np.ndarray:
    """The image with a caption strip below it (the rendered pixels are not touched)."""
    import cv2

    strip = np.full((28, img.shape[1], 3), 30, dtype=np.uint8)
    cv2.putText(strip, text[: img.shape[1] // 8], (8, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (235, 235, 235), 1, cv2.LINE_AA)
    return np.concatenate([img, strip], axis=0)


def write_png(path: str | Path, img: np.ndarray) -> Path:
    """Write an RGB image as PNG, atomically."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    return atomic_write(path, lambda p: p.write_bytes(buf.tobytes()))


# ---------------------------------------------------------------------------------------------
# Interactive window

HELP = "keys: 1 ground truth, 2 prediction, 3 anomaly heatmap, 4 above operating point, V next view, " \
       "N / right next frame, P / left previous frame, Q quit"
_KEYS = {"1": ("view", "gt"), "2": ("view", "pred"), "3": ("view", "heat"), "4": ("view", "hot"),
         "V": ("cycle", 1), "N": ("frame", 1), "RIGHT": ("frame", 1), "P": ("frame", -1), "LEFT": ("frame", -1)}
GLFW_KEYS = {"RIGHT": 262, "LEFT": 263}


class ViewerState:
    """Which frame and view the window shows, and how keys change them (kept apart from open3d so
    it can be tested without a display)."""

    def __init__(self, num_frames: int, view: str, index: int = 0) -> None:
        self.num_frames, self.view, self.index = num_frames, view, index
        self.available: list[str] = list(VIEWS)

    def key(self, name: str) -> bool:
        """Apply a key; True when the picture must be redrawn."""
        action, arg = _KEYS.get(name.upper(), (None, None))
        if action == "view":
            if arg not in self.available or arg == self.view:
                return False
            self.view = arg
        elif action == "cycle":
            i = self.available.index(self.view) if self.view in self.available else -1
            self.view = self.available[(i + arg) % len(self.available)]
        elif action == "frame":
            new = min(max(self.index + arg, 0), self.num_frames - 1)
            if new == self.index:
                return False
            self.index = new
        else:
            return False
        return True

    def settle(self, available: list[str]) -> None:
        """After loading a frame: keep the view if the frame has it, else take its first view."""
        self.available = available
        if self.view not in available:
            self.view = available[0]


def start_view(vis, camera: RenderCamera) -> None:
    """Point the legacy visualizer's camera like ``camera`` (same pose; the window keeps its own size)."""
    import open3d as o3d

    ctl = vis.get_view_control()
    params = ctl.convert_to_pinhole_camera_parameters()
    w, h = params.intrinsic.width, params.intrinsic.height
    f = camera.K[1, 1] * h / camera.height
    params.intrinsic = o3d.camera.PinholeCameraIntrinsic(w, h, f, f, w / 2 - 0.5, h / 2 - 0.5)
    params.extrinsic = camera.extrinsic
    ctl.convert_from_pinhole_camera_parameters(params, allow_arbitrary=True)


def run_window(load: Callable[[int], VizFrame], num_frames: int, view: str, point_size: float = 2.0) -> None:
    """Open the interactive window; ``load(i)`` gives frame ``i``. Needs a display (X11 / Wayland)."""
    import open3d as o3d

    state = ViewerState(num_frames, view)
    vis = o3d.visualization.VisualizerWithKeyCallback()
    if not vis.create_window("segood viewer", 1280, 720):
        raise RuntimeError("could not open a window (no display?); use --png, --overlay or --ply for headless output")
    pcd = o3d.geometry.PointCloud()
    cache: dict[str, object] = {}

    def show(reset: bool) -> None:
        if cache.get("index") != state.index:
            cache["frame"], cache["index"] = load(state.index), state.index
        frame = cache["frame"]
        state.settle(frame.views)
        pcd.points = o3d.utility.Vector3dVector(frame.scan.points[:, :3].astype(np.float64))
        pcd.colors = o3d.utility.Vector3dVector(frame.colors(state.view))
        if reset:
            vis.add_geometry(pcd, reset_bounding_box=True)
            start_view(vis, RenderCamera.preset("chase", 1280, 720))
        else:
            vis.update_geometry(pcd)
        print(f"[{state.index + 1}/{num_frames}] {frame.caption(state.view)}", flush=True)

    def on_key(name: str):
        def cb(_vis) -> bool:  # returning True makes open3d redraw
            if state.key(name):
                show(False)
                return True
            return False
        return cb

    for name in _KEYS:
        vis.register_key_callback(GLFW_KEYS.get(name, ord(name) if len(name) == 1 else 0), on_key(name))
    opt = vis.get_render_option()
    opt.background_color = np.asarray(BACKGROUND_RGB)
    opt.point_size = point_size
    print(HELP, flush=True)
    show(True)
    vis.run()
    vis.destroy_window()
