"""nuScenes-lidarseg reader through nuscenes-devkit (``pip install segood[nuscenes]``).

Layout (the official one; ``root`` is the devkit's ``dataroot``)::

    ROOT/v1.0-trainval/*.json        tables (scene, sample, sample_data, ego_pose, calibrated_sensor,
                                     sensor, log, category (with lidarseg 'index'), attribute,
                                     visibility, instance, sample_annotation, map, lidarseg)
    ROOT/samples/LIDAR_TOP/*.pcd.bin float32 (N, 5): x, y, z, intensity (0..255), ring
    ROOT/samples/CAM_*/*.jpg         the six cameras, 1600 x 900
    ROOT/lidarseg/v1.0-trainval/<token>_lidarseg.bin   uint8 (N,): raw class index 0..31
    ROOT/maps/*.png                  map masks (only opened lazily by the devkit)

One :class:`Scan` per keyframe (sample). Labels: raw 0..31 -> the 16 challenge classes through
``segood/labels/nuscenes.yaml`` (= the devkit's ``LidarsegClassMapper``). Intensity is scaled by
``intensity_scale`` (default 1/255, the SemanticKITTI range) into ``Scan.points[:, 3]``.

Cameras: every point is projected into each of the six cameras through the full chain
``lidar -> ego (LiDAR timestamp) -> global -> ego (camera timestamp) -> camera -> image``::

    lidar_to_image[k] = K_k @ (inv(cam2ego_k) @ inv(ego2global at t_cam_k) @ ego2global at t_lidar @ lidar2ego)[:3]

(the ego moves between the LiDAR sweep and each camera exposure, so both ego poses enter). A point
seen by several cameras is assigned by :func:`segood.data.projection.assign_cameras` (closest to
the image centre). A point counts as seen by a camera by the devkit's rule (``visibility: devkit``,
the default: depth > 1 m and 1 < u < W - 1, 1 < v < H - 1, as ``NuScenesExplorer.map_pointcloud_to_image``
and PMF's loader); ``visibility: segood`` is the KITTI-style rule (depth > 0.1 m, 0 <= u < W).
``Scan.images``/``lidar_to_image`` hold the selected cameras in
:data:`CAMERAS` order; ``Scan.pose`` is LiDAR -> global at the LiDAR timestamp.

Splits: entries of ``splits`` are devkit split names (``train``, ``val``, ``test``,
``mini_train``, ``mini_val``; from ``nuscenes.utils.splits``) or scene names (``scene-0061``).
The table version is inferred from the split names unless ``version`` is given.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from segood.data.errors import DataError
from segood.data.labels import LabelMap
from segood.data.projection import (DEVKIT_VISIBILITY, SEGOOD_VISIBILITY, assign_cameras, check_projection_matrix,
                                    project_points)
from segood.data.scan import Scan
from segood.options import Opt
from segood.data.readers.semantickitti import read_image

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
LIDAR = "LIDAR_TOP"
TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
          "log", "scene", "sample", "sample_data", "sample_annotation", "map")
SPLIT_VERSION = {"train": "v1.0-trainval", "val": "v1.0-trainval", "test": "v1.0-test",
                 "mini_train": "v1.0-mini", "mini_val": "v1.0-mini"}
POINT_DIMS = 5
VISIBILITY = {"devkit": DEVKIT_VISIBILITY, "segood": SEGOOD_VISIBILITY}


def _devkit():
    try:
        import nuscenes  # noqa: F401
        from nuscenes import NuScenes
        from nuscenes.utils import splits
    except ImportError as e:  # pragma: no cover - depends on the install
        raise DataError(
            "nuScenes needs nuscenes-devkit: pip install 'segood[nuscenes]' "
            "(or: pip install --no-deps nuscenes-devkit==1.2.0 pyquaternion cachetools opencv-python-headless)"
        ) from e
    return NuScenes, splits


# ----------------------------------------------------------------------------------- geometry


def pose_matrix(record: dict, source: str) -> np.ndarray:
    """4x4 from a devkit record's ``rotation`` (w, x, y, z quaternion) and ``translation``."""
    try:
        q = np.asarray(record["rotation"], dtype=np.float64)
        t = np.asarray(record["translation"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{source}: expected 'rotation' (4 numbers, w x y z) and 'translation' (3 numbers)") from e
    if q.shape != (4,) or t.shape != (3,):
        raise DataError(f"{source}: rotation has shape {q.shape} (expected (4,)), translation {t.shape} (expected (3,))")
    if not (np.isfinite(q).all() and np.isfinite(t).all()):
        raise DataError(f"{source}: rotation/translation contains NaN or inf")
    n = np.linalg.norm(q)
    if abs(n - 1.0) > 1e-3:
        raise DataError(f"{source}: rotation quaternion has norm {n:.6g}, expected a unit quaternion "
                        "(a zero quaternion is a singular rotation)")
    w, x, y, z = q / n
    rot = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot, t
    return out


def intrinsic_matrix(record: dict, source: str) -> np.ndarray:
    k = np.asarray(record.get("camera_intrinsic", []), dtype=np.float64)
    if k.shape != (3, 3):
        raise DataError(f"{source}: camera_intrinsic has shape {k.shape}, expected (3, 3)")
    if not np.isfinite(k).all():
        raise DataError(f"{source}: camera_intrinsic contains NaN or inf")
    if abs(np.linalg.det(k)) < 1e-12:
        raise DataError(f"{source}: camera_intrinsic is singular")
    return k


def read_pcd_bin(path: Path, dims: int = POINT_DIMS) -> np.ndarray:
    """A nuScenes ``.pcd.bin``: (N, dims) float32, finite."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: LiDAR sweep file is missing")
    size = path.stat().st_size
    if size == 0 or size % (4 * dims):
        raise DataError(f"{path}: file size {size} bytes is not a positive multiple of {4 * dims} "
                        f"(expected float32 records of {dims}: x, y, z, intensity, ring)")
    pts = np.fromfile(path, dtype=np.float32).reshape(-1, dims)
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: {int(bad.sum())} point(s) have NaN or inf values")
    return pts


def read_lidarseg(path: Path, num_points: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: lidarseg label file is missing")
    labels = np.fromfile(path, dtype=np.uint8)
    if len(labels) != num_points:
        raise DataError(f"{path}: {len(labels)} labels but the sweep has {num_points} points "
                        "(expected one uint8 class index per point)")
    return labels.astype(np.uint32)


# ----------------------------------------------------------------------------------- tables


def infer_version(entries: list[str], root: Path) -> str:
    versions = {SPLIT_VERSION[e] for e in entries if e in SPLIT_VERSION}
    if len(versions) > 1:
        raise DataError(f"splits {entries} mix table versions {sorted(versions)}; give one version")
    if versions:
        return versions.pop()
    for v in ("v1.0-trainval", "v1.0-mini", "v1.0-test"):  # scene names only: use what is on disk
        if (root / v).is_dir():
            return v
    raise DataError(f"{root}: no table folder found (expected v1.0-trainval/, v1.0-mini/ or v1.0-test/)")


def check_tables(root: Path, version: str, with_labels: bool) -> list[str]:
    """Problems with the table files (all of them, not just the first)."""
    table_dir = root / version
    if not table_dir.is_dir():
        return [f"{table_dir}: table folder is missing (expected the devkit's {version}/*.json)"]
    problems = []
    names = list(TABLES) + (["lidarseg"] if with_labels else [])
    for name in names:
        p = table_dir / f"{name}.json"
        if not p.is_file():
            problems.append(f"{p}: table is missing" + (" (lidarseg labels: install nuScenes-lidarseg)"
                                                         if name == "lidarseg" else ""))
            continue
        try:
            doc = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problems.append(f"{p}: not valid JSON ({e}); the file may be truncated")
            continue
        if not isinstance(doc, list):
            problems.append(f"{p}: expected a JSON list of records, got {type(doc).__name__}")
        elif name == "map" and (not doc or "log_tokens" not in doc[0]):
            problems.append(f"{p}: expected at least one map record with 'log_tokens'")
        elif name == "category" and doc and "index" not in doc[0]:
            problems.append(f"{p}: category records lack 'index' (use the category.json shipped with nuScenes-lidarseg)")
    if with_labels and not problems:
        lidarseg = json.loads((table_dir / "lidarseg.json").read_text())
        label_dir = root / "lidarseg" / version
        if not label_dir.is_dir():
            problems.append(f"{label_dir}: lidarseg label folder is missing ({len(lidarseg)} lidarseg records)")
        else:
            missing = [r["filename"] for r in lidarseg if not (root / r["filename"]).is_file()]
            if missing:
                problems.append(f"{label_dir}: {len(missing)} of {len(lidarseg)} lidarseg files are missing "
                                f"(first: {missing[0]})")
    return problems


def load_nuscenes(root: Path, version: str, with_labels: bool = True):
    """The devkit's ``NuScenes`` object, with table problems turned into one DataError."""
    NuScenes, _ = _devkit()
    problems = check_tables(root, version, with_labels)
    if problems:
        raise DataError(f"{root}: nuScenes {version} cannot be loaded:\n  " + "\n  ".join(problems))
    try:
        return NuScenes(version=version, dataroot=str(root), verbose=False)
    except (AssertionError, KeyError, IndexError, OSError, ValueError, TypeError) as e:
        raise DataError(f"{root}: nuscenes-devkit failed to load {version} ({type(e).__name__}: {e})") from e


def resolve_scenes(entries: Iterable[str], nusc) -> list[str]:
    """Scene names for split names / scene names, in order, without duplicates."""
    _, splits = _devkit()
    known = {s["name"] for s in nusc.scene}
    out: list[str] = []
    for e in entries:
        if e in SPLIT_VERSION:
            names = getattr(splits, e)
            present = [n for n in names if n in known]
            if not present:
                raise DataError(f"{nusc.dataroot}/{nusc.version}: split '{e}' has {len(names)} scenes, none of "
                                f"them in scene.json (found {sorted(known)[:10]}...)")
            names = present
        elif e in known:
            names = [e]
        else:
            raise DataError(f"{nusc.dataroot}/{nusc.version}: '{e}' is neither a split "
                            f"({sorted(SPLIT_VERSION)}) nor a scene in scene.json (e.g. {sorted(known)[:5]})")
        out += [n for n in names if n not in out]
    return out


def sample_chain(nusc, scene: dict) -> tuple[list[str], str]:
    """The sample tokens of ``scene`` (first_sample_token, then each ``next``), and '' or what is
    wrong with the chain (a token missing from sample.json, a count other than nbr_samples)."""
    tokens, tok = [], scene.get("first_sample_token", "")
    while tok:
        try:
            record = nusc.get("sample", tok)
        except KeyError:
            where = "its first_sample_token" if not tokens else f"the 'next' of sample {tokens[-1]}"
            return tokens, (f"scene {scene['name']}: sample {tok} ({where}) is not in sample.json; expected "
                            f"{scene.get('nbr_samples', '?')} linked samples, found {len(tokens)}")
        tokens.append(tok)
        tok = record.get("next", "")
    if len(tokens) != scene.get("nbr_samples", len(tokens)):
        return tokens, (f"scene {scene['name']}: scene.json says nbr_samples={scene['nbr_samples']} but its sample "
                        f"chain has {len(tokens)}")
    return tokens, ""


# ----------------------------------------------------------------------------------- reader


class NuScenesReader:
    """Keyframes of the given splits/scenes as :class:`Scan` records (see the module doc).

    ``camera``: ``"all"`` (the six, default), ``None`` (LiDAR only), one channel name or a list.
    ``nusc``: an already loaded devkit ``NuScenes`` (shared between readers to load tables once).
    ``visibility``: ``devkit`` (default) or ``segood`` (see the module doc; ``data.reader_options.visibility``).
    The options of ``data.reader_options`` are declared once, in :attr:`OPTIONS`.
    """

    OPTIONS = {
        "version": Opt(None, str, "devkit version folder (v1.0-trainval, v1.0-mini, ...); null = inferred from the "
                                  "splits", nullable=True),
        "intensity_scale": Opt(1.0 / 255.0, float, "multiplies the raw intensity (nuScenes 0-255 -> segood 0-1)",
                               min=0.0),
        "visibility": Opt("devkit", str, "camera visibility rule: devkit (depth > 1 m, 1-pixel margin) or segood "
                                         "(depth > 0.1 m, no margin)", choices=tuple(VISIBILITY)),
    }

    def __init__(
        self,
        root: str | Path,
        splits: str | list[str],
        label_map: LabelMap,
        camera: str | list[str] | None = "all",
        with_labels: bool = True,
        version: str | None = OPTIONS["version"].default,
        intensity_scale: float = OPTIONS["intensity_scale"].default,
        nusc: Any = None,
        visibility: str = OPTIONS["visibility"].default,
    ) -> None:
        if visibility not in VISIBILITY:
            raise DataError(f"data.reader_options.visibility: '{visibility}' is not one of {sorted(VISIBILITY)}")
        self.visibility = VISIBILITY[visibility]
        self.root = Path(root)
        entries = [splits] if isinstance(splits, str) else [str(s) for s in splits]
        self.label_map = label_map
        self.with_labels = with_labels
        self.intensity_scale = float(intensity_scale)
        self.cameras = self._cameras(camera)
        self.version = version or (nusc.version if nusc is not None else infer_version(entries, self.root))
        self.nusc = nusc if nusc is not None else load_nuscenes(self.root, self.version, with_labels)
        self.scenes = resolve_scenes(entries, self.nusc)
        self._lidarseg = ({r["sample_data_token"]: r["filename"] for r in self.nusc.lidarseg}
                          if with_labels else {})
        self.samples = self._list_samples()

    @classmethod
    def shared_options(cls, root: Path, entries: list[str], options: dict, cache: dict,
                       with_labels: bool = True) -> dict:
        """Constructor options for readers of several entries of one root: the devkit tables are
        loaded once per (version, with labels) and shared through ``cache``."""
        options = dict(options)
        version = options.pop("version", None) or infer_version(entries, root)
        if (version, with_labels) not in cache:
            cache[version, with_labels] = load_nuscenes(root, version, with_labels=with_labels)
        return {**options, "nusc": cache[version, with_labels]}

    @classmethod
    def missing_labels(cls, root: Path, entries: list[str], options: dict) -> str | None:
        """Why this root cannot give labels (no ``lidarseg.json``), or None when it can."""
        version = options.get("version") or infer_version(entries, root)
        lidarseg = Path(root) / version / "lidarseg.json"
        if lidarseg.is_file():
            return None
        return (f"{lidarseg}: no lidarseg labels (training needs nuScenes-lidarseg); checked geometry, "
                "calibration and images only")

    def frame_id(self, i: int) -> str:
        """The sample token of keyframe ``i``."""
        return self.samples[i]

    @staticmethod
    def _cameras(camera) -> tuple[str, ...]:
        if camera is None:
            return ()
        if camera == "all":
            return CAMERAS
        names = (camera,) if isinstance(camera, str) else tuple(camera)
        bad = [c for c in names if c not in CAMERAS]
        if bad:
            raise DataError(f"unknown nuScenes camera(s) {bad}, expected 'all', null or names from {list(CAMERAS)}")
        return names

    def _list_samples(self) -> list[str]:
        by_name = {s["name"]: s for s in self.nusc.scene}
        tokens, broken = [], []
        for name in self.scenes:
            chain, problem = sample_chain(self.nusc, by_name[name])
            tokens += chain
            if problem:
                broken.append(problem)
        if broken:
            raise DataError(f"{self.root}/{self.version}/sample.json: incomplete sample chain(s):\n  "
                            + "\n  ".join(broken))
        return tokens

    def __len__(self) -> int:
        return len(self.samples)

    # -- pieces, each raising DataError on its own (check-data calls them separately)

    def _sd(self, sample: dict, channel: str) -> dict:
        if channel not in sample["data"]:
            raise DataError(f"{self.root}/{self.version}/sample_data.json: sample {sample['token']} has no "
                            f"keyframe {channel} record (found {sorted(sample['data'])})")
        return self.nusc.get("sample_data", sample["data"][channel])

    def _sensor_to_global(self, sd: dict) -> tuple[np.ndarray, np.ndarray]:
        """(sensor -> ego, ego -> global at the record's timestamp)."""
        tab = f"{self.root}/{self.version}"
        cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        ep = self.nusc.get("ego_pose", sd["ego_pose_token"])
        return (pose_matrix(cs, f"{tab}/calibrated_sensor.json[{cs['token']}] ({sd['channel']})"),
                pose_matrix(ep, f"{tab}/ego_pose.json[{ep['token']}] ({sd['channel']} at {sd['timestamp']})"))

    def lidar_record(self, i: int) -> dict:
        return self._sd(self.nusc.get("sample", self.samples[i]), LIDAR)

    def lidar_to_global(self, i: int) -> np.ndarray:
        lidar2ego, ego2global = self._sensor_to_global(self.lidar_record(i))
        return ego2global @ lidar2ego

    def read_points(self, i: int) -> tuple[np.ndarray, Path]:
        path = self.root / self.lidar_record(i)["filename"]
        pts = read_pcd_bin(path)
        out = pts[:, :4].copy()
        out[:, 3] *= self.intensity_scale
        return out, path

    def label_path(self, i: int) -> Path:
        token = self.lidar_record(i)["token"]
        if token not in self._lidarseg:
            raise DataError(f"{self.root}/{self.version}/lidarseg.json: no record for LIDAR_TOP sample_data {token} "
                            f"(sample {self.samples[i]})")
        return self.root / self._lidarseg[token]

    def camera_matrix(self, i: int, channel: str) -> tuple[np.ndarray, Path, tuple[int, int]]:
        """(lidar -> image (3, 4), image path, (width, height) from sample_data) for one camera."""
        sample = self.nusc.get("sample", self.samples[i])
        lidar_to_global = self.lidar_to_global(i)
        sd = self._sd(sample, channel)
        cam2ego, ego2global = self._sensor_to_global(sd)
        cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        src = f"{self.root}/{self.version}/calibrated_sensor.json[{cs['token']}] ({channel})"
        k = intrinsic_matrix(cs, src)
        lidar_to_cam = np.linalg.inv(cam2ego) @ np.linalg.inv(ego2global) @ lidar_to_global
        matrix = check_projection_matrix(k @ lidar_to_cam[:3], f"{src}: K @ lidar->camera")
        return matrix, self.root / sd["filename"], (int(sd.get("width", 0)), int(sd.get("height", 0)))

    def __getitem__(self, i: int) -> Scan:
        sample_token = self.samples[i]
        points, path = self.read_points(i)
        lidar_sd = self.lidar_record(i)
        sample = self.nusc.get("sample", sample_token)
        scene = self.nusc.get("scene", sample["scene_token"])
        scan = Scan(points=points, source=str(path), pose=self.lidar_to_global(i),
                    meta={"sample_token": sample_token, "scene": scene["name"], "lidar_token": lidar_sd["token"],
                          "timestamp": lidar_sd["timestamp"], "cameras": list(self.cameras)})
        if self.with_labels:
            label_path = self.label_path(i)
            scan.raw_labels = read_lidarseg(label_path, len(points))
            scan.learning_labels = self.label_map.to_learning(scan.raw_labels, str(label_path))
        if self.cameras:
            sizes = []
            for channel in self.cameras:
                matrix, image_path, _ = self.camera_matrix(i, channel)
                image = read_image(image_path)
                scan.images.append(image)
                scan.lidar_to_image.append(matrix)
                sizes.append((image.shape[1], image.shape[0]))
            scan.pixel_uv, scan.camera_id = assign_cameras(points[:, :3], scan.lidar_to_image, sizes,
                                                           self.visibility)
        return scan

    def check_scan(self, i: int, decode_images: bool = True) -> tuple[list[str], np.ndarray | None, dict]:
        """Every problem of scan ``i`` (not just the first), its raw labels and per-camera point counts."""
        from segood.data.check import checked_labels, image_size

        problems: list[str] = []
        raw = None
        in_image: dict[str, int] = {}
        try:
            points, _ = self.read_points(i)
        except DataError as e:
            return [str(e)], None, {}
        if self.with_labels:
            raw = checked_labels(lambda: (read_lidarseg(self.label_path(i), len(points)), self.label_path(i)),
                                 self.label_map, problems)
        for channel in self.cameras:
            try:
                matrix, image_path, (w, h) = self.camera_matrix(i, channel)
            except DataError as e:
                problems.append(str(e))
                continue
            try:
                w, h = image_size(image_path, decode_images)
            except DataError as e:
                problems.append(str(e))
            if w and h:
                n = int(project_points(points[:, :3], matrix, w, h, visibility=self.visibility)[1].sum())
                in_image[channel] = n
                if n == 0:
                    problems.append(f"{image_path}: the calibration puts none of the {len(points)} points into "
                                    f"this {w}x{h} image (check calibrated_sensor / ego_pose of {channel})")
        return problems, raw, in_image

    def sweep_problems(self) -> list[str]:
        """Missing non-keyframe LIDAR_TOP sweep files of the selected scenes (stat only)."""
        scene_tokens = {s["token"] for s in self.nusc.scene if s["name"] in set(self.scenes)}
        samples = {s["token"] for s in self.nusc.sample if s["scene_token"] in scene_tokens}
        missing = [sd["filename"] for sd in self.nusc.sample_data
                   if sd["sample_token"] in samples and sd.get("channel") == LIDAR and not sd["is_key_frame"]
                   and not (self.root / sd["filename"]).is_file()]
        if not missing:
            return []
        return [f"{self.root}/sweeps/{LIDAR}: {len(missing)} LiDAR sweep file(s) listed in sample_data.json are "
                f"missing (first: {missing[0]})"]
