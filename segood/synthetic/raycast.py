"""Sensors as ray grids that know which of their rays can reach a bounding box; casting and shading."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from segood.synthetic.config import GROUND, MISS, SyntheticConfig
from segood.synthetic.calibration import lidar_to_image
from segood.synthetic.materials import TEXTURES
from segood.synthetic.scene import Scene

@dataclass
class LidarRays:
    """Spinning LiDAR: rows = beams (elevation, top first), columns = azimuth from +x counter-clockwise."""

    origin: np.ndarray
    elevation: np.ndarray  # (R,) radians, decreasing
    columns: int
    dirs: np.ndarray  # (R * C, 3) unit vectors, row-major

    CONFIG_FIELDS: ClassVar[tuple[str, ...]] = ("beams", "fov_up_deg", "fov_down_deg", "azimuth_columns",
                                                "lidar_height")

    @classmethod
    def build(cls, cfg: SyntheticConfig) -> "LidarRays":
        el = np.radians(np.linspace(cfg.fov_up_deg, cfg.fov_down_deg, cfg.beams))
        az = np.arange(cfg.azimuth_columns) * (2 * np.pi / cfg.azimuth_columns)
        e, a = np.meshgrid(el, az, indexing="ij")
        dirs = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)
        return cls(np.array([0.0, 0.0, cfg.lidar_height]), el, cfg.azimuth_columns, dirs)

    def window(self, aabb: np.ndarray) -> np.ndarray | None:
        """Flat indices of the rays whose direction lies in the box's azimuth/elevation span."""
        lo, hi = aabb[0] - self.origin, aabb[1] - self.origin
        dx, dy = max(lo[0], 0.0, -hi[0]), max(lo[1], 0.0, -hi[1])
        dmin = math.hypot(dx, dy)
        cx, cy = np.array([lo[0], hi[0], lo[0], hi[0]]), np.array([lo[1], lo[1], hi[1], hi[1]])
        dmax = float(np.hypot(cx, cy).max())
        el_hi = math.atan2(hi[2], dmin if hi[2] > 0 else dmax)
        el_lo = math.atan2(lo[2], dmin if lo[2] < 0 else dmax)
        rows = np.flatnonzero((self.elevation >= el_lo - 1e-9) & (self.elevation <= el_hi + 1e-9))
        if rows.size == 0:
            return None
        if dmin < 1e-9:
            cols = np.arange(self.columns)
        else:
            ang = np.arctan2(cy, cx)
            rel = np.mod(ang - ang[0] + np.pi, 2 * np.pi) - np.pi
            step = 2 * np.pi / self.columns
            c0 = math.ceil((ang[0] + rel.min()) / step - 1e-6)
            c1 = math.floor((ang[0] + rel.max()) / step + 1e-6)
            cols = np.mod(np.arange(c0, c1 + 1), self.columns)
        return (rows[:, None] * self.columns + cols[None, :]).ravel()


_CORNER_PICK = np.array(list(itertools.product((0, 1), repeat=3)))  # (8, 3) lo/hi choice per axis
_AXES = np.arange(3)[None, :]
_BOX_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1])


@dataclass
class CameraRays:
    """Pinhole camera: one ray per pixel (row, col) through (u = col, v = row), from the exact centre of P2 @ Tr."""

    origin: np.ndarray  # camera centre in world
    matrix: np.ndarray  # (3, 4) world point -> homogeneous pixel
    width: int
    height: int
    dirs: np.ndarray  # (H * W, 3) unit vectors, row-major

    CONFIG_FIELDS: ClassVar[tuple[str, ...]] = ("image_width", "image_height", "camera_hfov_deg", "lidar_height")

    @classmethod
    def build(cls, cfg: SyntheticConfig) -> "CameraRays":
        m = lidar_to_image(cfg)
        lidar_pos = np.array([0.0, 0.0, cfg.lidar_height])
        a_inv = np.linalg.inv(m[:, :3])
        centre = -a_inv @ m[:, 3] + lidar_pos
        world = np.hstack([m[:, :3], (m[:, 3] - m[:, :3] @ lidar_pos)[:, None]])
        v, u = np.mgrid[0:cfg.image_height, 0:cfg.image_width]
        pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1).astype(np.float64)
        dirs = pix @ a_inv.T
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        return cls(centre, world, cfg.image_width, cfg.image_height, dirs)

    def window(self, aabb: np.ndarray, near: float = 1e-3) -> np.ndarray | None:
        """Flat indices of the pixels inside the projection of the box clipped to the front half-space."""
        corners = aabb[_CORNER_PICK, _AXES]  # (8, 3): bit order matches _BOX_EDGES
        depth = corners @ self.matrix[2, :3] + self.matrix[2, 3]
        a, b = _BOX_EDGES[:, 0], _BOX_EDGES[:, 1]
        da, db = depth[a] - near, depth[b] - near
        cut = da * db < 0
        s = (da[cut] / (da[cut] - db[cut]))[:, None]
        pts = np.concatenate([corners[depth > near], corners[a[cut]] + s * (corners[b[cut]] - corners[a[cut]])])
        if len(pts) == 0:
            return None
        proj = pts @ self.matrix[:, :3].T + self.matrix[:, 3]
        u, v = proj[:, 0] / proj[:, 2], proj[:, 1] / proj[:, 2]
        c0, c1 = max(0, math.ceil(u.min() - 1e-6)), min(self.width - 1, math.floor(u.max() + 1e-6))
        r0, r1 = max(0, math.ceil(v.min() - 1e-6)), min(self.height - 1, math.floor(v.max() + 1e-6))
        if c0 > c1 or r0 > r1:
            return None
        return (np.arange(r0, r1 + 1)[:, None] * self.width + np.arange(c0, c1 + 1)[None, :]).ravel()


