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

    def caption(self, view: str) -> str:
        text = f"{self.title}  view: {view}"
        if self.score is not None and self.op is not None:
            text += f"  |  {100 * self.above().mean():.1f}% with {self.op.score} {self.op.relation} {self._threshold:.4g}"
        return text
