"""Procedural LiDAR + camera street scenes written in the real SemanticKITTI odometry layout.

Why this exists: the project fuses LiDAR geometry with camera appearance and synthesizes outliers
by mixing the two modalities. To test that on a laptop we need labelled scans where

* some in-distribution (ID) classes are told apart mainly by geometry (road vs sidewalk: a 15 cm
  curb, both grey; pole vs trunk: thin tall vs thick short, overlapping colours and intensities),
* others mainly by appearance (road vs terrain: both flat at ground level with overlapping LiDAR
  intensity, asphalt with lane marks vs green-brown grass; building vs fence: facade with windows
  vs slats, overlapping intensity),
* out-of-distribution (OOD) objects (raw id 20, ``other-vehicle``, learning id 5) are either novel
  in both modalities (pyramids, rings of spheres, tilted slabs...) or look in-distribution in each
  modality separately while the combination is novel (a car-shaped body with foliage texture, a
  pole with asphalt colour, a wall slab in magenta).

Everything is analytic ray casting in numpy: a 64-beam spinning LiDAR (KITTI HDL-64E geometry) and
a pinhole front camera whose rays are derived from the same ``P2 @ Tr`` that a reader uses to
project points, so labels and pixels agree by construction. Textures are evaluated at the 3D hit
point (world coordinates), so a LiDAR point and the pixel it projects to see the same surface.

World frame: x forward along the street, y left, z up, ground at z = 0, the LiDAR at
(0, 0, lidar_height). LiDAR-frame points are world points minus the LiDAR position (no rotation).
Scans are independent scenes; ``poses.txt`` is a nominal straight-line trajectory only.

The package is cut by concern (each module depends only on those listed before it): ``config``
(ids, kinds, :class:`SyntheticConfig`), ``calibration``, ``noise``, ``materials``, ``primitives``,
``scene``, ``raycast`` (sensor ray grids, casting, shading), ``street`` (ID scene generation),
``ood_objects``, ``render`` (:func:`generate_scene`, :func:`render_scan`) and ``writer``
(:func:`write_dataset`). This module re-exports the public entry points.
"""
from __future__ import annotations

from segood.synthetic.calibration import calibration, camera_intrinsics, lidar_to_image
from segood.synthetic.config import (GENERATOR_VERSION, OOD_KINDS, OOD_KINDS_MIXED, OOD_KINDS_NOVEL, OOD_RAW_ID,
                                     RAW_CLASSES, SEPARATED_BY, SyntheticConfig)
from segood.synthetic.raycast import CameraRays, LidarRays, cast, sensor_rays
from segood.synthetic.render import generate_scene, render_scan
from segood.synthetic.writer import ensure_dataset, scan_rng, write_dataset

__all__ = ["ensure_dataset", "GENERATOR_VERSION", "OOD_KINDS", "OOD_KINDS_MIXED", "OOD_KINDS_NOVEL", "OOD_RAW_ID", "RAW_CLASSES",
           "SEPARATED_BY", "SyntheticConfig", "calibration", "camera_intrinsics", "lidar_to_image", "CameraRays",
           "LidarRays", "cast", "sensor_rays", "generate_scene", "render_scan", "scan_rng", "write_dataset"]
