"""Scene generation, the street itself: layout sampling, ground, sidewalks, buildings, fences; the
roadside (:mod:`segood.synthetic.roadside`) and road users (:mod:`segood.synthetic.road_users`) are
added by :func:`segood.synthetic.render.generate_scene`."""
from __future__ import annotations

import numpy as np

from segood.synthetic.config import BUILDING, SIDEWALK, X_MAX, X_MIN
from segood.synthetic.calibration import _rot_z
from segood.synthetic.primitives import make_box, Tag
from segood.synthetic.scene import Ground, REGION_CODES, REGION_LABELS
from segood.synthetic.builder import BUILDING_COLORS, ROAD_GREY, SceneBuilder, StreetLayout
from segood.synthetic.roadside import add_fence, add_hedge, add_tree


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


def sample_street(rng: np.random.Generator) -> StreetLayout:
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
    return StreetLayout(road, bands, cross, rng.uniform(0.12, 0.18), urban)


def _ground_materials(b: SceneBuilder, st: StreetLayout) -> np.ndarray:
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


def make_ground(b: SceneBuilder, st: StreetLayout) -> Ground:
    segs = sorted([(min(a, c), max(a, c), n) for side in (1, -1) for n, a, c in st.bands[side]]
                  + [(st.road[0], st.road[1], "road")])
    edges = np.array([segs[0][0]] + [s[1] for s in segs])
    codes = np.array([REGION_CODES[s[2]] for s in segs])
    return Ground(edges, codes, REGION_CODES["terrain"], st.cross, REGION_LABELS, _ground_materials(b, st))


def add_sidewalks(b: SceneBuilder, st: StreetLayout) -> None:
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


def facade_material(b: SceneBuilder, color=None, windows: bool | None = None, intensity: float | None = None,
                     depth_jitter: float = 0.0) -> int:
    rng = b.rng
    color = b.pick(BUILDING_COLORS) if color is None else color
    course = rng.uniform(0.25, 0.6) if rng.random() < 0.4 else None
    windows = rng.random() < 0.85 if windows is None else windows
    win = (rng.uniform(2.2, 4.0), rng.uniform(2.8, 3.5), rng.uniform(0.35, 0.6), rng.uniform(0.4, 0.6)) if windows else None
    intensity = rng.uniform(0.22, 0.38) if intensity is None else intensity
    return b.material("facade", color, color2=np.asarray(color) * 0.75, intensity=intensity,
                      depth_jitter=depth_jitter, course=course, windows=win)


def add_buildings(b: SceneBuilder, st: StreetLayout) -> None:
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


def _add_building(b: SceneBuilder, st: StreetLayout, x0: float, x1: float, y_front: float, side: int) -> None:
    rng = b.rng
    depth = rng.uniform(8.0, 15.0)
    height = rng.uniform(6.0, 22.0) if st.urban else rng.uniform(3.5, 9.0)
    yaw = 0.0 if st.urban else rng.uniform(-0.06, 0.06)
    centre = ((x0 + x1) / 2, y_front + side * depth / 2, height / 2)
    b.add(make_box(centre, (x1 - x0, depth, height), _rot_z(yaw), Tag(BUILDING, 0, facade_material(b))))


def _fill_gap(b: SceneBuilder, st: StreetLayout, x0: float, x1: float, y: float, side: int) -> None:
    choice = b.rng.random()
    if choice < 0.45:
        add_fence(b, st, x0, x1, y)
    elif choice < 0.7:
        add_hedge(b, x0, x1, y + side * 0.6, 0.0)
    elif x1 - x0 > 3.0:
        add_tree(b, (x0 + x1) / 2, y + side * 2.0, 0.0)
