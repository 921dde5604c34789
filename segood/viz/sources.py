"""Where the viewer's scans come from: a data-set sequence (with ground truth) or a point file
(``.bin`` KITTI layout, ``.pcd``, ``.ply``), with an optional camera image and projection.
Bag frames come from :class:`segood.ros.frames.BagFrames`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segood.data.errors import DataError
from segood.data.labels import LabelMap
from segood.data.projection import assign_cameras, check_projection_matrix
from segood.data.scan import Scan
from segood.data.readers import open_reader
from segood.data.io import read_bin, read_image

POINT_SUFFIXES = (".bin", ".pcd", ".ply")


def load_points(path: str | Path) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity from ``.bin`` (float32 x4) or ``.pcd`` / ``.ply`` (intensity
    from an ``intensity`` attribute, else 0). Points with non-finite coordinates are dropped."""
    p = Path(path)
    if p.suffix == ".bin":
        return read_bin(p)
    if p.suffix not in POINT_SUFFIXES:
        raise DataError(f"{p}: unknown point file type '{p.suffix}' (expected {', '.join(POINT_SUFFIXES)})")
    if not p.is_file():
        raise DataError(f"{p}: point file is missing")
    import open3d as o3d

    pcd = o3d.t.io.read_point_cloud(str(p))
    if "positions" not in pcd.point or len(pcd.point["positions"]) == 0:
        raise DataError(f"{p}: no points could be read")
    xyz = pcd.point["positions"].numpy().astype(np.float32)
    out = np.zeros((len(xyz), 4), dtype=np.float32)
    out[:, :3] = xyz
    if "intensity" in pcd.point:
        out[:, 3] = pcd.point["intensity"].numpy().reshape(len(xyz), -1)[:, 0]
    return out[np.isfinite(xyz).all(axis=1)]


def file_scan(path: str | Path, image: str | Path | None = None, lidar_to_image: np.ndarray | None = None) -> Scan:
    """A Scan from a point file, with one camera when both ``image`` and ``lidar_to_image`` are given."""
    scan = Scan(points=load_points(path), source=str(path))
    if (image is None) != (lidar_to_image is None):
        raise DataError(f"{path}: a camera needs both an image (--image) and a projection (--calib)")
    if image is not None:
        img = read_image(Path(image))
        m = check_projection_matrix(lidar_to_image, f"{image} projection")
        scan.images, scan.lidar_to_image = [img], [m]
        scan.pixel_uv, scan.camera_id = assign_cameras(scan.points[:, :3], [m], [(img.shape[1], img.shape[0])])
    return scan


class DatasetFrames:
    """The scans of one sequence (or split / scene entry) of the config's data set, read by its
    registered reader (:data:`segood.data.readers.READERS`); ground truth when the labels exist."""

    def __init__(self, cfg: dict, sequence: str, label_map: LabelMap) -> None:
        data = cfg["data"]
        seq = f"{int(sequence):02d}" if str(sequence).isdigit() else str(sequence)
        self.reader = open_reader(data, [seq], label_map, with_labels=_has_labels(data, seq, label_map))
        self.names = [self.reader.frame_id(i) for i in range(len(self.reader))]

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> Scan:
        return self.reader[i]

    def index_of(self, frame: str) -> int:
        names = {n: i for i, n in enumerate(self.names)}
        key = f"{int(frame):06d}" if str(frame).isdigit() and f"{int(frame):06d}" in names else str(frame)
        if key not in names:
            raise DataError(f"frame '{frame}' not in sequence ({len(self.names)} scans: "
                            f"{self.names[0]}..{self.names[-1]})")
        return names[key]


def _has_labels(data: dict, sequence: str, label_map: LabelMap) -> bool:
    """Whether the first scan's labels can be read (unlabelled sequences are shown without ground truth)."""
    reader = open_reader(data, [sequence], label_map, with_labels=True)
    try:
        return len(reader) > 0 and reader[0].raw_labels is not None
    except DataError:
        return False


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
