"""What the viewer shows for one scan: the points, ground truth, prediction, anomaly score and the
operating point, and the colours of each view (:mod:`segood.viz.colors`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segood.data.labels import LabelMap
from segood.data.scan import Scan
from segood.viz import colors as C
from segood.engine.inference import OperatingPoint


@dataclass
class VizFrame:
    scan: Scan
    label_map: LabelMap
    pred_label: np.ndarray | None = None  # (N,) train ids
    score: np.ndarray | None = None  # (N,) anomaly score, higher = more anomalous
    op: OperatingPoint | None = None
    title: str = ""
    _threshold: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        n = self.scan.num_points
        for name, a in (("label", self.pred_label), ("anomaly score", self.score)):
            if a is not None and len(a) != n:
                raise ValueError(f"{self.scan.source}: {len(a)} {name} values for a scan of {n} points")
        if self.score is not None and self.op is not None:
            self._threshold = self.op.threshold_for(self.score)

    @property
    def views(self) -> list[str]:
        """The views this frame can show."""
        have = {"gt": self.scan.raw_labels is not None, "pred": self.pred_label is not None,
                "heat": self.score is not None, "hot": self.score is not None and self.op is not None}
        return [v for v in C.VIEWS if have[v]]

    @property
    def threshold(self) -> float | None:
        return self._threshold

    def above(self) -> np.ndarray:
        """(N,) bool: points at or above the operating point (all False without a score)."""
        if self._threshold is None:
            return np.zeros(self.scan.num_points, dtype=bool)
        return self.op.above(self.score)

    def colors(self, view: str) -> np.ndarray:
        """(N, 3) RGB floats for one view; a view the frame cannot show is a ValueError listing those it can."""
        if view not in self.views:
            raise ValueError(f"view '{view}' is not available for {self.scan.source} (available: {self.views})")
        if view == "gt":
            return C.gt_colors(self.scan.raw_labels, self.label_map)
        if view == "pred":
            return C.pred_colors(self.pred_label, self.label_map)
        if view == "heat":
            return C.heat_colors(self.score)
        return C.hot_colors(self.above())

    def flagged_share(self) -> float:
        """Share of the scan's points at or above the operating point (0 without a score)."""
        return float(self.above().mean()) if self.scan.num_points else 0.0

    def id_flagged_share(self) -> float | None:
        """Share of ground-truth ID points flagged (None without ground truth or score): what the
        stored validation FPR predicts on in-distribution data."""
        if self.scan.raw_labels is None or self._threshold is None:
            return None
        ood = self.label_map.to_ood_target(self.label_map.to_learning(self.scan.raw_labels))
        is_id = ood == 0
        return float(self.above()[is_id].mean()) if is_id.any() else None

    def caption(self, view: str) -> str:
        """One line for the console and window title: file, frame, view and what is flagged."""
        text = f"{self.title}  view: {view}"
        if self.score is not None and self.op is not None:
            text += f"  |  {100 * self.flagged_share():.1f}% with {self.op.score} {self.op.relation} {self._threshold:.4g}"
        return text

    def caption_lines(self, view: str) -> list[str]:
        """The caption drawn above the legend in PNGs and in the window's legend panel: file and
        frame, view, score, threshold and its source, share flagged."""
        lines = [f"{self.title}   view: {view} ({C.VIEW_NAMES[view]})"]
        if self.score is not None and self.op is not None:
            op = self.op
            lines.append(f"score: {op.score}   threshold: {op.relation} {self._threshold:.4g}   from: {op.source}")
            flagged = f"flagged: {100 * self.flagged_share():.1f}% of {self.scan.num_points} points"
            if op.fpr is not None:
                flagged += f" (on validation this threshold flagged {100 * op.fpr:.1f}% of ID points)"
            id_share = self.id_flagged_share()
            if id_share is not None:
                flagged += f"; ID points flagged here (ground truth): {100 * id_share:.1f}%"
            lines.append(flagged)
            warning = op.warning(self.flagged_share())
            if warning:
                lines.append(warning)
        elif self.score is not None:
            lines.append("score: anomaly (no operating point)")
        return lines

    def legend(self, view: str) -> dict:
        """What the colours of ``view`` mean: ``{"kind": "ramp", "lo", "hi", "text"}`` for the heat
        view, else ``{"kind": "swatches", "items": [(rgb, name), ...], "text"}``."""
        if view == "heat":
            rng = C.heat_range(self.score) or (float("nan"), float("nan"))
            return {"kind": "ramp", "lo": rng[0], "hi": rng[1],
                    "text": "heat colours: blue = low score, red = high score (more anomalous); normalised per scan "
                            "over its 1st-99th percentile"}
        if view == "hot":
            t = f"{self.op.score} {self.op.relation} {self._threshold:.4g}"
            return {"kind": "swatches", "items": [(C.ANOMALY_RGB, f"flagged ({t})"), (C.NORMAL_RGB, "not flagged")],
                    "text": "points above the operating point"}
        ids = self.scan.raw_labels if view == "gt" else None
        if view == "gt":
            learning = self.label_map.to_learning(ids)
            present = [i for i in np.unique(learning) if i not in self.label_map.ignore_learning_ids]
            counts = {i: int((learning == i).sum()) for i in present}
        else:
            train = self.pred_label[self.pred_label >= 0]
            lids = np.asarray(self.label_map.train_learning_ids)[train]
            counts = {int(i): int((lids == i).sum()) for i in np.unique(lids)}
        top = sorted(counts, key=lambda i: -counts[i])[:C.LEGEND_CLASSES]
        items = [(C.raw_id_colors(np.array([self.label_map.learning_map_inv.get(int(i), 0)]))[0],
                  self.label_map.learning_names[int(i)] + (" (OOD)" if int(i) in self.label_map.ood_learning_ids else ""))
                 for i in top]
        items.append((C.UNKNOWN_RGB, "ignored / unlabelled" if view == "gt" else "no prediction"))
        what = "ground-truth class" if view == "gt" else "predicted class"
        return {"kind": "swatches", "items": items, "text": f"{what}, SemanticKITTI palette (most frequent first)"}
