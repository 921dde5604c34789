"""Point colours shared by the 3D viewer, the headless render, the camera overlay and PLY export.

Views (one colour per point, RGB floats in [0, 1]):

* ``gt``: ground-truth class (SemanticKITTI palette through the label map; other-vehicle = OOD);
* ``pred``: predicted class, same palette;
* ``heat``: anomaly score, robustly normalised per scan (1st..99th percentile) on the turbo map
  (blue = normal, red = anomalous);
* ``hot``: points above the operating point in :data:`ANOMALY_RGB`, the others grey.
"""
from __future__ import annotations

import numpy as np

from segood.data.labels import LabelMap

VIEWS = ("gt", "pred", "heat", "hot")
VIEW_NAMES = {"gt": "ground truth", "pred": "prediction", "heat": "anomaly heatmap", "hot": "above the operating point"}
LEGEND_CLASSES = 10  # class swatches in a legend (the most frequent)
ANOMALY_RGB = np.array([1.0, 0.0, 0.0])  # points above the operating point ('hot' view)
NORMAL_RGB = np.array([0.6, 0.6, 0.6])  # the other points in the 'hot' view
UNKNOWN_RGB = np.array([0.45, 0.45, 0.45])  # ignored / unlabelled / unknown ids
BACKGROUND_RGB = (0.08, 0.08, 0.1)
HEAT_RANGE = (0.1, 0.95)  # part of the turbo map used: light blue .. red

# semantic-kitti-api config/semantic-kitti.yaml ``color_map`` (BGR, by raw id).
SEMANTICKITTI_BGR: dict[int, tuple[int, int, int]] = {
    0: (0, 0, 0), 1: (0, 0, 255), 10: (245, 150, 100), 11: (245, 230, 100), 13: (250, 80, 100),
    15: (150, 60, 30), 16: (255, 0, 0), 18: (180, 30, 80), 20: (255, 0, 0), 30: (30, 30, 255),
    31: (200, 40, 255), 32: (90, 30, 150), 40: (255, 0, 255), 44: (255, 150, 255), 48: (75, 0, 75),
    49: (75, 0, 175), 50: (0, 200, 255), 51: (50, 120, 255), 52: (0, 150, 255), 60: (170, 255, 150),
    70: (0, 175, 0), 71: (0, 60, 135), 72: (80, 240, 150), 80: (150, 240, 255), 81: (0, 0, 255),
    99: (255, 255, 50), 252: (245, 150, 100), 253: (200, 40, 255), 254: (30, 30, 255), 255: (90, 30, 150),
    256: (255, 0, 0), 257: (250, 80, 100), 258: (180, 30, 80), 259: (255, 0, 0),
}


def raw_id_colors(raw: np.ndarray) -> np.ndarray:
    """(N, 3) colours of raw dataset ids; ids without a palette entry get a stable hashed colour."""
    raw = np.asarray(raw, dtype=np.int64)
    ids, inv = np.unique(raw, return_inverse=True)
    lut = np.array([_raw_rgb(int(i)) for i in ids], dtype=np.float64).reshape(-1, 3)
    return lut[inv.reshape(-1)]


def _raw_rgb(i: int) -> np.ndarray:
    if i in SEMANTICKITTI_BGR:
        b, g, r = SEMANTICKITTI_BGR[i]
        return np.array([r, g, b]) / 255.0
    rng = np.random.default_rng(i)
    return 0.3 + 0.7 * rng.random(3)


def gt_colors(raw_labels: np.ndarray, label_map: LabelMap) -> np.ndarray:
    """Ground truth through the label map (moving-car shows as car); ignored points are grey."""
    learning = label_map.to_learning(raw_labels)
    canon = np.array([label_map.learning_map_inv.get(int(i), 0) for i in range(int(learning.max(initial=0)) + 1)])
    out = raw_id_colors(canon[learning])
    out[np.isin(learning, label_map.ignore_learning_ids)] = UNKNOWN_RGB
    return out


def pred_colors(train_ids: np.ndarray, label_map: LabelMap) -> np.ndarray:
    """Predicted train ids in the palette of their raw class; -1 (none) is grey."""
    train_ids = np.asarray(train_ids, dtype=np.int64)
    ok = (train_ids >= 0) & (train_ids < label_map.num_classes)
    out = np.tile(UNKNOWN_RGB, (len(train_ids), 1))
    out[ok] = raw_id_colors(label_map.train_to_raw(train_ids[ok]))
    return out


def heat_range(score: np.ndarray) -> tuple[float, float] | None:
    """The score range the heat colours span: the scan's 1st..99th percentiles (min..max if those
    coincide); None without a finite score."""
    s = np.asarray(score, dtype=np.float64)
    finite = s[np.isfinite(s)]
    if finite.size == 0:
        return None
    lo, hi = np.percentile(finite, [1, 99])
    if hi <= lo:
        lo, hi = finite.min(), finite.max()
    return float(lo), float(hi)


def normalise(score: np.ndarray) -> np.ndarray:
    """Scores -> [0, 1] over :func:`heat_range` (0.5 when all scores are equal); NaN -> 0."""
    s = np.asarray(score, dtype=np.float64)
    rng = heat_range(s)
    if rng is None:
        return np.zeros(len(s))
    lo, hi = rng
    if hi <= lo:
        return np.full(len(s), 0.5)
    return np.nan_to_num(np.clip((s - lo) / (hi - lo), 0.0, 1.0))


def heat_ramp(n: int) -> np.ndarray:
    """(n, 3) the heat colours from the lowest to the highest score (for legends)."""
    import matplotlib

    a, b = HEAT_RANGE
    return matplotlib.colormaps["turbo"](np.linspace(a, b, n))[:, :3]


def heat_colors(score: np.ndarray) -> np.ndarray:
    """(N, 3) turbo colours of the normalised score (blue = low, red = high)."""
    import matplotlib

    a, b = HEAT_RANGE
    return matplotlib.colormaps["turbo"](a + (b - a) * normalise(score))[:, :3]


def hot_colors(above: np.ndarray) -> np.ndarray:
    """Points above the operating point in ANOMALY_RGB, the rest grey."""
    return np.where(np.asarray(above, bool)[:, None], ANOMALY_RGB, NORMAL_RGB)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(rgb) * 255.0), 0, 255).astype(np.uint8)
