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

from pathlib import Path
from typing import Any

import numpy as np

from segood.data.errors import DataError
from segood.data.labels import LabelMap
from segood.data.projection import assign_cameras, check_projection_matrix, project_points
from segood.data.scan import Scan
from segood.data.io import read_image
from segood.data.readers.nuscenes_files import (CAMERAS, LIDAR, VISIBILITY, pose_matrix, intrinsic_matrix,
                                                read_pcd_bin, read_lidarseg, infer_version, load_nuscenes,
                                                resolve_scenes, sample_chain)


class NuScenesReader:
    """Keyframes of the given splits/scenes as :class:`Scan` records (see the module doc).

    ``camera``: ``"all"`` (the six, default), ``None`` (LiDAR only), one channel name or a list.
    ``nusc``: an already loaded devkit ``NuScenes`` (shared between readers to load tables once).
    ``visibility``: ``devkit`` (default) or ``segood`` (see the module doc; ``data.reader_options.visibility``).
    """

    def __init__(
        self,
        root: str | Path,
        splits: str | list[str],
        label_map: LabelMap,
        camera: str | list[str] | None = "all",
        with_labels: bool = True,
        version: str | None = None,
        intensity_scale: float = 1.0 / 255.0,
        nusc: Any = None,
        visibility: str = "devkit",
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
