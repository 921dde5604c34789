"""Loose point-cloud files with no data set around them: ``.bin`` (KITTI float32 x, y, z, intensity),
``.pcd`` and ``.ply`` (read with open3d; fields ``x y z`` and optionally ``intensity``) and ``.npy``
((N, 3) or (N, 4) numbers: x, y, z [, intensity]).

Shared by ``segood viz`` and ``segood predict``. Every point of the file is kept, in the file's
order, whatever its values: organised clouds (Ouster, some PCD exporters) hold NaN rows for missing
returns, and a prediction file must have one entry per point of the file it belongs to. Callers
that cannot use a non-finite point (the network) mask it themselves (:attr:`LooseCloud.finite`).

A missing intensity column is never filled silently: :func:`cloud_to_scan` takes an ``intensity``
policy, ``error`` (the default: a segood model reads intensity, so a zero column changes what it
sees) or ``zero`` (filled with 0 and said once per file through ``warn``). The same option name and
values are used by bag replay (``--intensity zero|error``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from segood.data.errors import DataError
from segood.data.projection import assign_cameras, check_projection_matrix
from segood.data.scan import Scan

LOOSE_SUFFIXES = (".bin", ".pcd", ".ply", ".npy")
INTENSITY_POLICIES = ("error", "zero")


@dataclass
class LooseCloud:
    """One file's points in file order: ``xyz`` (N, 3) float32, ``intensity`` (N,) float32 or None when
    the file has no intensity column, ``fields``: the file's other per-point attributes (e.g. the
    ``anomaly`` and ``label`` columns of a PLY written by ``segood predict``)."""

    path: Path
    xyz: np.ndarray
    intensity: np.ndarray | None
    fields: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_points(self) -> int:
        return int(len(self.xyz))

    @property
    def finite(self) -> np.ndarray:
        """(N,) bool: points whose coordinates are all finite (the others are kept but cannot be voxelised)."""
        return np.isfinite(self.xyz).all(axis=1)


def is_loose_file(path: str | Path) -> bool:
    """Whether ``path`` names a point file this module reads (by suffix)."""
    return Path(path).suffix.lower() in LOOSE_SUFFIXES


def list_loose_files(inputs: list[str | Path]) -> list[Path]:
    """The point files named by ``inputs`` (files, or folders searched recursively), sorted within
    each folder. An input that is neither is an error naming it and the suffixes read."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and is_loose_file(p))
            if not found:
                raise DataError(f"{item}: folder holds no point file ({', '.join(LOOSE_SUFFIXES)})")
            out += found
        elif is_loose_file(item):
            out.append(item)
        else:
            raise DataError(f"{item}: not a point file or folder (expected {', '.join(LOOSE_SUFFIXES)})")
    return out


def read_loose(path: str | Path) -> LooseCloud:
    """Read one point file (see the module doc); DataError names the file and what was expected."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in LOOSE_SUFFIXES:
        raise DataError(f"{p}: unknown point file type '{p.suffix}' (expected {', '.join(LOOSE_SUFFIXES)})")
    if not p.is_file():
        raise DataError(f"{p}: point file is missing")
    cloud = {".bin": _read_bin, ".npy": _read_npy}.get(suffix, _read_open3d)(p)
    if cloud.num_points == 0:
        raise DataError(f"{p}: the file holds no points")
    return cloud


def _read_bin(p: Path) -> LooseCloud:
    size = p.stat().st_size
    if size % 16:
        raise DataError(f"{p}: file size {size} bytes is not a multiple of 16 "
                        "(expected float32 records x, y, z, intensity, as KITTI velodyne .bin)")
    pts = np.fromfile(p, dtype="<f4").reshape(-1, 4)
    return LooseCloud(p, pts[:, :3].copy(), pts[:, 3].copy())


def _read_npy(p: Path) -> LooseCloud:
    try:
        arr = np.load(p, allow_pickle=False)
    except ValueError as e:  # object arrays need pickle: refused, nothing runs
        raise DataError(f"{p}: not a plain numeric .npy array ({e})") from e
    if arr.ndim != 2 or arr.shape[1] not in (3, 4) or arr.dtype.kind not in "fiu":
        raise DataError(f"{p}: array of shape {arr.shape} and dtype {arr.dtype}; expected numbers of shape "
                        "(N, 3) x, y, z or (N, 4) x, y, z, intensity")
    arr = arr.astype(np.float32)
    return LooseCloud(p, arr[:, :3].copy(), arr[:, 3].copy() if arr.shape[1] == 4 else None)


def _read_open3d(p: Path) -> LooseCloud:
    import open3d as o3d

    pcd = o3d.t.io.read_point_cloud(str(p), remove_nan_points=False, remove_infinite_points=False)
    attrs = {k: pcd.point[k].numpy() for k in pcd.point}
    if "positions" not in attrs or len(attrs["positions"]) == 0:
        raise DataError(f"{p}: no points could be read (expected fields x y z; found {sorted(attrs) or 'none'})")
    xyz = attrs.pop("positions").astype(np.float32).reshape(-1, 3)
    fields = {k: v.reshape(len(xyz), -1)[:, 0] if v.ndim > 1 and v.shape[1] == 1 else v for k, v in attrs.items()}
    intensity = fields.pop("intensity", None)
    return LooseCloud(p, xyz, None if intensity is None else intensity.astype(np.float32), fields)


def fill_intensity(cloud: LooseCloud, policy: str = "error", warn: Callable[[str], None] | None = None) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity. Without an intensity column: ``error`` raises (naming the
    file), ``zero`` fills 0 and says so through ``warn``."""
    if policy not in INTENSITY_POLICIES:
        raise ValueError(f"--intensity {policy!r}: expected one of {', '.join(INTENSITY_POLICIES)}")
    out = np.zeros((cloud.num_points, 4), dtype=np.float32)
    out[:, :3] = cloud.xyz
    if cloud.intensity is not None:
        out[:, 3] = cloud.intensity
        return out
    found = ", ".join(["x", "y", "z", *cloud.fields]) if cloud.path.suffix.lower() != ".npy" else "3 columns"
    if policy == "error":
        raise DataError(f"{cloud.path}: no intensity column (found {found}); the model reads x, y, z, intensity: "
                        "give --intensity zero to run it with intensity 0")
    if warn is not None:
        warn(f"{cloud.path}: no intensity column (found {found}); intensity set to 0 for all {cloud.num_points} points")
    return out


def cloud_to_scan(cloud: LooseCloud, intensity: str = "error", warn: Callable[[str], None] | None = None,
                  image: np.ndarray | None = None, lidar_to_image: np.ndarray | None = None) -> Scan:
    """A Scan of the cloud's FINITE points (``scan.meta['finite']`` maps them back to the file's rows),
    with one camera when ``image`` and ``lidar_to_image`` are both given."""
    points = fill_intensity(cloud, intensity, warn)
    finite = cloud.finite
    scan = Scan(points=points[finite], source=str(cloud.path),
                meta={"finite": finite, "num_file_points": cloud.num_points})
    if (image is None) != (lidar_to_image is None):
        raise DataError(f"{cloud.path}: a camera needs both an image (--image) and a projection (--calib)")
    if image is not None:
        m = check_projection_matrix(lidar_to_image, f"{cloud.path} camera projection")
        scan.images, scan.lidar_to_image = [image], [m]
        scan.pixel_uv, scan.camera_id = assign_cameras(scan.points[:, :3], [m], [(image.shape[1], image.shape[0])])
    return scan
