"""Per-kind OOD metrics: the points of one kind of OOD object against ALL ID points, per score and subset.

Why: the synthetic benchmarks make several kinds of OOD objects (novel in both modalities,
cross-modal, near-OOD vehicles); a method built on multimodal inconsistency should win on the
cross-modal kinds, and one number over all kinds hides that. Only data sets with per-point kinds
(``Batch["ood_kind"]``, :mod:`segood.data.ood_kinds`) have them.

State: for every (score, kind, subset) the OOD counts of that kind's points on the score's histogram
axis (the evaluation's own :class:`~segood.metrics.ood.ScoreHistogram`), coarsened by ``factor``
(default 16: 4096 bins at the default 65536, so a dozen kinds x scores x subsets stay small). The ID
side is the evaluation's ID histogram summed in groups of ``factor`` bins: a kind's numbers are
exactly those of a histogram of its points and every ID point with ``bins // factor`` bins, and
``bin_error_bound`` bounds their distance to the exact per-point numbers.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from segood.metrics.accumulator import EvalAccumulator, safe_metrics, bin_error_bounds
from segood.metrics.ood import ScoreHistogram

__all__ = ["KindHistograms", "add_kinds", "kind_metrics"]

SUBSETS = ("fov", "all")


class KindHistograms:
    """Per (score, kind, subset) OOD counts; ``kind_names[k]`` names code k, ``families`` maps a kind to its family."""

    def __init__(self, kind_names: tuple[str, ...], families: Mapping[str, str], factor: int = 16) -> None:
        self.kind_names, self.families, self.factor = tuple(kind_names), dict(families), int(factor)
        self.counts: dict[str, dict[int, dict[str, np.ndarray]]] = {}

    def _factor(self, bins: int) -> int:
        return self.factor if bins % self.factor == 0 else 1

    def add(self, name: str, hist: ScoreHistogram, u: np.ndarray, is_ood: np.ndarray, visible: np.ndarray,
            kind: np.ndarray) -> None:
        """One batch of one score: ``u`` on ``hist``'s axis (labelled points), their OOD flag, visibility and kind."""
        f = self._factor(hist.bins)
        sel = np.asarray(is_ood, bool) & (np.asarray(kind) >= 0)
        if not sel.any():
            return
        idx = hist._bin_index(np.asarray(u, np.float64)[sel]) // f
        k, v = np.asarray(kind)[sel], np.asarray(visible, bool)[sel]
        per_kind = self.counts.setdefault(name, {})
        for code in np.unique(k).tolist():
            c = per_kind.setdefault(int(code), {s: np.zeros(hist.bins // f, np.int64) for s in SUBSETS})
            mine = k == code
            c["all"] += np.bincount(idx[mine], minlength=len(c["all"]))
            c["fov"] += np.bincount(idx[mine & v], minlength=len(c["fov"]))

    def _coarse(self, hist: ScoreHistogram, ood_counts: np.ndarray) -> ScoreHistogram:
        """The histogram of one kind's points (row 1) and every ID point of ``hist`` (row 0, coarsened)."""
        f = self._factor(hist.bins)
        coarse = ScoreHistogram(hist.lo, hist.hi, hist.bins // f)
        coarse.counts = np.stack([hist.counts[0].reshape(-1, f).sum(axis=1), ood_counts])
        return coarse

    def histograms(self, hists: Mapping[str, Mapping[str, ScoreHistogram]]
                   ) -> tuple[dict[str, dict[str, dict[str, ScoreHistogram]]], dict[str, dict[str, dict[str, ScoreHistogram]]]]:
        """``(kinds, families)``: ``{score: {kind or family: {subset: ScoreHistogram}}}`` against every ID point
        of the evaluation's histograms ``hists[score][subset]``; a family sums its kinds' points."""
        kinds: dict = {}
        families: dict = {}
        for name, per_kind in self.counts.items():
            by_family: dict[str, dict[str, np.ndarray]] = {}
            kinds[name] = {}
            for code in sorted(per_kind, key=lambda c: self.kind_names[c]):
                kind = self.kind_names[code]
                kinds[name][kind] = {s: self._coarse(hists[name][s], per_kind[code][s]) for s in SUBSETS}
                fam = by_family.setdefault(self.families.get(kind, "other"), {s: 0 for s in SUBSETS})
                for s in SUBSETS:
                    fam[s] = fam[s] + per_kind[code][s]
            families[name] = {fam: {s: self._coarse(hists[name][s], c[s]) for s in SUBSETS}
                              for fam, c in sorted(by_family.items())}
        return kinds, families


def add_kinds(kinds: KindHistograms | None, acc: EvalAccumulator, batch: Mapping[str, Any],
              scores: Mapping[str, np.ndarray], keep: Any) -> None:
    """Per-kind OOD counts of one batch's labelled points ``keep`` (bool mask), on ``acc``'s axes; nothing
    for data without per-point kinds (``batch["ood_kind"]``)."""
    if kinds is None or "ood_kind" not in batch:
        return
    is_ood = np.asarray(batch["ood_target"][keep] == 1)
    visible, kind = np.asarray(batch["visible"][keep]), np.asarray(batch["ood_kind"][keep])
    for n, s in scores.items():
        if n in acc.hist:
            kinds.add(n, acc.hist[n]["all"], acc.binning[n].forward(s), is_ood, visible, kind)


def kind_metrics(kinds: KindHistograms | None, acc: EvalAccumulator) -> dict[str, Any]:
    """metrics.json's per-kind blocks (``ood_kinds[score][kind][subset]``, ``ood_families[score][family][subset]``:
    that kind's OOD points against every ID point, with ``bin_error_bound``; ``ood_kind_family``,
    ``ood_kind_bins``), or nothing when no kind was seen."""
    if kinds is None or not kinds.counts:
        return {}
    per_kind, per_family = kinds.histograms(acc.hist)

    def block(tree: Mapping[str, Mapping[str, Mapping[str, ScoreHistogram]]]) -> dict:
        return {n: {k: {s: {**safe_metrics(h), "bin_error_bound": bin_error_bounds(h.counts)} for s, h in per.items()}
                    for k, per in by.items()} for n, by in tree.items()}

    seen = sorted({k for by in per_kind.values() for k in by})
    bins = next(h.bins for by in per_kind.values() for per in by.values() for h in per.values())
    return {"ood_kinds": block(per_kind), "ood_families": block(per_family),
            "ood_kind_family": {k: kinds.families.get(k, "other") for k in seen}, "ood_kind_bins": bins}
