"""CARLA-OOD reader: file layout, label format and class-to-OOD mapping come from configuration.

The published data set's exact layout was not available to us, so nothing is hard-wired: the
reader takes a ``layout`` (file patterns + formats) and the label map YAML (raw tag -> learning
id, OOD learning ids; default ``segood/labels/carla_ood.yaml``). Default layout
(:data:`DEFAULT_LAYOUT`; ``{sequence}`` and ``{frame}`` are filled in)::

    ROOT/sequences/<seq>/lidar/<frame>.bin     float32 (N, 4): x, y, z, intensity (LiDAR frame)
    ROOT/sequences/<seq>/labels/<frame>.label  uint32 (N,): CARLA semantic tag in the low 16 bits,
                                               instance id above (SemanticKITTI-style)
    ROOT/sequences/<seq>/rgb/<frame>.png       front RGB camera
    ROOT/sequences/<seq>/calib.yaml            lidar_to_image: 3x4 (row-major), or
                                               K: 3x3 and lidar_to_camera: 4x4

Layout precedence: the ``layout`` argument (e.g. from the config), then ``ROOT/layout.yaml`` if it
exists, then the default. Formats: ``points_format`` ``float32xC`` (C columns, the first four are
x, y, z, intensity) or ``npy``; ``label_format`` ``uint32_low16`` | ``uint32`` | ``uint16`` |
``uint8`` | ``npy``. Every mismatch is an error saying what was looked for and what was found.
"""
from __future__ import annotations

import re
from pathlib import Path
import numpy as np
import yaml

from segood.data.errors import DataError
from segood.data.labels import LabelMap
from segood.data.projection import assign_cameras, check_projection_matrix
from segood.data.scan import Scan
from segood.data.io import read_image

DEFAULT_LAYOUT: dict[str, str] = {
    "points": "sequences/{sequence}/lidar/{frame}.bin",
    "points_format": "float32x4",
    "labels": "sequences/{sequence}/labels/{frame}.label",
    "label_format": "uint32_low16",
    "image": "sequences/{sequence}/rgb/{frame}.png",
    "calib": "sequences/{sequence}/calib.yaml",
}
LABEL_FORMATS = ("uint32_low16", "uint32", "uint16", "uint8", "npy")
LAYOUT_FILE = "layout.yaml"


def resolve_layout(root: Path, layout: dict | None) -> dict[str, str]:
    out = dict(DEFAULT_LAYOUT)
    file = root / LAYOUT_FILE
    if layout is None and file.is_file():
        layout = yaml.safe_load(file.read_text()) or {}
        source = str(file)
    else:
        source = "layout argument (data.reader_options.layout)"
    layout = layout or {}
    unknown = sorted(set(layout) - set(DEFAULT_LAYOUT))
    if unknown:
        raise DataError(f"{source}: unknown layout key(s) {unknown}, expected {sorted(DEFAULT_LAYOUT)}")
    out.update({k: str(v) for k, v in layout.items()})
    if "{frame}" not in out["points"]:
        raise DataError(f"{source}: layout 'points' pattern {out['points']!r} must contain {{frame}}")
    if out["label_format"] not in LABEL_FORMATS:
        raise DataError(f"{source}: label_format {out['label_format']!r}, expected one of {list(LABEL_FORMATS)}")
    if out["points_format"] != "npy" and not re.fullmatch(r"float32x([4-9]|\d\d)", out["points_format"]):
        raise DataError(f"{source}: points_format {out['points_format']!r}, expected 'float32xC' (C >= 4) or 'npy'")
    return out


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e})") from e


def _found(path: Path) -> str:
    """What exists around a path that was not found (nearest existing folder, a few entries)."""
    p = path.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    entries = sorted(x.name + ("/" if x.is_dir() else "") for x in p.iterdir())[:8] if p.is_dir() else []
    return f"found in {p}: {entries if entries else 'nothing'}"


