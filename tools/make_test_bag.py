#!/usr/bin/env python3
"""Write small ROS bags (ROS 1 .bag, ROS 2 .db3 and .mcap) from real scans, for tests and demos.

Sources (third-party data, non-commercial licences; the bags are derived data, named *_derived):
  kitti     tests/fixtures/kitti_000008: KITTI object frame 000008 (17,238 points cropped to the camera
            FOV, the 1242x375 left image, calibration JSON). KITTI, CC BY-NC-SA 3.0.
  nuscenes  one nuScenes keyframe (scene-0061), LIDAR_TOP and CAM_FRONT: --nuscenes DIR, by default
            shared/data/real/nuscenes/mmdet3d_demo_scene0061 (34,688 points x 5, 1600x900) when present,
            else tests/fixtures/nuscenes_scene0061 (every 4th point, 320x180). nuScenes, CC BY-NC-SA 4.0.

Each bag holds --frames frames at 10 Hz: the cloud (a seeded random 1/--stride of the points, a
different subset per frame, original order kept: striding would keep only a few rings), a JPEG
CompressedImage (scaled by --image-scale) with its CameraInfo (P of the scaled image),
and beside it a calibration YAML with ``lidar_to_camera`` (4x4) for ``segood replay --calib``.
Clouds use the float32 x, y, z, intensity layout (KITTI) or the velodyne_pointcloud driver's layout
with padding, ring and time (nuScenes).

  .venv/bin/python tools/make_test_bag.py --out tests/fixtures/bags --source kitti --formats bag --stride 4
  .venv/bin/python tools/make_test_bag.py --out /tmp/bags --source nuscenes --formats bag,db3,mcap
"""
from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

from segood.ros.export import SensorFrame, write_sensor_bag
from segood.ros.pointcloud2 import xyzi_records

REPO = Path(__file__).resolve().parent.parent  # fixture paths only; segood itself comes from the venv

KITTI_DIR = REPO / "tests/fixtures/kitti_000008"
NUSCENES_DIRS = (REPO.parent / "shared/data/real/nuscenes/mmdet3d_demo_scene0061", REPO / "tests/fixtures/nuscenes_scene0061")
NUSCENES_SIZE = (1600, 900)  # image size the calibration's cam2img refers to
SUFFIX = {"bag": ".bag", "db3": ".db3", "mcap": ".mcap"}
# velodyne_pointcloud (ROS driver) point layout: padding after z, ring uint16, time float32; 32 bytes.
VELODYNE = np.dtype({"names": ["x", "y", "z", "intensity", "ring", "time"],
                     "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
                     "offsets": [0, 4, 8, 16, 20, 24], "itemsize": 32})


def subset(n: int, stride: int, frame: int) -> np.ndarray:
    """Indices (increasing) of a random ~1/stride of n points, different per frame."""
    return np.flatnonzero(np.random.default_rng([8, frame]).random(n) < 1.0 / stride)


def pixel_scale(src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """3x3 matrix taking pixel coordinates of a (w, h) image to a resized one (integer = pixel centre)."""
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def scale_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def kitti_frames(frames: int, stride: int, image_scale: float) -> tuple[list[SensorFrame], np.ndarray]:
    from segood.data.readers.semantickitti import read_bin, read_image

    calib = json.loads((KITTI_DIR / "calib_000008.json").read_text())
    pts = read_bin(KITTI_DIR / "000008.bin")
    full = read_image(KITTI_DIR / "000008.png")
    size = (round(full.shape[1] * image_scale), round(full.shape[0] * image_scale))
    image = scale_image(full, size)
    p = pixel_scale(full.shape[1::-1], size) @ np.asarray(calib["P2_cam2img_4x4"])[:3]
    lidar_to_camera = np.asarray(calib["lidar2cam_4x4 (=R0_rect @ Tr_velo_to_cam)"])
    t0 = 1_317_000_000 * 10**9  # KITTI-era stamp, no meaning beyond ordering
    out = [SensorFrame(t0 + k * 100_000_000, xyzi_records(pts[subset(len(pts), stride, k)]), image=image, projection=p)
           for k in range(frames)]
    return out, lidar_to_camera


def _one(folder: Path, patterns: tuple[str, ...]) -> Path:
    for pat in patterns:
        hits = sorted(folder.glob(pat))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"{folder}: no file matching {patterns}")


