"""The near-OOD benchmark's held-out family: buses and trams built like the ID vehicles.

Why: the standard benchmark's OOD objects carry reflectivities outside every ID range and saturated
colours, so a model-free "how rare is this intensity" rule already scores AUROC ~89. SemanticKITTI's
OOD class (other-vehicle: buses, trams) is near-OOD: vehicle-shaped, ordinary reflectivity and
colours. These vehicles reuse the ID vehicles' palette (``CAR_COLORS``), paint reflectivity
(0.2-0.55), glass (0.06) and tyres (0.08); what is new is their shape: longer and taller than
any car or truck, a window band along the side, low bellows between tram sections.

Every scene of the near benchmark gets ``near_min``-``near_max`` of them (and none of the standard
OOD objects); they are written with raw id 20 and the writer turns them into raw 0 (unlabelled,
ignored) in the train sequence, as the REAL protocol ignores other-vehicle when training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from segood.synthetic.calibration import _rot_z
from segood.synthetic.config import NEAR_KINDS, OOD_RAW_ID
from segood.synthetic.primitives import Cylinder, frame_from_axis, make_box, make_segment, Tag
from segood.synthetic.builder import CAR_COLORS, GLASS, POLE_COLORS, RUBBER
from segood.synthetic.builder import SceneBuilder as _Builder, StreetLayout as _Street, footprint as _rect


@dataclass
class _LongVehicle:
    kind: str
    sections: list[float]  # section lengths along the driving direction (one for a bus)
    gap: float  # bellows length between sections
    width: float
    height: float
    clearance: float
    wheel: float  # wheel radius

    @property
    def length(self) -> float:
        return sum(self.sections) + self.gap * (len(self.sections) - 1)


def _sample_shape(rng: np.random.Generator, kind: str) -> _LongVehicle:
    """A bus (one 10-13 m body, big wheels) or a tram (2-3 sections of 7-9 m, small bogie wheels)."""
    if kind == "bus":
        return _LongVehicle(kind, [rng.uniform(10.0, 13.0)], 0.0, rng.uniform(2.45, 2.6), rng.uniform(2.9, 3.4),
                            0.35, 0.5)
    sections = [rng.uniform(7.0, 9.0) for _ in range(int(rng.integers(2, 4)))]
    return _LongVehicle(kind, sections, 0.5, rng.uniform(2.3, 2.65), rng.uniform(3.2, 3.6), 0.3, 0.35)


def _build(b: _Builder, s: _LongVehicle, inst: int, x: float, y: float, z0: float, yaw: float) -> None:
    """Body boxes with the window-band paint, bellows, wheels and (trams) a pantograph; local x = forward."""
    rng = b.rng
    rot = _rot_z(yaw)
    origin = np.array([x, y, z0])

    def at(lx: float, ly: float, lz: float) -> np.ndarray:
        return origin + rot @ np.array([lx, ly, lz])

    refl = rng.uniform(0.2, 0.55)  # the ID vehicles' paint reflectivity
    body = Tag(OOD_RAW_ID, inst, b.material(
        "bus", b.pick(CAR_COLORS), color2=GLASS, intensity=refl, band=(z0 + s.clearance + 1.3, z0 + s.height - 0.45),
        pillars=(rng.uniform(1.1, 1.6), 0.3), fwd=rot[:, 0]))
    rubber = Tag(OOD_RAW_ID, inst, b.material("metal", RUBBER, intensity=0.08, jitter=0.02))
    axle = frame_from_axis(rot[:, 1])
    tall = s.height - s.clearance
    lx = -s.length / 2
    for k, seg in enumerate(s.sections):
        b.add(make_box(at(lx + seg / 2, 0.0, s.clearance + tall / 2), (seg, s.width, tall), rot, body))
        for wx in (lx + 0.2 * seg, lx + 0.8 * seg):
            for ly in (-(s.width / 2 - 0.15), s.width / 2 - 0.15):
                b.add(Cylinder(tag=rubber, centre=at(wx, ly, s.wheel), rot=axle, radius=s.wheel, half_height=0.14))
        lx += seg
        if k < len(s.sections) - 1:
            b.add(make_box(at(lx + s.gap / 2, 0.0, s.clearance + 0.45 * tall), (s.gap + 0.2, 0.85 * s.width, 0.85 * tall),
                           rot, rubber))
            lx += s.gap
    if s.kind == "tram":
        metal = Tag(OOD_RAW_ID, inst, b.material("metal", POLE_COLORS[0], intensity=rng.uniform(0.3, 0.42)))
        cx = -s.length / 2 + s.sections[0] / 2
        b.add(make_segment(at(cx - 0.8, 0.0, s.height), at(cx, 0.0, s.height + 0.9), 0.03, metal),
              make_segment(at(cx, 0.0, s.height + 0.9), at(cx + 0.8, 0.0, s.height + 0.9), 0.04, metal))


def _spot(b: _Builder, st: _Street, s: _LongVehicle) -> tuple[float, float] | None:
    """Centre (x, y) in a lane: mostly ahead inside the camera view, else anywhere around the car."""
    rng, cfg = b.rng, b.cfg
    lo, hi = st.road[0] + s.width / 2 + 0.3, st.road[1] - s.width / 2 - 0.3
    if lo >= hi:
        return None
    y = rng.uniform(lo, hi)
    if rng.random() < cfg.ood_in_fov_prob:
        near = rng.uniform(*cfg.ood_distance)  # distance of the rear (or front) end ahead of the car
        if abs(math.atan2(y, near)) > math.radians(cfg.camera_hfov_deg / 2 - 6.0):
            return None
        return near + s.length / 2, y
    return rng.uniform(-40.0, 40.0), y


def add_near_ood(b: _Builder, st: _Street) -> None:
    """``near_min``-``near_max`` buses / trams in the lanes (recorded in ``b.objects`` with their kind)."""
    rng, cfg = b.rng, b.cfg
    want = int(rng.integers(cfg.near_min, cfg.near_max + 1))
    placed = 0
    for _ in range(60):
        if placed >= want:
            break
        shape = _sample_shape(rng, NEAR_KINDS[int(rng.integers(len(NEAR_KINDS)))])
        spot = _spot(b, st, shape)
        if spot is None:
            continue
        yaw = (0.0 if rng.random() < 0.5 else math.pi) + rng.normal(0.0, 0.03)
        rect = _rect(*spot, shape.length / 2, shape.width / 2, yaw)
        if not b.free(rect, margin=0.5):
            continue
        inst = b.thing()
        _build(b, shape, inst, *spot, 0.0, yaw)
        b.claim(rect)
        b.objects.append({"kind": shape.kind, "label": OOD_RAW_ID, "instance": inst, "x": float(spot[0]),
                          "y": float(spot[1]), "size": shape.length, "occluded": False})
        placed += 1
