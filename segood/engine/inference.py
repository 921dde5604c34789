"""A checkpoint ready for single-scan inference, and the operating point that flags anomalous points.

Shared by the viewer (``segood viz``) and bag replay (``segood replay``). The operating point is
the score threshold at or above which a point is called anomalous (``score >= threshold``, the
convention of :func:`segood.engine.artifacts.load_operating_point`). Its source, in order:

1. ``--threshold T`` on the command line (for ``--score`` or the stored operating point's score);
2. the operating point stored with the checkpoint: ``state["operating_point"]`` inside it, or
   ``checkpoint.operating_point.json`` beside it (written by ``segood eval``; refused when it
   belongs to another version of the checkpoint);
3. otherwise the top ``top_fraction`` (5 %) of each scan's scores (``score >`` the scan's 95th
   percentile, strict so that tied scores are not all flagged), and the output says so.

The score, when neither ``--score`` nor a stored operating point names one, is the anomaly head for
a model trained with synthesized outliers and MaxLogit for one trained without
(:func:`segood.metrics.headline.default_score`). A stored operating point also states the
share of ID points it flagged on validation (``fpr``); :meth:`OperatingPoint.warning` speaks up when
a scan has more than ``warn_share`` (25 %) of its points flagged.

Scores are computed with :func:`segood.engine.fit.load_scorers`, so fitted scores (Mahalanobis,
kNN, ...) work when their fit (``checkpoint.scores.pt``) exists.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from segood.config import base_defaults
from segood.data.batching import camera_inputs, collate, scan_to_sample
from segood.data.labels import LabelMap
from segood.data.scan import Scan
from segood.engine.builders import build_grid, build_label_map
from segood.engine.artifacts import load_model, load_operating_point, operating_point_path
from segood.engine.fit import load_scorers
from segood.engine.model_config import model_config_from_checkpoint
from segood.metrics.headline import default_score
from segood.engine.runtime import amp_settings, keep_freed_memory, set_channels_last
from segood.models.concurrency import run_concurrently
from segood.models.fold import fold_batchnorm

TOP_FRACTION = 0.05
WARN_SHARE = 0.25  # warn when a scan has more than this share of its points flagged


@dataclass
class Prediction:
    """Per-point outputs for one scan, in the scan's original point order."""

    label: np.ndarray  # (N,) int64 train ids (argmax of the fused head)
    scores: dict[str, np.ndarray]  # score name -> (N,) float32, higher = more anomalous


@dataclass(frozen=True)
class OperatingPoint:
    score: str
    threshold: float | None  # None: per-scan top ``top_fraction``
    source: str  # where the threshold comes from, printed beside every output
    top_fraction: float = TOP_FRACTION
    fpr: float | None = None  # share of ID points it flagged on validation (stored operating points)
    chosen_by: str = ""  # why this score (stored operating points)
    warn_share: float = WARN_SHARE

    def threshold_for(self, scores: np.ndarray) -> float:
        """The threshold for one scan (fixed, or this scan's (1 - top_fraction) quantile)."""
        if self.threshold is not None:
            return float(self.threshold)
        return float(np.quantile(scores, 1.0 - self.top_fraction)) if len(scores) else float("inf")

    @property
    def relation(self) -> str:
        """'>=' for a fixed threshold; '>' for the per-scan quantile, so that tied scores (e.g. all 0)
        are not all flagged."""
        return ">=" if self.threshold is not None else ">"

    def above(self, scores: np.ndarray) -> np.ndarray:
        """(N,) bool: the points called anomalous."""
        t = self.threshold_for(scores)
        return scores >= t if self.threshold is not None else scores > t

    def describe(self) -> str:
        """One line: score, threshold, where it came from and what it flagged on validation."""
        if self.threshold is None:
            return f"{self.score} > the scan's {100 * (1 - self.top_fraction):g}th percentile ({self.source})"
        text = f"{self.score} >= {self.threshold:.4g} ({self.source})"
        if self.fpr is not None:
            text += f"; it flagged {100 * self.fpr:.1f}% of ID points on validation"
        return text

    def warning(self, share: float) -> str | None:
        """A warning when a scan has more than ``warn_share`` of its points flagged, else None."""
        if share <= self.warn_share:
            return None
        text = f"warning: {100 * share:.1f}% of the points are flagged, more than {100 * self.warn_share:g}%"
        if self.fpr is not None:
            text += f" ('{self.score} >= {self.threshold:.4g}' flagged {100 * self.fpr:.1f}% of ID points on validation)"
        return text + "; this data may differ from validation, or pick another --score / --threshold"


