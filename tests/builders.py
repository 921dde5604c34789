"""Writers of miniature data sets in real layouts, for tests: nuScenes in the devkit's schema and
CARLA-OOD in its default layout (the SemanticKITTI layout comes from ``segood.synthetic``). Test
support, not production code: the readers they feed are in :mod:`segood.data.readers`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from segood.data.readers.nuscenes_files import CAMERAS, LIDAR, TABLES

# --------------------------------------------------------------------------- nuScenes


def _token(*parts: Any) -> str:
    import hashlib

    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def _quat(rot: np.ndarray) -> list[float]:
    """(w, x, y, z) of a rotation matrix."""
    m = np.asarray(rot, dtype=np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0] * 4
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.asarray(q)
    q = q / np.linalg.norm(q)
    return (q if q[0] >= 0 else -q).tolist()


def _orthonormal(m: np.ndarray) -> np.ndarray:
    """Nearest rotation (the fixture's float32 matrices are not exactly orthonormal)."""
    u, _, vt = np.linalg.svd(np.asarray(m, dtype=np.float64)[:3, :3])
    out = np.eye(4)
    out[:3, :3] = u @ vt
    out[:3, 3] = np.asarray(m)[:3, 3]
    return out


def write_nuscenes_sample(root: str | Path, scenes: dict[str, list[dict]], version: str = "v1.0-mini") -> Path:
    """Write a miniature nuScenes in the devkit's schema (tables, sweeps, lidarseg, images, map).

    ``scenes``: scene name -> keyframes, each a dict with ``points`` (N, 5) float32, ``labels``
    (N,) uint8 raw lidarseg ids or None, ``lidar2ego`` and ``ego2global`` (4x4, LiDAR timestamp),
    ``timestamp`` (microseconds) and ``cameras``: channel -> dict(``image`` (H, W, 3) uint8,
    ``K`` (3x3), ``cam2ego`` (4x4), ``ego2global`` (4x4 at the camera timestamp), ``timestamp``).
    Optional ``sweeps``: a list of (N, 5) non-keyframe LIDAR_TOP sweeps written after the keyframe.
    Returns ``root``. Rotations are written as unit quaternions (nearest rotation).
    """
    from nuscenes.utils.color_map import get_colormap
    from PIL import Image

    root = Path(root)
    tables: dict[str, list] = {name: [] for name in TABLES + ("lidarseg",)}
    tables["category"] = [{"token": _token("category", n), "name": n, "description": n, "index": i}
                          for i, n in enumerate(get_colormap())]
    tables["visibility"] = [{"token": str(i), "level": lvl, "description": lvl}
                            for i, lvl in enumerate(["v0-40", "v40-60", "v60-80", "v80-100"], 1)]
    tables["attribute"] = [{"token": _token("attribute", "vehicle.moving"), "name": "vehicle.moving",
                            "description": "moving"}]
    log_token = _token("log", version)
    tables["log"] = [{"token": log_token, "logfile": "segood-generated", "vehicle": "n015",
                      "date_captured": "2018-07-24", "location": "singapore-onenorth"}]
    (root / "maps").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "maps" / "segood_map.png")
    tables["map"] = [{"token": _token("map"), "log_tokens": [log_token], "category": "semantic_prior",
                      "filename": "maps/segood_map.png"}]
    channels = [LIDAR] + list(CAMERAS)
    tables["sensor"] = [{"token": _token("sensor", c), "channel": c, "modality": "lidar" if c == LIDAR else "camera"}
                        for c in channels]

    def calibrated(name: str, channel: str, mat: np.ndarray, k: np.ndarray | None) -> str:
        tok = _token("cs", name, channel)
        m = _orthonormal(mat)
        tables["calibrated_sensor"].append({
            "token": tok, "sensor_token": _token("sensor", channel), "translation": m[:3, 3].tolist(),
            "rotation": _quat(m[:3, :3]), "camera_intrinsic": [] if k is None else np.asarray(k).tolist()})
        return tok

    def ego(name: str, mat: np.ndarray, ts: int) -> str:
        tok = _token("ego", name, ts)
        m = _orthonormal(mat)
        tables["ego_pose"].append({"token": tok, "timestamp": int(ts), "rotation": _quat(m[:3, :3]),
                                   "translation": m[:3, 3].tolist()})
        return tok

    written: set[str] = set()

    def new_file(rel: str) -> Path:
        if rel in written:
            raise ValueError(f"{rel}: written twice; give every keyframe / sweep / camera its own timestamp")
        written.add(rel)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        return root / rel

    for scene_name, frames in scenes.items():
        scene_token = _token("scene", scene_name)
        sample_tokens = [_token("sample", scene_name, k) for k in range(len(frames))]
        prev_sd: dict[str, str] = {}
        for k, fr in enumerate(frames):
            stok = sample_tokens[k]
            tables["sample"].append({"token": stok, "timestamp": int(fr["timestamp"]), "scene_token": scene_token,
                                     "prev": sample_tokens[k - 1] if k else "",
                                     "next": sample_tokens[k + 1] if k + 1 < len(frames) else ""})
            records = []
            # keyframe LiDAR
            name = f"{scene_name}__{LIDAR}__{fr['timestamp']}"
            rel = f"samples/{LIDAR}/{name}.pcd.bin"
            np.asarray(fr["points"], dtype=np.float32).tofile(new_file(rel))
            lid_tok = _token("sd", name)
            records.append(dict(token=lid_tok, channel=LIDAR, filename=rel, fileformat="pcd", is_key_frame=True,
                                timestamp=int(fr["timestamp"]), width=0, height=0,
                                cs=calibrated(scene_name, LIDAR, fr["lidar2ego"], None),
                                ep=ego(scene_name, fr["ego2global"], fr["timestamp"])))
            if fr.get("labels") is not None:
                lrel = f"lidarseg/{version}/{lid_tok}_lidarseg.bin"
                (root / lrel).parent.mkdir(parents=True, exist_ok=True)
                np.asarray(fr["labels"], dtype=np.uint8).tofile(root / lrel)
                tables["lidarseg"].append({"token": lid_tok, "sample_data_token": lid_tok, "filename": lrel})
            for s, sweep in enumerate(fr.get("sweeps", [])):
                ts = int(fr["timestamp"]) + 50000 * (s + 1)
                sname = f"{scene_name}__{LIDAR}__{ts}"
                srel = f"sweeps/{LIDAR}/{sname}.pcd.bin"
                np.asarray(sweep, dtype=np.float32).tofile(new_file(srel))
                records.append(dict(token=_token("sd", sname), channel=LIDAR, filename=srel, fileformat="pcd",
                                    is_key_frame=False, timestamp=ts, width=0, height=0,
                                    cs=calibrated(scene_name, LIDAR, fr["lidar2ego"], None),
                                    ep=ego(scene_name, fr["ego2global"], ts)))
            for channel, cam in fr.get("cameras", {}).items():
                ts = int(cam["timestamp"])
                cname = f"{scene_name}__{channel}__{ts}"
                crel = f"samples/{channel}/{cname}.jpg"
                Image.fromarray(cam["image"]).save(new_file(crel), quality=90)
                h, w = cam["image"].shape[:2]
                records.append(dict(token=_token("sd", cname), channel=channel, filename=crel, fileformat="jpg",
                                    is_key_frame=True, timestamp=ts, width=w, height=h,
                                    cs=calibrated(scene_name, channel, cam["cam2ego"], cam["K"]),
                                    ep=ego(scene_name + channel, cam["ego2global"], ts)))
            for r in records:
                ch = r["channel"]
                tables["sample_data"].append({
                    "token": r["token"], "sample_token": stok, "ego_pose_token": r["ep"],
                    "calibrated_sensor_token": r["cs"], "timestamp": r["timestamp"], "fileformat": r["fileformat"],
                    "is_key_frame": r["is_key_frame"], "height": r["height"], "width": r["width"],
                    "filename": r["filename"], "prev": prev_sd.get(ch, ""), "next": ""})
                if prev_sd.get(ch):
                    prev = next(x for x in tables["sample_data"] if x["token"] == prev_sd[ch])
                    prev["next"] = r["token"]
                prev_sd[ch] = r["token"]
        tables["scene"].append({"token": scene_token, "log_token": log_token, "nbr_samples": len(frames),
                                "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
                                "name": scene_name, "description": "segood generated"})
    if not tables["lidarseg"]:
        del tables["lidarseg"]
    # dedupe calibrated_sensor / ego_pose records written more than once
    for name in ("calibrated_sensor", "ego_pose"):
        tables[name] = list({r["token"]: r for r in tables[name]}.values())
    table_dir = root / version
    table_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        (table_dir / f"{name}.json").write_text(json.dumps(rows, indent=0))
    return root


