"""SemanticKITTI reader for the standard odometry layout.

```
ROOT/sequences/SS/velodyne/NNNNNN.bin    float32 (N, 4) x, y, z, intensity
ROOT/sequences/SS/labels/NNNNNN.label    uint32 (N,) semantic id in the low 16 bits, instance above
ROOT/sequences/SS/image_2/NNNNNN.png     left colour camera
ROOT/sequences/SS/calib.txt              P0..P3 (3x4) and Tr (3x4, velodyne -> rectified camera 0)
ROOT/sequences/SS/poses.txt              one 3x4 pose per scan (optional)
ROOT/sequences/SS/times.txt              one timestamp (s) per scan (optional, -> Scan.meta["time"])
```
Standard split (:data:`SPLITS`): train 00-07 and 09-10, val 08, test 11-21 (no labels).
Test-set predictions go to ``OUT/sequences/SS/predictions/NNNNNN.label`` (uint32 raw ids, the
official submission layout) through :func:`write_predictions`.
A point X projects into image_2 through ``P2 @ [Tr; 0 0 0 1] @ X``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segood.data.errors import DataError
from segood.data.io import read_bin, read_image, read_label, read_poses
from segood.data.labels import LabelMap
from segood.data.projection import assign_cameras, check_projection_matrix
from segood.data.scan import Scan

CAMERA_MATRIX = {"image_2": "P2", "image_3": "P3"}
SPLITS = {
    "train": ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"],
    "val": ["08"],
    "test": [f"{s:02d}" for s in range(11, 22)],
}


def read_calib(path: Path) -> dict[str, np.ndarray]:
    """Parse a KITTI odometry ``calib.txt`` into 3x4 matrices keyed by name (P0..P3, Tr)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: calibration file is missing (expected KITTI odometry calib.txt with P2 and Tr)")
    out: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, _, values = line.partition(":")
        try:
            nums = np.array([float(v) for v in values.split()], dtype=np.float64)
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: field '{key.strip()}' is not a list of numbers") from e
        if nums.size != 12:
            raise DataError(f"{path}:{lineno}: field '{key.strip()}' has {nums.size} values, expected 12 (3x4)")
        out[key.strip()] = nums.reshape(3, 4)
    for key in ("P2", "Tr"):
        if key not in out:
            raise DataError(f"{path}: field '{key}' is missing (found {sorted(out)})")
    return out


def read_times(path: Path) -> np.ndarray | None:
    """Read ``times.txt`` as (S,) float64 seconds, or None when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ValueError as e:
        raise DataError(f"{path}: expected one timestamp (seconds) per line ({e})") from e


def write_predictions(out_root: str | Path, sequence: str, frame: str, train_ids: np.ndarray,
                      label_map: LabelMap, num_points: int | None = None) -> Path:
    """Write one scan's predictions in the official submission layout.

    ``OUT/sequences/SS/predictions/NNNNNN.label``: uint32 raw ids (learning ids mapped back through
    ``learning_map_inv``), one per point of the original scan. Written atomically.
    """
    train_ids = np.asarray(train_ids).reshape(-1)
    if num_points is not None and len(train_ids) != num_points:
        raise DataError(f"sequence {sequence} frame {frame}: {len(train_ids)} predictions for {num_points} points "
                        "(the submission needs one label per original point)")
    seq = f"{int(sequence):02d}" if str(sequence).isdigit() else str(sequence)
    name = f"{int(frame):06d}" if str(frame).isdigit() else str(frame)
    path = Path(out_root) / "sequences" / seq / "predictions" / f"{name}.label"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".label.tmp")
    label_map.train_to_raw(train_ids).astype("<u4").tofile(tmp)
    tmp.replace(path)
    return path


def lidar_to_image_matrix(calib: dict[str, np.ndarray], camera: str, source: str) -> np.ndarray:
    """``P @ [Tr; 0 0 0 1]`` for the named camera (image_2 or image_3)."""
    if camera not in CAMERA_MATRIX:
        raise DataError(f"{source}: unknown camera '{camera}', expected one of {sorted(CAMERA_MATRIX)}")
    tr = np.vstack([calib["Tr"], [0.0, 0.0, 0.0, 1.0]])
    return check_projection_matrix(calib[CAMERA_MATRIX[camera]] @ tr, f"{source} ({CAMERA_MATRIX[camera]} @ Tr)")


@dataclass(frozen=True)
class Frame:
    """Where one scan's files live."""

    sequence: str
    index: str
    root: Path

    @property
    def seq_dir(self) -> Path:
        return self.root / "sequences" / self.sequence

    def path(self, folder: str, ext: str) -> Path:
        return self.seq_dir / folder / f"{self.index}.{ext}"


