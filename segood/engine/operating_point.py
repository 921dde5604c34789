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

The headline rule itself is :mod:`segood.metrics.headline`; :func:`operating_point` is what
:mod:`segood.engine.evaluate` stores.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from segood.config import ConfigError
from segood.engine.artifacts import checkpoint_sha
from segood.engine.fit import eval_option
from segood.metrics.accumulator import EvalAccumulator
from segood.metrics.headline import POINTS, headline_score
from segood.metrics.ood import ScoreHistogram


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


def operating_point(acc: EvalAccumulator, eval_cfg: Mapping[str, Any], sequences: list, ckpt_path: str | Path,
                    split: str, synthesis: str = "none") -> dict | None:
    """The operating point of one evaluation on all points: ``eval.operating_score`` if set, else the
    model's headline score on this split (``sequences``), with its provenance."""
    try:
        op = choose_operating_point(acc.hist, acc.binning, acc.ood(), synthesis,
                                    eval_option(eval_cfg, "operating_score"),
                                    float(eval_option(eval_cfg, "operating_tpr")))
    except KeyError as e:
        raise ConfigError(f"eval.operating_score: {e.args[0]}") from None
    if op is None:
        return None
    return {**op, "split": split, "sequences": list(sequences), "checkpoint_sha256": checkpoint_sha(ckpt_path)}
