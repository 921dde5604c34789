"""A picture of one scan's per-point anomaly scores: camera overlay, bird's-eye view, ground truth."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segood.atomic import atomic_write  # noqa: E402


def render_anomaly_png(
    path: str | Path,
    points: np.ndarray,
    score: np.ndarray,
    ood_target: np.ndarray | None,
    image: np.ndarray | None,
    pixel_uv: np.ndarray | None,
    visible: np.ndarray | None,
    title: str,
    threshold: float | None = None,
    bev_range: float = 40.0,
) -> Path:
    """Write a PNG with (top) the camera image with its points coloured by anomaly score, (bottom
    left) the bird's-eye view coloured by score and (bottom right) the ground truth OOD points.

    Colours span the scan's 2nd..99.5th score percentiles (any score convention renders the same
    way); points at or above ``threshold`` (the operating point, if given) get a red edge.
    """
    lo, hi = np.percentile(score, [2.0, 99.5])
    rank = np.clip((score - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    fig = plt.figure(figsize=(12, 9), dpi=100)
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.6])
    if image is not None and pixel_uv is not None and visible is not None:
        ax = fig.add_subplot(grid[0, :])
        ax.imshow(image)
        order = np.argsort(rank[visible])
        uv = pixel_uv[visible][order]
        ax.scatter(uv[:, 0], uv[:, 1], c=rank[visible][order], cmap="inferno", s=2, vmin=0, vmax=1)
        ax.set_xlim(0, image.shape[1])
        ax.set_ylim(image.shape[0], 0)
        ax.set_axis_off()
        if threshold is not None:
            hot = visible & (score >= threshold)
            ax.scatter(pixel_uv[hot, 0], pixel_uv[hot, 1], s=6, facecolors="none", edgecolors="red", linewidths=0.4)
        ax.set_title("camera view: points coloured by anomaly score (bright = anomalous"
                     + (", red rings: above the operating point)" if threshold is not None else ")"))
    near = (np.abs(points[:, 0]) < bev_range) & (np.abs(points[:, 1]) < bev_range)
    ax = fig.add_subplot(grid[1, 0])
    order = np.argsort(rank[near])
    p = points[near][order]
    sc = ax.scatter(-p[:, 1], p[:, 0], c=rank[near][order], cmap="inferno", s=1, vmin=0, vmax=1)
    if threshold is not None:
        hot = near & (score >= threshold)
        ax.scatter(-points[hot, 1], points[hot, 0], s=4, facecolors="none", edgecolors="red", linewidths=0.3)
    fig.colorbar(sc, ax=ax, fraction=0.04, label="anomaly score (scan percentiles 2..99.5)")
    _bev_axes(ax, "bird's-eye view: anomaly score", bev_range)
    ax = fig.add_subplot(grid[1, 1])
    if ood_target is not None:
        colors = np.array([[0.75, 0.75, 0.75], [0.1, 0.4, 0.9], [0.95, 0.1, 0.1]])[ood_target[near] + 1]
        ax.scatter(-points[near, 1], points[near, 0], c=colors, s=1)
    _bev_axes(ax, "ground truth: OOD (red), ID (blue), ignored (grey)", bev_range)
    fig.suptitle(title)
    fig.tight_layout()
    out = atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return out


def _bev_axes(ax, title: str, r: float) -> None:
    ax.set_xlim(-r, r)
    ax.set_ylim(-r, r)
    ax.set_aspect("equal")
    ax.set_xlabel("-y (m, right)")
    ax.set_ylabel("x (m, forward)")
    ax.set_title(title, fontsize=10)
