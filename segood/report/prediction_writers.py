"""Prediction files in the formats the field's own evaluators and tools read. Sinks: predictions in,
files out (every file written atomically); :data:`WRITERS` is the only place a format is named.

Formats (read from the evaluators' code; OUT is ``segood predict --out``):

* ``semantickitti``: semantic-kitti-api ``evaluate_semantics.py``: ``OUT/sequences/SS/predictions/NNNNNN.label``,
  one little-endian uint32 raw label id per point (train id -> learning id -> ``learning_map_inv``).
* ``real``: REAL's fork (``Jun-CEN/semantic_kitti_api`` bd918e4, ``evaluate_semantics.py``) reads the labels from
  ``sequences/SS/predictions_naive/`` and one float32 anomaly score per point from ``sequences/SS/scores_softmax_naive/``,
  same file names (``NNNNNN.label``); those are the folder names its script reads as shipped.
* ``stu``: ``kumuji/stu_dataset`` b1d8146 ``compute_point_level_ood.py``: ``OUT/<sequence>/<frame>.txt``, one
  score per line (``np.loadtxt(...).astype(np.float32)``; written with 9 significant digits, which round-trips
  float32), higher = more anomalous.
* ``nuscenes``: nuscenes-devkit 1.2.0 lidarseg ``evaluate.py`` / ``validate_submission.py``:
  ``OUT/lidarseg/<split>/<lidar_sample_data_token>_lidarseg.bin``, one uint8 class index (1..16, the
  learning ids of ``labels/nuscenes.yaml``) per point, and ``OUT/<split>/submission.json`` with the ``meta``
  block the validator checks.
* ``npz``: ``OUT/<sequence>/<frame>.npz``: ``label`` (N,) int64 train ids (-1 = none), ``raw_label`` (N,)
  uint32, ``anomaly`` (N,) float32, ``flag`` (N,) uint8 with ``--flag``, ``score`` (the score's name);
  ``segood viz FILE --pred OUT/<frame>.npz`` reads it.
* ``ply``: ``OUT/<sequence>/<frame>.ply``: x, y, z, intensity, anomaly, [above,] label (raw id), red, green,
  blue (the viewer's heat colours); opens in ``segood viz``, CloudCompare, MeshLab, open3d.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from segood.atomic import atomic_write, write_json
from segood.data.labels import LabelMap
from segood.engine.predict import ScanKey, ScanPrediction

REAL_FOLDERS = ("predictions_naive", "scores_softmax_naive")  # what REAL's evaluate_semantics.py reads, as shipped
NUSCENES_META_KEYS = ("use_camera", "use_lidar", "use_radar", "use_map", "use_external")


def _kitti_name(sequence: str, frame: str) -> tuple[str, str]:
    seq = f"{int(sequence):02d}" if sequence.isdigit() else sequence
    return seq, f"{int(frame):06d}" if frame.isdigit() else frame


def _tofile(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda p: array.tofile(p))


def raw_ids(pred: ScanPrediction, label_map: LabelMap) -> np.ndarray:
    """(N,) uint32 raw ids of the predicted classes; 0 (unlabeled) where there is no prediction."""
    out = np.zeros(len(pred.train_ids), np.uint32)
    ok = pred.predicted
    out[ok] = label_map.train_to_raw(pred.train_ids[ok])
    return out


class _Base:
    name = ""

    def __init__(self, out: str | Path, label_map: LabelMap, score: str, meta: dict[str, Any] | None = None) -> None:
        self.out, self.label_map, self.score, self.meta = Path(out), label_map, score, dict(meta or {})

    def finish(self, keys: Sequence[ScanKey]) -> list[Path]:
        return []


class SemanticKittiWriter(_Base):
    """``sequences/SS/predictions/NNNNNN.label`` (uint32 raw ids)."""

    name = "semantickitti"
    folders = ("predictions",)

    def paths(self, key: ScanKey) -> list[Path]:
        seq, frame = _kitti_name(key.sequence, key.frame)
        return [self.out / "sequences" / seq / f / f"{frame}.label" for f in self.folders]

    def write(self, pred: ScanPrediction) -> None:
        _tofile(self.paths(pred.key)[0], raw_ids(pred, self.label_map).astype("<u4"))


class RealWriter(SemanticKittiWriter):
    """REAL's fork: labels in ``predictions_naive/``, float32 scores in ``scores_softmax_naive/``."""

    name = "real"
    folders = REAL_FOLDERS

    def write(self, pred: ScanPrediction) -> None:
        labels, scores = self.paths(pred.key)
        _tofile(labels, raw_ids(pred, self.label_map).astype("<u4"))
        _tofile(scores, pred.score.astype("<f4"))