# --------------------------------------------------------------------------- CARLA-OOD

# segood.synthetic writes SemanticKITTI raw ids; their CARLA semantic tags (default label map)
KITTI_TO_CARLA = {0: 0, 1: 22, 10: 14, 11: 19, 18: 15, 20: 29, 30: 12, 40: 1, 44: 1, 48: 2, 50: 3, 51: 5,
                  70: 9, 71: 9, 72: 10, 80: 6, 81: 8}


def write_carla_ood_sample(
    root: str | Path,
    sequences: dict[str, int] | None = None,
    seed: int = 0,
    azimuth_columns: int = 256,
    image_size: tuple[int, int] = (160, 48),
) -> Path:
    """Write a small CARLA-OOD data set in the default layout from procedural synthetic scenes.

    ``sequences``: name -> number of scans (default ``{"train_00": 2, "val_00": 1}``). Labels are
    CARLA tags (OOD objects = 29) written as ``uint32 tag | instance << 16``.
    """
    from PIL import Image

    from segood import synthetic as syn

    root = Path(root)
    sequences = sequences or {"train_00": 2, "val_00": 1}
    cfg = syn.SyntheticConfig(azimuth_columns=azimuth_columns, image_width=image_size[0],
                              image_height=image_size[1], seed=seed)
    lut = np.zeros(max(KITTI_TO_CARLA) + 1, dtype=np.uint32)
    for k, v in KITTI_TO_CARLA.items():
        lut[k] = v
    for s_idx, (seq, count) in enumerate(sequences.items()):
        seq_dir = root / "sequences" / seq
        for sub in ("lidar", "labels", "rgb"):
            (seq_dir / sub).mkdir(parents=True, exist_ok=True)
        (seq_dir / "calib.yaml").write_text(yaml.safe_dump({"lidar_to_image": syn.lidar_to_image(cfg).tolist()}))
        for i in range(count):
            scene = syn.generate_scene(syn.scan_rng(seed, str(s_idx), i), cfg)
            points, labels, image = syn.render_scan(scene, cfg)
            tag = lut[np.minimum(labels & 0xFFFF, len(lut) - 1)]
            name = f"{i:06d}"
            points.astype("<f4").tofile(seq_dir / "lidar" / f"{name}.bin")
            (tag | (labels & 0xFFFF0000)).astype("<u4").tofile(seq_dir / "labels" / f"{name}.label")
            Image.fromarray(image).save(seq_dir / "rgb" / f"{name}.png")
    return root


