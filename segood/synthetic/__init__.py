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
"""
from __future__ import annotations

import io
import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, NamedTuple

import numpy as np
from PIL import Image

from segood.atomic import atomic_write

GENERATOR_VERSION = 1

# SemanticKITTI raw ids used by the generator.
UNLABELED, OUTLIER = 0, 1
CAR, BICYCLE, TRUCK, OTHER_VEHICLE, PERSON = 10, 11, 18, 20, 30
ROAD, PARKING, SIDEWALK, BUILDING, FENCE = 40, 44, 48, 50, 51
VEGETATION, TRUNK, TERRAIN, POLE, TRAFFIC_SIGN = 70, 71, 72, 80, 81
OOD_RAW_ID = OTHER_VEHICLE  # learning_map sends 20 -> 5, the OOD class

RAW_CLASSES: dict[int, str] = {
    UNLABELED: "unlabeled", OUTLIER: "outlier", CAR: "car", BICYCLE: "bicycle", TRUCK: "truck",
    OTHER_VEHICLE: "other-vehicle", PERSON: "person", ROAD: "road", PARKING: "parking",
    SIDEWALK: "sidewalk", BUILDING: "building", FENCE: "fence", VEGETATION: "vegetation",
    TRUNK: "trunk", TERRAIN: "terrain", POLE: "pole", TRAFFIC_SIGN: "traffic-sign",
}

# Which modality mainly separates each ID class from its look-alikes (documentation, see module doc).
SEPARATED_BY: dict[str, str] = {
    "road": "appearance vs terrain/parking (same height), geometry vs sidewalk",
    "sidewalk": "geometry (curb step), colour overlaps road",
    "parking": "appearance (lighter grey, perpendicular stall lines)",
    "terrain": "appearance (green-brown), flat like road, overlapping intensity",
    "building": "appearance vs fence (facade, windows), also size",
    "fence": "appearance vs building (slats), overlapping intensity",
    "pole": "geometry vs trunk (thin, tall, lamp arm), overlapping colour and intensity",
    "trunk": "geometry vs pole (thick, short, crown on top)",
    "vegetation": "both (bumpy sphere clusters, green noise, range jitter)",
    "traffic-sign": "both (thin plate on a post, high intensity)",
    "car": "both", "truck": "both (size)", "person": "geometry (thin upright stacks)",
    "bicycle": "geometry (thin wheels and frame)",
}

OOD_KINDS_NOVEL = ("tetra", "pyramid", "ring", "tilted_slab", "stack", "big_sphere")
OOD_KINDS_MIXED = ("veg_car", "road_pole", "novel_wall", "brick_bush")
OOD_KINDS = OOD_KINDS_NOVEL + OOD_KINDS_MIXED

TRAIN_SEQUENCE, VAL_SEQUENCE = "00", "08"  # 08 is SemanticKITTI's validation sequence
SCAN_PERIOD = 0.1  # s, 10 Hz like KITTI
NOMINAL_SPEED = 10.0  # m/s, only for the nominal poses
MISS, GROUND = -1, -2  # primitive ids of a ray that hit nothing / the ground plane
EPS = 1e-6
X_MIN, X_MAX = -90.0, 170.0  # street extent along x (the camera looks towards +x)

# Camera rotation relative to the ideal LiDAR->camera axis swap (roll, pitch, yaw in degrees).
CAMERA_TILT_DEG = (0.25, 0.6, -0.35)
CAMERA_IN_LIDAR = (0.27, 0.0, -0.08)  # camera-0 centre in the LiDAR frame (m)
STEREO_OFFSET = 0.06  # P2[0, 3] = fx * STEREO_OFFSET (colour camera 6 cm left of camera 0)


@dataclass
class SyntheticConfig:
    """All knobs of the generator; everything written is a function of this and the seed."""

    num_train: int = 24  # scans in sequence "00"
    num_val: int = 8  # scans in sequence "08" (held out, the SemanticKITTI validation sequence)
    azimuth_columns: int = 1024
    image_width: int = 621
    image_height: int = 188
    seed: int = 0
    # LiDAR (KITTI HDL-64E-like)
    beams: int = 64
    fov_up_deg: float = 2.0
    fov_down_deg: float = -24.8
    lidar_height: float = 1.73
    max_range: float = 80.0
    min_range: float = 2.0
    range_noise: float = 0.02  # m, Gaussian sigma
    dropout: float = 0.07  # fraction of returns randomly lost
    outlier_fraction: float = 0.005  # returns with a large range error, labelled raw 1 (outlier)
    intensity_noise: float = 0.03
    # camera
    camera_hfov_deg: float = 82.0
    camera_max_range: float = 400.0
    image_noise: float = 1.5  # Gaussian sigma in 8-bit levels
    # OOD objects
    ood_min: int = 1
    ood_max: int = 4
    ood_distance: tuple[float, float] = (5.0, 35.0)
    ood_in_fov_prob: float = 0.8
    occluded_ood_prob: float = 0.35


# ---------------------------------------------------------------------------------------------
# Calibration


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


# ---------------------------------------------------------------------------------------------
# Procedural noise: value noise from fixed random lattice tables (tiling), deterministic and vectorised

_HASH_PRIMES = (np.uint32(0x8DA6B343), np.uint32(0xD8163841), np.uint32(0xCB1AB31F))
_NOISE_SIZE = {2: 256, 3: 64}  # lattice cells per axis before the table repeats
_NOISE_TABLES = {d: np.random.default_rng(12345 + d).random(n**d, dtype=np.float32) for d, n in _NOISE_SIZE.items()}


def hash01(cells: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) value per integer lattice cell (n, d), a pure function of cell and seed."""
    h = np.full(len(cells), np.uint32(seed & 0xFFFFFFFF), dtype=np.uint32)
    for k in range(cells.shape[1]):
        h ^= cells[:, k].astype(np.uint32) * _HASH_PRIMES[k]
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    return h.astype(np.float64) * (1.0 / 4294967296.0)


def value_noise(p: np.ndarray, freq: float, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1] at points p (n, d), d = 2 or 3, with ``freq`` cells per metre.

    Lattice values come from a fixed random table (tiling every 256 / 64 cells); ``seed`` shifts
    the lattice so different materials get different noise. Interpolation runs in float32 (speed).
    """
    d = p.shape[1]
    size = _NOISE_SIZE[d]
    shift = (seed * np.array([0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35][:d], dtype=np.int64)) % size
    q = p * freq
    base = np.floor(q)
    f = (q - base).astype(np.float32)
    w = f * f * (np.float32(3.0) - np.float32(2.0) * f)
    cell = (base.astype(np.int64) + shift).astype(np.int32) & (size - 1)
    idx = np.zeros((1, len(p)), dtype=np.int32)
    for k in range(d):  # flat table index of every corner, first axis most significant
        stride = size ** (d - 1 - k)
        part = np.stack([cell[:, k] * stride, ((cell[:, k] + 1) & (size - 1)) * stride])
        idx = (idx[:, None, :] + part[None, :, :]).reshape(-1, len(p))
    v = _NOISE_TABLES[d][idx]  # (2^d, n)
    for k in range(d):
        half = len(v) // 2
        v = v[:half] + (v[half:] - v[:half]) * w[:, k]
    return v[0].astype(np.float64)


def fbm(p: np.ndarray, freq: float, seed: int, octaves: int = 2) -> np.ndarray:
    """Fractal sum of value noise, normalised to [0, 1]."""
    total, amp, norm = np.zeros(len(p)), 1.0, 0.0
    for o in range(octaves):
        total += amp * value_noise(p, freq * 2.0**o, seed + 101 * o)
        norm += amp
        amp *= 0.5
    return total / norm


def hue_rotate(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate colours (..., 3) about the grey axis: a cheap hue shift that keeps brightness."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    k = 1.0 / 3.0
    sq = math.sqrt(k)
    m = np.array([
        [c + (1 - c) * k, k * (1 - c) - sq * s, k * (1 - c) + sq * s],
        [k * (1 - c) + sq * s, c + (1 - c) * k, k * (1 - c) - sq * s],
        [k * (1 - c) - sq * s, k * (1 - c) + sq * s, c + (1 - c) * k],
    ])
    return np.clip(rgb @ m.T, 0.0, 1.0)


def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
    """Vectorised HSV -> RGB for hue array h in [0, 1)."""
    k = (np.array([5.0, 3.0, 1.0])[None, :] + h[:, None] * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Materials: albedo texture + LiDAR reflectivity, both evaluated at world hit points


@dataclass
class Material:
    """Surface appearance: ``kind`` selects the texture function; colours are RGB in [0, 1]."""

    kind: str
    color: np.ndarray
    color2: np.ndarray
    intensity: float  # LiDAR reflectivity before incidence falloff and noise
    depth_jitter: float = 0.0  # extra one-sided LiDAR range noise (m), e.g. rays entering foliage
    params: dict = field(default_factory=dict)
    seed: int = 0  # texture noise seed


TextureFn = Callable[[Material, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _facade_coord(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Horizontal coordinate along a (near) vertical face, so patterns follow any wall yaw."""
    tx, ty = -n[:, 1], n[:, 0]
    norm = np.hypot(tx, ty)
    ok = norm > 0.3
    s = (p[:, 0] * tx + p[:, 1] * ty) / np.where(ok, norm, 1.0)
    return np.where(ok, s, p[:, 0] + p[:, 1])


def _shade_by(m: Material, factor: np.ndarray) -> np.ndarray:
    return m.color[None, :] * factor[:, None]