Rays = LidarRays | CameraRays


_RAY_CACHE: dict[tuple, Rays] = {}


def sensor_rays(cls: type[LidarRays] | type[CameraRays], cfg: SyntheticConfig) -> Rays:
    """The ray grid of a sensor, built once per distinct sensor configuration (never mutated)."""
    key = (cls.__name__,) + tuple(getattr(cfg, f) for f in cls.CONFIG_FIELDS)
    if key not in _RAY_CACHE:
        _RAY_CACHE[key] = cls.build(cfg)
    return _RAY_CACHE[key]


def cast(scene: Scene, rays: Rays, t_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit per ray: (distance (n,), primitive id (n,) with MISS / GROUND codes)."""
    d = rays.dirs
    t = np.full(len(d), t_max)
    pid = np.full(len(d), MISS, dtype=np.int64)
    down = d[:, 2] < -1e-9
    t_ground = -rays.origin[2] / np.where(down, d[:, 2], -1.0)
    on_ground = down & (t_ground < t_max)
    t[on_ground], pid[on_ground] = t_ground[on_ground], GROUND
    for k, prim in enumerate(scene.prims):
        idx = rays.window(prim.aabb)
        if idx is None:
            continue
        tk = prim.intersect(rays.origin, d[idx])
        closer = tk < t[idx]
        if closer.any():
            sel = idx[closer]
            t[sel], pid[sel] = tk[closer], k
    return t, pid


@dataclass
class Hits:
    """Surface attributes of the rays that hit something."""

    point: np.ndarray  # (n, 3) world
    normal: np.ndarray  # (n, 3) facing the sensor
    dir: np.ndarray  # (n, 3) ray directions
    dist: np.ndarray  # (n,)
    label: np.ndarray  # (n,) raw id
    instance: np.ndarray  # (n,)
    material: np.ndarray  # (n,) material index


def _groups(keys: np.ndarray):
    """Yield (key, indices) for each distinct key, without a Python loop over elements."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
    for chunk in np.split(order, bounds):
        if chunk.size:
            yield int(keys[chunk[0]]), chunk


def surface(scene: Scene, rays: Rays, t: np.ndarray, pid: np.ndarray) -> tuple[np.ndarray, Hits]:
    """Indices of hit rays and their surface attributes (normal, label, instance, material)."""
    idx = np.flatnonzero(pid != MISS)
    pid, dist, d = pid[idx], t[idx], rays.dirs[idx]
    p = rays.origin + dist[:, None] * d
    n = np.zeros_like(p)
    n[:, 2] = 1.0
    labels, instances, materials = scene.tables()
    on_obj = pid >= 0
    label, inst, mat = (np.zeros(len(pid), dtype=np.int64) for _ in range(3))
    label[on_obj], inst[on_obj], mat[on_obj] = labels[pid[on_obj]], instances[pid[on_obj]], materials[pid[on_obj]]
    code = scene.ground.region(p[~on_obj, 0], p[~on_obj, 1])
    label[~on_obj], mat[~on_obj] = scene.ground.labels[code], scene.ground.materials[code]
    for k, chunk in _groups(pid):
        if k >= 0:
            n[chunk] = scene.prims[k].normal(p[chunk])
    flip = (n * d).sum(axis=1) > 0
    n[flip] *= -1.0
    return idx, Hits(p, n, d, dist, label, inst, mat)


def shade(scene: Scene, hits: Hits) -> tuple[np.ndarray, np.ndarray]:
    """Albedo (n, 3) and LiDAR reflectivity (n,) from each hit's material texture."""
    rgb = np.zeros((len(hits.point), 3))
    refl = np.zeros(len(hits.point))
    for m, chunk in _groups(hits.material):
        mat = scene.materials[m]
        rgb[chunk], refl[chunk] = TEXTURES[mat.kind](mat, hits.point[chunk], hits.normal[chunk])
    return np.clip(rgb, 0.0, 1.0), np.clip(refl, 0.0, 1.0)