class StuWriter(_Base):
    """``<sequence>/<frame>.txt``: one score per line."""

    name = "stu"

    def paths(self, key: ScanKey) -> list[Path]:
        return [self.out / key.sequence / f"{key.frame}.txt"]

    def write(self, pred: ScanPrediction) -> None:
        atomic_write(self.paths(pred.key)[0], lambda p: np.savetxt(p, pred.score.astype(np.float32), fmt="%.9g"))


class NuScenesWriter(_Base):
    """``lidarseg/<split>/<token>_lidarseg.bin`` (uint8 learning ids) and ``<split>/submission.json``.
    ``meta`` holds the five booleans of the submission's ``meta`` block."""

    name = "nuscenes"

    def paths(self, key: ScanKey) -> list[Path]:
        if not key.token:
            raise ValueError(f"{key.source}: --format nuscenes needs a nuScenes data root (files are named by the "
                             "LIDAR_TOP sample_data token)")
        return [self.out / "lidarseg" / key.sequence / f"{key.token}_lidarseg.bin"]

    def write(self, pred: ScanPrediction) -> None:
        if not pred.predicted.all():
            raise ValueError(f"{pred.key.source}: every point needs a class for a nuScenes submission")
        learning = np.asarray(self.label_map.train_learning_ids, np.int64)[pred.train_ids]
        _tofile(self.paths(pred.key)[0], learning.astype(np.uint8))

    def finish(self, keys: Sequence[ScanKey]) -> list[Path]:
        missing = [k for k in NUSCENES_META_KEYS if not isinstance(self.meta.get(k), bool)]
        if missing:
            raise ValueError(f"nuScenes submission meta: {missing} must be true or false")
        doc = {"meta": {k: self.meta[k] for k in NUSCENES_META_KEYS}}
        return [write_json(self.out / split / "submission.json", doc) for split in sorted({k.sequence for k in keys})]


class NpzWriter(_Base):
    """``<sequence>/<frame>.npz`` (what ``segood viz --pred`` reads)."""

    name = "npz"

    def paths(self, key: ScanKey) -> list[Path]:
        return [self.out / key.sequence / f"{key.frame}.npz"]

    def write(self, pred: ScanPrediction) -> None:
        arrays = {"label": pred.train_ids, "raw_label": raw_ids(pred, self.label_map), "anomaly": pred.score,
                  "score": np.array(self.score)}
        if pred.flag is not None:
            arrays["flag"] = pred.flag.astype(np.uint8)

        def save(path: Path) -> None:
            with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a path
                np.savez_compressed(f, **arrays)

        atomic_write(self.paths(pred.key)[0], save)


class PlyWriter(_Base):
    """``<sequence>/<frame>.ply`` with the score, the flag, the raw label and the heat colours."""

    name = "ply"

    def paths(self, key: ScanKey) -> list[Path]:
        return [self.out / key.sequence / f"{key.frame}.ply"]

    def write(self, pred: ScanPrediction) -> None:
        from segood.viz.colors import heat_colors, to_uint8
        from segood.viz.ply import write_ply

        pts = pred.points
        cols: dict[str, np.ndarray] = {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2], "intensity": pts[:, 3],
                                       "anomaly": pred.score.astype(np.float32)}
        if pred.flag is not None:
            cols["above"] = pred.flag.astype(np.uint8)
        cols["label"] = raw_ids(pred, self.label_map).astype(np.int32)  # open3d reads int, not ushort
        rgb = to_uint8(heat_colors(pred.score))
        cols.update(red=rgb[:, 0], green=rgb[:, 1], blue=rgb[:, 2])
        write_ply(self.paths(pred.key)[0], cols)


WRITERS: dict[str, type] = {w.name: w for w in (SemanticKittiWriter, RealWriter, StuWriter, NuScenesWriter,
                                                   NpzWriter, PlyWriter)}
LOOSE_FORMATS = ("npz", "ply")  # formats that need no data set around the files


def check_formats(formats: Sequence[str], loose: bool = False) -> None:
    """Refuse an unknown format name (listing the valid ones), or one that needs a data root for loose files."""
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise ValueError(f"--format {unknown[0]}: unknown format, expected one of {', '.join(WRITERS)}")
    bad = [f for f in formats if loose and f not in LOOSE_FORMATS]
    if bad:
        raise ValueError(f"--format {bad[0]}: point files take {', '.join(LOOSE_FORMATS)}; the evaluators' "
                         "formats need a data root (give a config YAML)")


def build_writers(formats: Sequence[str], out: str | Path, label_map: LabelMap, score: str,
                  meta: dict[str, Any] | None = None) -> list[_Base]:
    """One writer per format name (:func:`check_formats` first)."""
    check_formats(formats)
    return [WRITERS[f](out, label_map, score, meta) for f in dict.fromkeys(formats)]


def write_manifest(out: str | Path, manifest: dict[str, Any]) -> Path:
    """``OUT/manifest.json`` (atomic)."""
    json.dumps(manifest)  # fail before writing if something is not JSON
    return write_json(Path(out) / "manifest.json", manifest)