def stored_operating_point(state: dict | None, ckpt: str | Path | None) -> tuple[dict | None, str]:
    """(operating point dict with 'score' and 'threshold', where it came from) or (None, why not)."""
    if state and state.get("operating_point"):
        return state["operating_point"], "checkpoint operating_point"
    if ckpt is None:
        return None, "no checkpoint"
    try:
        op = load_operating_point(ckpt)
    except FileNotFoundError:
        return None, "no operating point stored with the checkpoint"
    except ValueError as e:  # written for another version of the checkpoint
        return None, str(e)
    where = operating_point_path(ckpt).name
    if "tpr" in op:
        seqs = " ".join(map(str, op.get("sequences", [])))
        where += f", TPR {op['tpr']:g} on {op.get('split', '?')}{' ' + seqs if seqs else ''}"
        where += f", {op['points']} points" if "points" in op else ""
    return op, where


def resolve_operating_point(state: dict | None, score: str | None, threshold: float | None,
                            ckpt: str | Path | None = None, warn_share: float = WARN_SHARE) -> OperatingPoint:
    """The operating point from the command line, the checkpoint, or the per-scan fallback (see module doc)."""
    saved, where = stored_operating_point(state, ckpt)
    fallback = default_score(((state or {}).get("config") or {}).get("synthesis", {}).get("method"))
    if threshold is not None:
        return OperatingPoint(score or (saved or {}).get("score") or fallback, float(threshold), "--threshold",
                              warn_share=warn_share)
    if saved and (score is None or score == saved["score"]):
        return OperatingPoint(saved["score"], float(saved["threshold"]), where, fpr=saved.get("fpr"),
                              chosen_by=saved.get("chosen_by", ""), warn_share=warn_share)
    why = f"the stored operating point is for score '{saved['score']}'" if saved else where
    return OperatingPoint(score or fallback, None, f"per-scan top {100 * TOP_FRACTION:g}%: no --threshold; {why}",
                          warn_share=warn_share)


@dataclass(frozen=True)
class InferenceOptions:
    """The fast path's switches: the ``inference:`` section of configs/base.yaml
    (:meth:`from_config`); :meth:`plain` is the path without any of them.

    ``fold_bn``: BatchNorm folded into the layer before it (:func:`segood.models.fold.fold_batchnorm`);
    ``lean_heads``: only the heads the label and the score read (:class:`segood.models.segmenter.LazyOutput`);
    ``channels_last``: the image branch's convolutions in NHWC (:func:`segood.engine.runtime.set_channels_last`);
    ``amp``: ``bf16`` autocast on a CPU with native bf16 (the sparse U-Net and the scores stay fp32);
    ``keep_freed_memory``: freed memory kept for the next frame (:func:`segood.engine.runtime.keep_freed_memory`);
    ``threads``: torch threads for the torch parts (null: torch's default; spconv stays single-threaded);
    ``parallel_branches``: with a camera, the LiDAR and the image branch at the same time, the LiDAR
    branch on one thread, the image branch on the others (:meth:`FusionSegmenter.infer`; needs
    ``lean_heads`` and at least two threads);
    ``prefetch_decode`` / ``background_write``: read for ``segood replay`` (:mod:`segood.ros.replay`):
    the next cloud decoded, and the last frame's output encoded and written, in background threads
    while the model runs.
    """

    fold_bn: bool = True
    lean_heads: bool = True
    channels_last: bool = True
    amp: str = "none"
    keep_freed_memory: bool = True
    threads: int | None = None
    parallel_branches: bool = True
    prefetch_decode: bool = True
    background_write: bool = False

    @classmethod
    def from_config(cls, section: dict | None = None) -> "InferenceOptions":
        """Options from an ``inference:`` section, missing keys from configs/base.yaml."""
        return cls(**{**base_defaults()["inference"], **(section or {})})

    @classmethod
    def plain(cls) -> "InferenceOptions":
        """Every switch off: the model as trained, all heads, fp32, torch's memory and threads."""
        return cls(fold_bn=False, lean_heads=False, channels_last=False, amp="none", keep_freed_memory=False,
                   threads=None, parallel_branches=False, prefetch_decode=False, background_write=False)