class SemanticKittiReader:
    """Reads scans of the given sequences into :class:`Scan` records.

    ``with_labels=False`` reads unlabelled scans (test sequences). ``camera=None`` skips images
    (LiDAR-only use); otherwise every scan gets its image, projection matrix and per-point pixel.
    """

    def __init__(
        self,
        root: str | Path,
        sequences: list[str],
        label_map: LabelMap,
        camera: str | None = "image_2",
        with_labels: bool = True,
    ) -> None:
        self.root = Path(root)
        self.label_map = label_map
        self.camera = camera
        self.with_labels = with_labels
        self.frames = self._list_frames([f"{int(s):02d}" if str(s).isdigit() else str(s) for s in sequences])
        self._calib: dict[str, dict[str, np.ndarray]] = {}
        self._poses: dict[str, np.ndarray | None] = {}
        self._times: dict[str, np.ndarray | None] = {}

    def _list_frames(self, sequences: list[str]) -> list[Frame]:
        frames = []
        for seq in sequences:
            vdir = self.root / "sequences" / seq / "velodyne"
            if not vdir.is_dir():
                raise DataError(f"{vdir}: folder is missing (expected SemanticKITTI layout sequences/{seq}/velodyne/*.bin)")
            names = sorted(p.stem for p in vdir.glob("*.bin"))
            if not names:
                raise DataError(f"{vdir}: no .bin scans found")
            frames += [Frame(seq, n, self.root) for n in names]
        return frames

    def __len__(self) -> int:
        return len(self.frames)

    def frame_id(self, i: int) -> str:
        """The six-digit scan index of scan ``i`` (``000003``)."""
        return self.frames[i].index

    def calib(self, seq: str) -> dict[str, np.ndarray]:
        if seq not in self._calib:
            self._calib[seq] = read_calib(self.root / "sequences" / seq / "calib.txt")
        return self._calib[seq]

    def pose(self, frame: Frame) -> np.ndarray | None:
        if frame.sequence not in self._poses:
            self._poses[frame.sequence] = read_poses(frame.seq_dir / "poses.txt")
        poses = self._poses[frame.sequence]
        i = int(frame.index)
        return None if poses is None or i >= len(poses) else poses[i]

    def time(self, frame: Frame) -> float | None:
        if frame.sequence not in self._times:
            self._times[frame.sequence] = read_times(frame.seq_dir / "times.txt")
        times = self._times[frame.sequence]
        i = int(frame.index)
        return None if times is None or i >= len(times) else float(times[i])

    def __getitem__(self, i: int) -> Scan:
        frame = self.frames[i]
        bin_path = frame.path("velodyne", "bin")
        points = read_bin(bin_path)
        scan = Scan(points=points, source=str(bin_path), pose=self.pose(frame),
                    meta={"sequence": frame.sequence, "frame": frame.index})
        t = self.time(frame)
        if t is not None:
            scan.meta["time"] = t
        if self.with_labels:
            label_path = frame.path("labels", "label")
            scan.raw_labels = read_label(label_path, len(points))
            scan.learning_labels = self.label_map.to_learning(scan.raw_labels, str(label_path))
        if self.camera is not None:
            self._attach_camera(scan, frame)
        return scan

    def _attach_camera(self, scan: Scan, frame: Frame) -> None:
        matrix = lidar_to_image_matrix(self.calib(frame.sequence), self.camera, str(frame.seq_dir / "calib.txt"))
        image = read_image(frame.path(self.camera, "png"))
        h, w = image.shape[:2]
        scan.images = [image]
        scan.lidar_to_image = [matrix]
        scan.pixel_uv, scan.camera_id = assign_cameras(scan.points[:, :3], [matrix], [(w, h)])

    def check_scan(self, i: int, decode_images: bool = True) -> tuple[list[str], np.ndarray | None, dict]:
        """Every problem of scan ``i`` (not just the first), its raw labels and in-image point count."""
        from segood.data.check import camera_check, checked_labels

        frame = self.frames[i]
        try:
            points = read_bin(frame.path("velodyne", "bin"))
        except DataError as e:
            return [str(e)], None, {}
        problems: list[str] = []
        raw = None
        if self.with_labels:
            label_path = frame.path("labels", "label")
            raw = checked_labels(lambda: (read_label(label_path, len(points)), label_path), self.label_map, problems)
        in_image: dict[str, int] = {}
        if self.camera is not None:
            calib = str(frame.seq_dir / "calib.txt")
            in_image = camera_check(
                points, lambda: lidar_to_image_matrix(self.calib(frame.sequence), self.camera, calib),
                frame.path(self.camera, "png"), calib, self.camera, decode_images, problems)
        return problems, raw, in_image
