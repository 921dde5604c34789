"""Per-point predictions of a checkpoint over a data root or loose point files, handed to writers.

The pass (:func:`predict`) reads each scan (in a loader worker when ``num_workers > 0``), runs the
model once (:class:`segood.engine.inference.Predictor`: one scan per forward, every original point
scored), and gives one :class:`ScanPrediction` per scan to every writer (``segood.report.
prediction_writers``: sinks, they never call the model). It never reorders or drops points: a
prediction has one entry per point of the file, in the file's order; points the network cannot
take (non-finite coordinates in a loose file) get train id -1 and score NaN, and the run says how many.

Resumable: a scan whose outputs all exist is skipped (``overwrite=False``) before it is read; every
file is written atomically, so an interrupted run leaves no half-written output. A scan that cannot
be read is reported (its file named) and counted, and the others go on. The run's
:class:`PredictSummary` becomes ``manifest.json``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from segood.data.errors import DataError
from segood.data.labels import LabelMap
from segood.data.scan import Scan


@dataclass(frozen=True)
class ScanKey:
    """Where one scan's outputs go: ``sequence`` (data-set entry, or a loose file's folder relative to
    its input, '' at the top), ``frame`` (frame id, or the file's stem), ``source`` (its file, for
    messages) and ``token`` (nuScenes LIDAR_TOP sample_data token, else None)."""

    sequence: str
    frame: str
    source: str
    token: str | None = None


@dataclass
class ScanPrediction:
    """One scan's outputs, one entry per point of its file in file order."""

    key: ScanKey
    points: np.ndarray       # (N, 4) float32 x, y, z, intensity as read
    train_ids: np.ndarray    # (N,) int64 predicted train ids; -1 where the network could not take the point
    score: np.ndarray        # (N,) float32 the chosen anomaly score (higher = more anomalous); NaN likewise
    flag: np.ndarray | None  # (N,) bool score >= the operating point's threshold (with --flag), else None

    @property
    def predicted(self) -> np.ndarray:
        return self.train_ids >= 0


class Writer(Protocol):
    """A sink for predictions (:mod:`segood.report.prediction_writers`)."""

    name: str

    def paths(self, key: ScanKey) -> list[Path]:
        """The files one scan's predictions go to (all exist = nothing to do)."""

    def write(self, pred: ScanPrediction) -> None:
        """Write one scan's files atomically."""

    def finish(self, keys: Sequence[ScanKey]) -> list[Path]:
        """Files for the whole run (e.g. nuScenes' submission.json), given every scan's key."""


class Source(Protocol):
    """Scans to predict: their keys (known without reading them) and a loader per index."""

    def keys(self) -> list[ScanKey]: ...

    def load(self, i: int) -> Scan: ...


# --------------------------------------------------------------------------- sources


class DatasetSource:
    """The scans of ``entries`` (sequences, splits or scenes) of the config's data set, read without
    labels by its registered reader, one reader per entry (a key's ``sequence`` is its entry)."""

    def __init__(self, data: dict[str, Any], entries: Sequence[str], label_map: LabelMap) -> None:
        from segood.data.readers import open_reader

        cache: dict = {}
        self.readers = []
        for e in entries:
            e = f"{int(e):02d}" if str(e).isdigit() else str(e)
            self.readers.append((e, open_reader(data, [e], label_map, with_labels=False, cache=cache)))
        self.index = [(r, i) for r, (_, reader) in enumerate(self.readers) for i in range(len(reader))]

    def __len__(self) -> int:
        return len(self.index)

    def keys(self) -> list[ScanKey]:
        out = []
        for r, i in self.index:
            entry, reader = self.readers[r]
            # nuScenes outputs are named by the LIDAR_TOP sample_data token, known without reading the scan
            token = reader.lidar_record(i)["token"] if hasattr(reader, "lidar_record") else None
            frame = reader.frame_id(i)
            out.append(ScanKey(entry, frame, f"{getattr(reader, 'root', '')} {entry}/{frame}", token))
        return out

    def load(self, i: int) -> Scan:
        r, j = self.index[i]
        return self.readers[r][1][j]


