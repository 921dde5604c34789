"""Evaluation protocols: the conventions of each reference evaluator, reproduced from histograms.

:data:`PROTOCOLS` is the only place a protocol is named; ``eval.protocol`` (or ``segood eval
--protocol NAME``) picks one, and its numbers are reported beside segood's own.

* ``segood``: segood's convention (:mod:`segood.metrics.ood`, :class:`segood.metrics.iou.ConfusionMatrix`):
  AUPR = average precision, FPR95 at the first TPR >= 0.95, mIoU over ID classes present in the GT.
* ``real``: REAL's ``semantic_kitti_api`` (``auxiliary/np_ioueval.py``, ``evaluate_semantics.py``):
  label map ``semantickitti_real`` (raw 99 ``other-object`` -> OOD class 5); AUPR = trapezoid area
  under sklearn's PR curve (``auc(recall, precision)``, curve closed at (recall 0, precision 1)),
  FPR95 = FPR at the first ROC point with TPR > 0.95, AUROC = trapezoid; OOD metrics drop learning
  id 0; mIoU = ``iouEval`` over every learning id but 0 (absent classes count as 0 and, as shipped,
  the OOD class is averaged in: ``miou``); ``miou_id`` also ignores the OOD class.
* ``nuscenes_devkit``: nuscenes-devkit lidarseg ``ConfusionMatrix`` (``nanmean`` over classes with a
  non-zero union, class 0 ignored; ``miou`` includes the OOD classes, ``miou_id`` ignores them); OOD
  metrics by REAL's formulas (the devkit has none).
* ``stu``: STU's ``compute_point_level_ood.py``: label 0 ignored, only points 2.5-50 m from the
  sensor, frames with fewer than 5 anomaly points (after those filters) skipped, AP =
  ``average_precision_score``, FPR95 at the first TPR > 0.95, AUROC = ``auc(roc_curve)``. For the
  ``fov`` subset the same rules are applied to the camera-visible points.

State: per score and subset one fixed-bin histogram pair, and one learning-id confusion matrix
``conf[pred, gt]`` per subset: mergeable and fixed in size. Binned metrics equal the reference
formulas applied to the binned scores; :func:`bin_error_bounds` bounds the distance to the exact
per-point values from the counts alone (AUROC, AUPR in either variant, FPR95 in either rule).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from segood.data.labels import LabelMap, load_label_map
from segood.metrics.ood import (ScoreHistogram, _as_numpy, _auroc_from_cumulative, _aupr_from_cumulative,
                                _check_both_classes, _cumulative_checked)
from segood.metrics.reference import NuScenesIoU, SemanticKittiIoU

__all__ = ["Protocol", "PROTOCOLS", "get_protocol", "protocol_names", "curve_metrics", "reference_ood_metrics",
           "histogram_metrics", "bin_error_bounds", "ProtocolAccumulator"]

SUBSETS = ("fov", "all")


@dataclass(frozen=True)
class Protocol:
    """One evaluator's conventions (see the module doc)."""

    name: str
    reference: str                       # what it reproduces (printed beside its numbers)
    aupr: str = "ap"                     # "ap" (average precision) | "trapezoid" (auc of the PR curve)
    fpr_rule: str = ">="                 # TPR ">=" 0.95 (segood) | ">" 0.95 (REAL, STU)
    iou: str | None = None               # None | "semantickitti" (iouEval) | "nuscenes" (devkit ConfusionMatrix)
    label_map: str | None = None         # label map of the ground truth; None = the data's (data.label_map)
    range_m: tuple[float, float] | None = None  # keep points with lo <= |xyz| <= hi (STU: 2.5-50 m)
    min_anomaly_points: int = 0          # skip frames with fewer anomaly points (STU: 5)

    def conventions(self) -> dict[str, str]:
        """Human-readable conventions for metrics.json and the report."""
        out = {"reference": self.reference,
               "aupr": "trapezoid area under the PR curve (auc(recall, precision))" if self.aupr == "trapezoid"
               else "average precision (average_precision_score)",
               "fpr95": f"FPR at the first threshold where TPR {self.fpr_rule} 0.95"}
        if self.label_map:
            out["label_map"] = self.label_map
        if self.iou:
            out["miou"] = ("iouEval: mean over every learning id but the ignored ones, absent = 0; miou averages "
                           "the OOD class in (as shipped), miou_id ignores it" if self.iou == "semantickitti" else
                           "devkit ConfusionMatrix: nanmean over classes with a non-zero union, class 0 ignored; "
                           "miou includes the OOD classes, miou_id ignores them")
        if self.range_m:
            out["range"] = f"points with {self.range_m[0]} m <= |xyz| <= {self.range_m[1]} m"
        if self.min_anomaly_points:
            out["frames"] = f"frames with fewer than {self.min_anomaly_points} anomaly points are skipped"
        return out


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("segood", "segood's own convention (DESIGN.md, Metrics)"),
    Protocol("real", "REAL / Jun-CEN/semantic_kitti_api auxiliary/np_ioueval.py", aupr="trapezoid", fpr_rule=">",
             iou="semantickitti", label_map="semantickitti_real"),
    Protocol("nuscenes_devkit", "nuscenes-devkit lidarseg ConfusionMatrix; OOD metrics as REAL", aupr="trapezoid",
             fpr_rule=">", iou="nuscenes"),
    Protocol("stu", "kumuji/stu_dataset compute_point_level_ood.py", fpr_rule=">", range_m=(2.5, 50.0),
             min_anomaly_points=5),
)}


