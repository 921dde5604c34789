"""The scene: ground regions, lighting and the list of primitives."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segood.synthetic.config import PARKING, ROAD, SIDEWALK, TERRAIN
from segood.synthetic.materials import Material
from segood.synthetic.primitives import Primitive

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