class LooseSource:
    """Loose point files (:mod:`segood.data.readers.loose`), with an optional camera shared by all.
    A file's key: its folder relative to the input folder it was found in, and its stem."""

    def __init__(self, inputs: Sequence[str | Path], intensity: str = "error", image: np.ndarray | None = None,
                 lidar_to_image: np.ndarray | None = None) -> None:
        from segood.data.readers.loose import list_loose_files

        self.intensity, self.image, self.lidar_to_image = intensity, image, lidar_to_image
        self.files: list[Path] = []
        self._keys: list[ScanKey] = []
        for item in map(Path, inputs):
            for f in list_loose_files([item]):
                rel = f.parent.relative_to(item).as_posix() if item.is_dir() else ""
                self.files.append(f)
                self._keys.append(ScanKey("" if rel == "." else rel, f.stem, str(f)))
        seen: dict[tuple[str, str], str] = {}
        for k in self._keys:
            other = seen.setdefault((k.sequence, k.frame), k.source)
            if other != k.source:
                raise DataError(f"{k.source} and {other} would write the same outputs ('{k.frame}' in the same "
                                "folder): rename one or predict them in separate runs")

    def __len__(self) -> int:
        return len(self.files)

    def keys(self) -> list[ScanKey]:
        return list(self._keys)

    def load(self, i: int) -> Scan:
        from segood.data.readers.loose import cloud_to_scan, fill_intensity, read_loose

        cloud = read_loose(self.files[i])
        said: list[str] = []
        scan = cloud_to_scan(cloud, self.intensity, said.append, self.image, self.lidar_to_image)
        scan.meta["file_points"] = fill_intensity(cloud, "zero")  # every row of the file, NaN ones included
        scan.meta["warnings"] = said
        bad = cloud.num_points - int(cloud.finite.sum())
        if bad:
            said.append(f"{cloud.path}: {bad} of {cloud.num_points} points have non-finite coordinates; they are kept "
                        "in the outputs with no prediction (train id -1 / raw label 0, score NaN)")
        return scan


# --------------------------------------------------------------------------- the pass


@dataclass
class PredictSummary:
    """What a run did (the body of manifest.json)."""

    scans: int = 0
    written: int = 0
    skipped_existing: int = 0
    points: int = 0
    points_without_prediction: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    run_files: list[str] = field(default_factory=list)
    status: str = "running"  # running | done | interrupted

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "scans": self.scans, "written": self.written, "skipped_existing": self.skipped_existing,
                "failed": self.failed, "points": self.points,
                "points_without_prediction": self.points_without_prediction,
                "seconds": round(self.seconds, 3),
                "points_per_second": round(self.points / self.seconds, 1) if self.seconds > 0 else None,
                "failures": self.failures, "warnings": self.warnings, "run_files": self.run_files}


class _Items(Dataset):
    """(position, scan or the error message) for the scans still to do; runs in loader workers."""

    def __init__(self, source: Source, todo: list[int], keys: Sequence[ScanKey]) -> None:
        self.source, self.todo, self.keys = source, todo, keys

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int) -> tuple[int, Scan | str]:
        i = self.todo[k]
        try:
            return i, self.source.load(i)
        except DataError as e:  # names the file and what was expected
            return i, str(e)
        except Exception as e:  # noqa: BLE001  (anything a reader or decoder raises: reported, counted, the run goes on)
            return i, f"{self.keys[i].source}: {type(e).__name__}: {e}"


def _identity(x: Any) -> Any:
    return x


def scan_prediction(key: ScanKey, scan: Scan, train_ids: np.ndarray, score: np.ndarray,
                    above: Callable[[np.ndarray], np.ndarray] | None) -> ScanPrediction:
    """Scatter the network's per-point outputs back onto every row of the scan's file."""
    finite = scan.meta.get("finite")
    points = scan.meta.get("file_points", scan.points)
    if len(train_ids) != scan.num_points or len(score) != scan.num_points:
        raise ValueError(f"{scan.source}: {len(train_ids)} labels and {len(score)} scores for {scan.num_points} "
                         "points (one prediction per point is required)")
    if finite is None:
        full_ids, full_score = np.asarray(train_ids, np.int64), np.asarray(score, np.float32)
    else:
        full_ids = np.full(len(points), -1, np.int64)
        full_score = np.full(len(points), np.nan, np.float32)
        full_ids[finite], full_score[finite] = train_ids, score
    flag = None
    if above is not None:
        flag = np.zeros(len(points), bool)
        ok = full_ids >= 0
        flag[ok] = above(full_score[ok])
    return ScanPrediction(key, points, full_ids, full_score, flag)


def todo_indices(keys: Sequence[ScanKey], writers: Sequence[Writer], overwrite: bool) -> list[int]:
    """Indices of the scans whose outputs are not all there yet (every scan with ``overwrite``)."""
    if overwrite:
        return list(range(len(keys)))
    return [i for i, k in enumerate(keys) if not all(p.exists() for w in writers for p in w.paths(k))]