def get_protocol(name: str) -> Protocol:
    """The protocol registered as ``name``; ConfigError lists the valid names."""
    from segood.config import ConfigError

    if name not in PROTOCOLS:
        raise ConfigError(f"eval.protocol: unknown protocol '{name}', expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def protocol_names(eval_cfg: Mapping[str, Any]) -> list[str]:
    """``eval.protocol`` of the ``eval`` section as a list (a name or a list of names), each checked."""
    value = (eval_cfg or {}).get("protocol") or "segood"
    names = [value] if isinstance(value, str) else [str(v) for v in value]
    for n in names:
        get_protocol(n)
    return names


# --------------------------------------------------------------------------- curve formulas


def _pr_trapezoid(tp: np.ndarray, fp: np.ndarray) -> float:
    """sklearn's ``auc(recall, precision)`` of ``precision_recall_curve``: the PR points of every distinct
    threshold, closed at (recall 0, precision 1), trapezoid rule."""
    recall = np.r_[0.0, tp / tp[-1]]
    precision = np.r_[1.0, tp / (tp + fp)]
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1])) / 2.0)


def _fpr(tp: np.ndarray, fp: np.ndarray, rule: str, tpr: float = 0.95) -> float:
    """FPR at the first threshold (highest score down) whose TPR satisfies ``rule``."""
    rate = tp / tp[-1]
    hit = rate > tpr if rule == ">" else rate >= tpr
    return float(fp[int(np.argmax(hit))] / fp[-1])  # exists: the last entry has TPR 1


def curve_metrics(tp: np.ndarray, fp: np.ndarray, protocol: Protocol) -> dict[str, float | int]:
    """AUROC / AUPR / FPR95 of one protocol from cumulative (tp, fp) per distinct threshold."""
    aupr = _pr_trapezoid(tp, fp) if protocol.aupr == "trapezoid" else _aupr_from_cumulative(tp, fp)
    return {"auroc": _auroc_from_cumulative(tp, fp), "aupr": aupr, "fpr95": _fpr(tp, fp, protocol.fpr_rule),
            "num_id": int(fp[-1]), "num_ood": int(tp[-1])}


def reference_ood_metrics(scores: Any, is_ood: Any, protocol: Protocol | str) -> dict[str, float | int]:
    """Exact per-point metrics of a protocol (sorting; for tests and small sets)."""
    p = get_protocol(protocol) if isinstance(protocol, str) else protocol
    return curve_metrics(*_cumulative_checked(scores, is_ood), p)


def _cumulative_from_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idc, oodc = counts[0][::-1], counts[1][::-1]  # highest score first
    nonempty = (idc + oodc) > 0
    return np.cumsum(oodc[nonempty]).astype(np.float64), np.cumsum(idc[nonempty]).astype(np.float64)


