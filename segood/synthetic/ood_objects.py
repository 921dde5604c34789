"""OOD objects (raw id 20): novel in both modalities, or ID geometry + another class's appearance."""
from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

from segood.synthetic.config import CAR, OOD_KINDS, OOD_RAW_ID, TRUCK
from segood.synthetic.calibration import _rot_x, _rot_z
from segood.synthetic.primitives import Ellipsoid, make_box, make_hull, make_segment, SphereCluster, Tag
from segood.synthetic.scene import REGION_CODES
from segood.synthetic.builder import (FOLIAGE_COLORS, NOVEL_COLORS, ROAD_GREY, SceneBuilder, StreetLayout,
                                      footprint)
from segood.synthetic.road_users import car_geometry, car_shape
from segood.synthetic.street import facade_material

OOD_SIZE = {"tetra": (0.6, 3.0), "pyramid": (0.6, 3.0), "ring": (0.8, 3.0), "tilted_slab": (1.0, 3.5),
            "stack": (0.8, 2.5), "big_sphere": (0.5, 3.0), "veg_car": (2.5, 4.0), "road_pole": (1.5, 4.0),
            "novel_wall": (1.5, 4.0), "brick_bush": (0.8, 2.5)}


def _ood_intensity(rng: np.random.Generator) -> float:
    """Reflectivity outside every ID range: retro-reflective bright or almost black."""
    return rng.uniform(0.9, 1.0) if rng.random() < 0.5 else rng.uniform(0.0, 0.04)


def _mixed_intensity(rng: np.random.Generator, id_range: tuple[float, float]) -> float:
    """Mixed objects mostly keep the reflectivity of the class their *geometry* imitates."""
    return rng.uniform(*id_range) if rng.random() < 0.7 else _ood_intensity(rng)


def _novel_material(b: SceneBuilder) -> int:
    """Saturated colours in a pattern no ID class uses, with out-of-range LiDAR intensity."""
    rng = b.rng
    kind = ("checker", "dots", "diagonal", "rainbow", "metal")[int(rng.integers(5))]
    i, j = rng.choice(len(NOVEL_COLORS), 2, replace=False)
    second = NOVEL_COLORS[j] if rng.random() < 0.6 else np.full(3, 0.05 if rng.random() < 0.5 else 0.95)
    return b.material(kind, NOVEL_COLORS[i], color2=second, intensity=_ood_intensity(rng), jitter=0.03,
                      cell=rng.uniform(0.15, 0.6))


