"""IoU evaluators that reproduce the two reference implementations number for number.

Both keep one int64 confusion matrix over **learning ids** (the benchmark's classes) as their only
state, so they are histogram-based and reducible across processes: sum ``matrix`` (all-reduce) or
call :meth:`merge`; the result equals one pass over all points exactly (integer counts).

* :class:`SemanticKittiIoU` = semantic-kitti-api ``auxiliary/np_ioueval.py`` ``iouEval``:
  ``conf[pred, gt]`` (rows = prediction); the columns of the ignored classes are zeroed (points
  whose ground truth is ignored do not count); ``tp = diag``, ``fp = row sum - tp``,
  ``fn = column sum - tp``; ``iou = tp / (tp + fp + fn + 1e-15)``; mIoU = plain mean over every
  non-ignored class, so a class absent from the ground truth counts as 0. A prediction of an
  ignored class on a labelled point stays in that point's column: it still costs recall (fn).
* :class:`NuScenesIoU` = nuscenes-devkit ``nuscenes/eval/lidarseg/utils.py`` ``ConfusionMatrix``:
  ``cm[gt, pred]`` (rows = ground truth); each update zeroes the ignored class's row **and**
  column (a prediction of the ignored class on a labelled point is dropped, unlike above);
  ``iou = tp / union.astype(float32)``; mIoU = ``nanmean`` over classes, i.e. over classes with a
  non-zero union (ground truth or prediction present; the ignored class is NaN and drops out).

Protocol note: the devkit ignores a single class (0). With ``ignore`` holding more ids (e.g. the
OOD classes, for the ID-only mIoU of the OOD protocol) the same zeroing is applied to each of them.
:func:`reference_miou_from_train_confusion` turns segood's train-id matrix
(:class:`segood.metrics.iou.ConfusionMatrix`, OOD and ignored points already dropped) into either
reference's numbers for the ID classes.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

__all__ = ["SemanticKittiIoU", "NuScenesIoU", "reference_miou_from_train_confusion"]


def _ints(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x).reshape(-1).astype(np.int64, copy=False)


class _Base:
    def __init__(self, num_classes: int, ignore: Iterable[int] = (0,)) -> None:
        self.num_classes = int(num_classes)
        self.ignore = np.array(sorted(set(int(i) for i in ignore)), dtype=np.int64)
        if self.ignore.size and (self.ignore.min() < 0 or self.ignore.max() >= self.num_classes):
            raise ValueError(f"ignore ids {self.ignore.tolist()} outside [0, {self.num_classes})")
        self.include = np.array([c for c in range(self.num_classes) if c not in set(self.ignore.tolist())],
                                dtype=np.int64)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def _check(self, pred: np.ndarray, gt: np.ndarray) -> None:
        if pred.shape != gt.shape:
            raise ValueError(f"pred and gt differ in size: {pred.shape[0]} vs {gt.shape[0]}")
        for name, a in (("pred", pred), ("gt", gt)):
            if a.size and (a.min() < 0 or a.max() >= self.num_classes):
                raise ValueError(f"{name} values must be learning ids in [0, {self.num_classes}), "
                                 f"got [{a.min()}, {a.max()}]")

    def merge(self, other: "_Base") -> "_Base":
        if type(other) is not type(self) or other.num_classes != self.num_classes \
                or not np.array_equal(other.ignore, self.ignore):
            raise ValueError("cannot merge evaluators of different kind, class count or ignore set")
        self.matrix += other.matrix
        return self

    def miou(self) -> float:
        raise NotImplementedError


class SemanticKittiIoU(_Base):
    """semantic-kitti-api's ``iouEval`` (see the module doc); ``matrix[pred, gt]``."""

    def update(self, pred: Any, gt: Any) -> "SemanticKittiIoU":
        p, g = _ints(pred), _ints(gt)
        self._check(p, g)
        c = self.num_classes
        self.matrix += np.bincount(p * c + g, minlength=c * c).reshape(c, c)  # = np.add.at(conf, (p, g), 1)
        return self

    def stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        conf = self.matrix.copy()
        conf[:, self.ignore] = 0
        tp = np.diag(conf)
        fp = conf.sum(axis=1) - tp
        fn = conf.sum(axis=0) - tp
        return tp, fp, fn

    def iou(self) -> np.ndarray:
        """Per learning id (ignored ids included, as the API returns them)."""
        tp, fp, fn = self.stats()
        return tp / (tp + fp + fn + 1e-15)

    def miou(self) -> float:
        tp, fp, fn = self.stats()
        union = tp + fp + fn + 1e-15
        return float((tp[self.include] / union[self.include]).mean())

    def accuracy(self) -> float:
        """The API's ``getacc``: total tp / (tp + fp over the included classes)."""
        tp, fp, _ = self.stats()
        return float(tp.sum() / (tp[self.include].sum() + fp[self.include].sum() + 1e-15))


class NuScenesIoU(_Base):
    """nuscenes-devkit's lidarseg ``ConfusionMatrix`` (see the module doc); ``matrix[gt, pred]``."""

    def update(self, pred: Any, gt: Any) -> "NuScenesIoU":
        p, g = _ints(pred), _ints(gt)
        self._check(p, g)
        c = self.num_classes
        cm = np.bincount(g * c + p, minlength=c * c).reshape(c, c)
        cm[self.ignore, :] = 0
        cm[:, self.ignore] = 0
        self.matrix += cm
        return self

    def iou(self) -> np.ndarray:
        conf = self.matrix
        tp = np.diagonal(conf)
        union = conf.sum(axis=1) + conf.sum(axis=0) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return tp / union.astype(np.float32)

    def miou(self) -> float:
        return float(np.nanmean(self.iou()))


def reference_miou_from_train_confusion(matrix: np.ndarray, convention: str) -> tuple[float, np.ndarray]:
    """(mIoU, per-class IoU) over the ID classes from segood's train-id matrix (rows = GT).

    segood's matrix only holds points whose GT is an ID class, and predictions are ID classes, so
    it is the reference matrix restricted to the included classes; what differs is only the mean:
    ``semantickitti`` averages all ID classes (absent = 0), ``nuscenes`` those with a non-zero union.
    """
    m = np.asarray(matrix, dtype=np.int64)
    tp = np.diag(m)
    if convention == "semantickitti":
        iou = tp / (m.sum(0) + m.sum(1) - tp + 1e-15)
        return float(iou.mean()), iou
    if convention == "nuscenes":
        union = (m.sum(0) + m.sum(1) - tp).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / union
        return float(np.nanmean(iou)), iou
    raise ValueError(f"unknown convention '{convention}', expected 'semantickitti' or 'nuscenes'")
