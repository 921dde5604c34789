"""Materials: albedo texture + LiDAR reflectivity, both evaluated at world hit points."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from segood.synthetic.noise import fbm, hash01, _hsv_to_rgb, value_noise

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


def _tex_bus(m: Material, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Long vehicle body (near-OOD buses, trams): car paint with a band of dark side windows between
    pillars and a window across both ends (color2, the car cabin's glass and its reflectivity)."""
    lo, hi = m.params["band"]
    period, pillar = m.params["pillars"]
    f = value_noise(p, 1.5, m.seed)
    rgb = _shade_by(m, 0.9 + 0.2 * f)
    refl = np.full(len(p), m.intensity)
    z = p[:, 2]
    end = np.abs(n @ np.asarray(m.params["fwd"], float)) > 0.7
    side = (np.abs(n[:, 2]) < 0.3) & ~end & (np.mod(_facade_coord(p, n), period) > pillar)
    glass = (side | end) & (z > lo) & (z < hi)
    rgb[glass] = m.color2[None, :] * (0.8 + 0.4 * f[glass])[:, None]
    refl[glass] = 0.06
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
    "metal": _tex_metal, "sign": _tex_sign, "paint": _tex_paint, "cabin": _tex_cabin, "bus": _tex_bus,
    "cloth": _tex_cloth, "checker": _tex_checker, "dots": _tex_dots, "diagonal": _tex_diagonal,
    "rainbow": _tex_rainbow,
}
