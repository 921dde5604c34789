"""Write sensor frames (a LiDAR cloud, optionally a camera image with its CameraInfo) to a bag of any format.

Used to make test bags from data-set scans (``tools/make_test_bag.py``) and to turn scans into
bags for replay demos. Clouds are written as given (any structured layout, see
:func:`segood.ros.pointcloud2.from_records`); images as ``CompressedImage`` JPEG or raw ``rgb8``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segood.ros.bagio import POINTCLOUD2, BagWriter, output_format
from segood.ros.camera import CAMERA_INFO, COMPRESSED, IMAGE
from segood.ros.pointcloud2 import from_records


@dataclass
class SensorFrame:
    stamp_ns: int  # cloud header stamp (also its receive time)
    records: np.ndarray  # structured cloud records
    height: int = 1  # > 1: organised cloud
    row_padding: int = 0
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB
    image_stamp_ns: int | None = None
    projection: np.ndarray | None = None  # camera P (3x4) for CameraInfo


def make_header(typestore: Any, stamp_ns: int, frame_id: str, seq: int = 0) -> Any:
    """A std_msgs/Header for either ROS version (ROS 1 has ``seq``)."""
    header, time_cls = typestore.types["std_msgs/msg/Header"], typestore.types["builtin_interfaces/msg/Time"]
    stamp = time_cls(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))
    if "seq" in header.__dataclass_fields__:
        return header(seq=seq, stamp=stamp, frame_id=frame_id)
    return header(stamp=stamp, frame_id=frame_id)


def camera_info(typestore: Any, header: Any, width: int, height: int, projection: np.ndarray) -> Any:
    """A CameraInfo with K and P from a 3x4 projection of a rectified camera (no distortion)."""
    cls = typestore.types[CAMERA_INFO]
    roi = typestore.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                              do_rectify=False)
    p = np.asarray(projection, dtype=np.float64).reshape(3, 4)
    mats = {"d": np.zeros(5), "k": p[:, :3].reshape(-1).copy(), "r": np.eye(3).reshape(-1), "p": p.reshape(-1).copy()}
    names = cls.__dataclass_fields__
    mats = {(k if k in names else k.upper()): v for k, v in mats.items()}
    return cls(header=header, height=height, width=width, distortion_model="plumb_bob", binning_x=0, binning_y=0,
               roi=roi, **mats)


def image_message(typestore: Any, header: Any, rgb: np.ndarray, compressed: bool, jpeg_quality: int = 90) -> tuple[Any, str]:
    """(message, msgtype): a JPEG CompressedImage or an rgb8 Image."""
    if compressed:
        import cv2

        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return typestore.types[COMPRESSED](header=header, format="jpeg", data=buf.reshape(-1)), COMPRESSED
    h, w = rgb.shape[:2]
    msg = typestore.types[IMAGE](header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w,
                                 data=np.ascontiguousarray(rgb).reshape(-1))
    return msg, IMAGE


def write_sensor_bag(path: str | Path, frames: list[SensorFrame], in_format: str | None = None,
                     cloud_topic: str = "/points", image_topic: str = "/camera/image/compressed",
                     info_topic: str = "/camera/camera_info", lidar_frame: str = "lidar",
                     camera_frame: str = "camera", compressed: bool = True, overwrite: bool = False) -> Path:
    """Write ``frames`` to ``path``: ``.bag`` (ROS 1), ``.db3`` / ``.mcap`` (bare ROS 2 file), or a
    ROS 2 folder (``in_format`` 'sqlite3' or 'mcap' picks the storage). Messages are written at their
    stamps; the image before the cloud when both exist."""
    path = Path(path)
    fmt, bare = output_format(in_format or ("ros1" if path.suffix == ".bag" else "sqlite3"), path)
    with BagWriter(path, fmt, bare, overwrite) as w:
        ts = w.typestore
        c_cloud = w.add_connection(cloud_topic, POINTCLOUD2)
        c_img = c_info = None
        for k, f in enumerate(frames):
            if f.image is not None:
                stamp = f.stamp_ns if f.image_stamp_ns is None else f.image_stamp_ns
                hdr = make_header(ts, stamp, camera_frame, k)
                msg, msgtype = image_message(ts, hdr, f.image, compressed)
                c_img = c_img or w.add_connection(image_topic, msgtype)
                w.write(c_img, stamp, w.serialize(msg, msgtype))
                if f.projection is not None:
                    c_info = c_info or w.add_connection(info_topic, CAMERA_INFO)
                    info = camera_info(ts, hdr, f.image.shape[1], f.image.shape[0], f.projection)
                    w.write(c_info, stamp, w.serialize(info, CAMERA_INFO))
            cloud = from_records(f.records, ts, make_header(ts, f.stamp_ns, lidar_frame, k), f.height, f.row_padding)
            w.write(c_cloud, f.stamp_ns, w.serialize(cloud, POINTCLOUD2))
    return path
