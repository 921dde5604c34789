"""The headline rule: which score speaks for a model (:func:`headline_score`), which one is shown
when nothing says which (:func:`default_score`), and the table row of one score (:func:`headline`).
The operating point (:mod:`segood.engine.operating_point`), the viewer, replay, the study and the
report all take their choice from here.

* A model trained with synthesized outliers (``synthesis.method != none``) keeps its anomaly head
  unless another score is better both in AUROC and in FPR95 (the ID share flagged at the operating
  point's recall, what the viewer shows).
* A model trained without them never uses its anomaly head (it has never seen a positive): its
  post-hoc score with the best AUROC.
"""
from __future__ import annotations

from typing import Any, Mapping

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


def headline(metrics: dict, score: str, points: str = "fov") -> dict:
    """AUROC/AUPR/FPR95 of one score and the ID mIoU, in percent, for tables."""
    o = metrics["ood"][score][points]
    return {
        "score": score,
        "auroc": 100 * o.get("auroc", float("nan")),
        "aupr": 100 * o.get("aupr", float("nan")),
        "fpr95": 100 * o.get("fpr95", float("nan")),
        "miou": 100 * metrics["miou"][points]["miou"],
    }
