"""The interactive viewer window, for real under a virtual X display (Xvfb, keys sent through the
XTest extension): starts at --index, skips and reports a corrupt cloud, segood's R and H, the
legend panel on screen, Ctrl-C and Q exit cleanly; a DISPLAY with no server fails with a clear
error instead of waiting forever. The key and skipping logic is also tested without a display."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from segood.config import CONFIG_DIR, load_config
from segood.data.labels import load_label_map
from segood.engine.checkpoint import save_checkpoint
from segood.models import build_model
from segood.ros.bagio import BagWriter, typestore_for
from segood.ros.export import make_header
from segood.ros.pointcloud2 import from_records, xyzi_records
from segood.viz import window as W
from segood.viz.colors import heat_ramp, to_uint8

REPO = Path(__file__).resolve().parent.parent
SMALL = ["model.lidar.channels=[8, 16]", "model.image.width_scale=0.25", "model.image.out_channels=16",
         "model.lidar.out_channels=16", "model.fusion.hidden=16"]
WAIT_S = 240  # generous: window start-up on a loaded 2-core machine


def test_state_starts_at_the_requested_frame_and_skips_unreadable_ones():
    st = W.ViewerState(num_frames=5, view="heat", index=3)
    assert st.index == 3
    with pytest.raises(ValueError, match="start frame 5 out of range"):
        W.ViewerState(5, "heat", 5)

    def load(i):
        if i in (1, 2):
            raise ValueError(f"cloud {i}: truncated data")
        return f"frame{i}"

    said: list[str] = []
    assert W.load_skipping(load, 1, 1, 5, said.append) == (3, "frame3")
    assert said == ["skipped frame 1 (unreadable): cloud 1: truncated data",
                    "skipped frame 2 (unreadable): cloud 2: truncated data"]
    assert W.load_skipping(load, 2, -1, 5, said.append) == (0, "frame0")
    assert W.load_skipping(lambda i: load(i + 1), 0, 1, 2, said.append) is None


def test_no_x_server_is_a_clear_error_not_a_hang(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":87")  # nothing listens there
    with pytest.raises(RuntimeError, match="cannot open the X display ':87'"):
        W.check_display()
    monkeypatch.delenv("DISPLAY")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    with pytest.raises(RuntimeError, match="DISPLAY is not set.*XWayland"):
        W.check_display()


# ------------------------------------------------------------------------------------ real window


class XTest:
    """Keys and pointer through libXtst, screenshots through XGetImage (ctypes, no extra package)."""

    class _XImage(ctypes.Structure):
        _fields_ = [("width", ctypes.c_int), ("height", ctypes.c_int), ("xoffset", ctypes.c_int),
                    ("format", ctypes.c_int), ("data", ctypes.POINTER(ctypes.c_ubyte)),
                    ("byte_order", ctypes.c_int), ("bitmap_unit", ctypes.c_int), ("bitmap_bit_order", ctypes.c_int),
                    ("bitmap_pad", ctypes.c_int), ("depth", ctypes.c_int), ("bytes_per_line", ctypes.c_int),
                    ("bits_per_pixel", ctypes.c_int)]

    def __init__(self, display: str) -> None:
        self.x = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
        self.t = ctypes.CDLL(ctypes.util.find_library("Xtst") or "libXtst.so.6")
        self.x.XOpenDisplay.restype = ctypes.c_void_p
        self.x.XDefaultRootWindow.restype = ctypes.c_ulong
        self.x.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
        self.x.XGetImage.restype = ctypes.POINTER(self._XImage)
        self.x.XGetImage.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_ulong, ctypes.c_int]
        self.x.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
        self.x.XStringToKeysym.restype = ctypes.c_ulong
        self.x.XFlush.argtypes = [ctypes.c_void_p]
        self.t.XTestFakeKeyEvent.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_ulong]
        self.t.XTestFakeMotionEvent.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                                ctypes.c_ulong]
        self.d = self.x.XOpenDisplay(display.encode())
        assert self.d, f"cannot open {display}"

    def move(self, x: int, y: int) -> None:
        self.t.XTestFakeMotionEvent(self.d, -1, x, y, 0)
        self.x.XFlush(self.d)

    def key(self, name: str) -> None:
        code = self.x.XKeysymToKeycode(self.d, self.x.XStringToKeysym(name.encode()))
        for down in (1, 0):
            self.t.XTestFakeKeyEvent(self.d, code, down, 0)
            self.x.XFlush(self.d)
            time.sleep(0.05)

    def screenshot(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) RGB of the screen (24-bit Xvfb: 32 bits per pixel, BGRX)."""
        img = self.x.XGetImage(self.d, self.x.XDefaultRootWindow(self.d), x, y, w, h, 0xFFFFFFFF, 2).contents
        assert img.bits_per_pixel == 32
        buf = np.ctypeslib.as_array(img.data, shape=(h * img.bytes_per_line,)).copy()
        return buf.reshape(h, img.bytes_per_line)[:, : 4 * w].reshape(h, w, 4)[:, :, 2::-1]