def histogram_metrics(hist: ScoreHistogram, protocol: Protocol) -> dict[str, Any]:
    """A protocol's metrics from binned counts, with their binning error bounds (or why undefined)."""
    tp, fp = _cumulative_from_counts(hist.counts)
    try:
        _check_both_classes(int(fp[-1]) if fp.size else 0, int(tp[-1]) if tp.size else 0)
    except ValueError as e:
        return {"error": str(e), "num_id": int(hist.counts[0].sum()), "num_ood": int(hist.counts[1].sum())}
    return {**curve_metrics(tp, fp, protocol), "bin_error_bound": bin_error_bounds(hist.counts, protocol)}


def bin_error_bounds(counts: np.ndarray, protocol: Protocol, tpr: float = 0.95) -> dict[str, float]:
    """Upper bounds on |binned - exact| from the counts alone.

    A bin is a group of tied scores for the binned metrics; the exact curve passes through the same
    points at every bin edge. AUROC: at most half the share of ID/OOD pairs inside one bin. FPR95
    (either rule): the exact crossing lies in the bin where the binned TPR crosses, so at most that
    bin's share of ID points. AUPR (AP or trapezoid): inside a bin every precision that weighs a recall
    step lies in [(tp0 + 1) / (tp0 + 1 + fp1), tp1 / (tp1 + fp0)] ((tp0, fp0) before the bin, (tp1, fp1)
    after it; the trapezoid's step may also start at tp0 / (tp0 + fp1) when the bin holds ID points), so
    the bin's part differs by at most its recall step times that interval's width.
    """
    idc, oodc = counts[0][::-1].astype(np.float64), counts[1][::-1].astype(np.float64)
    n_id, n_ood = idc.sum(), oodc.sum()
    tp1, fp1 = np.cumsum(oodc), np.cumsum(idc)
    tp0, fp0 = tp1 - oodc, fp1 - idc
    with np.errstate(divide="ignore", invalid="ignore"):
        # a precision that weighs a recall step has tp >= tp0 + 1; the trapezoid also uses the point where the
        # step starts: inside the bin (tp0, fp <= fp1) when the bin holds ID points, else the bin's start
        lo = (tp0 + 1) / (tp0 + 1 + fp1)
        if protocol.aupr == "trapezoid":
            start = np.where(tp0 + fp0 > 0, tp0 / (tp0 + fp0), 1.0)
            lo = np.where(idc > 0, tp0 / (tp0 + fp1), np.minimum(lo, start))
        hi = np.where(tp1 + fp0 > 0, tp1 / (tp1 + fp0), 1.0)
    rate = tp1 / n_ood
    first = int(np.argmax(rate > tpr if protocol.fpr_rule == ">" else rate >= tpr))
    return {"auroc": float(0.5 * (idc * oodc).sum() / (n_id * n_ood)),
            "aupr": float(np.sum(oodc / n_ood * (hi - lo))),
            "fpr95": float(idc[first] / n_id)}


# --------------------------------------------------------------------------- streaming accumulator


