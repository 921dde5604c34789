"""Scene generation: streets, sidewalks, buildings, vegetation, furniture, vehicles and people."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from segood.synthetic.config import (BICYCLE, BUILDING, CAR, FENCE, PERSON, POLE, SIDEWALK, SyntheticConfig,
                                     TRAFFIC_SIGN, TRUCK, TRUNK, UNLABELED, VEGETATION, X_MAX, X_MIN)
from segood.synthetic.calibration import _rot_z
from segood.synthetic.noise import hue_rotate
from segood.synthetic.materials import Material
from segood.synthetic.primitives import (Cylinder, Ellipsoid, frame_from_axis, make_box, make_hull,
                                         make_segment, Primitive, SphereCluster, Tag)
from segood.synthetic.scene import Ground, REGION_CODES, REGION_LABELS

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