def _tex_asphalt(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dark grey asphalt with low-frequency stains, grain, and optional lane marks."""
    g = fbm(p[:, :2], 0.7, m.seed)
    f = value_noise(p[:, :2], 9.0, m.seed + 1)
    rgb = _shade_by(m, 0.8 + 0.25 * g + 0.12 * f)
    refl = m.intensity * (0.9 + 0.2 * f)
    marks = _lane_marks(m.params, p)
    rgb[marks] = m.color2
    refl[marks] = 0.55
    return rgb, refl


def _lane_marks(params: dict, p: np.ndarray) -> np.ndarray:
    """Painted lines along x: (y, dashed) pairs, suppressed inside the cross street."""
    marks = np.zeros(len(p), dtype=bool)
    for y_line, dashed in params.get("lines", []):
        on = np.abs(p[:, 1] - y_line) < 0.07
        if dashed:
            on &= np.mod(p[:, 0], 9.0) < 3.0
        marks |= on
    gap = params.get("gap")
    if gap is not None:
        marks &= (p[:, 0] < gap[0]) | (p[:, 0] > gap[1])
    return marks


def _tex_paving(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Square paving tiles with grout lines and per-tile brightness; plain concrete on curb sides."""
    tile = m.params.get("tile", 0.5)
    q = p[:, :2] / tile
    cell = np.floor(q)
    frac = q - cell
    shade = 0.9 + 0.2 * hash01(cell.astype(np.int64), m.seed)
    rgb = _shade_by(m, shade)
    grout = (frac < 0.05).any(axis=1)
    rgb[grout] = m.color2
    side = np.abs(n[:, 2]) < 0.5
    rgb[side] = np.clip(m.color * 1.12, 0, 1)
    return rgb, m.intensity * shade


def _tex_parking(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lighter grey surface with white stall lines across the strip."""
    rgb, refl = _tex_asphalt(m, p, n)
    period = m.params.get("stall", 5.0)
    line = np.mod(p[:, 0], period) < 0.12
    rgb[line] = m.color2
    refl[line] = 0.5
    return rgb, refl


def _tex_grass(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Green grass with brown dirt patches (two colours mixed by low-frequency noise)."""
    g = fbm(p[:, :2], 0.35, m.seed)
    f = value_noise(p[:, :2], 6.0, m.seed + 1)
    mix = np.clip((g - 0.4) * 3.0, 0.0, 1.0)[:, None]
    rgb = (m.color * (1 - mix) + m.color2 * mix) * (0.8 + 0.35 * f)[:, None]
    return rgb, m.intensity * (0.9 + 0.2 * f)


def _tex_facade(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Building wall: plaster or block courses, a grid of dark windows, dark roofs."""
    s = _facade_coord(p, n)
    z = p[:, 2]
    rgb = _shade_by(m, 0.88 + 0.2 * value_noise(p, 1.3, m.seed))
    refl = np.full(len(p), m.intensity)
    course = m.params.get("course")  # block height (m); blocks are twice as long, rows offset
    if course:
        row = np.floor(z / course)
        along = np.mod(s + course * (row % 2), 2.0 * course)
        mortar = (np.mod(z, course) < 0.1 * course) | (along < 0.1 * course)
        rgb[mortar] = m.color2
    win = m.params.get("windows")
    if win:
        wx, fh, ww, wh = win
        fs = np.mod(s, wx) / wx
        fz = np.mod(z - 0.4, fh) / fh
        glass = (np.abs(fs - 0.5) < ww / 2) & (np.abs(fz - 0.5) < wh / 2) & (z > 1.0) & (np.abs(n[:, 2]) < 0.3)
        sheen = 0.8 + 0.4 * value_noise(p, 0.8, m.seed + 7)
        rgb[glass] = np.array([0.14, 0.17, 0.22]) * sheen[glass, None]
        refl[glass] = 0.08
    roof = n[:, 2] > 0.7
    rgb[roof] = np.array([0.32, 0.31, 0.3])
    return rgb, refl


def _tex_slats(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fence: vertical slats (alternating bright boards and dark gaps) and a darker top rail."""
    s = _facade_coord(p, n)
    period = m.params.get("period", 0.18)
    gap = np.mod(s, period) < 0.3 * period
    rgb = _shade_by(m, 0.9 + 0.2 * value_noise(p, 3.0, m.seed))
    rgb[gap] = m.color2
    top = p[:, 2] > m.params.get("rail", 1e9)
    rgb[top] = m.color * 0.7
    return rgb, np.full(len(p), m.intensity)


def _tex_foliage(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leaves: green with strong multi-scale variation and light speckles."""
    g = fbm(p, 1.2, m.seed)
    f = value_noise(p, 7.0, m.seed + 1)
    rgb = _shade_by(m, 0.55 + 0.6 * g + 0.35 * (f - 0.5))
    speck = f > 0.78
    rgb[speck] = m.color2
    return rgb, m.intensity * (0.85 + 0.3 * f)


def _tex_bark(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tree bark: vertical streaks (noise stretched along z)."""
    s = _facade_coord(p, n)
    q = np.stack([s * 10.0, p[:, 2] * 0.8], axis=1)
    f = value_noise(q, 1.0, m.seed)
    return _shade_by(m, 0.7 + 0.5 * f), m.intensity * (0.9 + 0.2 * f)


def _tex_metal(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Painted metal: near-uniform colour with a faint stain noise."""
    f = value_noise(p, 2.0, m.seed)
    return _shade_by(m, 0.92 + 0.16 * f), np.full(len(p), m.intensity)


def _tex_sign(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sign plate: coloured face with a white border and a white bar, grey metal back."""
    centre, facing, radius = m.params["centre"], m.params["facing"], m.params["radius"]
    d = p - centre
    dist = np.linalg.norm(d, axis=1)
    lateral = d @ np.array([-facing[1], facing[0], 0.0])
    face = n @ facing > 0.5
    rgb = np.tile(m.color, (len(p), 1))
    white = (dist > 0.8 * radius) | ((np.abs(d[:, 2]) < 0.15 * radius) & (np.abs(lateral) < 0.55 * radius))
    rgb[white] = np.array([0.92, 0.92, 0.9])
    rgb[~face] = np.array([0.55, 0.56, 0.58])
    refl = np.where(face, m.intensity, 0.3)
    return rgb, refl


def _tex_paint(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Car paint: uniform with a soft reflection-like variation."""
    f = value_noise(p, 1.5, m.seed)
    return _shade_by(m, 0.9 + 0.2 * f), np.full(len(p), m.intensity)


def _tex_cabin(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Car cabin: painted roof (color), dark glass sides (color2, low LiDAR return)."""
    roof = n[:, 2] > 0.6
    f = value_noise(p, 2.5, m.seed)
    rgb = m.color2[None, :] * (0.8 + 0.4 * f)[:, None]
    rgb[roof] = m.color
    refl = np.where(roof, m.intensity, 0.06)
    return rgb, refl


def _tex_cloth(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clothes / matte plastic: colour with fine weave noise."""
    f = value_noise(p, 10.0, m.seed)
    return _shade_by(m, 0.85 + 0.25 * f), np.full(len(p), m.intensity)


def _tex_checker(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3D checkerboard of two saturated colours (novel pattern, OOD only)."""
    cell = m.params.get("cell", 0.3)
    parity = np.floor(p / cell).astype(np.int64).sum(axis=1) % 2 == 1
    rgb = np.where(parity[:, None], m.color2[None, :], m.color[None, :])
    return rgb, np.full(len(p), m.intensity)


def _tex_dots(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Polka dots on a 3D lattice (novel pattern, OOD only)."""
    a = m.params.get("cell", 0.35)
    q = p / a
    dot = np.linalg.norm(q - np.round(q), axis=1) < 0.33
    rgb = np.where(dot[:, None], m.color2[None, :], m.color[None, :])
    return rgb, np.full(len(p), m.intensity)


def _tex_diagonal(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal stripes (novel pattern, OOD only)."""
    period = m.params.get("cell", 0.4)
    stripe = np.mod(p.sum(axis=1), period) < 0.5 * period
    rgb = np.where(stripe[:, None], m.color2[None, :], m.color[None, :])
    return rgb, np.full(len(p), m.intensity)


def _tex_rainbow(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fully saturated hue bands with height (novel pattern, OOD only)."""
    period = m.params.get("cell", 1.0)
    hue = np.mod(p[:, 2] / period + 0.15 * (p[:, 0] + p[:, 1]), 1.0)
    return _hsv_to_rgb(hue, 1.0, 0.95), np.full(len(p), m.intensity)


TEXTURES: dict[str, TextureFn] = {
    "asphalt": _tex_asphalt, "paving": _tex_paving, "parking": _tex_parking, "grass": _tex_grass,
    "facade": _tex_facade, "slats": _tex_slats, "foliage": _tex_foliage, "bark": _tex_bark,
    "metal": _tex_metal, "sign": _tex_sign, "paint": _tex_paint, "cabin": _tex_cabin,
    "cloth": _tex_cloth, "checker": _tex_checker, "dots": _tex_dots, "diagonal": _tex_diagonal,
    "rainbow": _tex_rainbow,
}


# ---------------------------------------------------------------------------------------------
# Primitives: exact ray intersection for rays from one origin o (3,) along unit directions d (n, 3)


class Tag(NamedTuple):
    """What a primitive is: raw label, instance id (0 for stuff) and material index."""

    label: int
    instance: int
    material: int


@dataclass(eq=False, kw_only=True)
class Primitive:
    """Base class: ``intersect`` gives the entry distance (inf = miss), ``normal`` the outward normal."""

    tag: Tag
    aabb: np.ndarray = field(init=False)  # (2, 3) world bounding box, used to cull rays

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def normal(self, p: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclass(eq=False, kw_only=True)
class Convex(Primitive):
    """Convex polyhedron {x : normals @ x <= offsets} (boxes, wedges, tetrahedra, pyramids)."""

    normals: np.ndarray  # (k, 3) unit outward normals
    offsets: np.ndarray  # (k,)
    vertices: np.ndarray  # (m, 3), only for the bounding box

    def __post_init__(self) -> None:
        self.aabb = np.stack([self.vertices.min(0), self.vertices.max(0)])

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        num = self.offsets - self.normals @ o
        den = d @ self.normals.T
        with np.errstate(divide="ignore", invalid="ignore"):
            tt = num / den
        t_in = np.where(den < 0, tt, -np.inf).max(axis=1)
        t_out = np.where(den > 0, tt, np.inf).min(axis=1)
        outside_slab = ((den == 0) & (num < 0)).any(axis=1)
        hit = (t_in <= t_out) & (t_in > EPS) & ~outside_slab
        return np.where(hit, t_in, np.inf)

    def normal(self, p: np.ndarray) -> np.ndarray:
        return self.normals[np.argmax(p @ self.normals.T - self.offsets, axis=1)]


@dataclass(eq=False, kw_only=True)
class Ellipsoid(Primitive):
    """Ellipsoid with centre, rotation (columns = local axes) and semi-axes ``radii``."""

    centre: np.ndarray
    rot: np.ndarray
    radii: np.ndarray

    def __post_init__(self) -> None:
        ext = np.sqrt((self.rot**2) @ self.radii**2)
        self.aabb = np.stack([self.centre - ext, self.centre + ext])

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        ol = (self.rot.T @ (o - self.centre)) / self.radii
        dl = (d @ self.rot) / self.radii
        a = (dl * dl).sum(axis=1)
        b = dl @ ol
        c = ol @ ol - 1.0
        disc = b * b - a * c
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        return np.where((disc >= 0) & (t > EPS), t, np.inf)

    def normal(self, p: np.ndarray) -> np.ndarray:
        local = (p - self.centre) @ self.rot / self.radii**2
        n = local @ self.rot.T
        return n / np.linalg.norm(n, axis=1, keepdims=True)


@dataclass(eq=False, kw_only=True)
class Cylinder(Primitive):
    """Capped cylinder: centre, rotation whose third column is the axis, radius, half height."""

    centre: np.ndarray
    rot: np.ndarray
    radius: float
    half_height: float

    def __post_init__(self) -> None:
        axis = self.rot[:, 2]
        ext = np.abs(axis) * self.half_height + self.radius * np.sqrt(np.clip(1.0 - axis**2, 0.0, 1.0))
        self.aabb = np.stack([self.centre - ext, self.centre + ext])

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        ol = self.rot.T @ (o - self.centre)
        dl = d @ self.rot
        a = dl[:, 0] ** 2 + dl[:, 1] ** 2
        b = ol[0] * dl[:, 0] + ol[1] * dl[:, 1]
        c = ol[0] ** 2 + ol[1] ** 2 - self.radius**2
        disc = b * b - a * c
        with np.errstate(invalid="ignore", divide="ignore"):
            t_side = (-b - np.sqrt(disc)) / a
            side_ok = (disc >= 0) & (a > 1e-12) & (t_side > EPS) & (np.abs(ol[2] + t_side * dl[:, 2]) <= self.half_height)
            best = np.where(side_ok, t_side, np.inf)
            for h in (-self.half_height, self.half_height):
                t_cap = (h - ol[2]) / dl[:, 2]
                x, y = ol[0] + t_cap * dl[:, 0], ol[1] + t_cap * dl[:, 1]
                cap_ok = (t_cap > EPS) & (x * x + y * y <= self.radius**2)
                best = np.where(cap_ok & (t_cap < best), t_cap, best)
        return best

    def normal(self, p: np.ndarray) -> np.ndarray:
        local = (p - self.centre) @ self.rot
        rho = np.hypot(local[:, 0], local[:, 1])
        on_cap = np.abs(np.abs(local[:, 2]) - self.half_height) < np.abs(rho - self.radius)
        n = np.zeros_like(local)
        safe = np.maximum(rho, 1e-12)
        n[:, 0], n[:, 1] = local[:, 0] / safe, local[:, 1] / safe
        n[on_cap] = 0.0
        n[on_cap, 2] = np.sign(local[on_cap, 2])
        return n @ self.rot.T


@dataclass(eq=False, kw_only=True)
class SphereCluster(Primitive):
    """Union of spheres intersected together (tree crowns, hedges, rings, blobs): one cull per cluster."""

    centres: np.ndarray  # (k, 3)
    radii: np.ndarray  # (k,)

    def __post_init__(self) -> None:
        r = self.radii[:, None]
        self.aabb = np.stack([(self.centres - r).min(0), (self.centres + r).max(0)])

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        oc = o - self.centres  # (k, 3)
        b = d @ oc.T  # (n, k)
        c = (oc * oc).sum(axis=1) - self.radii**2
        disc = b * b - c
        with np.errstate(invalid="ignore"):
            t = -b - np.sqrt(disc)
        t = np.where((disc >= 0) & (t > EPS), t, np.inf)
        return t.min(axis=1)

    def normal(self, p: np.ndarray) -> np.ndarray:
        dist = np.linalg.norm(p[:, None, :] - self.centres[None], axis=2)  # (n, k)
        k = np.argmin(np.abs(dist - self.radii[None]), axis=1)
        n = p - self.centres[k]
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def make_box(centre, size, rot: np.ndarray, tag: Tag) -> Convex:
    """Oriented box: ``size`` full extents along the columns of ``rot``."""
    c, half = np.asarray(centre, float), 0.5 * np.asarray(size, float)
    axes = rot.T  # rows = local axes in world
    normals = np.concatenate([axes, -axes])
    offsets = np.concatenate([axes @ c + half, -(axes @ c) + half])
    signs = np.array(list(itertools.product((-1, 1), repeat=3)), dtype=float)
    vertices = c + (signs * half) @ axes
    return Convex(tag=tag, normals=normals, offsets=offsets, vertices=vertices)


def make_hull(vertices: np.ndarray, tag: Tag) -> Convex:
    """Convex hull of a few points (<= 8) as half-spaces: every vertex triple whose plane has all
    points on one side is a face plane (duplicates from coplanar triples are merged)."""
    v = np.asarray(vertices, float)
    tri = np.array(list(itertools.combinations(range(len(v)), 3)))
    a, b, c = v[tri[:, 0]], v[tri[:, 1]], v[tri[:, 2]]
    n = np.cross(b - a, c - a)
    norm = np.linalg.norm(n, axis=1)
    ok = norm > 1e-9
    n, a = n[ok] / norm[ok, None], a[ok]
    h = (n * a).sum(axis=1)
    side = v @ n.T - h  # (m, T)
    above, below = side.max(axis=0) > 1e-7, side.min(axis=0) < -1e-7
    keep = ~(above & below)
    sign = np.where(above, -1.0, 1.0)[keep]
    planes = np.unique(np.round(np.c_[n[keep] * sign[:, None], h[keep] * sign], 9), axis=0)
    return Convex(tag=tag, normals=planes[:, :3], offsets=planes[:, 3], vertices=v)


def frame_from_axis(axis) -> np.ndarray:
    """A rotation matrix whose third column is the unit vector ``axis``."""
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    helper = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(helper, a)
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(a, u), a], axis=1)


def make_segment(p0, p1, radius: float, tag: Tag) -> Cylinder:
    """Capped cylinder between two points (limbs, poles, frames)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    axis = p1 - p0
    return Cylinder(tag=tag, centre=(p0 + p1) / 2, rot=frame_from_axis(axis), radius=radius,
                    half_height=float(np.linalg.norm(axis) / 2))


# ---------------------------------------------------------------------------------------------
# Scene


@dataclass
class Ground:
    """The ground plane z = 0, split into bands along y (plus an optional cross street along y)."""

    edges: np.ndarray  # (m + 1,) increasing band boundaries in y
    codes: np.ndarray  # (m,) region code per band
    outside: int  # region code beyond the outermost bands
    cross: tuple[float, float] | None  # x interval that is road across the whole width
    labels: np.ndarray  # raw label per region code
    materials: np.ndarray  # material index per region code

    def region(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.edges, y, side="right") - 1
        inside = (i >= 0) & (i < len(self.codes))
        code = np.where(inside, self.codes[np.clip(i, 0, len(self.codes) - 1)], self.outside)
        if self.cross is not None:
            code = np.where((x >= self.cross[0]) & (x <= self.cross[1]), REGION_CODES["road"], code)
        return code


REGION_CODES = {"road": 0, "parking": 1, "sidewalk": 2, "terrain": 3}
REGION_LABELS = np.array([ROAD, PARKING, SIDEWALK, TERRAIN])


@dataclass
class Lighting:
    """Sun, ambient, sky and the per-scene camera response (exposure, white balance, haze)."""

    sun: np.ndarray  # unit vector towards the sun
    ambient: float
    diffuse: float
    zenith: np.ndarray
    horizon: np.ndarray
    fog_distance: float
    exposure: float
    tint: np.ndarray


@dataclass
class Scene:
    """Everything ``render_scan`` needs: geometry, materials, light, and the sensor-noise seed."""

    ground: Ground
    prims: list[Primitive]
    materials: list[Material]
    lighting: Lighting
    noise_seed: int
    objects: list[dict] = field(default_factory=list)  # metadata of placed objects (kind, label, position)

    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-primitive (label, instance, material) arrays for vectorised lookups."""
        t = np.array([p.tag for p in self.prims], dtype=np.int64).reshape(-1, 3)
        return t[:, 0], t[:, 1], t[:, 2]


# ---------------------------------------------------------------------------------------------
# Sensors as ray grids that know which of their rays can reach a bounding box


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


# ---------------------------------------------------------------------------------------------
# Scene generation

# Albedo palettes. ID colours are muted; NOVEL_COLORS are saturated hues no ID class uses.
ROAD_GREY = (0.2, 0.36)
BUILDING_COLORS = np.array([[0.72, 0.66, 0.55], [0.6, 0.6, 0.6], [0.55, 0.33, 0.26], [0.84, 0.82, 0.77],
                            [0.78, 0.7, 0.5], [0.45, 0.41, 0.38], [0.66, 0.55, 0.45]])
FENCE_COLORS = np.array([[0.45, 0.33, 0.21], [0.22, 0.32, 0.23], [0.5, 0.5, 0.52], [0.3, 0.3, 0.3]])
FOLIAGE_COLORS = np.array([[0.18, 0.34, 0.12], [0.25, 0.42, 0.15], [0.33, 0.44, 0.18], [0.16, 0.28, 0.14]])
TRUNK_COLORS = np.array([[0.36, 0.28, 0.21], [0.4, 0.36, 0.32], [0.3, 0.25, 0.22]])
POLE_COLORS = np.array([[0.45, 0.45, 0.47], [0.22, 0.3, 0.25], [0.38, 0.32, 0.26], [0.32, 0.32, 0.34]])
SIGN_COLORS = np.array([[0.75, 0.1, 0.1], [0.1, 0.25, 0.7], [0.9, 0.75, 0.1], [0.85, 0.85, 0.85]])
CAR_COLORS = np.array([[0.85, 0.85, 0.85], [0.08, 0.08, 0.09], [0.6, 0.61, 0.63], [0.35, 0.36, 0.38],
                       [0.45, 0.08, 0.08], [0.1, 0.15, 0.35], [0.65, 0.6, 0.5], [0.12, 0.25, 0.15]])
CLOTH_COLORS = np.array([[0.15, 0.15, 0.18], [0.2, 0.25, 0.4], [0.5, 0.45, 0.4], [0.6, 0.2, 0.2],
                         [0.8, 0.8, 0.78], [0.3, 0.35, 0.25], [0.35, 0.3, 0.4]])
SKIN_COLORS = np.array([[0.87, 0.7, 0.58], [0.7, 0.52, 0.4], [0.45, 0.32, 0.24]])
NOVEL_COLORS = np.array([[0.95, 0.05, 0.9], [0.0, 0.9, 0.95], [0.55, 1.0, 0.0], [1.0, 0.45, 0.0],
                         [0.55, 0.1, 0.95], [1.0, 0.15, 0.55], [0.1, 0.95, 0.55]])
GLASS = np.array([0.1, 0.12, 0.15])
RUBBER = np.array([0.05, 0.05, 0.05])


def _rect(x: float, y: float, hx: float, hy: float, yaw: float = 0.0) -> tuple[float, float, float, float]:
    """Axis-aligned footprint (x0, x1, y0, y1) of a yawed rectangle with half sizes hx, hy."""
    c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
    ex, ey = hx * c + hy * s, hx * s + hy * c
    return x - ex, x + ex, y - ey, y + ey


class _Builder:
    """Accumulates primitives and materials, hands out instance ids, keeps footprints apart."""

    def __init__(self, rng: np.random.Generator, cfg: SyntheticConfig) -> None:
        self.rng, self.cfg = rng, cfg
        self.prims: list[Primitive] = []
        self.materials: list[Material] = []
        self.objects: list[dict] = []
        self.footprints: list[tuple[float, float, float, float]] = [(-4.0, 4.0, -1.6, 1.6)]  # ego car
        self.hue = rng.uniform(-10.0, 10.0)  # per-scene hue shift of every material
        self._instance = 0

    def pick(self, palette: np.ndarray) -> np.ndarray:
        return palette[self.rng.integers(len(palette))]

    def material(self, kind: str, color, *, color2=None, intensity: float, jitter: float = 0.06,
                 depth_jitter: float = 0.0, **params) -> int:
        """Register a material with per-object colour jitter and the scene hue shift; returns its index."""
        c = self._jitter(color, jitter)
        c2 = self._jitter(color2, jitter) if color2 is not None else c * 0.6
        seed = int(self.rng.integers(2**31))
        self.materials.append(Material(kind, c, c2, float(intensity), depth_jitter, params, seed))
        return len(self.materials) - 1

    def _jitter(self, color, jitter: float) -> np.ndarray:
        c = np.asarray(color, float) * self.rng.uniform(1 - 2 * jitter, 1 + 2 * jitter)
        c = np.clip(c * (1 + self.rng.normal(0.0, jitter, 3)), 0.0, 1.0)
        return hue_rotate(c, self.hue + self.rng.normal(0.0, 4.0))

    def thing(self) -> int:
        """A new instance id (things: vehicles, persons, OOD objects)."""
        self._instance += 1
        return self._instance

    def add(self, *prims: Primitive) -> None:
        self.prims.extend(prims)

    def free(self, rect: tuple[float, float, float, float], margin: float = 0.3) -> bool:
        x0, x1, y0, y1 = rect
        return all(x1 + margin <= a or x0 - margin >= b or y1 + margin <= c or y0 - margin >= d
                   for a, b, c, d in self.footprints)

    def claim(self, rect: tuple[float, float, float, float]) -> None:
        self.footprints.append(rect)


@dataclass
class _Street:
    """Street layout: road band, per-side bands outwards (signed y), cross street, curb height."""

    road: tuple[float, float]
    bands: dict[int, list[tuple[str, float, float]]]  # side (+1 left, -1 right) -> (name, y_inner, y_outer)
    cross: tuple[float, float] | None
    curb: float
    urban: bool
    ground: Ground | None = None

    def band(self, side: int, name: str) -> tuple[float, float] | None:
        return next(((a, b) for n, a, b in self.bands[side] if n == name), None)

    def outer(self, side: int) -> float:
        return self.bands[side][-1][2]

    def region(self, x: float, y: float) -> int:
        return int(self.ground.region(np.array([x]), np.array([y]))[0])

    def height(self, x: float, y: float) -> float:
        return self.curb if self.region(x, y) == REGION_CODES["sidewalk"] else 0.0

    def corridor(self) -> tuple[float, float]:
        """y extent of road, parking and sidewalks (where OOD objects and people may stand)."""
        ys = [self.road[0], self.road[1]]
        ys += [v for side in (1, -1) for n, a, b in self.bands[side] if n != "terrain" for v in (a, b)]
        return min(ys), max(ys)

    def in_cross(self, x: float, margin: float = 0.0) -> bool:
        return self.cross is not None and self.cross[0] - margin <= x <= self.cross[1] + margin

    def x_segments(self, x0: float, x1: float, margin: float = 1.0) -> list[tuple[float, float]]:
        """[x0, x1] minus the cross street (widened by margin)."""
        if self.cross is None or self.cross[1] + margin < x0 or self.cross[0] - margin > x1:
            return [(x0, x1)]
        out = [(x0, self.cross[0] - margin), (self.cross[1] + margin, x1)]
        return [(a, b) for a, b in out if b - a > 0.5]


def _sample_side(rng: np.random.Generator, urban: bool) -> list[tuple[str, float]]:
    bands = []
    if rng.random() < 0.3:
        bands.append(("parking", rng.uniform(2.2, 2.6)))
    if rng.random() < 0.2:
        bands.append(("terrain", rng.uniform(0.8, 2.0)))
    if rng.random() < 0.8:
        bands.append(("sidewalk", rng.uniform(1.8, 4.0)))
    bands.append(("terrain", rng.uniform(0.3, 1.5) if urban else rng.uniform(3.0, 12.0)))
    return bands


def _sample_street(rng: np.random.Generator) -> _Street:
    half = rng.uniform(3.2, 7.5)
    centre = rng.uniform(-(half - 1.6), half - 1.6)  # the ego car drives inside the road
    road = (centre - half, centre + half)
    urban = bool(rng.random() < 0.55)
    bands: dict[int, list[tuple[str, float, float]]] = {}
    for side in (1, -1):
        edge, out = (road[1] if side > 0 else road[0]), []
        for name, width in _sample_side(rng, urban):
            out.append((name, edge, edge + side * width))
            edge += side * width
        bands[side] = out
    cross = None
    if rng.random() < 0.3:
        xc = rng.uniform(18.0, 60.0) if rng.random() < 0.7 else rng.uniform(-45.0, -15.0)
        w = rng.uniform(3.5, 6.0)
        cross = (xc - w, xc + w)
    return _Street(road, bands, cross, rng.uniform(0.12, 0.18), urban)


def _ground_materials(b: _Builder, st: _Street) -> np.ndarray:
    """Materials for road, parking, sidewalk, terrain (indexed by region code)."""
    rng = b.rng
    g = rng.uniform(*ROAD_GREY)
    road = b.material("asphalt", (g, g, g * 1.03), color2=(0.85, 0.85, 0.82), intensity=rng.uniform(0.15, 0.25),
                      lines=_lane_lines(rng, st.road), gap=st.cross)
    g = rng.uniform(0.3, 0.42)
    parking = b.material("parking", (g, g, g * 1.05), color2=(0.82, 0.82, 0.8), intensity=rng.uniform(0.18, 0.28),
                         stall=rng.uniform(2.5, 5.5))
    if rng.random() < 0.6:
        g = rng.uniform(0.3, 0.5)
        walk = b.material("paving", (g * 1.03, g, g * 0.96), color2=(g * 0.7, g * 0.7, g * 0.7),
                          intensity=rng.uniform(0.18, 0.3), tile=rng.uniform(0.3, 0.6))
    else:
        g = rng.uniform(0.26, 0.42)
        walk = b.material("asphalt", (g, g, g), color2=(g, g, g), intensity=rng.uniform(0.18, 0.3))
    grass = (rng.uniform(0.25, 0.38), rng.uniform(0.35, 0.48), rng.uniform(0.12, 0.22))
    terrain = b.material("grass", grass, color2=(0.42, 0.36, 0.25), intensity=rng.uniform(0.18, 0.3))
    return np.array([road, parking, walk, terrain])


def _lane_lines(rng: np.random.Generator, road: tuple[float, float]) -> list[tuple[float, bool]]:
    width = road[1] - road[0]
    lanes = max(1, round(width / 3.4))
    lines = [(road[0] + k * width / lanes, True) for k in range(1, lanes)]
    if rng.random() < 0.7:
        lines += [(road[0] + 0.3, False), (road[1] - 0.3, False)]
    return lines


def _make_ground(b: _Builder, st: _Street) -> Ground:
    segs = sorted([(min(a, c), max(a, c), n) for side in (1, -1) for n, a, c in st.bands[side]]
                  + [(st.road[0], st.road[1], "road")])
    edges = np.array([segs[0][0]] + [s[1] for s in segs])
    codes = np.array([REGION_CODES[s[2]] for s in segs])
    return Ground(edges, codes, REGION_CODES["terrain"], st.cross, REGION_LABELS, _ground_materials(b, st))


def _add_sidewalks(b: _Builder, st: _Street) -> None:
    """Raised sidewalk slabs (the curb step is the geometric cue vs road), cut at the cross street."""
    mat = int(st.ground.materials[REGION_CODES["sidewalk"]])
    for side in (1, -1):
        band = st.band(side, "sidewalk")
        if band is None:
            continue
        y0, y1 = sorted(band)
        for a, e in st.x_segments(X_MIN, X_MAX, margin=0.0):
            for x0 in np.arange(a, e, 20.0):
                x1 = min(x0 + 20.0, e)
                b.add(make_box(((x0 + x1) / 2, (y0 + y1) / 2, st.curb / 2), (x1 - x0, y1 - y0, st.curb),
                               np.eye(3), Tag(SIDEWALK, 0, mat)))


def _facade_material(b: _Builder, color=None, windows: bool | None = None, intensity: float | None = None,
                     depth_jitter: float = 0.0) -> int:
    rng = b.rng
    color = b.pick(BUILDING_COLORS) if color is None else color
    course = rng.uniform(0.25, 0.6) if rng.random() < 0.4 else None
    windows = rng.random() < 0.85 if windows is None else windows
    win = (rng.uniform(2.2, 4.0), rng.uniform(2.8, 3.5), rng.uniform(0.35, 0.6), rng.uniform(0.4, 0.6)) if windows else None
    intensity = rng.uniform(0.22, 0.38) if intensity is None else intensity
    return b.material("facade", color, color2=np.asarray(color) * 0.75, intensity=intensity,
                      depth_jitter=depth_jitter, course=course, windows=win)


def _add_buildings(b: _Builder, st: _Street) -> None:
    """Rows of building blocks behind the outermost band; gaps get fences, hedges or trees."""
    rng = b.rng
    for side in (1, -1):
        line = st.outer(side)
        for a, e in st.x_segments(X_MIN, X_MAX, margin=1.0):
            x = a + rng.uniform(0.0, 3.0)
            while x < e - 3.0:
                length = min(rng.uniform(8.0, 28.0), e - x)
                setback = rng.uniform(0.0, 1.0) if st.urban else rng.uniform(0.0, 4.0)
                _add_building(b, st, x, x + length, line + side * setback, side)
                x += length
                if rng.random() < (0.3 if st.urban else 0.7):
                    gap = min(rng.uniform(2.0, 8.0), e - x)
                    _fill_gap(b, st, x, x + gap, line + side * 0.5, side)
                    x += gap


def _add_building(b: _Builder, st: _Street, x0: float, x1: float, y_front: float, side: int) -> None:
    rng = b.rng
    depth = rng.uniform(8.0, 15.0)
    height = rng.uniform(6.0, 22.0) if st.urban else rng.uniform(3.5, 9.0)
    yaw = 0.0 if st.urban else rng.uniform(-0.06, 0.06)
    centre = ((x0 + x1) / 2, y_front + side * depth / 2, height / 2)
    b.add(make_box(centre, (x1 - x0, depth, height), _rot_z(yaw), Tag(BUILDING, 0, _facade_material(b))))


def _fill_gap(b: _Builder, st: _Street, x0: float, x1: float, y: float, side: int) -> None:
    choice = b.rng.random()
    if choice < 0.45:
        _add_fence(b, st, x0, x1, y)
    elif choice < 0.7:
        _add_hedge(b, x0, x1, y + side * 0.6, 0.0)
    elif x1 - x0 > 3.0:
        _add_tree(b, (x0 + x1) / 2, y + side * 2.0, 0.0)


def _add_fence(b: _Builder, st: _Street, x0: float, x1: float, y: float) -> None:
    """Thin slatted wall: the appearance (slats) separates it from buildings; intensity overlaps."""
    rng = b.rng
    height, thick = rng.uniform(1.0, 2.0), rng.uniform(0.04, 0.1)
    color = b.pick(FENCE_COLORS)
    mat = b.material("slats", color, color2=color * 0.35, intensity=rng.uniform(0.22, 0.38),
                     period=rng.uniform(0.1, 0.3), rail=height - 0.08)
    for a in np.arange(x0, x1, 10.0):
        e = min(a + 10.0, x1)
        z0 = st.height((a + e) / 2, y)
        b.add(make_box(((a + e) / 2, y, z0 + height / 2), (e - a, thick, height), np.eye(3), Tag(FENCE, 0, mat)))


def _foliage_material(b: _Builder) -> int:
    color = b.pick(FOLIAGE_COLORS)
    return b.material("foliage", color, color2=np.clip(color * 1.6, 0, 1), intensity=b.rng.uniform(0.38, 0.52),
                      depth_jitter=0.08)


def _add_hedge(b: _Builder, x0: float, x1: float, y: float, z0: float) -> None:
    """Row of overlapping spheres: a bumpy vegetation surface."""
    rng = b.rng
    r = rng.uniform(0.4, 0.8)
    xs = np.arange(x0 + r, x1 - r * 0.5, 0.7 * r)
    if len(xs) == 0:
        return
    mat = _foliage_material(b)
    centres = np.stack([xs + rng.normal(0, 0.1 * r, len(xs)), y + rng.normal(0, 0.15 * r, len(xs)),
                        z0 + r * rng.uniform(0.4, 0.8, len(xs))], axis=1)
    radii = r * rng.uniform(0.8, 1.2, len(xs))
    for k in range(0, len(xs), 10):
        b.add(SphereCluster(tag=Tag(VEGETATION, 0, mat), centres=centres[k:k + 10], radii=radii[k:k + 10]))


def _add_tree(b: _Builder, x: float, y: float, z0: float) -> None:
    """Trunk cylinder (thicker and shorter than poles) under a crown of 8-16 spheres."""
    rng = b.rng
    h, r, crown = rng.uniform(1.8, 3.5), rng.uniform(0.1, 0.25), rng.uniform(1.2, 2.8)
    bark = b.material("bark", b.pick(TRUNK_COLORS), intensity=rng.uniform(0.3, 0.42))
    top = z0 + h + 0.5 * crown
    b.add(Cylinder(tag=Tag(TRUNK, 0, bark), centre=np.array([x, y, (z0 + top) / 2]), rot=np.eye(3),
                   radius=r, half_height=(top - z0) / 2))
    k = int(rng.integers(8, 17))
    centre = np.array([x, y, z0 + h + 0.8 * crown])
    centres = centre + np.clip(rng.normal(0.0, 0.45, (k, 3)), -1.0, 1.0) * crown * np.array([1.0, 1.0, 0.7])
    radii = crown * rng.uniform(0.35, 0.65, k)
    centres[:, 2] = np.maximum(centres[:, 2], z0 + 0.8 * h + radii)  # no leaves hanging below the crown base
    b.add(SphereCluster(tag=Tag(VEGETATION, 0, _foliage_material(b)), centres=centres, radii=radii))
    b.claim(_rect(x, y, r + 0.2, r + 0.2))


def _add_lamp(b: _Builder, x: float, y: float, z0: float, side: int) -> None:
    """Street lamp (thin, tall, arm over the road) or utility pole (thicker, wood-coloured, like a trunk)."""
    rng = b.rng
    utility = rng.random() < 0.3
    height = rng.uniform(7.0, 10.0) if utility else rng.uniform(5.0, 9.0)
    r = rng.uniform(0.13, 0.18) if utility else rng.uniform(0.06, 0.13)
    color = POLE_COLORS[2] if utility else b.pick(POLE_COLORS)
    tag = Tag(POLE, 0, b.material("metal", color, intensity=rng.uniform(0.3, 0.42)))
    b.add(make_segment((x, y, z0), (x, y, z0 + height), r, tag))
    if not utility:
        reach = rng.uniform(1.0, 2.2)
        end = (x, y - side * reach, z0 + height + 0.15)
        b.add(make_segment((x, y, z0 + height - 0.2), end, r * 0.6, tag),
              make_box((end[0], end[1], end[2] - 0.08), (0.5, 0.3, 0.14), np.eye(3), tag))
    b.claim(_rect(x, y, r + 0.2, r + 0.2))


def _add_sign(b: _Builder, x: float, y: float, z0: float) -> None:
    """Traffic sign: thin post (pole) with a disc, square or triangle plate facing along x."""
    rng = b.rng
    height, radius = rng.uniform(2.0, 2.8), rng.uniform(0.3, 0.45)
    post = Tag(POLE, 0, b.material("metal", POLE_COLORS[0], intensity=rng.uniform(0.3, 0.42)))
    b.add(make_segment((x, y, z0), (x, y, z0 + height), rng.uniform(0.03, 0.05), post))
    facing = np.array([1.0 if rng.random() < 0.5 else -1.0, 0.0, 0.0])
    centre = np.array([x, y, z0 + height]) + 0.06 * facing
    mat = b.material("sign", b.pick(SIGN_COLORS), intensity=rng.uniform(0.68, 0.8), jitter=0.03,
                     centre=centre, facing=facing, radius=radius)
    tag = Tag(TRAFFIC_SIGN, 0, mat)
    shape = rng.integers(3)
    if shape == 0:
        b.add(Cylinder(tag=tag, centre=centre, rot=frame_from_axis(facing), radius=radius, half_height=0.015))
    elif shape == 1:
        b.add(make_box(centre, (0.03, 1.7 * radius, 1.7 * radius), np.eye(3), tag))
    else:
        tri = np.array([[0.0, -radius, -0.6 * radius], [0.0, radius, -0.6 * radius], [0.0, 0.0, 1.1 * radius]])
        b.add(make_hull(np.concatenate([centre + tri, centre + tri + [0.03, 0.0, 0.0]]), tag))
    b.claim(_rect(x, y, 0.3, 0.3))


def _furniture_line(st: _Street, side: int) -> tuple[float, float]:
    """(y, z0) just outside the curb where lamps, trees and signs stand."""
    walk = st.band(side, "sidewalk")
    if walk is not None:
        return walk[0] + side * 0.6, st.curb
    inner = st.bands[side][0]
    edge = inner[2] if inner[0] == "parking" else inner[1]
    return edge + side * 0.8, 0.0


def _add_roadside(b: _Builder, st: _Street) -> None:
    """Lamps, trees and signs along the curbs; hedges and fences in suburban front yards."""
    rng = b.rng
    for side in (1, -1):
        y, z0 = _furniture_line(st, side)
        for a, e in st.x_segments(-80.0, 120.0):
            for x in np.arange(a + rng.uniform(0, 10), e, rng.uniform(20.0, 35.0)):
                if b.free(_rect(x, y, 0.3, 0.3)):
                    _add_lamp(b, x, y + side * 0.1, z0, side)
            if rng.random() < (0.5 if st.urban else 0.8):
                for x in np.arange(a + rng.uniform(0, 8), e, rng.uniform(7.0, 16.0)):
                    if rng.random() < 0.7 and b.free(_rect(x, y, 0.5, 0.5)):
                        _add_tree(b, x, y + side * rng.uniform(0.0, 0.6), z0)
        _add_yard(b, st, side)
    for _ in range(int(rng.integers(1, 5))):
        side = 1 if rng.random() < 0.5 else -1
        y, z0 = _furniture_line(st, side)
        x = rng.uniform(-30.0, 60.0)
        if b.free(_rect(x, y, 0.4, 0.4)) and not st.in_cross(x, margin=1.0):
            _add_sign(b, x, y, z0)


def _add_yard(b: _Builder, st: _Street, side: int) -> None:
    """Suburban front yard (outermost terrain band): property fence, hedges, bushes."""
    rng = b.rng
    _, y_in, y_out = st.bands[side][-1]
    if abs(y_out - y_in) < 2.5:
        return
    for a, e in st.x_segments(X_MIN, X_MAX):
        for x0 in np.arange(a, e, 25.0):
            x1 = min(x0 + rng.uniform(8.0, 25.0), e)
            pick = rng.random()
            if pick < 0.3:
                _add_fence(b, st, x0, x1, y_in + side * 0.3)
            elif pick < 0.55:
                _add_hedge(b, x0, x1, y_in + side * rng.uniform(0.8, abs(y_out - y_in) - 0.8), 0.0)
            elif pick < 0.7:
                _add_tree(b, (x0 + x1) / 2, (y_in + y_out) / 2, 0.0)


@dataclass
class _CarShape:
    length: float
    width: float
    clearance: float
    body_height: float
    cabin_height: float
    wheel: float  # wheel radius


def _car_shape(rng: np.random.Generator, scale: float = 1.0) -> _CarShape:
    return _CarShape(rng.uniform(3.8, 4.8) * scale, rng.uniform(1.65, 1.9) * scale, 0.28 * scale,
                     rng.uniform(0.55, 0.75) * scale, rng.uniform(0.45, 0.6) * scale, 0.32 * scale)


def _car_geometry(b: _Builder, s: _CarShape, x: float, y: float, z0: float, yaw: float,
                  body: Tag, cabin: Tag, wheel: Tag) -> None:
    """Body box, tapered cabin hull, four wheels; local x = driving direction."""
    rot = _rot_z(yaw)
    origin = np.array([x, y, z0])

    def at(lx: float, ly: float, lz: float) -> np.ndarray:
        return origin + rot @ np.array([lx, ly, lz])

    length, width = s.length, s.width
    b.add(make_box(at(0.0, 0.0, s.clearance + s.body_height / 2), (length, width, s.body_height), rot, body))
    top = s.clearance + s.body_height
    verts = [at(lx, ly, top) for lx in (-0.32 * length, 0.2 * length) for ly in (-0.43 * width, 0.43 * width)]
    verts += [at(lx, ly, top + s.cabin_height) for lx in (-0.25 * length, 0.06 * length)
              for ly in (-0.38 * width, 0.38 * width)]
    b.add(make_hull(np.array(verts), cabin))
    axle = frame_from_axis(rot[:, 1])
    for lx in (-0.32 * length, 0.32 * length):
        for ly in (-(width / 2 - 0.09), width / 2 - 0.09):
            b.add(Cylinder(tag=wheel, centre=at(lx, ly, s.wheel), rot=axle, radius=s.wheel, half_height=0.11))


def _add_car(b: _Builder, s: _CarShape, x: float, y: float, yaw: float) -> None:
    rng, inst = b.rng, b.thing()
    paint = b.pick(CAR_COLORS)
    refl = rng.uniform(0.2, 0.55)
    body = Tag(CAR, inst, b.material("paint", paint, intensity=refl))
    cabin = Tag(CAR, inst, b.material("cabin", paint, color2=GLASS, intensity=refl))
    wheel = Tag(CAR, inst, b.material("metal", RUBBER, intensity=0.08, jitter=0.02))
    _car_geometry(b, s, x, y, 0.0, yaw, body, cabin, wheel)
    b.objects.append({"kind": "car", "label": CAR, "instance": inst, "x": x, "y": y, "size": s.length})


def _add_truck(b: _Builder, x: float, y: float, yaw: float) -> float:
    """Box truck: cargo box, cab with glass, six wheels. Returns its length."""
    rng, inst = b.rng, b.thing()
    cargo_len, width, height = rng.uniform(5.0, 7.5), rng.uniform(2.3, 2.5), rng.uniform(2.4, 3.2)
    total = cargo_len + 2.0
    rot, origin = _rot_z(yaw), np.array([x, y, 0.0])
    paint = b.pick(CAR_COLORS)
    refl = rng.uniform(0.25, 0.55)
    body = Tag(TRUCK, inst, b.material("paint", paint, intensity=refl))
    cab = Tag(TRUCK, inst, b.material("cabin", paint, color2=GLASS, intensity=refl))
    wheel = Tag(TRUCK, inst, b.material("metal", RUBBER, intensity=0.08, jitter=0.02))
    at = lambda lx, ly, lz: origin + rot @ np.array([lx, ly, lz])  # noqa: E731
    b.add(make_box(at(-total / 2 + cargo_len / 2, 0.0, 0.9 + height / 2), (cargo_len, width, height), rot, body),
          make_box(at(total / 2 - 0.95, 0.0, 0.5 + 1.15), (1.9, width * 0.95, 2.3), rot, cab))
    axle = frame_from_axis(rot[:, 1])
    for lx in (-total / 2 + 1.0, -total / 2 + 2.1, total / 2 - 1.0):
        for ly in (-(width / 2 - 0.12), width / 2 - 0.12):
            b.add(Cylinder(tag=wheel, centre=at(lx, ly, 0.45), rot=axle, radius=0.45, half_height=0.14))
    b.objects.append({"kind": "truck", "label": TRUCK, "instance": inst, "x": x, "y": y, "size": total})
    return total


def _add_vehicles(b: _Builder, st: _Street) -> None:
    """Parked rows along the curb or in parking strips, a few cars and maybe a truck in the lanes."""
    rng = b.rng
    for side in (1, -1):
        park = st.band(side, "parking")
        if park is not None:
            y = (park[0] + park[1]) / 2
        elif rng.random() < 0.5:
            y = (st.road[1] if side > 0 else st.road[0]) - side * 1.15
        else:
            continue
        x = -55.0 + rng.uniform(0.0, 6.0)
        while x < 75.0:
            shape = _car_shape(rng)
            cx = x + shape.length / 2
            yaw = (0.0 if rng.random() < 0.5 else math.pi) + rng.normal(0.0, 0.03)
            rect = _rect(cx, y, shape.length / 2, shape.width / 2, yaw)
            if rng.random() < 0.6 and not st.in_cross(cx, 3.0) and b.free(rect, margin=0.2):
                _add_car(b, shape, cx, y, yaw)
                b.claim(rect)
            x += shape.length + rng.uniform(0.8, 4.0)
    for k in range(int(rng.integers(0, 4)) + int(rng.random() < 0.3)):
        truck = k == 0 and rng.random() < 0.3
        x = rng.uniform(8.0, 60.0) if rng.random() < 0.6 else rng.uniform(-45.0, -8.0)
        y = rng.uniform(st.road[0] + 1.3, st.road[1] - 1.3)
        yaw = (0.0 if rng.random() < 0.5 else math.pi) + rng.normal(0.0, 0.05)
        half = (4.8, 1.3) if truck else (2.4, 1.0)
        rect = _rect(x, y, half[0], half[1], yaw)
        if b.free(rect, margin=0.5):
            _add_truck(b, x, y, yaw) if truck else _add_car(b, _car_shape(rng), x, y, yaw)
            b.claim(rect)


def _add_person(b: _Builder, x: float, y: float, z0: float, yaw: float) -> None:
    """Pedestrian as a stack of thin primitives: legs, ellipsoid torso, arms, head."""
    rng, inst = b.rng, b.thing()
    s = rng.uniform(1.55, 1.95) / 1.75
    refl = rng.uniform(0.22, 0.36)
    pants = Tag(PERSON, inst, b.material("cloth", b.pick(CLOTH_COLORS[:3]), intensity=refl))
    shirt = Tag(PERSON, inst, b.material("cloth", b.pick(CLOTH_COLORS), intensity=refl))
    skin = Tag(PERSON, inst, b.material("cloth", b.pick(SKIN_COLORS), intensity=refl, jitter=0.03))
    rot = _rot_z(yaw)
    fwd, lat, up = rot[:, 0], rot[:, 1], np.array([0.0, 0.0, 1.0])
    base = np.array([x, y, z0])
    stride = rng.uniform(-0.25, 0.25) * s
    for side in (-1.0, 1.0):
        hip = base + lat * side * 0.1 * s + up * 0.9 * s
        foot = base + lat * side * 0.1 * s + fwd * side * stride + up * 0.07 * s
        b.add(make_segment(foot, hip, 0.075 * s, pants))
        shoulder = base + lat * side * 0.25 * s + up * 1.42 * s
        hand = base + lat * side * 0.29 * s - fwd * side * stride * 0.8 + up * 0.86 * s
        b.add(make_segment(shoulder, hand, 0.045 * s, shirt))
    b.add(Ellipsoid(tag=shirt, centre=base + up * 1.2 * s, rot=rot, radii=np.array([0.12, 0.2, 0.32]) * s),
          Ellipsoid(tag=skin, centre=base + up * 1.63 * s, rot=rot, radii=np.array([0.1, 0.09, 0.12]) * s))
    b.objects.append({"kind": "person", "label": PERSON, "instance": inst, "x": x, "y": y, "size": 1.75 * s})


def _add_bicycle(b: _Builder, x: float, y: float, z0: float, yaw: float) -> None:
    """Parked bicycle: two thin wheel discs and a tube frame."""
    inst = b.thing()
    frame = Tag(BICYCLE, inst, b.material("metal", b.pick(CLOTH_COLORS), intensity=b.rng.uniform(0.25, 0.45)))
    tyre = Tag(BICYCLE, inst, b.material("metal", RUBBER, intensity=0.08, jitter=0.02))
    rot = _rot_z(yaw)
    at = lambda lx, ly, lz: np.array([x, y, z0]) + rot @ np.array([lx, ly, lz])  # noqa: E731
    axle = frame_from_axis(rot[:, 1])
    for lx in (-0.52, 0.52):
        b.add(Cylinder(tag=tyre, centre=at(lx, 0.0, 0.34), rot=axle, radius=0.34, half_height=0.015))
    rear, front, crank, seat, head = at(-0.52, 0, 0.34), at(0.52, 0, 0.34), at(0.0, 0, 0.32), at(-0.15, 0, 0.85), at(0.38, 0, 0.9)
    for p0, p1 in ((rear, crank), (crank, seat), (seat, head), (head, front), (crank, head), (rear, seat)):
        b.add(make_segment(p0, p1, 0.02, frame))
    b.add(make_segment(at(0.4, -0.25, 1.0), at(0.4, 0.25, 1.0), 0.02, frame))
    b.objects.append({"kind": "bicycle", "label": BICYCLE, "instance": inst, "x": x, "y": y, "size": 1.7})


def _walk_spot(b: _Builder, st: _Street, on_road_prob: float) -> tuple[float, float] | None:
    """A random (x, y) on a sidewalk (or, with on_road_prob, on the road) ahead or around the car."""
    rng = b.rng
    x = rng.uniform(-30.0, 50.0)
    if rng.random() < on_road_prob:
        return x, rng.uniform(st.road[0] + 0.5, st.road[1] - 0.5)
    walk = st.band(1 if rng.random() < 0.5 else -1, "sidewalk")
    if walk is None or st.in_cross(x, 1.0):
        return None
    return x, rng.uniform(min(walk) + 0.3, max(walk) - 0.3)


def _add_people(b: _Builder, st: _Street) -> None:
    rng = b.rng
    bikes = int(rng.integers(1, 3)) if rng.random() < 0.4 else 0
    for bike in [False] * int(rng.integers(1, 7)) + [True] * bikes:
        for _ in range(20):
            spot = _walk_spot(b, st, 0.0 if bike else 0.25)
            if spot is None:
                continue
            x, y = spot
            yaw = rng.uniform(0.0, 2 * math.pi)
            rect = _rect(x, y, 0.9 if bike else 0.3, 0.9 if bike else 0.3)
            if b.free(rect):
                (_add_bicycle if bike else _add_person)(b, x, y, st.height(x, y), yaw)
                b.claim(rect)
                break


def _add_clutter(b: _Builder, st: _Street) -> None:
    """Unlabelled street clutter (raw 0: bins, crates) so that the ignore label exists on real surfaces."""
    rng = b.rng
    for _ in range(int(rng.integers(0, 5))):
        spot = _walk_spot(b, st, 0.0)
        if spot is None or not b.free(_rect(*spot, 0.5, 0.5)):
            continue
        x, y = spot
        z0 = st.height(x, y)
        tag = Tag(UNLABELED, 0, b.material("cloth", b.pick(FENCE_COLORS), intensity=rng.uniform(0.2, 0.4)))
        if rng.random() < 0.5:
            b.add(Cylinder(tag=tag, centre=np.array([x, y, z0 + 0.5]), rot=np.eye(3), radius=0.3, half_height=0.5))
        else:
            size = rng.uniform(0.4, 1.0, 3)
            b.add(make_box((x, y, z0 + size[2] / 2), size, _rot_z(rng.uniform(0, math.pi)), tag))
        b.claim(_rect(x, y, 0.5, 0.5))


# ---------------------------------------------------------------------------------------------
# OOD objects (raw id 20): novel in both modalities, or ID geometry + another class's appearance

OOD_SIZE = {"tetra": (0.6, 3.0), "pyramid": (0.6, 3.0), "ring": (0.8, 3.0), "tilted_slab": (1.0, 3.5),
            "stack": (0.8, 2.5), "big_sphere": (0.5, 3.0), "veg_car": (2.5, 4.0), "road_pole": (1.5, 4.0),
            "novel_wall": (1.5, 4.0), "brick_bush": (0.8, 2.5)}


def _ood_intensity(rng: np.random.Generator) -> float:
    """Reflectivity outside every ID range: retro-reflective bright or almost black."""
    return rng.uniform(0.9, 1.0) if rng.random() < 0.5 else rng.uniform(0.0, 0.04)


def _mixed_intensity(rng: np.random.Generator, id_range: tuple[float, float]) -> float:
    """Mixed objects mostly keep the reflectivity of the class their *geometry* imitates."""
    return rng.uniform(*id_range) if rng.random() < 0.7 else _ood_intensity(rng)


def _novel_material(b: _Builder) -> int:
    """Saturated colours in a pattern no ID class uses, with out-of-range LiDAR intensity."""
    rng = b.rng
    kind = ("checker", "dots", "diagonal", "rainbow", "metal")[int(rng.integers(5))]
    i, j = rng.choice(len(NOVEL_COLORS), 2, replace=False)
    second = NOVEL_COLORS[j] if rng.random() < 0.6 else np.full(3, 0.05 if rng.random() < 0.5 else 0.95)
    return b.material(kind, NOVEL_COLORS[i], color2=second, intensity=_ood_intensity(rng), jitter=0.03,
                      cell=rng.uniform(0.15, 0.6))


def _ood_tetra(b: _Builder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    rng = b.rng
    ang = yaw + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.normal(0.0, 0.2, 3)
    rad = 0.5 * size * rng.uniform(0.7, 1.0, 3)
    base = np.stack([x + rad * np.cos(ang), y + rad * np.sin(ang), np.full(3, z0)], axis=1)
    apex = [x + rng.normal(0, 0.15 * size), y + rng.normal(0, 0.15 * size), z0 + size * rng.uniform(0.6, 1.1)]
    b.add(make_hull(np.vstack([base, apex]), Tag(OOD_RAW_ID, inst, _novel_material(b))))


def _ood_pyramid(b: _Builder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    rot = _rot_z(yaw)
    half = 0.35 * size
    base = [np.array([x, y, z0]) + rot @ np.array([sx * half, sy * half, 0.0]) for sx in (-1, 1) for sy in (-1, 1)]
    apex = np.array([x, y, z0 + size * b.rng.uniform(0.5, 1.0)])
    b.add(make_hull(np.vstack(base + [apex]), Tag(OOD_RAW_ID, inst, _novel_material(b))))


def _ood_ring(b: _Builder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
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


def _ood_tilted_slab(b: _Builder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    rng = b.rng
    dims = np.array([size, rng.uniform(0.08, 0.3), size * rng.uniform(0.4, 0.9)])
    tilt = math.radians(rng.uniform(15.0, 45.0)) * (1 if rng.random() < 0.5 else -1)
    rot = _rot_z(yaw) @ _rot_x(tilt)
    signs = np.array(list(itertools.product((-1, 1), repeat=3)), dtype=float)
    low = ((signs * dims / 2) @ rot.T)[:, 2].min()
    b.add(make_box((x, y, z0 - 0.05 - low), dims, rot, Tag(OOD_RAW_ID, inst, _novel_material(b))))


def _ood_stack(b: _Builder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    """2-4 irregular boxes piled up, each with its own novel material."""
    rng = b.rng
    n = int(rng.integers(2, 5))
    z = z0
    for _ in range(n):
        dims = np.array([size * rng.uniform(0.3, 0.6), size * rng.uniform(0.3, 0.6), size / n * rng.uniform(0.7, 1.2)])
        centre = (x + rng.normal(0, 0.08 * size), y + rng.normal(0, 0.08 * size), z + dims[2] / 2)
        b.add(make_box(centre, dims, _rot_z(rng.uniform(0, np.pi)), Tag(OOD_RAW_ID, inst, _novel_material(b))))
        z += dims[2]


def _ood_big_sphere(b: _Builder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    rng = b.rng
    radii = 0.5 * size * np.array([rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0), rng.uniform(0.55, 1.0)])
    b.add(Ellipsoid(tag=Tag(OOD_RAW_ID, inst, _novel_material(b)), centre=np.array([x, y, z0 + 0.92 * radii[2]]),
                    rot=_rot_z(yaw), radii=radii))


def _ood_veg_car(b: _Builder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    """Car geometry (and car-like intensity) wearing a foliage texture."""
    rng = b.rng
    color = b.pick(FOLIAGE_COLORS)
    mat = b.material("foliage", color, color2=np.clip(color * 1.6, 0, 1), intensity=_mixed_intensity(rng, (0.2, 0.55)))
    tag = Tag(OOD_RAW_ID, inst, mat)
    shape = _car_shape(rng, scale=size / 4.3)
    _car_geometry(b, shape, x, y, z0, yaw, tag, tag, tag)


def _ood_road_pole(b: _Builder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    """Pole geometry (and pole-like intensity) with the colour and grain of asphalt."""
    rng = b.rng
    g = rng.uniform(*ROAD_GREY)
    mat = b.material("asphalt", (g, g, g * 1.03), intensity=_mixed_intensity(rng, (0.3, 0.42)))
    b.add(make_segment((x, y, z0), (x, y, z0 + size), rng.uniform(0.1, 0.3), Tag(OOD_RAW_ID, inst, mat)))


def _ood_novel_wall(b: _Builder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    """Building-like wall slab (facade texture, building intensity) in a saturated novel colour."""
    rng = b.rng
    mat = _facade_material(b, color=b.pick(NOVEL_COLORS), intensity=_mixed_intensity(rng, (0.22, 0.38)))
    height = rng.uniform(1.5, 3.5)
    b.add(make_box((x, y, z0 + height / 2), (size, rng.uniform(0.2, 0.5), height), _rot_z(yaw),
                   Tag(OOD_RAW_ID, inst, mat)))


def _ood_brick_bush(b: _Builder, inst: int, x: float, y: float, z0: float, yaw: float, size: float) -> None:
    """Bush geometry (bumpy spheres, foliage range jitter and intensity) wearing a brick-wall texture."""
    rng = b.rng
    mat = _facade_material(b, windows=False, intensity=_mixed_intensity(rng, (0.38, 0.52)), depth_jitter=0.08)
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


def _ood_spot(b: _Builder, st: _Street, in_fov: bool) -> tuple[float, float] | None:
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


def _place_ood(b: _Builder, st: _Street, kind: str, size: float, x: float, y: float, occluded: bool) -> bool:
    yaw = b.rng.uniform(0.0, 2 * np.pi)
    rect = _rect(x, y, *_ood_half_size(kind, size), yaw)
    if not b.free(rect, margin=0.4):
        return False
    inst = b.thing()
    OOD_BUILDERS[kind](b, inst, x, y, st.height(x, y), yaw, size)
    b.claim(rect)
    b.objects.append({"kind": kind, "label": OOD_RAW_ID, "instance": inst, "x": float(x), "y": float(y), "size": size,
                      "occluded": occluded})
    return True


def _place_behind_car(b: _Builder, st: _Street) -> bool:
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


def _add_ood(b: _Builder, st: _Street) -> None:
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


def _sample_lighting(rng: np.random.Generator) -> Lighting:
    el, az = math.radians(rng.uniform(20.0, 65.0)), rng.uniform(0.0, 2 * np.pi)
    sun = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    overcast = rng.random() < 0.25
    ambient = rng.uniform(0.55, 0.7) if overcast else rng.uniform(0.35, 0.5)
    zenith = np.array([0.62, 0.64, 0.68]) if overcast else np.array([0.3, 0.48, 0.82])
    horizon = np.array([0.8, 0.81, 0.83]) if overcast else np.array([0.74, 0.82, 0.92])
    return Lighting(sun=sun, ambient=ambient, diffuse=(1.05 - ambient) * (0.5 if overcast else 1.0),
                    zenith=zenith * rng.uniform(0.85, 1.05), horizon=horizon * rng.uniform(0.9, 1.05),
                    fog_distance=rng.uniform(150.0, 450.0), exposure=rng.uniform(0.8, 1.2),
                    tint=1.0 + rng.normal(0.0, 0.04, 3))


def generate_scene(rng: np.random.Generator, cfg: SyntheticConfig) -> Scene:
    """Sample one street scene: layout, buildings, roadside objects, vehicles, OOD objects, people."""
    noise_seed = int(rng.integers(2**62))
    b = _Builder(rng, cfg)
    st = _sample_street(rng)
    st.ground = _make_ground(b, st)
    _add_sidewalks(b, st)
    _add_buildings(b, st)
    _add_roadside(b, st)
    _add_vehicles(b, st)
    _add_ood(b, st)
    _add_people(b, st)
    _add_clutter(b, st)
    return Scene(st.ground, b.prims, b.materials, _sample_lighting(rng), noise_seed, b.objects)


# ---------------------------------------------------------------------------------------------
# Rendering


def _render_lidar(scene: Scene, cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Spinning-LiDAR returns: (points (N, 4) float32 in the LiDAR frame, labels (N,) uint32)."""
    rays = sensor_rays(LidarRays, cfg)
    t, pid = cast(scene, rays, cfg.max_range)
    _, hits = surface(scene, rays, t, pid)
    _, refl = shade(scene, hits)
    n = len(hits.dist)
    jitter = np.array([m.depth_jitter for m in scene.materials])[hits.material]
    r = hits.dist + rng.normal(0.0, cfg.range_noise, n) + jitter * np.abs(rng.normal(0.0, 1.0, n))
    outlier = rng.random(n) < cfg.outlier_fraction
    r = np.where(outlier, r + rng.normal(0.0, 1.0, n) * np.maximum(1.0, 0.15 * r), r)
    keep = (rng.random(n) >= cfg.dropout) & (hits.dist >= cfg.min_range) & (r > 0.5) & (r <= cfg.max_range)
    cos = np.abs((hits.normal * hits.dir).sum(axis=1))
    intensity = np.clip(refl * (0.75 + 0.25 * cos) + rng.normal(0.0, cfg.intensity_noise, n), 0.0, 1.0)
    xyz = hits.dir * r[:, None]  # the LiDAR frame is the world frame shifted to the sensor
    raw = np.where(outlier, OUTLIER, hits.label).astype(np.uint32)
    inst = np.where(outlier, 0, hits.instance).astype(np.uint32)
    points = np.concatenate([xyz, intensity[:, None]], axis=1).astype(np.float32)
    return points[keep], ((inst << np.uint32(16)) | raw)[keep]


def _sky(dirs: np.ndarray, light: Lighting) -> np.ndarray:
    s = np.clip(dirs[:, 2] / 0.45, 0.0, 1.0) ** 0.6
    return light.horizon * (1 - s)[:, None] + light.zenith * s[:, None]


def _render_camera(scene: Scene, cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Front camera: (image (H, W, 3) uint8, per-pixel raw label (H, W) uint32, 0 for sky)."""
    rays = sensor_rays(CameraRays, cfg)
    t, pid = cast(scene, rays, cfg.camera_max_range)
    idx, hits = surface(scene, rays, t, pid)
    albedo, _ = shade(scene, hits)
    light = scene.lighting
    lambert = np.clip(hits.normal @ light.sun, 0.0, None)
    radiance = albedo * (light.ambient * (0.8 + 0.2 * hits.normal[:, 2]) + light.diffuse * lambert)[:, None]
    fog = (1.0 - np.exp(-hits.dist / light.fog_distance))[:, None]
    rgb = _sky(rays.dirs, light)
    rgb[idx] = radiance * (1 - fog) + light.horizon * fog
    h, w = cfg.image_height, cfg.image_width
    img = (rgb * light.exposure * light.tint).reshape(h, w, 3) * 255.0 + rng.normal(0.0, cfg.image_noise, (h, w, 3))
    label_image = np.zeros(h * w, dtype=np.uint32)
    label_image[idx] = hits.label
    return np.clip(np.round(img), 0, 255).astype(np.uint8), label_image.reshape(h, w)


def render_scan(scene: Scene, cfg: SyntheticConfig, return_label_image: bool = False):
    """Render one scan: (points (N, 4) float32, labels (N,) uint32 [instance << 16 | raw], image (H, W, 3) uint8).

    With ``return_label_image`` a fourth array (H, W) uint32 gives each pixel's raw label (0 = sky),
    which is what a LiDAR point projecting to that pixel should carry unless occluded.
    Sensor noise is drawn from ``scene.noise_seed``, so rendering a scene twice gives identical arrays.
    """
    rng = np.random.default_rng(scene.noise_seed)
    points, labels = _render_lidar(scene, cfg, rng)
    image, label_image = _render_camera(scene, cfg, rng)
    if return_label_image:
        return points, labels, image, label_image
    return points, labels, image


# ---------------------------------------------------------------------------------------------
# Writing the SemanticKITTI layout


def scan_rng(seed: int, sequence: str, index: int) -> np.random.Generator:
    """Generator of one scan, independent of how many other scans are generated."""
    return np.random.default_rng([int(seed), int(sequence), int(index)])


def _atomic_write(path: Path, data: bytes) -> None:
    """Bytes to ``path`` through :func:`segood.atomic.atomic_write` (never a half-written file)."""
    atomic_write(path, lambda p: p.write_bytes(data))


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _check_out_dir(out: Path) -> None:
    """Refuse to write into an existing non-empty folder unless it is a previous synthetic output."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "synthetic.json").is_file():
        raise ValueError(f"{out}: refusing to write into a non-empty folder that is not a previous "
                         "synthetic output (no synthetic.json)")


SCAN_FILES = (("velodyne", ".bin"), ("labels", ".label"), ("image_2", ".png"))


def _remove_stale(seq_dir: Path, count: int) -> None:
    """Delete scans beyond ``count`` left by a larger previous synthetic output in this folder."""
    for folder, ext in SCAN_FILES:
        d = seq_dir / folder
        if not d.is_dir():
            continue
        for f in d.iterdir():
            if f.suffix == ext and f.stem.isdigit() and int(f.stem) >= count:
                f.unlink()


def _sequence_text(count: int) -> tuple[str, str]:
    """poses.txt (nominal straight drive along camera z) and times.txt for ``count`` scans."""
    poses, times = [], []
    for i in range(count):
        pose = np.hstack([np.eye(3), [[0.0], [0.0], [i * SCAN_PERIOD * NOMINAL_SPEED]]])
        poses.append(" ".join(f"{v:.6e}" for v in pose.ravel()))
        times.append(f"{i * SCAN_PERIOD:.6e}")
    return "".join(p + "\n" for p in poses), "".join(t + "\n" for t in times)


def _write_scan(seq_dir: Path, index: int, points: np.ndarray, labels: np.ndarray, image: np.ndarray) -> None:
    name = f"{index:06d}"
    _atomic_write(seq_dir / "velodyne" / f"{name}.bin", points.astype("<f4").tobytes())
    _atomic_write(seq_dir / "labels" / f"{name}.label", labels.astype("<u4").tobytes())
    _atomic_write(seq_dir / "image_2" / f"{name}.png", _png_bytes(image))


def _drop_sequence(seq_dir: Path) -> None:
    """Remove a sequence a previous synthetic output wrote but the new config has no scans for."""
    _remove_stale(seq_dir, 0)
    for name in ("calib.txt", "poses.txt", "times.txt"):
        (seq_dir / name).unlink(missing_ok=True)
    for folder, _ in SCAN_FILES:
        if (seq_dir / folder).is_dir() and not any((seq_dir / folder).iterdir()):
            (seq_dir / folder).rmdir()
    if seq_dir.is_dir() and not any(seq_dir.iterdir()):
        seq_dir.rmdir()


def _prepare_sequence(out: Path, seq: str, count: int, cfg: SyntheticConfig) -> Path:
    """Folders, calib, poses and times of one sequence; stale scans of an older output removed."""
    seq_dir = out / "sequences" / seq
    if count == 0:
        _drop_sequence(seq_dir)
        return seq_dir
    for folder, _ in SCAN_FILES:
        (seq_dir / folder).mkdir(parents=True, exist_ok=True)
    _remove_stale(seq_dir, count)
    poses, times = _sequence_text(count)
    _atomic_write(seq_dir / "calib.txt", _calib_text(cfg).encode())
    _atomic_write(seq_dir / "poses.txt", poses.encode())
    _atomic_write(seq_dir / "times.txt", times.encode())
    return seq_dir


def write_dataset(out_dir: str | Path, cfg: SyntheticConfig, progress: bool = True) -> dict:
    """Generate ``cfg.num_train`` scans in sequence 00 and ``cfg.num_val`` in 08 under ``out_dir``.

    Returns the summary that is also written to ``out_dir/synthetic.json`` (last, so an interrupted
    run never looks complete). Same config and seed -> byte-identical files.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {TRAIN_SEQUENCE: cfg.num_train, VAL_SEQUENCE: cfg.num_val}
    seq_dirs = {seq: _prepare_sequence(out, seq, n, cfg) for seq, n in counts.items()}
    class_points = np.zeros(1 << 16, dtype=np.int64)
    ood_kinds: dict[str, int] = {}
    scans_with_ood = 0
    jobs = [(seq, i) for seq, n in counts.items() for i in range(n)]
    for seq, i in tqdm(jobs, desc="synthetic scans", unit="scan", disable=not progress):
        scene = generate_scene(scan_rng(cfg.seed, seq, i), cfg)
        points, labels, image = render_scan(scene, cfg)
        _write_scan(seq_dirs[seq], i, points, labels, image)
        raw = labels & 0xFFFF
        class_points += np.bincount(raw, minlength=class_points.size)
        scans_with_ood += bool((raw == OOD_RAW_ID).any())
        for obj in scene.objects:
            if obj["label"] == OOD_RAW_ID:
                ood_kinds[obj["kind"]] = ood_kinds.get(obj["kind"], 0) + 1
    summary = _summary(cfg, counts, class_points, scans_with_ood, ood_kinds)
    _atomic_write(out / "synthetic.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _summary(cfg: SyntheticConfig, counts: dict[str, int], class_points: np.ndarray, scans_with_ood: int,
             ood_kinds: dict[str, int]) -> dict:
    return {
        "generator": "segood.synthetic",
        "version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "config": json.loads(json.dumps(asdict(cfg))),  # tuples -> lists, as read back from JSON
        "counts": counts,
        "splits": {"train": [TRAIN_SEQUENCE], "val": [VAL_SEQUENCE]},
        "classes": {str(k): v for k, v in RAW_CLASSES.items()},
        "ood_raw_ids": [OOD_RAW_ID],
        "ood_kinds": {"novel": list(OOD_KINDS_NOVEL), "mixed": list(OOD_KINDS_MIXED)},
        "points_per_class": {RAW_CLASSES[k]: int(class_points[k]) for k in RAW_CLASSES},
        "scans_with_ood": scans_with_ood,
        "ood_objects": dict(sorted(ood_kinds.items())),
        "notes": "Scans are independent scenes; poses.txt is a nominal straight-line trajectory only. "
                 "Labels: instance << 16 | raw id; raw 20 (other-vehicle -> learning 5) is the OOD class.",
    }
