"""Scene generation, the roadside: fences, hedges, trees, lamps, signs and yards."""
from __future__ import annotations

import numpy as np

from segood.synthetic.config import FENCE, POLE, TRAFFIC_SIGN, TRUNK, VEGETATION, X_MAX, X_MIN
from segood.synthetic.primitives import (Cylinder, frame_from_axis, make_box, make_hull, make_segment,
                                         SphereCluster, Tag)
from segood.synthetic.builder import (FENCE_COLORS, FOLIAGE_COLORS, POLE_COLORS, SIGN_COLORS, SceneBuilder,
                                      StreetLayout, TRUNK_COLORS, footprint)


def add_fence(b: SceneBuilder, st: StreetLayout, x0: float, x1: float, y: float) -> None:
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


def foliage_material(b: SceneBuilder) -> int:
    color = b.pick(FOLIAGE_COLORS)
    return b.material("foliage", color, color2=np.clip(color * 1.6, 0, 1), intensity=b.rng.uniform(0.38, 0.52),
                      depth_jitter=0.08)


def add_hedge(b: SceneBuilder, x0: float, x1: float, y: float, z0: float) -> None:
    """Row of overlapping spheres: a bumpy vegetation surface."""
    rng = b.rng
    r = rng.uniform(0.4, 0.8)
    xs = np.arange(x0 + r, x1 - r * 0.5, 0.7 * r)
    if len(xs) == 0:
        return
    mat = foliage_material(b)
    centres = np.stack([xs + rng.normal(0, 0.1 * r, len(xs)), y + rng.normal(0, 0.15 * r, len(xs)),
                        z0 + r * rng.uniform(0.4, 0.8, len(xs))], axis=1)
    radii = r * rng.uniform(0.8, 1.2, len(xs))
    for k in range(0, len(xs), 10):
        b.add(SphereCluster(tag=Tag(VEGETATION, 0, mat), centres=centres[k:k + 10], radii=radii[k:k + 10]))


def add_tree(b: SceneBuilder, x: float, y: float, z0: float) -> None:
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
    b.add(SphereCluster(tag=Tag(VEGETATION, 0, foliage_material(b)), centres=centres, radii=radii))
    b.claim(footprint(x, y, r + 0.2, r + 0.2))


def _add_lamp(b: SceneBuilder, x: float, y: float, z0: float, side: int) -> None:
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
    b.claim(footprint(x, y, r + 0.2, r + 0.2))


def _add_sign(b: SceneBuilder, x: float, y: float, z0: float) -> None:
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
    b.claim(footprint(x, y, 0.3, 0.3))


def _furniture_line(st: StreetLayout, side: int) -> tuple[float, float]:
    """(y, z0) just outside the curb where lamps, trees and signs stand."""
    walk = st.band(side, "sidewalk")
    if walk is not None:
        return walk[0] + side * 0.6, st.curb
    inner = st.bands[side][0]
    edge = inner[2] if inner[0] == "parking" else inner[1]
    return edge + side * 0.8, 0.0


def add_roadside(b: SceneBuilder, st: StreetLayout) -> None:
    """Lamps, trees and signs along the curbs; hedges and fences in suburban front yards."""
    rng = b.rng
    for side in (1, -1):
        y, z0 = _furniture_line(st, side)
        for a, e in st.x_segments(-80.0, 120.0):
            for x in np.arange(a + rng.uniform(0, 10), e, rng.uniform(20.0, 35.0)):
                if b.free(footprint(x, y, 0.3, 0.3)):
                    _add_lamp(b, x, y + side * 0.1, z0, side)
            if rng.random() < (0.5 if st.urban else 0.8):
                for x in np.arange(a + rng.uniform(0, 8), e, rng.uniform(7.0, 16.0)):
                    if rng.random() < 0.7 and b.free(footprint(x, y, 0.5, 0.5)):
                        add_tree(b, x, y + side * rng.uniform(0.0, 0.6), z0)
        _add_yard(b, st, side)
    for _ in range(int(rng.integers(1, 5))):
        side = 1 if rng.random() < 0.5 else -1
        y, z0 = _furniture_line(st, side)
        x = rng.uniform(-30.0, 60.0)
        if b.free(footprint(x, y, 0.4, 0.4)) and not st.in_cross(x, margin=1.0):
            _add_sign(b, x, y, z0)


def _add_yard(b: SceneBuilder, st: StreetLayout, side: int) -> None:
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
                add_fence(b, st, x0, x1, y_in + side * 0.3)
            elif pick < 0.55:
                add_hedge(b, x0, x1, y_in + side * rng.uniform(0.8, abs(y_out - y_in) - 0.8), 0.0)
            elif pick < 0.7:
                add_tree(b, (x0 + x1) / 2, (y_in + y_out) / 2, 0.0)
