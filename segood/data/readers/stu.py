"""STU (Spotting the Unexpected, ``kumuji/stu_dataset``, CVPR 2025): real road anomalies, SemanticKITTI-like layout.

```
ROOT/SSS/velodyne/NNNNNN.bin          float32 (N, 4) x, y, z, intensity (Ouster, sensor frame `os_sensor`)
ROOT/SSS/labels/NNNNNN.label          uint32 (N,): semantic label in the low 16 bits (0 ignore, 1 inlier,
                                      2 anomaly), instance id in the upper 16 bits
ROOT/SSS/port_a_cam_0/NNNNNN.png      the front camera (1920 x 1208), as the repository's image loader expects
ROOT/SSS/poses.txt, calib.txt         SemanticKITTI style (poses optional; calib.txt is not used for the camera)
ROOT/camera_config/intrinsics.txt     ROS CameraInfo blocks, one per camera (`port_a_camera_0:` then its fields)
ROOT/camera_config/extrinsics.txt     tf transforms (YAML documents); `os_sensor` -> `port_a_camera_0`
```
Sequences are folder names (validation 125-134 in the release). The camera configuration is the
repository's ``camera_config/`` folder (``data.reader_options.camera_config`` points elsewhere). Raw
semantic values other than 0 and 2 read as 1 (inlier), as the repository's own code does.

Projection (the repository's ``dataset/stu_image_dataset.py``): a LiDAR point p goes to the camera frame
as ``R^T (p - t)`` with (t, R) the `os_sensor` -> camera transform, then through the pinhole K with
plumb_bob distortion D = (k1, k2, p1, p2, k3) (``cv2.projectPoints``); it is seen when its depth is
> 0 and its pixel, truncated to integers, lies in the image. ``Scan.lidar_to_image`` holds the
undistorted pinhole approximation ``K [R^T | -R^T t]``; ``Scan.pixel_uv`` the distorted pixels.
Assumed (the release's own files were not available here): the LiDAR points are in the `os_sensor`
frame, and the front camera is `port_a_camera_0` with its images in `port_a_cam_0/`.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from segood.data.errors import DataError
from segood.data.labels import LabelMap
from segood.data.io import read_bin, read_image, read_label, read_poses
from segood.data.scan import Scan

CAMERA = "port_a_camera_0"
IMAGE_DIR = {"port_a_camera_0": "port_a_cam_0"}
LIDAR_FRAME = "os_sensor"


def read_intrinsics(path: Path, camera: str) -> dict:
    """``{width, height, K (3, 3), D (5,), distortion_model}`` of ``camera`` from a ROS CameraInfo file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: camera intrinsics file is missing (expected STU camera_config/intrinsics.txt)")
    text = path.read_text(encoding="utf-8-sig")
    blocks = re.split(r"^(\S+):[ \t]*$\n(?=header:)", text, flags=re.M)
    found = dict(zip(blocks[1::2], blocks[2::2]))
    if camera not in found:
        raise DataError(f"{path}: no block for camera '{camera}' (found {sorted(found)})")
    try:
        doc = yaml.safe_load(found[camera])
        k = np.asarray(doc["K"], np.float64).reshape(3, 3)
        d = np.asarray(doc["D"], np.float64)
        w, h, model = int(doc["width"]), int(doc["height"]), str(doc["distortion_model"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: camera '{camera}': expected fields width, height, distortion_model, K (9 numbers) "
                        f"and D ({type(e).__name__}: {e})") from e
    if model != "plumb_bob" or d.size != 5:
        raise DataError(f"{path}: camera '{camera}': distortion_model '{model}' with {d.size} coefficients; "
                        "segood reads plumb_bob (k1, k2, p1, p2, k3)")
    if not np.isfinite(k).all() or abs(np.linalg.det(k)) < 1e-12:
        raise DataError(f"{path}: camera '{camera}': K is singular or not finite")
    return {"width": w, "height": h, "K": k, "D": d}


def read_extrinsics(path: Path, camera: str, parent: str = LIDAR_FRAME) -> tuple[np.ndarray, np.ndarray]:
    """(translation (3,), rotation (3, 3)) of ``parent`` -> ``camera`` from a tf YAML file."""
    from segood.data.readers.nuscenes_files import pose_matrix

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: camera extrinsics file is missing (expected STU camera_config/extrinsics.txt)")
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8-sig")) if d]
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from e
    for doc in docs:
        for tf in doc.get("transforms", []):
            if tf.get("child_frame_id") == camera and tf.get("header", {}).get("frame_id") == parent:
                t, q = tf["transform"]["translation"], tf["transform"]["rotation"]
                m = pose_matrix({"translation": [t["x"], t["y"], t["z"]], "rotation": [q["w"], q["x"], q["y"], q["z"]]},
                                f"{path} ({parent} -> {camera})")
                return m[:3, 3], m[:3, :3]
    raise DataError(f"{path}: no transform {parent} -> {camera}")


def project_distorted(xyz: np.ndarray, t: np.ndarray, rot: np.ndarray, k: np.ndarray, d: np.ndarray,
                      width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(uv (N, 2) float32, seen (N,) bool) by STU's rule: depth > 0, plumb_bob distortion, truncated pixel inside."""
    cam = (np.asarray(xyz, np.float64) - t) @ rot  # = R^T (p - t) per row
    z = cam[:, 2]
    safe = np.where(np.abs(z) < 1e-12, 1e-12, z)
    x, y = cam[:, 0] / safe, cam[:, 1] / safe
    k1, k2, p1, p2, k3 = d
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    u, v = k[0, 0] * xd + k[0, 2], k[1, 1] * yd + k[1, 2]  # cv2.projectPoints: fx, fy, cx, cy (no skew)
    ui, vi = np.trunc(u), np.trunc(v)  # numpy astype(int) truncates towards zero
    seen = (z > 0) & (ui >= 0) & (ui < width) & (vi >= 0) & (vi < height)
    uv = np.where(seen[:, None], np.c_[u, v], 0.0)
    return uv.astype(np.float32), seen


class StuReader:
    """STU scans of the given sequences (see the module doc) as :class:`Scan` records.

    ``camera``: ``port_a_camera_0`` (the front camera) or None (LiDAR only); ``camera_config``: the
    folder with intrinsics.txt and extrinsics.txt (default ``ROOT/camera_config``)."""

    def __init__(self, root: str | Path, sequences: list[str], label_map: LabelMap, camera: str | None = CAMERA,
                 with_labels: bool = True, camera_config: str | Path | None = None) -> None:
        self.root = Path(root)
        self.label_map, self.with_labels = label_map, with_labels
        if camera is not None and camera not in IMAGE_DIR:
            raise DataError(f"data.camera: STU camera '{camera}' unknown, expected one of {sorted(IMAGE_DIR)} or null")
        self.camera = camera
        self.camera_config = Path(camera_config) if camera_config else self.root / "camera_config"
        self.frames: list[tuple[str, str]] = []
        for seq in sequences:
            vdir = self.root / str(seq) / "velodyne"
            if not vdir.is_dir():
                raise DataError(f"{vdir}: folder is missing (expected STU layout ROOT/{seq}/velodyne/*.bin)")
            names = sorted(p.stem for p in vdir.glob("*.bin"))
            if not names:
                raise DataError(f"{vdir}: no .bin scans found")
            self.frames += [(str(seq), n) for n in names]
        self._calib: dict | None = None
        self._poses: dict[str, np.ndarray | None] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def frame_id(self, i: int) -> str:
        return self.frames[i][1]

    def path(self, i: int, folder: str, ext: str) -> Path:
        seq, name = self.frames[i]
        return self.root / seq / folder / f"{name}.{ext}"

    def calibration(self) -> dict:
        """Intrinsics and the LiDAR -> camera transform of the selected camera (read once)."""
        if self._calib is None:
            intr = read_intrinsics(self.camera_config / "intrinsics.txt", self.camera)
            t, rot = read_extrinsics(self.camera_config / "extrinsics.txt", self.camera)
            pinhole = intr["K"] @ np.c_[rot.T, -rot.T @ t]
            self._calib = {**intr, "t": t, "R": rot, "matrix": pinhole}
        return self._calib

    def read_labels(self, i: int, num_points: int) -> tuple[np.ndarray, Path]:
        """Semantic labels (instance bits dropped), any value but 0 and 2 read as 1 (inlier)."""
        path = self.path(i, "labels", "label")
        raw = read_label(path, num_points)
        return np.where((raw != 0) & (raw != 2), 1, raw).astype(np.uint32), path

    def pose(self, i: int) -> np.ndarray | None:
        seq, name = self.frames[i]
        if seq not in self._poses:
            self._poses[seq] = read_poses(self.root / seq / "poses.txt")
        poses = self._poses[seq]
        return None if poses is None or int(name) >= len(poses) else poses[int(name)]

    def __getitem__(self, i: int) -> Scan:
        bin_path = self.path(i, "velodyne", "bin")
        points = read_bin(bin_path)
        seq, name = self.frames[i]
        scan = Scan(points=points, source=str(bin_path), pose=self.pose(i), meta={"sequence": seq, "frame": name})
        if self.with_labels:
            scan.raw_labels, label_path = self.read_labels(i, len(points))
            scan.learning_labels = self.label_map.to_learning(scan.raw_labels, str(label_path))
        if self.camera is not None:
            c = self.calibration()
            image = read_image(self.path(i, IMAGE_DIR[self.camera], "png"))
            h, w = image.shape[:2]
            scan.images, scan.lidar_to_image = [image], [c["matrix"]]
            uv, seen = project_distorted(points[:, :3], c["t"], c["R"], c["K"], c["D"], w, h)
            scan.pixel_uv, scan.camera_id = uv, np.where(seen, 0, -1).astype(np.int8)
        return scan

    def check_scan(self, i: int, decode_images: bool = True) -> tuple[list[str], np.ndarray | None, dict]:
        """Every problem of scan ``i``, its raw labels and the points inside the camera image."""
        from segood.data.check import checked_labels, image_size

        try:
            points = read_bin(self.path(i, "velodyne", "bin"))
        except DataError as e:
            return [str(e)], None, {}
        problems: list[str] = []
        raw = None
        if self.with_labels:
            raw = checked_labels(lambda: self.read_labels(i, len(points)), self.label_map, problems)
        if self.camera is None:
            return problems, raw, {}
        try:
            c = self.calibration()
            w, h = image_size(self.path(i, IMAGE_DIR[self.camera], "png"), decode_images)
        except DataError as e:
            return problems + [str(e)], raw, {}
        n = int(project_distorted(points[:, :3], c["t"], c["R"], c["K"], c["D"], w, h)[1].sum())
        if n == 0:
            problems.append(f"{self.camera_config}: the calibration of {self.camera} puts none of the {len(points)} "
                            f"points of {self.path(i, 'velodyne', 'bin')} into its {w}x{h} image")
        return problems, raw, {self.camera: n}
