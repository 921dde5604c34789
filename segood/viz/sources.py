"""Where the viewer's scans come from: a data-set sequence (with ground truth) or a point file
(``.bin`` KITTI layout, ``.pcd``, ``.ply``, ``.npy``; :mod:`segood.data.readers.loose`), with an optional camera image and projection.
Bag frames come from :class:`segood.ros.frames.BagFrames`."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np

from segood.data.errors import DataError
from segood.data.labels import LabelMap
from segood.data.scan import Scan
from segood.data.readers import open_reader
from segood.data.readers.loose import LOOSE_SUFFIXES, cloud_to_scan, read_loose
from segood.data.io import read_image

POINT_SUFFIXES = LOOSE_SUFFIXES


def file_scan(path: str | Path, image: str | Path | None = None, lidar_to_image: np.ndarray | None = None,
              intensity: str = "error", warn: Callable[[str], None] | None = None) -> Scan:
    """A Scan of a point file's finite points (:mod:`segood.data.readers.loose`; a missing intensity
    column follows ``intensity``, error or zero), with one camera when both ``image`` and
    ``lidar_to_image`` are given. A file's ``anomaly`` column (a PLY written by ``segood predict`` or
    ``segood viz --ply``) becomes ``scan.meta['anomaly']``, shown without a model."""
    cloud = read_loose(path)
    img = read_image(Path(image)) if image is not None else None
    scan = cloud_to_scan(cloud, intensity, warn, img, lidar_to_image)
    if "anomaly" in cloud.fields:
        scan.meta["anomaly"] = np.asarray(cloud.fields["anomaly"], np.float32)[cloud.finite]
    return scan


class DatasetFrames:
    """The scans of one sequence (or split / scene entry) of the config's data set, read by its
    registered reader (:data:`segood.data.readers.READERS`); ground truth when the labels exist.
    Ground truth that cannot be read (a short label file, unknown ids) is never dropped silently:
    ``warn`` gets one line naming the file, and the scan is shown without it."""

    def __init__(self, data: dict, sequence: str, label_map: LabelMap,
                 warn: Callable[[str], None] | None = None) -> None:
        """``data``: the ``data`` section of a config; ``warn`` gets the ground-truth warnings."""
        seq = f"{int(sequence):02d}" if str(sequence).isdigit() else str(sequence)
        self.warn = warn or (lambda text: print(text, file=sys.stderr))
        self.plain = open_reader(data, [seq], label_map, with_labels=False)
        self.labelled = None
        if len(self.plain):
            self.labelled = open_reader(data, [seq], label_map, with_labels=True)
            try:
                self.labelled[0]
            except DataError as e:
                self._no_ground_truth(0, e)
                self.labelled = None
        self.names = [self.plain.frame_id(i) for i in range(len(self.plain))]

    def _no_ground_truth(self, i: int, error: DataError) -> None:
        """Say why scan ``i`` has no ground truth, unless its points are the problem (then the
        error comes when the scan itself is read)."""
        self.plain[i]
        self.warn(f"warning: ground truth not shown for {self.plain.frame_id(i)}: {error}")

    def __len__(self) -> int:
        return len(self.plain)

    def __getitem__(self, i: int) -> Scan:
        if self.labelled is not None:
            try:
                return self.labelled[i]
            except DataError as e:
                self._no_ground_truth(i, e)
        return self.plain[i]

    def index_of(self, frame: str) -> int:
        names = {n: i for i, n in enumerate(self.names)}
        key = f"{int(frame):06d}" if str(frame).isdigit() and f"{int(frame):06d}" in names else str(frame)
        if key not in names:
            raise DataError(f"frame '{frame}' not in sequence ({len(self.names)} scans: "
                            f"{self.names[0]}..{self.names[-1]})")
        return names[key]


RUN_CONFIG, RUN_CHECKPOINT = "config.yaml", "checkpoint.pt"


def run_folder_input(path: str | Path) -> tuple[Path, Path | None] | None:
    """(config, checkpoint or None) when ``path`` is a training run folder (holding ``config.yaml``)
    or a run's ``config.yaml`` itself; None for any other input. The checkpoint is the run's
    ``checkpoint.pt`` (the latest) when it exists."""
    p = Path(path)
    if p.is_dir() and (p / RUN_CONFIG).is_file():
        cfg = p / RUN_CONFIG
    elif p.name == RUN_CONFIG and p.is_file():
        cfg = p
    else:
        return None
    ckpt = cfg.parent / RUN_CHECKPOINT
    return cfg, (ckpt if ckpt.is_file() else None)