@pytest.fixture(scope="module")
def xvfb():
    """A private Xvfb display (required: `apt-get install xvfb`)."""
    exe = shutil.which("Xvfb")
    assert exe, "Xvfb is not installed (Debian/Ubuntu: apt-get install xvfb); the window tests need it"
    for n in range(90, 120):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    proc = subprocess.Popen([exe, f":{n}", "-screen", "0", "1400x1100x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if Path(f"/tmp/.X11-unix/X{n}").exists():
            break
        time.sleep(0.1)
    yield f":{n}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def bag_and_ckpt(tmp_path_factory):
    """A ROS 1 bag of three clouds, the middle one truncated, and a small random checkpoint."""
    tmp = tmp_path_factory.mktemp("win")
    cfg = load_config(CONFIG_DIR / "synthetic_feature_mixing.yaml", SMALL)
    ckpt = save_checkpoint(tmp / "ckpt.pt", {"model": build_model(cfg["model"]).state_dict(), "config": cfg,
                                             "label_map": load_label_map("semantickitti").checksum(), "step": 0})
    ts = typestore_for("ros1")
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-20, 20, (3000, 2)), rng.uniform(-1.5, 2, (3000, 1)), rng.random((3000, 1))]
    with BagWriter(tmp / "in.bag", "ros1") as w:
        c = w.add_connection("/points", "sensor_msgs/msg/PointCloud2")
        for k in range(3):
            m = from_records(xyzi_records(pts.astype(np.float32)), ts, make_header(ts, (k + 1) * 10**9, "l"))
            if k == 1:
                m.data = m.data[: len(m.data) // 2]
            w.write(c, (k + 1) * 10**9, w.serialize(m, "sensor_msgs/msg/PointCloud2"))
    return tmp / "in.bag", ckpt


class Viewer:
    """``segood viz`` in window mode as a child process; its output lines arrive on a queue."""

    def __init__(self, display: str, args: list[str]) -> None:
        env = {**os.environ, "DISPLAY": display, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        env.pop("XDG_RUNTIME_DIR", None)  # segood must not let Mesa complain about it
        self.proc = subprocess.Popen([sys.executable, "-m", "segood", "viz", *args], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream, sink) -> None:
        for line in stream:
            sink.append(line)
            self.lines.put(line)

    def expect(self, text: str, timeout: float = WAIT_S) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, f"viewer exited early: {''.join(self.out + self.err)}"
                continue
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {WAIT_S} s; output: {''.join(self.out + self.err)}")

    def finish(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)


def test_window_keys_corrupt_cloud_legend_and_ctrl_c(xvfb, bag_and_ckpt):
    bag, ckpt = bag_and_ckpt
    x = XTest(xvfb)
    v = Viewer(xvfb, [str(bag), "--ckpt", str(ckpt), "--index", "0"])
    try:
        assert v.expect("[1/3]").startswith("[1/3] in.bag:/points#0 [1/3]")
        time.sleep(1.0)
        x.move(W.LEFT + 300, W.TOP + 300)  # no window manager: the window under the pointer has the focus
        # the legend panel under the scan window shows the heat ramp
        panel = x.screenshot(W.LEFT, W.TOP + W.WINDOW_H + 30, W.WINDOW_W, 120)
        ramp = to_uint8(heat_ramp(8))
        for rgb in (ramp[0], ramp[-1]):
            assert (np.abs(panel.astype(int) - rgb).max(axis=2) <= 12).sum() > 20, f"no {rgb} in the legend panel"
        x.key("n")
        v.expect("skipped frame 1 (unreadable)")
        v.expect("[3/3] in.bag:/points#2")
        x.key("h")
        assert "R segood's view" in v.expect("keys: 1 ground truth")
        x.key("r")
        v.expect("view: back to segood's chase camera")
        x.key("4")
        assert "view: hot" in v.expect("[3/3]")
        v.proc.send_signal(signal.SIGINT)
        assert v.finish() == 130
    finally:
        if v.proc.poll() is None:
            v.proc.kill()
    text = "".join(v.out + v.err)
    assert "segood viz: interrupted" in text and "Traceback" not in text
    assert "Mouse view control" not in text  # open3d's own H list was not printed
    assert "XDG_RUNTIME_DIR" not in text and "is_fx_tracing" not in text  # no dependency noise


def test_window_starts_at_index_and_q_quits(xvfb, bag_and_ckpt):
    bag, ckpt = bag_and_ckpt
    x = XTest(xvfb)
    v = Viewer(xvfb, [str(bag), "--ckpt", str(ckpt), "--index", "2", "--view", "hot"])
    try:
        first = v.expect("] in.bag:/points#")
        assert first.startswith("[3/3] in.bag:/points#2") and "view: hot" in first
        time.sleep(1.0)
        x.move(W.LEFT + 300, W.TOP + 300)
        x.key("q")
        assert v.finish() == 0
    finally:
        if v.proc.poll() is None:
            v.proc.kill()


def test_viz_with_a_display_that_does_not_exist_fails_fast(bag_and_ckpt):
    bag, ckpt = bag_and_ckpt
    env = {**os.environ, "DISPLAY": ":86", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "segood", "viz", str(bag), "--ckpt", str(ckpt)], env=env,
                       capture_output=True, text=True, timeout=WAIT_S)  # a hang fails here
    assert r.returncode == 2
    assert "segood viz: error: cannot open the X display ':86'" in r.stderr and "--png" in r.stderr
