"""The operating point: which score, and which threshold on it, flags a point as anomalous in the
viewer and in bag replay (``score >= threshold``).

Chosen by ``segood eval`` on the validation split and stored beside the checkpoint:

* **score** (:func:`headline_score`): ``eval.operating_score`` when the config names one; otherwise
  the model's headline score on validation, on the points the threshold is used on (all points of
  a scan). A model trained with synthesized outliers (``synthesis.method != none``) keeps its
  anomaly head unless another score is better both in AUROC and in FPR95 (the ID share flagged at
  the operating point's recall, what the viewer shows); a model trained without them never uses
  its anomaly head (it has never seen a positive): its post-hoc score with the best AUROC.
* **threshold** (:func:`threshold_at_tpr`): the first threshold that reaches ``eval.operating_tpr``
  (95 %) recall of anomalous points on validation; the share of ID points it flags there (``fpr``)
  is stored with it, so the viewer can say how many points it should flag on in-distribution data.

Kept apart from :mod:`segood.engine.evaluate` (which only calls :func:`choose_operating_point`) so
that the rule is one small, separately tested function.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from segood.metrics.ood import ScoreHistogram

ANOMALY_HEAD = "anomaly_head"
POINTS = "all"  # the viewer and replay flag every point of a scan
CRITERION = "auroc"
# Fallback score when no operating point is stored: the anomaly head is only trained with outliers.
FALLBACK_SCORE = {"with_synthesis": ANOMALY_HEAD, "without_synthesis": "maxlogit"}


def default_score(synthesis: str | None) -> str:
    """The score shown when neither ``--score`` nor a stored operating point says which: MaxLogit for
    a model trained without synthesized outliers (``none``), else (or when unknown) the anomaly head."""
    return FALLBACK_SCORE["without_synthesis" if synthesis == "none" else "with_synthesis"]


def headline_score(ood: Mapping[str, Mapping[str, Mapping[str, Any]]], synthesis: str,
                   points: str = POINTS) -> tuple[str, str]:
    """(score name, why) of the model's headline score from ``ood[score][points]`` metrics.

    Without synthesis: the post-hoc score with the highest AUROC (the anomaly head is not a
    candidate). With synthesis: the anomaly head, unless another score is better on both counts
    that matter here, a higher AUROC and a lower FPR95 (the ID share flagged at the operating
    point's recall); then the best such score by AUROC. Scores with undefined metrics are skipped.
    """
    trained_head = synthesis != "none"
    ok = {n: m[points] for n, m in ood.items()
          if CRITERION in m.get(points, {}) and (trained_head or n != ANOMALY_HEAD)}
    if not ok:
        raise ValueError(f"no score has a defined {CRITERION} on '{points}' points (candidates: {sorted(ood)})")
    listed = ", ".join(f"{n} {100 * m['auroc']:.1f} / {100 * m.get('fpr95', float('nan')):.1f}"
                       for n, m in sorted(ok.items(), key=lambda kv: -kv[1]["auroc"]))
    listed = f"val AUROC / FPR95 on {points} points: {listed}"
    if not trained_head or ANOMALY_HEAD not in ok:
        best = max(ok, key=lambda n: (ok[n]["auroc"], -ok[n].get("fpr95", 1.0)))
        why = "no synthesis: the anomaly head is untrained" if not trained_head else "the anomaly head is undefined"
        return best, f"best post-hoc score by AUROC ({why}); {listed}"
    head = ok[ANOMALY_HEAD]
    better = [n for n, m in ok.items() if n != ANOMALY_HEAD and m["auroc"] > head["auroc"]
              and m.get("fpr95", 1.0) < head.get("fpr95", 1.0)]
    if not better:
        return ANOMALY_HEAD, f"the anomaly head of a model trained with outliers (no score has both a higher AUROC " \
                             f"and a lower FPR95); {listed}"
    best = max(better, key=lambda n: ok[n]["auroc"])
    return best, f"{best} has both a higher AUROC and a lower FPR95 than the anomaly head; {listed}"


def threshold_at_tpr(hist: ScoreHistogram, binning: Any, tpr: float = 0.95) -> dict[str, float]:
    """Raw-score threshold whose flagged set (score >= threshold) first reaches anomaly TPR >= ``tpr``:
    the lower edge of the bin where the cumulative TPR crosses ``tpr`` (-inf for the lowest bin).
    ``binning.inverse`` maps histogram-axis values back to raw scores. ``fpr`` = share of ID
    points flagged at that threshold."""
    idc, oodc = hist.counts[0][::-1], hist.counts[1][::-1]
    if oodc.sum() == 0 or idc.sum() == 0:
        raise ValueError("operating point undefined: the split needs both ID and OOD points")
    first = int(np.argmax(np.cumsum(oodc) / oodc.sum() >= tpr))
    b = hist.bins - 1 - first
    edge = hist.lo + b * (hist.hi - hist.lo) / hist.bins
    threshold = float(binning.inverse(edge)) if b > 0 else -math.inf
    return {"threshold": threshold, "achieved_tpr": float(oodc[: first + 1].sum() / oodc.sum()),
            "fpr": float(idc[: first + 1].sum() / idc.sum())}


def choose_operating_point(hist: Mapping[str, Mapping[str, ScoreHistogram]], binning: Mapping[str, Any],
                           ood: Mapping[str, Mapping[str, Mapping[str, Any]]], synthesis: str,
                           forced: str | None = None, tpr: float = 0.95) -> dict[str, Any] | None:
    """The operating point of one evaluation: score (``forced``, else :func:`headline_score`) and
    its threshold at ``tpr`` on all points; None when the split has no OOD or no ID point."""
    if forced:
        if forced not in hist:
            raise KeyError(f"'{forced}' is not among the evaluated scores {sorted(hist)}")
        name, why = forced, "eval.operating_score in the config"
    else:
        try:
            name, why = headline_score(ood, synthesis, POINTS)
        except ValueError:
            return None
    try:
        found = threshold_at_tpr(hist[name][POINTS], binning[name], tpr)
    except ValueError:
        return None
    return {"score": name, "chosen_by": why, **found, "tpr": tpr, "points": POINTS, "synthesis": synthesis}
