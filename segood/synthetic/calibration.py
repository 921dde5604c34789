"""KITTI-like calibration: camera intrinsics, ``P2 @ Tr`` and the calib.txt text."""
from __future__ import annotations

import math

import numpy as np

from segood.synthetic.config import CAMERA_IN_LIDAR, CAMERA_TILT_DEG, STEREO_OFFSET, SyntheticConfig

def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def camera_intrinsics(cfg: SyntheticConfig) -> np.ndarray:
    """K (3, 3): square pixels, focal length from the horizontal FOV, KITTI-like principal point."""
    fx = 0.5 * cfg.image_width / math.tan(math.radians(cfg.camera_hfov_deg) / 2)
    cx, cy = 0.4908 * cfg.image_width, 0.4609 * cfg.image_height  # KITTI's ratios (609.6/1242, 172.9/375)
    return np.array([[fx, 0.0, cx], [0.0, fx, cy], [0.0, 0.0, 1.0]])


def _projections(cfg: SyntheticConfig) -> dict[str, np.ndarray]:
    """KITTI odometry P0..P3: K [I | t] with the KITTI stereo rig baselines (m)."""
    k = camera_intrinsics(cfg)
    offsets = {"P0": 0.0, "P1": -0.54, "P2": STEREO_OFFSET, "P3": -0.47}
    return {name: k @ np.hstack([np.eye(3), [[tx], [0.0], [0.0]]]) for name, tx in offsets.items()}


def calibration(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """(P2 (3, 4), Tr (3, 4) velodyne -> rectified camera 0), fixed for the whole data set."""
    axes = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # LiDAR -> camera axes
    roll, pitch, yaw = (math.radians(a) for a in CAMERA_TILT_DEG)
    rot = _rot_z(roll) @ _rot_x(pitch) @ _rot_y(yaw) @ axes  # small rotation in camera axes
    t = -rot @ np.asarray(CAMERA_IN_LIDAR)
    return _projections(cfg)["P2"], np.hstack([rot, t[:, None]])


def lidar_to_image(cfg: SyntheticConfig) -> np.ndarray:
    """M = P2 @ [Tr; 0 0 0 1] (3, 4): LiDAR-frame point -> homogeneous pixel (u col, v row)."""
    p2, tr = calibration(cfg)
    return p2 @ np.vstack([tr, [0.0, 0.0, 0.0, 1.0]])


def _calib_text(cfg: SyntheticConfig) -> str:
    mats = _projections(cfg)
    mats["Tr"] = calibration(cfg)[1]
    return "".join(f"{name}: " + " ".join(f"{v:.12e}" for v in m.ravel()) + "\n" for name, m in mats.items())
