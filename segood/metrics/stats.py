"""Statistics over repeated runs: mean, standard deviation and paired confidence intervals.

A claim that one method beats another needs several seeds and an interval: these helpers turn
per-seed numbers into ``mean ± std`` and a paired Student-t 95 % interval of the difference.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["summarize", "paired_difference"]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std", "n", "min", "max"}`` of finite ``values`` (std with ddof=1; 0 for one value)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "min": math.nan, "max": math.nan}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size),
            "min": float(v.min()), "max": float(v.max())}


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                      higher_is_better: bool = True) -> dict[str, float]:
    """Paired difference ``a - b`` over matched seeds: mean, std, Student-t interval, wins.

    ``a[i]`` and ``b[i]`` must come from the same seed (same data, same initialisation stream).
    ``lo``/``hi`` is the two-sided ``confidence`` interval of the mean difference (NaN with fewer
    than two pairs); ``wins`` counts pairs where ``a`` is better (``a > b``, or ``a < b`` when
    lower is better, as for FPR95).
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs matched seeds, got {len(a)} and {len(b)} values")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = int(d.size)
    out = {"mean": float(d.mean()) if n else math.nan, "std": float(d.std(ddof=1)) if n > 1 else math.nan,
           "n": n, "wins": int((d > 0).sum() if higher_is_better else (d < 0).sum()), "lo": math.nan, "hi": math.nan, "confidence": confidence}
    if n > 1:
        half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * out["std"] / math.sqrt(n)
        out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    return out
