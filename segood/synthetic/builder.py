"""What every scene part is built with: palettes, footprints, :class:`SceneBuilder` (primitives,
materials, instance ids, free space) and the street layout (:class:`StreetLayout`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from segood.synthetic.config import SyntheticConfig
from segood.synthetic.noise import hue_rotate
from segood.synthetic.materials import Material
from segood.synthetic.primitives import Primitive
from segood.synthetic.scene import Ground, REGION_CODES


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


def footprint(x: float, y: float, hx: float, hy: float, yaw: float = 0.0) -> tuple[float, float, float, float]:
    """Axis-aligned footprint (x0, x1, y0, y1) of a yawed rectangle with half sizes hx, hy."""
    c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
    ex, ey = hx * c + hy * s, hx * s + hy * c
    return x - ex, x + ex, y - ey, y + ey


class SceneBuilder:
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
class StreetLayout:
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
