"""``segood check-data``: validate a data-set root before training, reporting every problem at once.

Per split it counts the scans, and for every scan it reads each piece on its own (points, labels,
every camera's calibration and image) so one broken file never hides another: missing or truncated
files, label files whose length does not match the points, unknown raw ids, singular / NaN
calibration, calibration that puts no point in the image; plus data-set level problems (missing
tables, missing sweeps, missing sequences). It prints a per-class point histogram with the ID / OOD /
ignored split of the label map. Exit code 1 if anything is wrong.

One check for every data set: :func:`check_reader` works through the reader protocol
(:class:`segood.data.reader.Reader`: ``check_scan(i, decode_images) -> (problems, raw_labels | None,
{camera: points in image})``, optionally ``sweep_problems()``). The CLI glue (config -> readers) is
in :mod:`segood.commands.check_data`; this module only needs a reader factory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from segood.data.errors import DataError
from segood.data.labels import LabelMap
from segood.data.reader import Reader


def image_size(path: Path, decode: bool) -> tuple[int, int]:
    """(width, height) of an image; ``decode`` reads the pixels too, so a truncated file is found."""
    from PIL import Image

    if not path.is_file():
        raise DataError(f"{path}: camera image is missing")
    try:
        with Image.open(path) as im:
            if decode:
                im.load()
            return im.size
    except OSError as e:
        raise DataError(f"{path}: not a readable image, possibly truncated ({e})") from e


def checked_labels(read: Callable[[], tuple[np.ndarray, Path]], label_map: LabelMap,
                   problems: list[str]) -> np.ndarray | None:
    """Raw labels from ``read()`` if they load and every id is in the label map, else None (the
    reason appended to ``problems``)."""
    try:
        raw, path = read()
        label_map.to_learning(raw, str(path))
        return raw
    except DataError as e:
        problems.append(str(e))
        return None


def camera_check(points: np.ndarray, matrix: Callable[[], np.ndarray], image_path: Path, calib_source: str,
                 camera: str, decode_images: bool, problems: list[str]) -> dict[str, int]:
    """Check one camera of a scan (calibration, image, and that some point lands in the image);
    returns {camera: points inside the image} when both calibration and image could be read."""
    from segood.data.projection import project_points

    m = size = None
    try:
        m = matrix()
    except DataError as e:
        problems.append(str(e))
    try:
        size = image_size(image_path, decode_images)
    except DataError as e:
        problems.append(str(e))
    if m is None or size is None:
        return {}
    n = int(project_points(points[:, :3], m, *size)[1].sum())
    if n == 0:
        problems.append(f"{image_path}: the calibration {calib_source} puts none of the "
                        f"{len(points)} points into this {size[0]}x{size[1]} image")
    return {camera: n}


@dataclass
class SplitReport:
    name: str
    scans: int = 0
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    class_points: np.ndarray | None = None  # (num learning ids,) int64
    in_image: dict[str, int] = field(default_factory=dict)  # camera -> points inside its image (summed)


@dataclass
class Report:
    splits: list[SplitReport] = field(default_factory=list)
    dataset_problems: list[str] = field(default_factory=list)  # not tied to one split

    @property
    def problems(self) -> list[str]:
        return self.dataset_problems + [p for s in self.splits for p in s.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def warnings(self, label_map: LabelMap) -> list[str]:
        """Splits from which no OOD metric can be computed (nothing is wrong with the files)."""
        return [w for s in self.splits for w in ood_warnings(s, label_map)]


def ood_warnings(sr: SplitReport, label_map: LabelMap) -> list[str]:
    """Why split ``sr`` cannot give AUROC / AUPR / FPR95: no OOD point, or every label ignored."""
    if sr.class_points is None or not sr.class_points.sum():
        return []
    total = int(sr.class_points.sum())
    ignored = int(sr.class_points[list(label_map.ignore_learning_ids)].sum())
    ood = int(sr.class_points[list(label_map.ood_learning_ids)].sum())
    names = ", ".join(label_map.learning_names[i] for i in label_map.ood_learning_ids)
    if ignored == total:
        return [f"split {sr.name}: 100% of its {total} labelled points are ignored (learning ids "
                f"{sorted(label_map.ignore_learning_ids)}): no OOD metric and no mIoU can be computed from it"]
    if ood == 0:
        return [f"split {sr.name}: 0 OOD points (expected some of: {names}) among {total - ignored} "
                "labelled points: AUROC / AUPR / FPR95 cannot be computed from it"]
    return []


def check_reader(reader: Reader, label_map: LabelMap, report: SplitReport, max_scans: int | None = None,
                 decode_images: bool = True, progress: Callable[[int, int], None] | None = None) -> SplitReport:
    """Add ``reader``'s scans, problems and label histogram to ``report``."""
    n_learn = max(label_map.learning_names) + 1
    if report.class_points is None:
        report.class_points = np.zeros(n_learn, dtype=np.int64)
    if hasattr(reader, "sweep_problems"):
        report.problems += reader.sweep_problems()
    total = len(reader)
    report.scans += total
    count = total if max_scans is None else min(total, int(max_scans))
    for i in range(count):
        problems, raw, in_image = reader.check_scan(i, decode_images=decode_images)
        report.problems += problems
        report.checked += 1
        if raw is not None:
            learning = label_map.to_learning(raw)
            report.class_points += np.bincount(learning, minlength=n_learn)[:n_learn]
        for cam, n in in_image.items():
            report.in_image[cam] = report.in_image.get(cam, 0) + n
        if progress is not None:
            progress(i + 1, count)
    return report


