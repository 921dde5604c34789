"""File readers every data-set reader shares (KITTI-format points and labels, pose lists, camera
images): one clear :class:`~segood.data.errors.DataError` naming the file and what was expected."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segood.data.errors import DataError

__all__ = ["read_bin", "read_label", "read_poses", "read_image"]


def read_bin(path: Path) -> np.ndarray:
    """Read a KITTI velodyne ``.bin``: (N, 4) float32, finite."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: point file is missing")
    size = path.stat().st_size
    if size % 16:
        raise DataError(
            f"{path}: file size {size} bytes is not a multiple of 16 "
            "(expected float32 records x, y, z, intensity)"
        )
    pts = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise DataError(
            f"{path}: {int(bad.sum())} point(s) have NaN or inf values (first at index {int(np.argmax(bad))})"
        )
    return pts


def read_label(path: Path, num_points: int) -> np.ndarray:
    """Read a ``.label`` file and return the semantic raw ids (N,) uint32."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file is missing")
    size = path.stat().st_size
    if size % 4:
        raise DataError(f"{path}: file size {size} bytes is not a multiple of 4 (expected uint32 labels)")
    labels = np.fromfile(path, dtype=np.uint32)
    if len(labels) != num_points:
        raise DataError(f"{path}: {len(labels)} labels but the scan has {num_points} points (expected one per point)")
    return labels & 0xFFFF


def read_poses(path: Path) -> np.ndarray | None:
    """Read ``poses.txt`` as (S, 4, 4), or None when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if rows.shape[1] != 12:
        raise DataError(f"{path}: {rows.shape[1]} values per line, expected 12 (3x4 pose)")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :] = rows.reshape(-1, 3, 4)
    return poses


def read_image(path: Path) -> np.ndarray:
    """Read an RGB image as (H, W, 3) uint8."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: camera image is missing")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise DataError(f"{path}: not a readable image ({e})") from e