def predict(source: Source, predictor: Callable[[Scan], Any], score: str, writers: Sequence[Writer],
            overwrite: bool = False, flag: Callable[[np.ndarray], np.ndarray] | None = None,
            num_workers: int = 0, progress: bool = True, say: Callable[[str], None] = print,
            summary: PredictSummary | None = None) -> PredictSummary:
    """Run ``predictor`` (scan -> object with ``label`` and ``scores[score]``) over ``source`` and hand
    each scan's :class:`ScanPrediction` to every writer. ``flag`` (scores -> bool) adds the binary flag.
    Messages (unreadable scans, missing intensity, non-finite points) go through ``say`` as they happen.
    ``summary`` is filled as the run goes (so an interrupted run can still report what it did)."""
    keys = source.keys()
    todo = todo_indices(keys, writers, overwrite)
    summary = summary if summary is not None else PredictSummary()
    summary.scans, summary.skipped_existing = len(keys), len(keys) - len(todo)
    loader = DataLoader(_Items(source, todo, keys), batch_size=None, shuffle=False, num_workers=int(num_workers),
                        collate_fn=_identity)
    start = time.perf_counter()
    bar = tqdm(loader, total=len(todo), desc="predict", unit="scan", disable=not progress, dynamic_ncols=True)
    with bar, torch.no_grad():
        for i, scan in bar:
            key = keys[i]
            if isinstance(scan, str):
                summary.failures.append({"source": key.source, "error": scan})
                say(f"failed: {scan}")
                continue
            for w in scan.meta.get("warnings", ()):
                summary.warnings.append(w)
                say(f"warning: {w}")
            out = predictor(scan)
            pred = scan_prediction(key, scan, out.label, out.scores[score], flag)
            for writer in writers:
                writer.write(pred)
            summary.written += 1
            summary.points += len(pred.train_ids)
            summary.points_without_prediction += int((~pred.predicted).sum())
            summary.seconds = time.perf_counter() - start
            bar.set_postfix_str(f"{summary.points / max(summary.seconds, 1e-9):,.0f} pts/s", refresh=False)
    summary.seconds = time.perf_counter() - start
    for writer in writers:
        summary.run_files += [str(p) for p in writer.finish(keys)]
    summary.status = "done"
    return summary


MANIFEST_FORMAT = "segood-predictions-v1"


def build_manifest(ckpt: str | Path, cfg: dict | None, entries: Sequence[str] | None, source: Source,
                   predictor: Any, formats: Sequence[str], flag: bool, intensity: str,
                   summary: PredictSummary) -> dict[str, Any]:
    """manifest.json: which checkpoint, data, score and threshold produced the files, and what the run did."""
    from segood import __version__
    from segood.engine.artifacts import checkpoint_sha

    op = predictor.op
    if cfg is not None:
        data = {"config": cfg.get("_source", ""), "dataset": cfg["data"]["dataset"], "root": str(cfg["data"]["root"]),
                "label_map": cfg["data"]["label_map"], "sequences": list(entries or []), "resolved": cfg["data"]}
    else:
        data = {"files": [k.source for k in source.keys()], "intensity": intensity}
    return {
        "format": MANIFEST_FORMAT,
        "segood_version": __version__,
        "checkpoint": str(ckpt),
        "checkpoint_sha256": checkpoint_sha(ckpt),
        "train_config": predictor.config.get("_source", ""),
        "model_label_map": predictor.label_map.source,
        "data": data,
        "formats": list(formats),
        "score": {"name": op.score, "source": op.source, "chosen_by": op.chosen_by,
                  "convention": "higher = more anomalous"},
        "threshold": {"value": op.threshold, "relation": op.relation, "source": op.source,
                      "fpr_on_validation": op.fpr} if op.threshold is not None else None,
        "flag": flag,
        "labels": "train ids of the model's label map; written as raw ids (semantickitti, real, ply, npz raw_label) "
                  "or learning ids (nuscenes); points with no prediction: train id -1, raw id 0, score NaN",
        "counts": summary.to_dict(),
    }


def check_resume(out: str | Path, checkpoint_sha256: str, score: str) -> None:
    """Refuse to add to (and skip existing files of) an output folder whose manifest says its files came
    from another checkpoint or another score: skipped files would silently mix two models."""
    import json

    path = Path(out) / "manifest.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
        was = (old["checkpoint_sha256"], old["score"]["name"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a segood predictions manifest ({type(e).__name__}: {e}); use another --out "
                         "or --overwrite") from None
    if was != (checkpoint_sha256, score):
        raise ValueError(f"{path}: the files in {Path(out)} were written by checkpoint {was[0]} with score '{was[1]}', "
                         f"this run is checkpoint {checkpoint_sha256} with score '{score}'; use another --out, or "
                         "--overwrite to rewrite every file")
