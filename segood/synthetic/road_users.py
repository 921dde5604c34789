"""Scene generation, road users: cars, trucks, people, bicycles, and unlabelled street clutter."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from segood.synthetic.config import BICYCLE, CAR, PERSON, TRUCK, UNLABELED
from segood.synthetic.calibration import _rot_z
from segood.synthetic.primitives import (Cylinder, Ellipsoid, frame_from_axis, make_box, make_hull,
                                         make_segment, Tag)
from segood.synthetic.builder import (CAR_COLORS, CLOTH_COLORS, FENCE_COLORS, GLASS, RUBBER, SKIN_COLORS,
                                      SceneBuilder, StreetLayout, footprint)


@dataclass
class CarShape:
    length: float
    width: float
    clearance: float
    body_height: float
    cabin_height: float
    wheel: float  # wheel radius


def car_shape(rng: np.random.Generator, scale: float = 1.0) -> CarShape:
    return CarShape(rng.uniform(3.8, 4.8) * scale, rng.uniform(1.65, 1.9) * scale, 0.28 * scale,
                     rng.uniform(0.55, 0.75) * scale, rng.uniform(0.45, 0.6) * scale, 0.32 * scale)


def car_geometry(b: SceneBuilder, s: CarShape, x: float, y: float, z0: float, yaw: float,
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


def _add_car(b: SceneBuilder, s: CarShape, x: float, y: float, yaw: float) -> None:
    rng, inst = b.rng, b.thing()
    paint = b.pick(CAR_COLORS)
    refl = rng.uniform(0.2, 0.55)
    body = Tag(CAR, inst, b.material("paint", paint, intensity=refl))
    cabin = Tag(CAR, inst, b.material("cabin", paint, color2=GLASS, intensity=refl))
    wheel = Tag(CAR, inst, b.material("metal", RUBBER, intensity=0.08, jitter=0.02))
    car_geometry(b, s, x, y, 0.0, yaw, body, cabin, wheel)
    b.objects.append({"kind": "car", "label": CAR, "instance": inst, "x": x, "y": y, "size": s.length})


def _add_truck(b: SceneBuilder, x: float, y: float, yaw: float) -> float:
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


def add_vehicles(b: SceneBuilder, st: StreetLayout) -> None:
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
            shape = car_shape(rng)
            cx = x + shape.length / 2
            yaw = (0.0 if rng.random() < 0.5 else math.pi) + rng.normal(0.0, 0.03)
            rect = footprint(cx, y, shape.length / 2, shape.width / 2, yaw)
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
        rect = footprint(x, y, half[0], half[1], yaw)
        if b.free(rect, margin=0.5):
            _add_truck(b, x, y, yaw) if truck else _add_car(b, car_shape(rng), x, y, yaw)
            b.claim(rect)


def _add_person(b: SceneBuilder, x: float, y: float, z0: float, yaw: float) -> None:
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


def _add_bicycle(b: SceneBuilder, x: float, y: float, z0: float, yaw: float) -> None:
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


def walk_spot(b: SceneBuilder, st: StreetLayout, on_road_prob: float) -> tuple[float, float] | None:
    """A random (x, y) on a sidewalk (or, with on_road_prob, on the road) ahead or around the car."""
    rng = b.rng
    x = rng.uniform(-30.0, 50.0)
    if rng.random() < on_road_prob:
        return x, rng.uniform(st.road[0] + 0.5, st.road[1] - 0.5)
    walk = st.band(1 if rng.random() < 0.5 else -1, "sidewalk")
    if walk is None or st.in_cross(x, 1.0):
        return None
    return x, rng.uniform(min(walk) + 0.3, max(walk) - 0.3)


def add_people(b: SceneBuilder, st: StreetLayout) -> None:
    rng = b.rng
    bikes = int(rng.integers(1, 3)) if rng.random() < 0.4 else 0
    for bike in [False] * int(rng.integers(1, 7)) + [True] * bikes:
        for _ in range(20):
            spot = walk_spot(b, st, 0.0 if bike else 0.25)
            if spot is None:
                continue
            x, y = spot
            yaw = rng.uniform(0.0, 2 * math.pi)
            rect = footprint(x, y, 0.9 if bike else 0.3, 0.9 if bike else 0.3)
            if b.free(rect):
                (_add_bicycle if bike else _add_person)(b, x, y, st.height(x, y), yaw)
                b.claim(rect)
                break


def add_clutter(b: SceneBuilder, st: StreetLayout) -> None:
    """Unlabelled street clutter (raw 0: bins, crates) so that the ignore label exists on real surfaces."""
    rng = b.rng
    for _ in range(int(rng.integers(0, 5))):
        spot = walk_spot(b, st, 0.0)
        if spot is None or not b.free(footprint(*spot, 0.5, 0.5)):
            continue
        x, y = spot
        z0 = st.height(x, y)
        tag = Tag(UNLABELED, 0, b.material("cloth", b.pick(FENCE_COLORS), intensity=rng.uniform(0.2, 0.4)))
        if rng.random() < 0.5:
            b.add(Cylinder(tag=tag, centre=np.array([x, y, z0 + 0.5]), rot=np.eye(3), radius=0.3, half_height=0.5))
        else:
            size = rng.uniform(0.4, 1.0, 3)
            b.add(make_box((x, y, z0 + size[2] / 2), size, _rot_z(rng.uniform(0, math.pi)), tag))
        b.claim(footprint(x, y, 0.5, 0.5))
