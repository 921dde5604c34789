"""Point-wise OOD (anomaly) metrics: exact AUROC / AUPR / FPR95 and a mergeable histogram.

Convention (printed beside every number, and in the `conventions` of metrics.json):

* higher score = more anomalous; anomaly (OOD) is the positive class;
* points with ``ood_target == -1`` are dropped before anything is computed;
* AUROC: area under the ROC curve, ties counted as half (trapezoid rule, = sklearn);
* AUPR: average precision with anomaly positive, ``sum_n (R_n - R_{n-1}) P_n`` over distinct
  thresholds (= ``sklearn.metrics.average_precision_score``);
* FPR95: FPR on ID points at the first threshold, scanning from the highest score down, at which
  the anomaly TPR >= 0.95. Equal scores form one group that enters the prediction together.

Everything is numpy only (no torch import) so the module is usable from any process; CPU torch
tensors are accepted because ``np.asarray`` converts them.

Exact metrics sort once (O(n log n)). For multi-process evaluation use :class:`ScoreHistogram`:
two fixed-bin count vectors that are summed across processes (never gather per-point scores).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["auroc", "aupr", "fpr_at_tpr", "ood_metrics", "ScoreHistogram"]


# --------------------------------------------------------------------------- input handling


def _as_numpy(x: Any) -> np.ndarray:
    """Flatten an array-like (numpy, list, CPU torch tensor) into a 1-D numpy array."""
    if hasattr(x, "detach"):  # torch tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x).reshape(-1)


def _check_inputs(scores: Any, is_ood: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (scores, binary label) pair and return float64 scores and bool labels."""
    s = _as_numpy(scores).astype(np.float64, copy=False)
    y = _as_numpy(is_ood)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in size: {s.shape[0]} vs {y.shape[0]}")
    if np.isnan(s).any():
        raise ValueError(f"scores contain {int(np.isnan(s).sum())} NaN value(s)")
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("is_ood must be boolean or 0/1 (drop ignored points first, "
                             "or use ood_metrics(), which drops ood_target == -1)")
        y = y.astype(bool)
    return s, y


def _check_both_classes(num_id: int, num_ood: int) -> None:
    """OOD metrics are undefined unless both ID and OOD points are present."""
    if num_ood == 0:
        raise ValueError(f"no OOD (anomaly) points among {num_id} points: metrics undefined")
    if num_id == 0:
        raise ValueError(f"no ID points among {num_ood} points: metrics undefined")


# --------------------------------------------------------------------------- curve core


def _cumulative_counts(scores: np.ndarray, is_ood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) at the end of each group of equal scores, highest score first.

    Each entry corresponds to one distinct threshold t: tp = #OOD with score >= t,
    fp = #ID with score >= t. Ties are one group, so they enter the prediction together.
    """
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], is_ood[order]
    group_end = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tp = np.cumsum(y, dtype=np.int64)[group_end]
    fp = (group_end + 1) - tp
    return tp.astype(np.float64), fp.astype(np.float64)


def _auroc_from_cumulative(tp: np.ndarray, fp: np.ndarray) -> float:
    """Trapezoid area under the ROC curve through (0, 0) and every (fpr, tpr) point."""
    tp0, fp0 = np.r_[0.0, tp], np.r_[0.0, fp]
    area = np.sum(np.diff(fp0) * (tp0[1:] + tp0[:-1])) / 2.0
    return float(area / (tp[-1] * fp[-1]))


def _aupr_from_cumulative(tp: np.ndarray, fp: np.ndarray) -> float:
    """Average precision: sum over thresholds of recall increment times precision."""
    recall_step = np.diff(np.r_[0.0, tp]) / tp[-1]
    precision = tp / (tp + fp)
    return float(np.sum(recall_step * precision))


def _fpr_from_cumulative(tp: np.ndarray, fp: np.ndarray, tpr: float) -> float:
    """FPR at the first threshold (highest score down) whose TPR reaches ``tpr``."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    first = int(np.argmax(tp / tp[-1] >= tpr))  # exists: the last entry has TPR 1
    return float(fp[first] / fp[-1])


