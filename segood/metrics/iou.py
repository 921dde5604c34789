"""Confusion-matrix based IoU for ID semantic segmentation (on original points, never voxels).

The matrix is a (C, C) int64 count array (rows = ground truth, columns = prediction); it is the
only state, so it is summed across processes (all-reduce) rather than gathering predictions.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["ConfusionMatrix"]


def _as_int_numpy(x: Any) -> np.ndarray:
    """Flatten a numpy array / list / (any-device) torch tensor into int64 numpy."""
    if hasattr(x, "detach"):  # torch tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x).reshape(-1).astype(np.int64, copy=False)


class ConfusionMatrix:
    """Accumulates a (num_classes, num_classes) confusion matrix over train ids 0..C-1.

    Points with ``target == -1`` (unlabeled or OOD, see DEVELOPERS.md "Label conventions") are ignored.

    mIoU convention: the mean of per-class IoU over the classes **present in the ground truth**
    (at least one labelled point). A class absent from the ground truth but predicted somewhere
    gets IoU 0 in :meth:`iou` yet is not averaged; a class with neither ground truth nor
    predictions gets NaN. Note: semantic-kitti-api averages over all classes (absent ones
    count as 0); on full validation sets, where every class occurs, the two agree.
    """

    def __init__(self, num_classes: int) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> "ConfusionMatrix":
        """Add predictions (train ids) against targets (train ids or -1 = ignored)."""
        p, t = _as_int_numpy(pred), _as_int_numpy(target)
        if p.shape != t.shape:
            raise ValueError(f"pred and target differ in size: {p.shape[0]} vs {t.shape[0]}")
        keep = t != -1
        p, t = p[keep], t[keep]
        c = self.num_classes
        if t.size and (t.min() < 0 or t.max() >= c):
            raise ValueError(f"target values must be in [0, {c}) or -1, got [{t.min()}, {t.max()}]")
        if p.size and (p.min() < 0 or p.max() >= c):
            raise ValueError(f"pred values must be in [0, {c}), got [{p.min()}, {p.max()}]")
        self.matrix += np.bincount(t * c + p, minlength=c * c).reshape(c, c)
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another confusion matrix in place (same number of classes required)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix
        return self

    def iou(self) -> np.ndarray:
        """Per-class IoU = TP / (TP + FP + FN); NaN where the class has no GT and no prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        """Mean IoU over classes present in the ground truth (NaN if there is none)."""
        present = self.matrix.sum(1) > 0
        return float(self.iou()[present].mean()) if present.any() else float("nan")

    def accuracy(self) -> float:
        """Overall point accuracy over labelled points (NaN if there is none)."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """``{'miou', 'accuracy', 'iou': {name: value}}`` with plain Python floats."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"got {len(names)} class names for {self.num_classes} classes")
        return {
            "miou": self.miou(),
            "accuracy": self.accuracy(),
            "iou": {name: float(v) for name, v in zip(names, self.iou())},
        }
