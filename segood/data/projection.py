"""Projection of LiDAR points into camera images and the per-point camera assignment."""
from __future__ import annotations

import numpy as np

from segood.data.errors import DataError


def check_projection_matrix(matrix: np.ndarray, source: str) -> np.ndarray:
    """A (3, 4) finite, rank-3 LiDAR->image matrix, or a DataError naming ``source``."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 4):
        raise DataError(f"{source}: projection matrix has shape {m.shape}, expected (3, 4)")
    if not np.isfinite(m).all():
        raise DataError(f"{source}: projection matrix contains NaN or inf")
    if np.linalg.matrix_rank(m[:, :3]) < 3:
        raise DataError(f"{source}: projection matrix is singular (rank < 3)")
    return m


def project_points(
    xyz: np.ndarray, lidar_to_image: np.ndarray, width: int, height: int, min_depth: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Project (N, 3) points with a (3, 4) matrix; returns (uv (N, 2) float32, inside (N,) bool).

    ``inside`` means positive depth (> ``min_depth``) and 0 <= u < width, 0 <= v < height, with
    integer (u, v) at pixel centres as in KITTI's devkit.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    cam = xyz @ lidar_to_image[:, :3].T + lidar_to_image[:, 3]
    depth = cam[:, 2]
    safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
    uv = cam[:, :2] / safe[:, None]
    inside = (depth > min_depth) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    uv = np.where(inside[:, None], uv, 0.0)
    return uv.astype(np.float32), inside


def assign_cameras(
    xyz: np.ndarray, matrices: list[np.ndarray], sizes: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Per point the camera it is seen in and its pixel there.

    Rule when several cameras see a point: the one where it lies closest to the image centre
    (normalised by image size), i.e. the least distorted view. Returns (uv (N, 2), camera_id (N,) int8).
    """
    n = len(xyz)
    best_uv = np.zeros((n, 2), dtype=np.float32)
    cam_id = np.full(n, -1, dtype=np.int8)
    best = np.full(n, np.inf)
    for k, (m, (w, h)) in enumerate(zip(matrices, sizes)):
        uv, inside = project_points(xyz, m, w, h)
        centrality = np.hypot(uv[:, 0] / w - 0.5, uv[:, 1] / h - 0.5)
        take = inside & (centrality < best)
        best[take] = centrality[take]
        best_uv[take] = uv[take]
        cam_id[take] = k
    return best_uv, cam_id