class StageTimer:
    """Seconds per stage of the last frame: ``with timer("lidar"): ...``. Stages of the fast path:
    voxelise, lidar, image, fusion, heads (the plain path: voxelise, model, heads); with
    ``parallel_branches`` and a camera: inputs, then branches (voxelise + lidar beside image, each
    timed in its own thread), fusion, heads (:meth:`Predictor._infer_parallel`)."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.last[name] = time.perf_counter() - t0


class Predictor:
    """Model, voxel grid, label map, scorer and operating point of one checkpoint.

    The label map is the one the checkpoint was trained with (``config.data.label_map``); a label
    map file that changed since training is refused (its checksum differs from the checkpoint's).
    ``options`` (default: configs/base.yaml's ``inference:``) picks the fast path's switches; the
    fast path's scores equal the plain path's within the tolerance tests/test_speed.py states.
    ``timer`` holds each frame's seconds per stage (:class:`StageTimer`).
    """

    def __init__(self, ckpt: str | Path, score: str | None = None, threshold: float | None = None,
                 warn_share: float = WARN_SHARE, options: InferenceOptions | None = None,
                 config: Mapping[str, Any] | None = None) -> None:
        self.options = options or InferenceOptions.from_config()
        # the user's config (a data root's, with --set) only has to agree on the model keys it states; the
        # model, its label map and voxel grid are the checkpoint's (its runtime keys, e.g. the backend, are taken)
        self.model, state = load_model(ckpt, cfg=config)
        self.config = cfg = model_config_from_checkpoint(state, None, ckpt)  # the checkpoint's, as built
        if config is not None:
            cfg["model"] = model_config_from_checkpoint(state, config, ckpt)["model"]
        self.label_map: LabelMap = build_label_map(cfg)
        if state["label_map"] != self.label_map.checksum():
            raise ValueError(f"{ckpt}: trained with label map checksum {state['label_map']}, but "
                             f"{self.label_map.source} now has checksum {self.label_map.checksum()}")
        self.grid = build_grid(cfg)
        self.op = resolve_operating_point(state, score, threshold, ckpt, warn_share)
        self.scorer = load_scorers(ckpt, [self.op.score], cfg["eval"], self.model)[self.op.score]
        self.source = str(ckpt)
        self.amp, _ = amp_settings(self.options.amp, torch.device("cpu"), "inference.amp")
        if self.options.fold_bn:  # after load_scorers: a fitted score reads the model as trained
            fold_batchnorm(self.model)
        set_channels_last(self.model, self.options.channels_last)
        self.timer = StageTimer()

    @torch.inference_mode()
    def __call__(self, scan: Scan) -> Prediction:
        """Per-point train-id labels and the operating point's score (LiDAR-only for scans without images)."""
        opts, timer = self.options, self.timer
        timer.last = {}
        keep_freed_memory(opts.keep_freed_memory)
        previous = torch.get_num_threads()
        if opts.threads:
            torch.set_num_threads(int(opts.threads))
        try:
            with torch.autocast("cpu", dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
                if opts.lean_heads and opts.parallel_branches and scan.images and torch.get_num_threads() > 1:
                    out = self._infer_parallel(scan)
                else:
                    with timer("voxelise"):
                        batch = collate([scan_to_sample(scan, None)], self.grid)
                    if opts.lean_heads:
                        out = self.model.infer(batch, timer)
                    else:
                        with timer("model"):
                            out = self.model(batch)
                with timer("heads"):
                    label = out["logits"].argmax(-1).numpy()
                    score = self.scorer(out).float().numpy()
        finally:
            torch.set_num_threads(previous)
        return Prediction(label=label, scores={self.op.score: score})

    def _infer_parallel(self, scan: Scan) -> Mapping[str, torch.Tensor]:
        """``inference.parallel_branches``: voxelising and the LiDAR branch in this thread (one torch
        thread: spconv's count anyway) while the image branch runs on the camera inputs in a worker
        thread with the other threads (:func:`segood.models.concurrency.run_concurrently`, which
        says why that is safe); then fusion with every thread. The same operations as
        :meth:`FusionSegmenter.infer`; stages ``inputs`` (the scan as arrays, the image
        normalised), ``branches`` (the wall time of both sides), and inside it ``voxelise`` +
        ``lidar`` + ``fusion_lidar`` (the fusion's first layer without the camera terms,
        :meth:`FusionSegmenter.fusion_lidar_term`) and ``image``, each timed in its own thread."""
        timer = self.timer
        with timer("inputs"):
            sample = scan_to_sample(scan, None)
            camera = camera_inputs([sample])

        model, term = self.model, self.model.camera_completion is None

        def lidar() -> tuple[dict, torch.Tensor, torch.Tensor | None]:
            with timer("voxelise"):
                batch = collate([sample], self.grid)
            with timer("lidar"):
                fl = model.lidar_features(batch)
            with timer("fusion_lidar"):  # the image branch takes longer: the LiDAR side does this too
                return batch, fl, model.fusion_lidar_term(fl, batch["visible"]) if term else None

        def image() -> torch.Tensor:
            with timer("image"):
                return model.image_features(camera)

        with timer("branches"):
            (batch, fl, h), fi = run_concurrently(lidar, image)
        return model.infer_features(batch, fl, fi, timer, h)