class CarlaOodReader:
    """Scans of the given sequences in a configurable CARLA-OOD layout (see the module doc)."""

    def __init__(
        self,
        root: str | Path,
        sequences: list[str],
        label_map: LabelMap,
        camera: str | None = "rgb",
        with_labels: bool = True,
        layout: dict | None = None,
    ) -> None:
        self.root = Path(root)
        self.label_map = label_map
        self.camera = camera
        self.with_labels = with_labels
        self.layout = resolve_layout(self.root, layout)
        self.frames: list[tuple[str, str]] = []
        for seq in ([sequences] if isinstance(sequences, str) else sequences):
            self.frames += [(str(seq), f) for f in self._list_frames(str(seq))]
        self._calib: dict[str, np.ndarray] = {}

    def path(self, key: str, sequence: str, frame: str = "") -> Path:
        return self.root / self.layout[key].format(sequence=sequence, frame=frame)

    def _list_frames(self, seq: str) -> list[str]:
        pattern = self.layout["points"].format(sequence=seq, frame="\0")
        glob = pattern.replace("\0", "*")
        regex = re.compile(re.escape(pattern).replace("\0", "(.+)") + "$")
        names = sorted(m.group(1) for p in self.root.glob(glob)
                       if (m := regex.match(p.relative_to(self.root).as_posix())))
        if not names:
            looked = self.root / glob
            raise DataError(f"{looked}: no scans found for sequence '{seq}' (layout 'points' = "
                            f"{self.layout['points']!r}); {_found(looked)}")
        return names

    def __len__(self) -> int:
        return len(self.frames)

    def frame_id(self, i: int) -> str:
        """The frame name of scan ``i`` (the file stem of its points)."""
        return self.frames[i][1]

    def read_points(self, seq: str, frame: str) -> tuple[np.ndarray, Path]:
        path = self.path("points", seq, frame)
        if not path.is_file():
            raise DataError(f"{path}: point file is missing; {_found(path)}")
        fmt = self.layout["points_format"]
        if fmt == "npy":
            pts = _load_npy(path)
            if pts.ndim != 2 or pts.shape[1] < 4:
                raise DataError(f"{path}: array shape {pts.shape}, expected (N, >=4) x, y, z, intensity")
        else:
            cols = int(fmt.split("x")[1])
            size = path.stat().st_size
            if size == 0 or size % (4 * cols):
                raise DataError(f"{path}: file size {size} bytes is not a positive multiple of {4 * cols} "
                                f"(points_format {fmt}: float32 records of {cols} values)")
            pts = np.fromfile(path, dtype=np.float32).reshape(-1, cols)
        pts = np.ascontiguousarray(pts[:, :4], dtype=np.float32)
        if not np.isfinite(pts).all():
            raise DataError(f"{path}: {int((~np.isfinite(pts).all(1)).sum())} point(s) have NaN or inf values")
        return pts, path

    def read_labels(self, seq: str, frame: str, num_points: int) -> tuple[np.ndarray, Path]:
        path = self.path("labels", seq, frame)
        if not path.is_file():
            raise DataError(f"{path}: label file is missing; {_found(path)}")
        fmt = self.layout["label_format"]
        if fmt == "npy":
            raw = _load_npy(path).reshape(-1)
        else:
            dtype = {"uint32_low16": np.uint32, "uint32": np.uint32, "uint16": np.uint16, "uint8": np.uint8}[fmt]
            size, item = path.stat().st_size, np.dtype(dtype).itemsize
            if size % item:
                raise DataError(f"{path}: file size {size} bytes is not a multiple of {item} (label_format {fmt})")
            raw = np.fromfile(path, dtype=dtype)
            if fmt == "uint32_low16":
                raw = raw & 0xFFFF
        if len(raw) != num_points:
            raise DataError(f"{path}: {len(raw)} labels but the scan has {num_points} points "
                            f"(label_format {fmt}: expected one per point)")
        return raw.astype(np.uint32), path

    def calib(self, seq: str) -> np.ndarray:
        if seq not in self._calib:
            path = self.path("calib", seq)
            if not path.is_file():
                raise DataError(f"{path}: calibration file is missing (expected 'lidar_to_image' 3x4, or 'K' 3x3 "
                                f"and 'lidar_to_camera' 4x4); {_found(path)}")
            try:
                doc = yaml.safe_load(path.read_text()) or {}
                if "lidar_to_image" in doc:
                    m = np.asarray(doc["lidar_to_image"], dtype=np.float64).reshape(3, 4)
                elif "K" in doc and "lidar_to_camera" in doc:
                    m = np.asarray(doc["K"], dtype=np.float64).reshape(3, 3) @ \
                        np.asarray(doc["lidar_to_camera"], dtype=np.float64).reshape(4, 4)[:3]
                else:
                    raise DataError(f"{path}: expected key 'lidar_to_image' (3x4) or 'K' + 'lidar_to_camera', "
                                    f"found keys {sorted(doc)}")
            except (yaml.YAMLError, ValueError, TypeError) as e:
                if isinstance(e, DataError):
                    raise
                raise DataError(f"{path}: calibration is not a 3x4 / 3x3 + 4x4 matrix set ({e})") from e
            self._calib[seq] = check_projection_matrix(m, str(path))
        return self._calib[seq]

    def __getitem__(self, i: int) -> Scan:
        seq, frame = self.frames[i]
        points, path = self.read_points(seq, frame)
        scan = Scan(points=points, source=str(path), meta={"sequence": seq, "frame": frame})
        if self.with_labels:
            scan.raw_labels, label_path = self.read_labels(seq, frame, len(points))
            scan.learning_labels = self.label_map.to_learning(scan.raw_labels, str(label_path))
        if self.camera is not None:
            matrix = self.calib(seq)
            image = read_image(self.path("image", seq, frame))
            scan.images, scan.lidar_to_image = [image], [matrix]
            scan.pixel_uv, scan.camera_id = assign_cameras(points[:, :3], [matrix], [(image.shape[1], image.shape[0])])
        return scan

    def check_scan(self, i: int, decode_images: bool = True) -> tuple[list[str], np.ndarray | None, dict]:
        """All problems of scan ``i``, its raw labels and the number of points inside the image."""
        from segood.data.check import camera_check, checked_labels

        seq, frame = self.frames[i]
        problems: list[str] = []
        try:
            points, _ = self.read_points(seq, frame)
        except DataError as e:
            return [str(e)], None, {}
        raw = None
        if self.with_labels:
            raw = checked_labels(lambda: self.read_labels(seq, frame, len(points)), self.label_map, problems)
        in_image: dict[str, int] = {}
        if self.camera is not None:
            in_image = camera_check(points, lambda: self.calib(seq), self.path("image", seq, frame),
                                    str(self.path("calib", seq)), self.camera, decode_images, problems)
        return problems, raw, in_image