# --------------------------------------------------------------------------- STU

# The front camera of kumuji/stu_dataset camera_config/ (port_a_camera_0), in the repository's own formats.
STU_INTRINSICS = """\ufeffport_a_camera_0:
header:
  seq: 788
  stamp:
    secs: 1704843225
    nsecs: 352841854
  frame_id: "port_a_camera_0"
height: 1208
width: 1920
distortion_model: "plumb_bob"
D: [-0.260735, 0.046071, 0.001173, -0.000154, 0.0]
K: [1827.48989, 0.0, 925.91346, 0.0, 1835.88358, 642.07154, 0.0, 0.0, 1.0]
R: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
P: [1678.93384, 0.0, 918.44184, 0.0, 0.0, 1779.26013, 644.71356, 0.0, 0.0, 0.0, 1.0, 0.0]
binning_x: 0
binning_y: 0
roi:
  x_offset: 0
  y_offset: 0
  height: 0
  width: 0
  do_rectify: False
"""
STU_EXTRINSICS = """transforms:
  -
    header:
      seq: 0
      stamp:
        secs: 1704842214
        nsecs: 894391217
      frame_id: "base_link"
    child_frame_id: "os_sensor"
    transform:
      translation:
        x: 0.7
        y: 0.0
        z: 1.8
      rotation:
        x: 0.0
        y: 0.0
        z: 0.00499997916669
        w: 0.999987500026
---
transforms:
  -
    header:
      seq: 0
      stamp:
        secs: 1704842215
        nsecs: 786860225
      frame_id: "os_sensor"
    child_frame_id: "port_a_camera_0"
    transform:
      translation:
        x: 0.7658
        y: 0.0124
        z: -0.3925
      rotation:
        x: -0.496146480946
        y: 0.498388981228
        z: -0.494329641699
        w: 0.510965065512
---
"""


def write_stu_root(root: str | Path, sequences: dict[str, list[dict]], image_size: tuple[int, int] = (1920, 1208)) -> Path:
    """Write an STU-layout root: ``sequences``: name -> frames, each ``points`` (N, 4) float32, ``semantic`` (N,)
    0/1/2 and ``instance`` (N,) ids (stored in the upper 16 bits); a grey front image per frame, poses.txt,
    calib.txt and camera_config/ with the release's front-camera intrinsics and extrinsics."""
    from PIL import Image

    root = Path(root)
    (root / "camera_config").mkdir(parents=True, exist_ok=True)
    (root / "camera_config" / "intrinsics.txt").write_text(STU_INTRINSICS, encoding="utf-8")
    (root / "camera_config" / "extrinsics.txt").write_text(STU_EXTRINSICS)
    grey = Image.fromarray(np.full((image_size[1], image_size[0], 3), 120, np.uint8))
    for seq, frames in sequences.items():
        for sub in ("velodyne", "labels", "port_a_cam_0"):
            (root / seq / sub).mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(frames):
            np.asarray(f["points"], np.float32).tofile(root / seq / "velodyne" / f"{i:06d}.bin")
            label = (np.asarray(f["instance"], np.uint32) << 16) | np.asarray(f["semantic"], np.uint32)
            label.astype("<u4").tofile(root / seq / "labels" / f"{i:06d}.label")
            grey.save(root / seq / "port_a_cam_0" / f"{i:06d}.png")
        (root / seq / "poses.txt").write_text("\n".join(["1 0 0 0 0 1 0 0 0 0 1 0"] * len(frames)) + "\n")
        (root / seq / "calib.txt").write_text("P0: 1 0 0 0 0 1 0 0 0 0 1 0\nTr: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    return root
