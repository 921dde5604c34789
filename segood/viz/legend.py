"""The caption and colour legend of a viewer picture, as an image panel (OpenCV text, no display).

The same panel goes under every PNG the viewer writes (render and camera overlay) and into the
interactive window's legend panel, so a picture always says which file and frame it shows, which
score and threshold (and where the threshold came from), how many points are flagged and what the
colours mean.
"""
from __future__ import annotations

import numpy as np

from segood.viz.colors import heat_ramp, to_uint8
from segood.viz.frame import VizFrame

BG = (30, 30, 34)
FG = (238, 238, 238)
DIM = (185, 185, 190)
FONT_SCALE = 0.5
LINE = 20  # px per text line
PAD = 10
RAMP_W, RAMP_H = 260, 14
SWATCH = 12


def _cv2():
    import cv2

    return cv2


def text_width(text: str, scale: float = FONT_SCALE) -> int:
    cv2 = _cv2()
    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]


def wrap(text: str, width: int, scale: float = FONT_SCALE) -> list[str]:
    """Split ``text`` at spaces into lines no wider than ``width`` pixels (a longer word stays whole)."""
    lines, cur = [], ""
    for word in text.split(" "):
        trial = f"{cur} {word}" if cur else word
        if cur and text_width(trial, scale) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return lines + ([cur] if cur else [])


def _put(img: np.ndarray, text: str, x: int, y: int, color=FG, scale: float = FONT_SCALE) -> None:
    cv2 = _cv2()
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def legend_panel(frame: VizFrame, view: str, width: int, note: str = "") -> np.ndarray:
    """(H, width, 3) uint8 RGB: caption lines, then the colour legend of ``view`` (and ``note``)."""
    inner = width - 2 * PAD
    caption = [ln for line in frame.caption_lines(view) for ln in wrap(line, inner)]
    legend = frame.legend(view)
    text = wrap(legend["text"] + note, inner)
    if legend["kind"] == "ramp":
        rows = 1
    else:
        x, rows = PAD, 1
        for _, name in legend["items"]:
            w = SWATCH + 6 + text_width(name) + 18
            if x + w > width - PAD:
                x, rows = PAD, rows + 1
            x += w
    height = PAD + LINE * (len(caption) + len(text)) + rows * (LINE + 4) + PAD
    img = np.full((height, width, 3), BG, dtype=np.uint8)
    y = PAD + 14
    for line in caption:
        _put(img, line, PAD, y)
        y += LINE
    y += 2
    if legend["kind"] == "ramp":
        _draw_ramp(img, legend, PAD, y - 12)
    else:
        _draw_swatches(img, legend["items"], PAD, y - 11, width)
        y += (rows - 1) * (LINE + 4)
    y += LINE + 4
    for line in text:
        _put(img, line, PAD, y, DIM)
        y += LINE
    return img


def _draw_ramp(img: np.ndarray, legend: dict, x: int, y: int) -> None:
    """``low <ramp> high`` with the score values at both ends."""
    lo, hi = legend["lo"], legend["hi"]
    label = f"low {lo:.4g}" if np.isfinite(lo) else "low"
    _put(img, label, x, y + 12)
    right = f"{hi:.4g} high" if np.isfinite(hi) else "high"
    x0 = x + text_width(label) + 8
    w = max(16, min(RAMP_W, img.shape[1] - x0 - text_width(right) - 8 - PAD))  # narrow pictures: shorter ramp
    img[y: y + RAMP_H, x0: x0 + w] = to_uint8(heat_ramp(w))[None, :, :]
    _put(img, right, x0 + w + 8, y + 12)


def _draw_swatches(img: np.ndarray, items: list, x0: int, y: int, width: int) -> None:
    x = x0
    for rgb, name in items:
        w = SWATCH + 6 + text_width(name) + 18
        if x + w > width - PAD and x > x0:
            x, y = x0, y + LINE + 4
        img[y: y + SWATCH, x: x + SWATCH] = to_uint8(np.asarray(rgb))[None, None, :]
        _put(img, name, x + SWATCH + 6, y + 11)
        x += w


def with_legend(img: np.ndarray, frame: VizFrame, view: str) -> np.ndarray:
    """``img`` (a PNG's picture, where flagged points are drawn larger) with the caption and legend
    panel below it; the picture's pixels are not touched."""
    note = "; flagged points drawn larger" if view in ("heat", "hot") and frame.threshold is not None else ""
    return np.concatenate([img, legend_panel(frame, view, img.shape[1], note)], axis=0)