class ProtocolAccumulator:
    """A protocol's state in one evaluation pass: per score and subset a ScoreHistogram on the same
    axis as segood's own (``axis(name, sample)`` gives an object with ``forward`` and ``histogram(bins)``),
    and per subset a learning-id confusion matrix ``conf[pred, gt]`` when the protocol has an mIoU.

    ``data_map`` is the data's label map, ``model_map`` the one the model was trained with (its train
    ids are turned into learning ids of the protocol's map, which must share them)."""

    def __init__(self, protocol: Protocol, data_map: LabelMap, model_map: LabelMap, names: list[str],
                 bins: int) -> None:
        self.protocol, self.names, self.bins = protocol, list(names), int(bins)
        self.map = load_label_map(protocol.label_map) if protocol.label_map else data_map
        self.hist: dict[str, dict[str, ScoreHistogram]] = {}
        self.conf: dict[str, np.ndarray] = {}
        if protocol.iou:
            self.pred_lut = np.array(model_map.train_learning_ids, dtype=np.int64)
            differ = [i for i in model_map.train_learning_ids
                      if self.map.learning_names.get(i) != model_map.learning_names[i]]
            if differ:
                raise ValueError(f"protocol '{protocol.name}': the model's classes {differ} are not the same learning "
                                 f"ids in {self.map.source}")
            self.num_learning = max(self.map.learning_names) + 1
            self.conf = {s: np.zeros((self.num_learning,) * 2, np.int64) for s in SUBSETS}

    def _targets(self, raw: np.ndarray, xyz: np.ndarray, frame: np.ndarray, visible: np.ndarray,
                 source: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Learning ids and, per subset, the OOD target (1 / 0 / -1) after the protocol's filters."""
        learning = self.map.to_learning(raw, source)
        ood = self.map.to_ood_target(learning)
        if self.protocol.range_m is not None:
            d = np.linalg.norm(xyz.astype(np.float64), axis=1)
            lo, hi = self.protocol.range_m
            ood = np.where((d < lo) | (d > hi), -1, ood)
        per = {"all": ood, "fov": np.where(visible, ood, -1)}
        if self.protocol.min_anomaly_points:
            for s, t in per.items():
                n = np.bincount(frame, weights=(t == 1), minlength=int(frame.max()) + 1 if frame.size else 0)
                per[s] = np.where(n[frame] >= self.protocol.min_anomaly_points, t, -1)
        return learning, per

    def add(self, raw: Any, pred_train: Any, scores: Mapping[str, Any], axis: Callable[[str, np.ndarray], Any],
            visible: Any, xyz: Any, frame: Any, source: str = "<batch>") -> None:
        """One batch: raw labels, predicted train ids, scores (all points), visibility, LiDAR xyz, frame index."""
        raw, visible, frame = _as_numpy(raw).astype(np.int64), _as_numpy(visible).astype(bool), _as_numpy(frame)
        xyz = np.asarray(xyz.numpy() if hasattr(xyz, "numpy") else xyz).reshape(len(raw), -1)[:, :3]
        learning, per = self._targets(raw, xyz, frame.astype(np.int64), visible, source)
        for n in self.names:
            s = _as_numpy(scores[n]).astype(np.float64)
            for sub, t in per.items():
                keep = t >= 0
                if not keep.any():
                    continue
                ax = axis(n, s[keep])
                if n not in self.hist:
                    self.hist[n] = {k: ax.histogram(self.bins) for k in SUBSETS}
                self.hist[n][sub].update(ax.forward(s[keep]), t[keep] == 1)
        if self.conf:
            pred = self.pred_lut[_as_numpy(pred_train).astype(np.int64)]
            c = self.num_learning
            for sub, keep in (("all", np.ones_like(visible)), ("fov", visible)):
                self.conf[sub] += np.bincount(pred[keep] * c + learning[keep], minlength=c * c).reshape(c, c)

    def miou(self) -> dict[str, dict[str, Any]]:
        """Per subset: ``miou`` (the evaluator as shipped), ``miou_id`` (OOD classes ignored too), per-class IoU."""
        out = {}
        base = tuple(self.map.ignore_learning_ids)
        for sub, m in self.conf.items():
            row = {}
            for key, ignore in (("miou", base), ("miou_id", base + tuple(self.map.ood_learning_ids))):
                if self.protocol.iou == "semantickitti":
                    ev = SemanticKittiIoU(self.num_learning, ignore)
                    ev.matrix = m.copy()
                else:
                    ev = NuScenesIoU(self.num_learning, ignore)
                    ev.matrix = m.T.copy()  # the devkit's cm[gt, pred], ignored rows and columns zeroed
                    ev.matrix[ev.ignore, :] = 0
                    ev.matrix[:, ev.ignore] = 0
                row[key] = ev.miou()
                if key == "miou":
                    row["iou"] = {self.map.learning_names[i]: float(v) for i, v in enumerate(ev.iou())
                                  if i in self.map.learning_names and i not in base}
            out[sub] = row
        return out

    def metrics(self) -> dict[str, Any]:
        """The protocol's block of metrics.json."""
        ood = {n: {s: histogram_metrics(self.hist[n][s], self.protocol) if n in self.hist else
                   {"error": "no labelled point under this protocol", "num_id": 0, "num_ood": 0} for s in SUBSETS}
               for n in self.names}
        return {"protocol": self.protocol.name, "conventions": self.protocol.conventions(),
                "label_map": self.map.source, "ood": ood, "miou": self.miou() if self.conf else None}