def _ood_tetra(b: SceneBuilder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    rng = b.rng
    ang = yaw + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.normal(0.0, 0.2, 3)
    rad = 0.5 * size * rng.uniform(0.7, 1.0, 3)
    base = np.stack([x + rad * np.cos(ang), y + rad * np.sin(ang), np.full(3, z0)], axis=1)
    apex = [x + rng.normal(0, 0.15 * size), y + rng.normal(0, 0.15 * size), z0 + size * rng.uniform(0.6, 1.1)]
    b.add(make_hull(np.vstack([base, apex]), Tag(OOD_RAW_ID, inst, _novel_material(b))))


def _ood_pyramid(b: SceneBuilder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    rot = _rot_z(yaw)
    half = 0.35 * size
    base = [np.array([x, y, z0]) + rot @ np.array([sx * half, sy * half, 0.0]) for sx in (-1, 1) for sy in (-1, 1)]
    apex = np.array([x, y, z0 + size * b.rng.uniform(0.5, 1.0)])
    b.add(make_hull(np.vstack(base + [apex]), Tag(OOD_RAW_ID, inst, _novel_material(b))))


def _ood_ring(b: SceneBuilder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    """Torus-like ring of spheres, standing upright or lying flat."""
    rng = b.rng
    r = size * rng.uniform(0.08, 0.14)
    big = size / 2 - r
    n = int(np.clip(2 * np.pi * big / (1.4 * r), 8, 24))
    phi = np.linspace(0.0, 2 * np.pi, n, endpoint=False)[:, None]
    if rng.random() < 0.3:
        u, w, centre = np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([x, y, z0 + r])
    else:
        u, w = np.array([-math.sin(yaw), math.cos(yaw), 0.0]), np.array([0.0, 0.0, 1.0])
        centre = np.array([x, y, z0 + big + 0.9 * r])
    centres = centre + big * (np.cos(phi) * u + np.sin(phi) * w)
    b.add(SphereCluster(tag=Tag(OOD_RAW_ID, inst, _novel_material(b)), centres=centres, radii=np.full(n, r)))


def _ood_tilted_slab(b: SceneBuilder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    rng = b.rng
    dims = np.array([size, rng.uniform(0.08, 0.3), size * rng.uniform(0.4, 0.9)])
    tilt = math.radians(rng.uniform(15.0, 45.0)) * (1 if rng.random() < 0.5 else -1)
    rot = _rot_z(yaw) @ _rot_x(tilt)
    signs = np.array(list(itertools.product((-1, 1), repeat=3)), dtype=float)
    low = ((signs * dims / 2) @ rot.T)[:, 2].min()
    b.add(make_box((x, y, z0 - 0.05 - low), dims, rot, Tag(OOD_RAW_ID, inst, _novel_material(b))))


def _ood_stack(b: SceneBuilder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    """2-4 irregular boxes piled up, each with its own novel material."""
    rng = b.rng
    n = int(rng.integers(2, 5))
    z = z0
    for _ in range(n):
        dims = np.array([size * rng.uniform(0.3, 0.6), size * rng.uniform(0.3, 0.6), size / n * rng.uniform(0.7, 1.2)])
        centre = (x + rng.normal(0, 0.08 * size), y + rng.normal(0, 0.08 * size), z + dims[2] / 2)
        b.add(make_box(centre, dims, _rot_z(rng.uniform(0, np.pi)), Tag(OOD_RAW_ID, inst, _novel_material(b))))
        z += dims[2]


def _ood_big_sphere(b: SceneBuilder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    rng = b.rng
    radii = 0.5 * size * np.array([rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0), rng.uniform(0.55, 1.0)])
    b.add(Ellipsoid(tag=Tag(OOD_RAW_ID, inst, _novel_material(b)), centre=np.array([x, y, z0 + 0.92 * radii[2]]),
                    rot=_rot_z(yaw), radii=radii))


def _ood_veg_car(b: SceneBuilder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    """Car geometry (and car-like intensity) wearing a foliage texture."""
    rng = b.rng
    color = b.pick(FOLIAGE_COLORS)
    mat = b.material("foliage", color, color2=np.clip(color * 1.6, 0, 1), intensity=_mixed_intensity(rng, (0.2, 0.55)))
    tag = Tag(OOD_RAW_ID, inst, mat)
    shape = car_shape(rng, scale=size / 4.3)
    car_geometry(b, shape, x, y, z0, yaw, tag, tag, tag)


def _ood_road_pole(b: SceneBuilder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    """Pole geometry (and pole-like intensity) with the colour and grain of asphalt."""
    rng = b.rng
    g = rng.uniform(*ROAD_GREY)
    mat = b.material("asphalt", (g, g, g * 1.03), intensity=_mixed_intensity(rng, (0.3, 0.42)))
    b.add(make_segment((x, y, z0), (x, y, z0 + size), rng.uniform(0.1, 0.3), Tag(OOD_RAW_ID, inst, mat)))


def _ood_novel_wall(b: SceneBuilder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    """Building-like wall slab (facade texture, building intensity) in a saturated novel colour."""
    rng = b.rng
    mat = facade_material(b, color=b.pick(NOVEL_COLORS), intensity=_mixed_intensity(rng, (0.22, 0.38)))
    height = rng.uniform(1.5, 3.5)
    b.add(make_box((x, y, z0 + height / 2), (size, rng.uniform(0.2, 0.5), height), _rot_z(yaw),
                   Tag(OOD_RAW_ID, inst, mat)))


def _ood_brick_bush(b: SceneBuilder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    """Bush geometry (bumpy spheres, foliage range jitter and intensity) wearing a brick-wall texture."""
    rng = b.rng
    mat = facade_material(b, windows=False, intensity=_mixed_intensity(rng, (0.38, 0.52)), depth_jitter=0.08)
    b.materials[mat].params["course"] = rng.uniform(0.08, 0.2)
    k = int(rng.integers(5, 11))
    centres = np.array([x, y, z0 + 0.35 * size]) + rng.normal(0.0, 0.2 * size, (k, 3)) * [1.0, 1.0, 0.6]
    b.add(SphereCluster(tag=Tag(OOD_RAW_ID, inst, mat), centres=centres, radii=size * rng.uniform(0.2, 0.35, k)))


OOD_BUILDERS: dict[str, Callable[..., None]] = {
    "tetra": _ood_tetra, "pyramid": _ood_pyramid, "ring": _ood_ring, "tilted_slab": _ood_tilted_slab,
    "stack": _ood_stack, "big_sphere": _ood_big_sphere, "veg_car": _ood_veg_car, "road_pole": _ood_road_pole,
    "novel_wall": _ood_novel_wall, "brick_bush": _ood_brick_bush,
}


def _ood_half_size(kind: str, size: float) -> tuple[float, float]:
    """Footprint half sizes (along the object's yaw, across) used to keep objects apart."""
    return {"veg_car": (size / 2, size * 0.22), "road_pole": (0.35, 0.35),
            "novel_wall": (size / 2, 0.3)}.get(kind, (size / 2, size / 2))


def _ood_spot(b: SceneBuilder, st: StreetLayout, in_fov: bool) -> tuple[float, float] | None:
    """A candidate (x, y) on road / parking / sidewalk at the configured distance."""
    rng, cfg = b.rng, b.cfg
    d0, d1 = cfg.ood_distance
    lo, hi = st.corridor()
    if in_fov:
        x = rng.uniform(d0, d1)
        half = x * math.tan(math.radians(cfg.camera_hfov_deg / 2 - 6.0))
        y0, y1 = max(lo, -half), min(hi, half)
        if y0 >= y1:
            return None
        y = rng.uniform(y0, y1)
    else:  # anywhere along the street, including behind the car
        x, y = rng.uniform(-d1, d1), rng.uniform(lo, hi)
        if not d0 <= math.hypot(x, y) <= d1:
            return None
    if st.region(x, y) == REGION_CODES["terrain"]:
        return None
    return x, y


def _place_ood(b: SceneBuilder, st: StreetLayout, kind: str, size: float, x: float, y: float, occluded: bool) -> bool:
    yaw = b.rng.uniform(0.0, 2 * np.pi)
    rect = footprint(x, y, *_ood_half_size(kind, size), yaw)
    if not b.free(rect, margin=0.4):
        return False
    inst = b.thing()
    OOD_BUILDERS[kind](b, inst, x, y, st.height(x, y), yaw, size)
    b.claim(rect)
    b.objects.append({"kind": kind, "label": OOD_RAW_ID, "instance": inst, "x": float(x), "y": float(y), "size": size,
                      "occluded": occluded})
    return True


def _place_behind_car(b: SceneBuilder, st: StreetLayout) -> bool:
    """Put a small OOD object right behind a car ahead, so it is partly hidden (occlusion matters)."""
    rng, cfg = b.rng, b.cfg
    limit = math.radians(cfg.camera_hfov_deg / 2 - 8.0)
    cars = [o for o in b.objects if o["label"] in (CAR, TRUCK) and o["x"] > 0 and 8.0 < math.hypot(o["x"], o["y"]) < 28.0
            and abs(math.atan2(o["y"], o["x"])) < limit]
    if not cars:
        return False
    car = cars[int(rng.integers(len(cars)))]
    dist = math.hypot(car["x"], car["y"])
    u = np.array([car["x"], car["y"]]) / dist
    small = [k for k in OOD_KINDS if OOD_SIZE[k][0] <= 1.5]
    kind = small[int(rng.integers(len(small)))]
    lo, hi = OOD_SIZE[kind]
    size = rng.uniform(lo, min(hi, 2.0))
    for _ in range(10):
        x, y = u * (dist + car["size"] / 2 + size / 2 + rng.uniform(0.5, 3.0))
        if st.region(x, y) != REGION_CODES["terrain"] and _place_ood(b, st, kind, size, x, y, occluded=True):
            return True
    return False


def add_ood(b: SceneBuilder, st: StreetLayout) -> None:
    """``ood_min``-``ood_max`` OOD objects, mostly ahead in the camera view on road or sidewalk, plus
    sometimes an extra small one hidden behind a car ahead (occlusion)."""
    rng, cfg = b.rng, b.cfg
    want = int(rng.integers(cfg.ood_min, cfg.ood_max + 1))
    if want and rng.random() < cfg.occluded_ood_prob:
        _place_behind_car(b, st)
    placed = 0
    for _ in range(80):
        if placed >= want:
            break
        kind = OOD_KINDS[int(rng.integers(len(OOD_KINDS)))]
        size = rng.uniform(*OOD_SIZE[kind])
        spot = _ood_spot(b, st, in_fov=rng.random() < cfg.ood_in_fov_prob)
        if spot is not None and _place_ood(b, st, kind, size, *spot, occluded=False):
            placed += 1
