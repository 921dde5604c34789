"""The interactive open3d window: keys switch views and move between frames, a legend panel says
what is shown, unreadable frames are skipped and reported, Ctrl-C closes it.

Two legacy ``VisualizerWithKeyCallback`` windows are polled by a Python loop (not ``vis.run()``,
which would block Ctrl-C until the next key press): the scan, and below it the caption and colour
legend panel of :mod:`segood.viz.legend` (open3d's legacy window cannot draw text over the scan).
Before opening them the X display is probed in a child process: open3d falls back to an invisible
offscreen window when ``DISPLAY`` names a server that does not exist, and would then wait forever.
The key logic (:class:`ViewerState`, :func:`load_skipping`) is plain Python, tested without a display.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from segood.viz.colors import BACKGROUND_RGB, VIEWS
from segood.viz.frame import VizFrame
from segood.viz.legend import legend_panel
from segood.viz.open3d_view import RenderCamera, ensure_runtime_dir

WINDOW_W, WINDOW_H, LEFT, TOP = 1280, 720, 40, 40
PROBE_TIMEOUT_S = 5.0
HELP = ("keys: 1 ground truth, 2 prediction, 3 anomaly heatmap, 4 above operating point, V next view, "
        "N / right next frame, P / left previous frame, R segood's view, H these keys, Q quit (Ctrl-C in the "
        "terminal too); mouse: drag rotate, wheel zoom, shift+drag pan")
_KEYS = {"1": ("view", "gt"), "2": ("view", "pred"), "3": ("view", "heat"), "4": ("view", "hot"),
         "V": ("cycle", 1), "N": ("frame", 1), "RIGHT": ("frame", 1), "P": ("frame", -1), "LEFT": ("frame", -1),
         "R": ("reset", None), "H": ("help", None), "Q": ("quit", None)}
GLFW_KEYS = {"RIGHT": 262, "LEFT": 263}


class ViewerState:
    """Which frame and view the window shows, and how keys change them."""

    def __init__(self, num_frames: int, view: str, index: int = 0) -> None:
        if not 0 <= index < num_frames:
            raise ValueError(f"start frame {index} out of range (0..{num_frames - 1})")
        self.num_frames, self.view, self.index = num_frames, view, index
        self.available: list[str] = list(VIEWS)

    def key(self, name: str) -> bool:
        """Apply a view or frame key; True when the picture must be redrawn."""
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


def load_skipping(load: Callable[[int], VizFrame], index: int, step: int, num_frames: int,
                  report: Callable[[str], None] = print) -> tuple[int, VizFrame] | None:
    """The first frame from ``index`` on in direction ``step`` (+1 / -1) that loads, reporting every
    unreadable one (a corrupt cloud, a broken scan file) as replay does; None when none loads."""
    i = index
    while 0 <= i < num_frames:
        try:
            return i, load(i)
        except ValueError as e:  # BagError, DataError, CameraError: the frame cannot be shown
            report(f"skipped frame {i} (unreadable): {e}")
        i += step
    return None


_X_PROBE = """
import ctypes, ctypes.util, sys
lib = ctypes.util.find_library("X11") or "libX11.so.6"
x = ctypes.CDLL(lib)
x.XOpenDisplay.restype = ctypes.c_void_p
d = x.XOpenDisplay(None)
sys.exit(0 if d else 3)
"""


def check_display(timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise RuntimeError (within ``timeout`` s) unless an X server answers on ``DISPLAY``."""
    display = os.environ.get("DISPLAY")
    hint = "use --png, --overlay or --ply for headless output"
    if not display:
        extra = " (open3d's window needs X: run it under XWayland)" if os.environ.get("WAYLAND_DISPLAY") else ""
        raise RuntimeError(f"no display for the interactive window: DISPLAY is not set{extra}; {hint}")
    try:
        r = subprocess.run([sys.executable, "-c", _X_PROBE], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the X display '{display}' did not answer within {timeout:g} s; {hint}") from None
    if r.returncode != 0:
        raise RuntimeError(f"cannot open the X display '{display}' (no X server answers there, or access is "
                           f"refused); {hint}")


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


class _Window:
    """The scan window and its legend panel window, and what the keys do to them."""

    def __init__(self, load: Callable[[int], VizFrame], state: ViewerState, first: VizFrame,
                 point_size: float) -> None:
        import open3d as o3d

        self.o3d, self.load, self.state, self.frame = o3d, load, state, first
        self.camera = RenderCamera.preset("chase", WINDOW_W, WINDOW_H)
        self.vis = o3d.visualization.VisualizerWithKeyCallback()
        if not self.vis.create_window("segood viewer", WINDOW_W, WINDOW_H, LEFT, TOP):
            raise RuntimeError("could not open a window; use --png, --overlay or --ply for headless output")
        self.panel = o3d.visualization.VisualizerWithKeyCallback()
        self.panel_h = 0
        self.pcd = o3d.geometry.PointCloud()
        self.legend = None
        opt = self.vis.get_render_option()
        opt.background_color = np.asarray(BACKGROUND_RGB)
        opt.point_size = point_size
        self.open = True
        for vis in (self.vis, self.panel):
            for name in _KEYS:
                vis.register_key_callback(GLFW_KEYS.get(name, ord(name) if len(name) == 1 else 0), self._callback(name))

    def _callback(self, name: str):
        def cb(_vis) -> bool:  # returning True makes open3d redraw
            return self.press(name)
        return cb

    def press(self, name: str) -> bool:
        """What a key does (also called by tests); True when something changed."""
        action = _KEYS.get(name.upper(), (None, None))[0]
        if action == "help":
            print(HELP, flush=True)
            return False
        if action == "reset":
            start_view(self.vis, self.camera)
            print("view: back to segood's chase camera", flush=True)
            return True
        if action == "quit":
            self.open = False
            return False
        old = self.state.index
        if not self.state.key(name):
            return False
        if self.state.index != old:
            got = load_skipping(self.load, self.state.index, 1 if self.state.index > old else -1,
                                self.state.num_frames)
            if got is None:
                print(f"no readable frame {'after' if self.state.index > old else 'before'} frame {old}", flush=True)
                self.state.index = old
                return False
            self.state.index, self.frame = got
        self.show(reset=False)
        return True

    def show(self, reset: bool) -> None:
        """Draw the current frame and view in both windows, print the caption."""
        o3d, frame, state = self.o3d, self.frame, self.state
        state.settle(frame.views)
        self.pcd.points = o3d.utility.Vector3dVector(frame.scan.points[:, :3].astype(np.float64))
        self.pcd.colors = o3d.utility.Vector3dVector(frame.colors(state.view))
        if reset:
            self.vis.add_geometry(self.pcd, reset_bounding_box=True)
            start_view(self.vis, self.camera)
        else:
            self.vis.update_geometry(self.pcd)
        self._show_legend(legend_panel(frame, state.view, WINDOW_W))
        print(f"[{state.index + 1}/{state.num_frames}] {frame.caption(state.view)}", flush=True)

    def _show_legend(self, img: np.ndarray) -> None:
        if self.legend is None or img.shape[0] != self.panel_h:  # (re)create at the panel's height
            if self.legend is not None:
                self.panel.destroy_window()
            self.panel_h = img.shape[0]
            self.panel.create_window("segood viewer: legend", WINDOW_W, self.panel_h, LEFT, TOP + WINDOW_H + 30)
            self.legend = self.o3d.geometry.Image(np.ascontiguousarray(img))
            self.panel.add_geometry(self.legend)
            return
        np.asarray(self.legend)[:] = img
        self.panel.update_geometry(self.legend)

    def loop(self, poll_s: float = 0.01) -> None:
        """Poll both windows until one is closed or Q is pressed; Ctrl-C raises KeyboardInterrupt here.

        SIGINT only sets a flag while the loop runs: raised inside a key callback (open3d calls it from
        C++ during ``poll_events``) the exception would be swallowed there and the viewer would go on."""
        interrupted = []
        previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
        try:
            while self.open and not interrupted:
                for vis in (self.vis, self.panel):
                    if not vis.poll_events():
                        self.open = False
                    vis.update_renderer()
                time.sleep(poll_s)
        finally:
            signal.signal(signal.SIGINT, previous)
        if interrupted:
            raise KeyboardInterrupt

    def close(self) -> None:
        for vis in (self.panel, self.vis):
            vis.destroy_window()


def run_window(load: Callable[[int], VizFrame], num_frames: int, view: str, start: int = 0,
               point_size: float = 2.0) -> int:
    """Open the window at frame ``start`` (the next readable one if it is not); ``load(i)`` gives
    frame ``i``. Returns 0 when closed, 130 on Ctrl-C. Needs an X display (checked first)."""
    check_display()
    ensure_runtime_dir()
    state = ViewerState(num_frames, view, start)
    got = load_skipping(load, start, 1, num_frames)
    if got is None:
        raise ValueError(f"no readable frame from frame {start} on")
    state.index, first = got
    win = _Window(load, state, first, point_size)
    try:
        print(HELP, flush=True)
        win.show(reset=True)
        win.loop()
        return 0
    except KeyboardInterrupt:
        print("segood viz: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        win.close()
