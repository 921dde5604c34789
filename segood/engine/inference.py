"""A checkpoint ready for single-scan inference, and the operating point that flags anomalous points.

Shared by the viewer (``segood viz``) and bag replay (``segood replay``). The operating point is
the score threshold at or above which a point is called anomalous (``score >= threshold``, the
convention of :func:`segood.engine.artifacts.load_operating_point`). Its source, in order:

1. ``--threshold T`` on the command line (for ``--score`` or the stored operating point's score);
2. the operating point stored with the checkpoint: ``state["operating_point"]`` inside it, or
   ``checkpoint.operating_point.json`` beside it (written by ``segood eval``; refused when it
   belongs to another version of the checkpoint);
3. otherwise the top ``top_fraction`` (5 %) of each scan's scores (``score >`` the scan's 95th
   percentile, strict so that tied scores are not all flagged), and the output says so.

The score, when neither ``--score`` nor a stored operating point names one, is the anomaly head for
a model trained with synthesized outliers and MaxLogit for one trained without
(:func:`segood.metrics.headline.default_score`). A stored operating point also states the
share of ID points it flagged on validation (``fpr``); :meth:`OperatingPoint.warning` speaks up when
a scan has more than ``warn_share`` (25 %) of its points flagged.

Scores are computed with :func:`segood.engine.fit.load_scorers`, so fitted scores (Mahalanobis,
kNN, ...) work when their fit (``checkpoint.scores.pt``) exists.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segood.data.batching import collate, scan_to_sample
from segood.data.labels import LabelMap
from segood.data.scan import Scan
from segood.engine.builders import build_grid, build_label_map
from segood.engine.artifacts import load_model, load_operating_point, operating_point_path
from segood.engine.fit import load_scorers
from segood.metrics.headline import default_score

TOP_FRACTION = 0.05
WARN_SHARE = 0.25  # warn when a scan has more than this share of its points flagged


@dataclass
class Prediction:
    """Per-point outputs for one scan, in the scan's original point order."""

    label: np.ndarray  # (N,) int64 train ids (argmax of the fused head)
    scores: dict[str, np.ndarray]  # score name -> (N,) float32, higher = more anomalous


@dataclass(frozen=True)
class OperatingPoint:
    score: str
    threshold: float | None  # None: per-scan top ``top_fraction``
    source: str  # where the threshold comes from, printed beside every output
    top_fraction: float = TOP_FRACTION
    fpr: float | None = None  # share of ID points it flagged on validation (stored operating points)
    chosen_by: str = ""  # why this score (stored operating points)
    warn_share: float = WARN_SHARE

    def threshold_for(self, scores: np.ndarray) -> float:
        """The threshold for one scan (fixed, or this scan's (1 - top_fraction) quantile)."""
        if self.threshold is not None:
            return float(self.threshold)
        return float(np.quantile(scores, 1.0 - self.top_fraction)) if len(scores) else float("inf")

    @property
    def relation(self) -> str:
        """'>=' for a fixed threshold; '>' for the per-scan quantile, so that tied scores (e.g. all 0)
        are not all flagged."""
        return ">=" if self.threshold is not None else ">"

    def above(self, scores: np.ndarray) -> np.ndarray:
        """(N,) bool: the points called anomalous."""
        t = self.threshold_for(scores)
        return scores >= t if self.threshold is not None else scores > t

    def describe(self) -> str:
        """One line: score, threshold, where it came from and what it flagged on validation."""
        if self.threshold is None:
            return f"{self.score} > the scan's {100 * (1 - self.top_fraction):g}th percentile ({self.source})"
        text = f"{self.score} >= {self.threshold:.4g} ({self.source})"
        if self.fpr is not None:
            text += f"; it flagged {100 * self.fpr:.1f}% of ID points on validation"
        return text

    def warning(self, share: float) -> str | None:
        """A warning when a scan has more than ``warn_share`` of its points flagged, else None."""
        if share <= self.warn_share:
            return None
        text = f"warning: {100 * share:.1f}% of the points are flagged, more than {100 * self.warn_share:g}%"
        if self.fpr is not None:
            text += f" ('{self.score} >= {self.threshold:.4g}' flagged {100 * self.fpr:.1f}% of ID points on validation)"
        return text + "; this data may differ from validation, or pick another --score / --threshold"


def stored_operating_point(state: dict | None, ckpt: str | Path | None) -> tuple[dict | None, str]:
    """(operating point dict with 'score' and 'threshold', where it came from) or (None, why not)."""
    if state and state.get("operating_point"):
        return state["operating_point"], "checkpoint operating_point"
    if ckpt is None:
        return None, "no checkpoint"
    try:
        op = load_operating_point(ckpt)
    except FileNotFoundError:
        return None, "no operating point stored with the checkpoint"
    except ValueError as e:  # written for another version of the checkpoint
        return None, str(e)
    where = operating_point_path(ckpt).name
    if "tpr" in op:
        seqs = " ".join(map(str, op.get("sequences", [])))
        where += f", TPR {op['tpr']:g} on {op.get('split', '?')}{' ' + seqs if seqs else ''}"
        where += f", {op['points']} points" if "points" in op else ""
    return op, where


def resolve_operating_point(state: dict | None, score: str | None, threshold: float | None,
                            ckpt: str | Path | None = None, warn_share: float = WARN_SHARE) -> OperatingPoint:
    """The operating point from the command line, the checkpoint, or the per-scan fallback (see module doc)."""
    saved, where = stored_operating_point(state, ckpt)
    fallback = default_score(((state or {}).get("config") or {}).get("synthesis", {}).get("method"))
    if threshold is not None:
        return OperatingPoint(score or (saved or {}).get("score") or fallback, float(threshold), "--threshold",
                              warn_share=warn_share)
    if saved and (score is None or score == saved["score"]):
        return OperatingPoint(saved["score"], float(saved["threshold"]), where, fpr=saved.get("fpr"),
                              chosen_by=saved.get("chosen_by", ""), warn_share=warn_share)
    why = f"the stored operating point is for score '{saved['score']}'" if saved else where
    return OperatingPoint(score or fallback, None, f"per-scan top {100 * TOP_FRACTION:g}%: no --threshold; {why}",
                          warn_share=warn_share)


class Predictor:
    """Model, voxel grid, label map, scorer and operating point of one checkpoint.

    The label map is the one the checkpoint was trained with (``config.data.label_map``); a label
    map file that changed since training is refused (its checksum differs from the checkpoint's).
    """

    def __init__(self, ckpt: str | Path, score: str | None = None, threshold: float | None = None,
                 warn_share: float = WARN_SHARE) -> None:
        self.model, state = load_model(ckpt)
        cfg = state["config"]
        self.label_map: LabelMap = build_label_map(cfg)
        if state["label_map"] != self.label_map.checksum():
            raise ValueError(f"{ckpt}: trained with label map checksum {state['label_map']}, but "
                             f"{self.label_map.source} now has checksum {self.label_map.checksum()}")
        self.grid = build_grid(cfg)
        self.op = resolve_operating_point(state, score, threshold, ckpt, warn_share)
        self.scorer = load_scorers(ckpt, [self.op.score], cfg["eval"], self.model)[self.op.score]
        self.source = str(ckpt)

    @torch.no_grad()
    def __call__(self, scan: Scan) -> Prediction:
        """Per-point train-id labels and the operating point's score (LiDAR-only for scans without images)."""
        out = self.model(collate([scan_to_sample(scan, None)], self.grid))
        return Prediction(label=out["logits"].argmax(-1).numpy(),
                          scores={self.op.score: self.scorer(out).float().numpy()})