def _cumulative_checked(scores: Any, is_ood: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate inputs, require both classes, return cumulative (tp, fp)."""
    s, y = _check_inputs(scores, is_ood)
    num_ood = int(y.sum())
    _check_both_classes(y.size - num_ood, num_ood)
    return _cumulative_counts(s, y)


# --------------------------------------------------------------------------- public API


def auroc(scores: Any, is_ood: Any) -> float:
    """Exact area under the ROC curve, anomaly positive, ties counted as half."""
    return _auroc_from_cumulative(*_cumulative_checked(scores, is_ood))


def aupr(scores: Any, is_ood: Any) -> float:
    """Exact average precision with anomaly positive (sklearn's average_precision_score)."""
    return _aupr_from_cumulative(*_cumulative_checked(scores, is_ood))


def fpr_at_tpr(scores: Any, is_ood: Any, tpr: float = 0.95) -> float:
    """FPR on ID points at the first threshold where anomaly TPR >= ``tpr`` (ties grouped)."""
    return _fpr_from_cumulative(*_cumulative_checked(scores, is_ood), tpr)


def _metrics_dict(tp: np.ndarray, fp: np.ndarray) -> dict[str, float | int]:
    """All metrics from one set of cumulative counts (shared by exact and histogram paths)."""
    return {
        "auroc": _auroc_from_cumulative(tp, fp),
        "aupr": _aupr_from_cumulative(tp, fp),
        "fpr95": _fpr_from_cumulative(tp, fp, 0.95),
        "num_id": int(fp[-1]),
        "num_ood": int(tp[-1]),
    }


def ood_metrics(scores: Any, ood_target: Any) -> dict[str, float | int]:
    """AUROC, AUPR, FPR95 and point counts; points with ``ood_target == -1`` are dropped.

    ``ood_target``: 1 = OOD (anomaly, positive), 0 = ID, -1 = ignored (DEVELOPERS.md, "Label conventions").
    Values are fractions in [0, 1] (multiply by 100 for the usual percentage tables).
    """
    s, t = _as_numpy(scores), _as_numpy(ood_target)
    if s.shape != t.shape:
        raise ValueError(f"scores and ood_target differ in size: {s.shape[0]} vs {t.shape[0]}")
    if not np.isin(t, (-1, 0, 1)).all():
        raise ValueError("ood_target values must be -1 (ignored), 0 (ID) or 1 (OOD)")
    keep = t != -1
    return _metrics_dict(*_cumulative_checked(s[keep], t[keep] == 1))


# --------------------------------------------------------------------------- histogram


class ScoreHistogram:
    """Streaming, mergeable fixed-bin score histograms (one for ID, one for OOD points).

    Scores are clamped into ``[lo, hi]`` and binned into ``bins`` equal-width bins; each bin then
    behaves like one group of tied scores, so the metrics are exact for the binned scores and
    within roughly one bin's share of points of the exact ones. ``counts`` (shape (2, bins),
    int64; row 0 = ID, row 1 = OOD) is the only state: all-reduce it (sum) across processes,
    or use :meth:`merge`.
    """

    def __init__(self, lo: float, hi: float, bins: int = 65536) -> None:
        if not np.isfinite([lo, hi]).all() or not hi > lo:
            raise ValueError(f"need finite lo < hi, got lo={lo}, hi={hi}")
        if int(bins) < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.lo, self.hi, self.bins = float(lo), float(hi), int(bins)
        self.counts = np.zeros((2, self.bins), dtype=np.int64)

    def _bin_index(self, scores: np.ndarray) -> np.ndarray:
        """Bin index of each (clamped) score."""
        scaled = (np.clip(scores, self.lo, self.hi) - self.lo) / (self.hi - self.lo)
        return np.minimum((scaled * self.bins).astype(np.int64), self.bins - 1)

    def update(self, scores: Any, is_ood: Any) -> "ScoreHistogram":
        """Add points. ``is_ood``: bool / 0-1, or an ``ood_target`` array whose -1 are dropped."""
        labels = _as_numpy(is_ood)
        if labels.dtype != np.bool_ and labels.size and labels.min() < 0:
            if not np.isin(labels, (-1, 0, 1)).all():
                raise ValueError("ood_target values must be -1 (ignored), 0 (ID) or 1 (OOD)")
            keep = labels != -1
            scores, labels = _as_numpy(scores)[keep], labels[keep]
        s, y = _check_inputs(scores, labels)
        idx = self._bin_index(s)
        self.counts[0] += np.bincount(idx[~y], minlength=self.bins)
        self.counts[1] += np.bincount(idx[y], minlength=self.bins)
        return self

    def merge(self, other: "ScoreHistogram") -> "ScoreHistogram":
        """Add another histogram's counts in place (same lo, hi and bins required)."""
        if (self.lo, self.hi, self.bins) != (other.lo, other.hi, other.bins):
            raise ValueError("cannot merge histograms with different lo/hi/bins: "
                             f"{(self.lo, self.hi, self.bins)} vs {(other.lo, other.hi, other.bins)}")
        self.counts += other.counts
        return self

    def metrics(self) -> dict[str, float | int]:
        """AUROC, AUPR, FPR95, num_id, num_ood from the binned counts (same keys as ood_metrics)."""
        id_counts, ood_counts = self.counts[0][::-1], self.counts[1][::-1]  # highest score first
        nonempty = (id_counts + ood_counts) > 0
        tp = np.cumsum(ood_counts[nonempty]).astype(np.float64)
        fp = np.cumsum(id_counts[nonempty]).astype(np.float64)
        _check_both_classes(int(fp[-1]) if fp.size else 0, int(tp[-1]) if tp.size else 0)
        return _metrics_dict(tp, fp)
