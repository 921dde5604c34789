"""The camera image with the scan's points drawn on it in a view's colours (OpenCV).

Points are drawn far to near so that near points stay on top; points above the operating point are
drawn last and one pixel larger so that anomalies are never hidden by their neighbours.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segood.viz.colors import to_uint8
from segood.viz.frame import VizFrame
from segood.viz.legend import with_legend
from segood.viz.open3d_view import write_png


def draw_points(image: np.ndarray, uv: np.ndarray, rgb: np.ndarray, depth: np.ndarray, radius: int = 2,
                emphasis: np.ndarray | None = None) -> np.ndarray:
    """A copy of the RGB ``image`` with one filled circle per point at ``uv`` (u = column, v = row)."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    emphasis = np.zeros(len(uv), dtype=bool) if emphasis is None else emphasis
    order = np.lexsort((-depth, emphasis))  # plain points first (far -> near), then emphasised
    px = np.round(uv[order]).astype(int)
    col = to_uint8(rgb[order]).tolist()
    emph = emphasis[order]
    for (u, v), c, e in zip(px.tolist(), col, emph.tolist(), strict=True):
        cv2.circle(out, (u, v), radius + int(e), c, -1, lineType=cv2.LINE_8)
    return out


def overlay_image(frame: VizFrame, view: str, radius: int | None = None) -> np.ndarray:
    """The frame's first camera image with its visible points coloured by ``view``; the point radius
    defaults to 1 pixel per 640 image columns."""
    scan = frame.scan
    if not scan.images or scan.pixel_uv is None:
        raise ValueError(f"{scan.source}: no camera image (give --image and --calib, or an --image-topic)")
    vis = scan.camera_id == 0
    radius = max(1, round(scan.images[0].shape[1] / 640)) if radius is None else radius
    m = scan.lidar_to_image[0]
    depth = scan.points[vis, :3] @ m[2, :3] + m[2, 3]
    return draw_points(scan.images[0], scan.pixel_uv[vis], frame.colors(view)[vis], depth, radius,
                       frame.above()[vis] if view in ("heat", "hot") else None)


def write_overlay(path: str | Path, frame: VizFrame, view: str, radius: int | None = None) -> Path:
    """The overlay with the caption and colour legend below it, as PNG."""
    return write_png(path, with_legend(overlay_image(frame, view, radius), frame, view))
