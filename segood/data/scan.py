"""The one record every dataset reader produces and every later stage consumes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scan:
    """One LiDAR sweep with its camera images, calibration and per-point projection.

    Shapes: N points, K cameras. ``camera_id`` is -1 and ``pixel_uv`` is 0 for points seen by no
    camera; ``visible`` is ``camera_id >= 0``. Label arrays are None when the scan is unlabelled
    (test split, raw files, bag frames).
    """

    points: np.ndarray  # (N, 4) float32: x, y, z, intensity in the LiDAR frame
    raw_labels: np.ndarray | None = None  # (N,) uint32 semantic raw ids (instance bits removed)
    learning_labels: np.ndarray | None = None  # (N,) int64 learning ids
    images: list[np.ndarray] = field(default_factory=list)  # K x (H, W, 3) uint8 RGB
    lidar_to_image: list[np.ndarray] = field(default_factory=list)  # K x (3, 4) projection matrices
    pixel_uv: np.ndarray | None = None  # (N, 2) float32 continuous (u=column, v=row) pixel coords
    camera_id: np.ndarray | None = None  # (N,) int8 index into images, -1 = outside every camera
    pose: np.ndarray | None = None  # (4, 4) scan pose in the sequence frame, if known
    source: str = ""  # path or id of the scan, used in error messages and outputs
    meta: dict = field(default_factory=dict)
    ood_kind: np.ndarray | None = None  # (N,) int16 kind of each point's OOD object (segood.data.ood_kinds), -1 = none

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def visible(self) -> np.ndarray:
        """(N,) bool: the point projects into some camera image."""
        if self.camera_id is None:
            return np.zeros(self.num_points, dtype=bool)
        return self.camera_id >= 0
