"""Pictures of an evaluation report (matplotlib Agg, PNG): ROC curves and ID-vs-OOD score
histograms (both from the fixed-bin histograms, never per-point scores), per-class IoU bars, and
the comparison of several runs. Inputs are plain numpy arrays and dicts."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segood.atomic import atomic_write  # noqa: E402

__all__ = ["roc_from_counts", "display_bins", "plot_roc", "plot_score_histograms", "plot_iou", "plot_comparison"]


def _save(fig: plt.Figure, path: str | Path) -> Path:
    """Write the figure atomically as PNG and free it."""
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def roc_from_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every bin edge, highest score first, starting at (0, 0); counts = (2, bins) [ID, OOD]."""
    idc, oodc = counts[0][::-1].astype(np.float64), counts[1][::-1].astype(np.float64)
    nonempty = (idc + oodc) > 0
    fp, tp = np.cumsum(idc[nonempty]), np.cumsum(oodc[nonempty])
    return np.r_[0.0, fp / max(fp[-1], 1.0)], np.r_[0.0, tp / max(tp[-1], 1.0)]


def display_bins(counts: np.ndarray, lo: float, hi: float, to_raw: Callable[[np.ndarray], np.ndarray],
                 n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge fine histogram bins into ``n`` equal-width raw-score bins over the occupied 0.5-99.5% range.

    ``to_raw`` maps the histogram axis back to raw scores (inverse of the binning transform); each
    fine bin goes to the display bin of its centre. Returns edges (n + 1,) and per-class densities
    (n,) normalised by the class's total count (tails outside the range are left out).
    """
    fine = counts.shape[1]
    centres = np.asarray(to_raw(lo + (np.arange(fine) + 0.5) * (hi - lo) / fine), np.float64)
    total = counts.sum(0)
    cdf = np.cumsum(total) / max(total.sum(), 1)
    a, b = centres[int(np.searchsorted(cdf, 5e-3))], centres[int(np.searchsorted(cdf, 1 - 5e-3))]
    if not b > a:
        a, b = a - 0.5, a + 0.5
    edges = np.linspace(a, b, n + 1)
    inside = (centres >= a) & (centres <= b)
    idx = np.minimum(((centres[inside] - a) / (b - a) * n).astype(np.int64), n - 1)
    dens = [np.bincount(idx, weights=c[inside], minlength=n) / max(c.sum(), 1) / ((b - a) / n) for c in counts]
    return edges, dens[0], dens[1]


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, title: str) -> Path:
    """One ROC curve per score: ``{label: (fpr, tpr, auroc)}``."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    colors = plt.cm.tab20(np.linspace(0, 1, 20))[[0, 6, 4, 2, 8, 10, 12, 14, 16, 18, 1, 3, 5, 7, 9]]
    for i, (label, (fpr, tpr, area)) in enumerate(curves.items()):
        ax.plot(fpr, tpr, lw=1.5, color=colors[i % len(colors)], label=f"{label} (AUROC {100 * area:.1f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.axhline(0.95, color="0.5", lw=0.8, ls=":")
    ax.set(xlabel="FPR (ID points flagged)", ylabel="TPR (OOD recall)", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_score_histograms(panels: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: str | Path,
                          title: str) -> Path:
    """ID vs OOD score densities, one panel per score: ``{score: (edges, id_density, ood_density)}``."""
    cols = min(3, max(1, len(panels)))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, (edges, d_id, d_ood)) in zip(axes.flat, panels.items()):
        ax.stairs(d_id, edges, fill=True, alpha=0.5, color="tab:blue", label="ID")
        ax.stairs(d_ood, edges, fill=True, alpha=0.5, color="tab:red", label="OOD")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("score (higher = more anomalous)", fontsize=8)
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_iou(iou: Mapping[str, Mapping[str, float]], path: str | Path, title: str) -> Path:
    """Per-class IoU bars for each subset: ``{subset: {class: iou}}`` (NaN bars left empty)."""
    subsets = list(iou)
    names = list(next(iter(iou.values())))
    y = np.arange(len(names))
    h = 0.8 / len(subsets)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.2))
    for i, s in enumerate(subsets):
        vals = np.array([100 * iou[s][n] for n in names], dtype=np.float64)
        ax.barh(y + (i - (len(subsets) - 1) / 2) * h, np.nan_to_num(vals), height=h, label=s)
    absent = [all(math.isnan(iou[s][n]) for s in subsets) for n in names]
    ax.set_yticks(y, [f"{n} (absent)" if a else n for n, a in zip(names, absent)], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="IoU (%)", xlim=(0, 100), title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_monitor(records: list[Mapping], path: str | Path, title: str) -> Path:
    """The shortcut monitor over training: per score, AUROC on the step's synthetic outliers (dashed) and on
    the val split's real OOD points (FOV, solid), same colour; a record's ``scores[name]`` holds both."""
    steps = [r["step"] for r in records]
    names = list(records[-1]["scores"])
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, n in enumerate(names):
        color = f"C{i % 10}"
        for key, style, label in (("synthetic", "--", "synthetic"), ("real_fov", "-", "val FOV")):
            vals = [r["scores"].get(n, {}).get(key) for r in records]
            if any(v is not None for v in vals):
                ax.plot(steps, [math.nan if v is None else 100 * v for v in vals], style, color=color, marker="o",
                        ms=3, label=f"{n} ({label})")
    ax.set(xlabel="training step", ylabel="AUROC (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def plot_comparison(rows: Mapping[str, Mapping[str, Mapping[str, float]]], miou: Mapping[str, float],
                    path: str | Path, title: str) -> Path:
    """Several runs side by side: ``rows[run][score] = {auroc, aupr, fpr95}`` (percent) and ``miou[run]``.

    Panels AUROC, AUPR, FPR95 (scores on the x axis, one bar per run) and ID mIoU per run.
    """
    runs = list(rows)
    scores = list(dict.fromkeys(s for r in runs for s in rows[r]))
    fig, axes = plt.subplots(1, 4, figsize=(max(14, 1.1 * len(scores) * 3 + 4), 4.2),
                             gridspec_kw={"width_ratios": [3, 3, 3, 1]})
    x = np.arange(len(scores))
    w = 0.8 / len(runs)
    for ax, key, label in zip(axes, ("auroc", "aupr", "fpr95"), ("AUROC ↑", "AUPR ↑", "FPR95 ↓")):
        for i, r in enumerate(runs):
            vals = [rows[r].get(s, {}).get(key, np.nan) for s in scores]
            bars = ax.bar(x + (i - (len(runs) - 1) / 2) * w, vals, width=w, label=r, color=f"C{i}")
            ax.bar_label(bars, fmt="%.0f", fontsize=6, padding=1)
        ax.set_xticks(x, scores, rotation=45, ha="right", fontsize=8)
        ax.set(ylim=(0, 100), title=f"{label} (%)")
    axes[3].bar(np.arange(len(runs)), [100 * miou[r] for r in runs], color=[f"C{i}" for i in range(len(runs))])
    axes[3].set_xticks(np.arange(len(runs)), runs, rotation=45, ha="right", fontsize=8)
    axes[3].set(ylim=(0, 100), title="ID mIoU ↑ (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(runs), 6), fontsize=9, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, path)