def check_dataset(make_reader: Callable[[str, str], Reader], splits: dict[str, Iterable[str]], label_map: LabelMap,
                  max_scans: int | None = None, decode_images: bool = True) -> Report:
    """``make_reader(split, entry)`` builds the reader of one sequence / split name / scene; a
    DataError there (missing sequence, missing tables...) is recorded and checking goes on."""
    report = Report()
    for split, entries in splits.items():
        sr = SplitReport(split)
        for entry in entries:
            try:
                reader = make_reader(split, entry)
            except DataError as e:
                sr.problems.append(f"[{split} {entry}] {e}")
                continue
            check_reader(reader, label_map, sr, max_scans=max_scans, decode_images=decode_images)
        report.splits.append(sr)
    return report


def format_report(report: Report, label_map: LabelMap) -> str:
    lines = []
    for sr in report.splits:
        lines.append(f"== split {sr.name}: {sr.scans} scans ({sr.checked} checked), {len(sr.problems)} problem(s)")
        if sr.in_image:
            lines.append("   points inside each camera image: "
                         + ", ".join(f"{c} {n}" for c, n in sorted(sr.in_image.items())))
        if sr.class_points is not None and sr.class_points.sum():
            total = int(sr.class_points.sum())
            lines.append(f"   {'learning id':>11s}  {'class':22s} {'role':8s} {'points':>12s} {'share':>7s}")
            for lid in sorted(label_map.learning_names):
                role = ("ignored" if lid in label_map.ignore_learning_ids
                        else "OOD" if lid in label_map.ood_learning_ids else "ID")
                n = int(sr.class_points[lid])
                lines.append(f"   {lid:11d}  {label_map.learning_names[lid]:22s} {role:8s} {n:12d} {100 * n / total:6.2f}%")
            id_ids = [i for i in label_map.learning_names
                      if i not in label_map.ignore_learning_ids and i not in label_map.ood_learning_ids]
            for role, ids in (("ID", id_ids), ("OOD", label_map.ood_learning_ids),
                              ("ignored", label_map.ignore_learning_ids)):
                n = int(sr.class_points[list(ids)].sum())
                lines.append(f"   {'':11s}  {'total ' + role:22s} {'':8s} {n:12d} {100 * n / total:6.2f}%")
    problems, warnings = report.problems, report.warnings(label_map)
    if warnings:
        lines.append(f"== {len(warnings)} warning(s):")
        lines += [f" - {w}" for w in warnings]
    verdict = " - data set OK" + (" for training, but see the warning(s) above" if warnings else "")
    lines.append(f"== {len(problems)} problem(s)" + (":" if problems else verdict))
    lines += [f" - {p}" for p in problems]
    return "\n".join(lines)