def nuscenes_frames(frames: int, stride: int, image_scale: float, root: Path) -> tuple[list[SensorFrame], np.ndarray]:
    import cv2

    calib = json.loads((root / "calib.json").read_text())
    cam = calib["cameras"]["CAM_FRONT"]
    lidar = _one(root, (calib["lidar"]["file"], "samples/*LIDAR_TOP*.pcd.bin"))
    raw = np.fromfile(lidar, dtype=np.float32).reshape(-1, 5)
    bgr = cv2.imread(str(_one(root, (cam["file"], "samples/CAM_FRONT_[0-9]*.jpg"))), cv2.IMREAD_COLOR)
    size = (round(NUSCENES_SIZE[0] * image_scale), round(NUSCENES_SIZE[1] * image_scale))
    image = scale_image(bgr[:, :, ::-1], size)  # the intrinsics refer to the original 1600x900
    p = pixel_scale(NUSCENES_SIZE, size) @ np.hstack([np.asarray(cam["cam2img_3x3"]), np.zeros((3, 1))])
    t_lidar, t_cam = int(calib["timestamp"] * 1e9), int(cam["timestamp"] * 1e9)
    out = []
    for k in range(frames):
        sub = raw[subset(len(raw), stride, k)]
        rec = np.zeros(len(sub), dtype=VELODYNE)
        for i, n in enumerate(("x", "y", "z", "intensity")):
            rec[n] = sub[:, i]
        rec["ring"] = sub[:, 4].astype(np.uint16)
        rec["time"] = np.linspace(0.0, 0.05, len(sub), dtype=np.float32)
        dt = k * 100_000_000
        out.append(SensorFrame(t_lidar + dt, rec, image=image, image_stamp_ns=t_cam + dt, projection=p))
    return out, np.asarray(cam["lidar2cam_4x4"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--source", choices=("kitti", "nuscenes"), action="append",
                    help="scan(s) to use (repeatable; default both)")
    ap.add_argument("--formats", default="bag,db3,mcap", help="comma list of bag, db3, mcap")
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--stride", type=int, default=4, help="keep a random 1/N of the points per frame")
    ap.add_argument("--image-scale", type=float, default=0.3, help="of the original camera resolution")
    ap.add_argument("--nuscenes", type=Path, default=next((d for d in NUSCENES_DIRS if d.is_dir()), NUSCENES_DIRS[-1]),
                    help="nuScenes keyframe folder (calib.json, samples/)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    makers = {"kitti": ("kitti000008_derived", kitti_frames),
              "nuscenes": ("nuscenes0061_derived", partial(nuscenes_frames, root=args.nuscenes))}
    for source in args.source or ["kitti", "nuscenes"]:
        name, make = makers[source]
        frames, lidar_to_camera = make(args.frames, args.stride, args.image_scale)
        args.out.mkdir(parents=True, exist_ok=True)
        calib = args.out / f"{name}_calib.yaml"
        calib.write_text("# LiDAR -> camera optical frame (x right, y down, z forward); use with the bag's CameraInfo P\n"
                         f"lidar_to_camera: {json.dumps(np.round(lidar_to_camera, 9).tolist())}\n")
        for fmt in args.formats.split(","):
            path = write_sensor_bag(args.out / f"{name}{SUFFIX[fmt]}", frames, overwrite=args.overwrite)
            print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, {len(frames)} frames, "
                  f"{len(frames[0].records)} points/frame)")
        print(f"wrote {calib}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
