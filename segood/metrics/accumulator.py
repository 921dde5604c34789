"""The whole state of one streaming evaluation: a confusion matrix per subset and, per score, one
fixed-bin histogram per subset (:class:`EvalAccumulator`). Nothing per-point is kept, so memory does
not grow with the data set and two states can be summed (:meth:`EvalAccumulator.merge`).

Histogram axis per score (:class:`Binning`): scores with a known range (anomaly head, MSP, entropy,
GEN, kNN; see :func:`segood.ood.scores.score_range`) are binned linearly on it; unbounded ones
through the monotone squash ``u = z / (1 + |z|)``, ``z = (s - centre) / scale`` onto (-1, 1), with
centre = median and scale = half the 10-90% quantile spread of the first batch. The squash never
clips (tails just get coarser bins), and it is monotone, so AUROC / AUPR / FPR95 are those of the
binned raw scores. Binning error is bounded from the counts themselves (:func:`bin_error_bounds`)
and reported beside every number. (Multi-process: broadcast rank 0's squash before merging.)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from segood.metrics.iou import ConfusionMatrix
from segood.metrics.ood import ScoreHistogram

SUBSETS = ("fov", "all")


@dataclass(frozen=True)
class Binning:
    """Monotone map of raw scores onto a histogram axis.

    ``linear``: raw scores binned on [lo, hi]. ``squash``: ``u = z / (1 + |z|)`` with
    ``z = (s - centre) / scale``, binned on [-1, 1]; order-preserving, so the metrics are unchanged
    up to binning, and unbounded scores never fall off the axis.
    """

    kind: str
    lo: float = -1.0
    hi: float = 1.0
    centre: float = 0.0
    scale: float = 1.0

    @staticmethod
    def calibrate(scores: np.ndarray) -> "Binning":
        """Squash centred on the median with scale = half the 10-90% spread (1 if degenerate)."""
        q10, q50, q90 = np.quantile(np.asarray(scores, np.float64), [0.1, 0.5, 0.9])
        spread = (q90 - q10) / 2.0
        return Binning("squash", centre=float(q50), scale=float(spread) if spread > 0 else 1.0)

    def forward(self, s: np.ndarray) -> np.ndarray:
        s = np.asarray(s, np.float64)
        if self.kind == "linear":
            return s
        z = np.clip((s - self.centre) / self.scale, -1e300, 1e300)
        return z / (1.0 + np.abs(z))

    def inverse(self, u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, np.float64)
        if self.kind == "linear":
            return u
        with np.errstate(divide="ignore"):
            return self.centre + self.scale * u / (1.0 - np.abs(u))

    def histogram(self, bins: int) -> ScoreHistogram:
        return ScoreHistogram(self.lo, self.hi, bins)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bin_error_bounds(counts: np.ndarray, tpr: float = 0.95) -> dict[str, float]:
    """Upper bounds on |binned - exact| from the counts alone.

    AUROC: binned counts every ID/OOD pair inside one bin as half, exact as 0, 1/2 or 1, and pairs in
    different bins are ordered correctly, so the error is at most half the share of same-bin pairs.
    FPR95: the exact first threshold with TPR >= ``tpr`` lies in the bin where the binned cumulative
    TPR first reaches it, so the error is at most that bin's share of ID points.
    """
    idc, oodc = counts[0].astype(np.float64), counts[1].astype(np.float64)
    n_id, n_ood = idc.sum(), oodc.sum()
    if n_id == 0 or n_ood == 0:
        return {"auroc": float("nan"), "fpr95": float("nan")}
    first = int(np.argmax(np.cumsum(oodc[::-1]) / n_ood >= tpr))
    return {"auroc": float(0.5 * (idc * oodc).sum() / (n_id * n_ood)),
            "fpr95": float(idc[::-1][first] / n_id)}


class EvalAccumulator:
    """All state of one evaluation: a confusion matrix and, per score, one ScoreHistogram per
    subset (FOV, all). Fixed size whatever the number of points; :meth:`merge` sums two of them."""

    def __init__(self, names: list[str], num_classes: int, ranges: Mapping[str, tuple[float, float] | None],
                 bins: int = 65536) -> None:
        self.names, self.bins = list(names), int(bins)
        self.conf = {s: ConfusionMatrix(num_classes) for s in SUBSETS}
        self.binning: dict[str, Binning] = {}
        self.hist: dict[str, dict[str, ScoreHistogram]] = {}
        for n in self.names:
            if ranges.get(n) is not None:
                self._set_binning(n, Binning("linear", *map(float, ranges[n])))

    def _set_binning(self, name: str, binning: Binning) -> None:
        self.binning[name] = binning
        self.hist[name] = {s: binning.histogram(self.bins) for s in SUBSETS}

    def axis(self, name: str, sample: np.ndarray) -> Binning:
        """The histogram axis of a score (calibrated on ``sample`` when it has none yet)."""
        if name not in self.binning:
            self._set_binning(name, Binning.calibrate(sample))
        return self.binning[name]

    def add_segmentation(self, pred: Any, target: Any, visible: Any) -> None:
        """Predicted vs target train ids (-1 ignored) for all points and for the camera-visible ones."""
        pred, target, visible = (np.asarray(a) for a in (pred, target, visible))
        self.conf["all"].update(pred, target)
        self.conf["fov"].update(pred[visible], target[visible])

    def add_scores(self, scores: Mapping[str, Any], is_ood: Any, visible: Any) -> None:
        """Scores of labelled points only (ID or OOD; drop ignored points first)."""
        y, v = np.asarray(is_ood, bool), np.asarray(visible, bool)
        if y.size == 0:
            return
        for n in self.names:
            s = np.asarray(scores[n], np.float64)
            u = self.axis(n, s).forward(s)
            self.hist[n]["all"].update(u, y)
            self.hist[n]["fov"].update(u[v], y[v])

    def merge(self, other: "EvalAccumulator") -> "EvalAccumulator":
        """Add another accumulator's counts (same scores, bins and binning required)."""
        for s in SUBSETS:
            self.conf[s].merge(other.conf[s])
        for n in other.hist:
            if n not in self.hist:
                self._set_binning(n, other.binning[n])
            elif self.binning[n] != other.binning[n]:
                raise ValueError(f"cannot merge '{n}': binnings differ ({self.binning[n]} vs {other.binning[n]})")
            for s in SUBSETS:
                self.hist[n][s].merge(other.hist[n][s])
        return self

    def ood(self) -> dict[str, dict[str, dict]]:
        """``{score: {subset: {auroc, aupr, fpr95, num_id, num_ood}}}``, or an error entry when undefined."""
        return {n: {s: safe_metrics(self.hist[n][s]) if n in self.hist else _undefined(0, 0) for s in SUBSETS}
                for n in self.names}

    def error_bounds(self) -> dict[str, dict[str, dict[str, float]]]:
        return {n: {s: bin_error_bounds(self.hist[n][s].counts) for s in SUBSETS} for n in self.hist}

    def histograms(self) -> dict[str, np.ndarray]:
        """Flat arrays for ``histograms.npz``: ``{score}/{subset}`` counts (2, bins), ``{score}/binning``."""
        arrays = {}
        for n, per in self.hist.items():
            for s, h in per.items():
                arrays[f"{n}/{s}"] = h.counts
            arrays[f"{n}/binning"] = np.array(json.dumps(self.binning[n].to_dict()))
        return arrays


def _undefined(num_id: int, num_ood: int) -> dict:
    return {"error": "no ID or no OOD point in this subset: metrics undefined", "num_id": num_id, "num_ood": num_ood}


def safe_metrics(hist: ScoreHistogram) -> dict:
    """Histogram metrics, or a dict saying why they are undefined (e.g. no OOD point in the split)."""
    try:
        return hist.metrics()
    except ValueError as e:
        return {"error": str(e), "num_id": int(hist.counts[0].sum()), "num_ood": int(hist.counts[1].sum())}
