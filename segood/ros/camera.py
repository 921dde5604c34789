"""Camera side of a bag: image decoding, LiDAR->image calibration, pairing clouds with images in time.

Calibration: the projection is ``lidar_to_image`` (3x4, LiDAR point -> homogeneous pixel, u = column,
v = row, integer = pixel centre as in :mod:`segood.data.projection`). It comes either directly from
a calibration file (``lidar_to_image``, 3x4 or 4x4), or from the camera's ``CameraInfo.P`` (3x4)
times ``lidar_to_camera`` (4x4, LiDAR frame -> camera optical frame: x right, y down, z forward)
from the file. ``P`` is the rectified projection: the image topic should be rectified
(``image_rect``); a raw image with strong lens distortion projects with an error (warned once).

Pairing uses header stamps: each cloud takes the image whose stamp is nearest to its own, within
``max_dt`` seconds. Image stamps are indexed in one pass; images are fetched on demand.
"""
from __future__ import annotations

import bisect
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from segood.data.projection import check_projection_matrix
from segood.ros.bagio import BagError, connections_of, messages, resolve_topic

IMAGE, COMPRESSED, CAMERA_INFO = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/CameraInfo"
CALIB_ALIASES = {"lidar_to_image": ("lidar2img", "lidar2img_4x4"), "lidar_to_camera": ("lidar2cam", "lidar2cam_4x4")}
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1, "8UC3": 3, "8UC4": 4}


class CameraError(ValueError):
    """An image or calibration that cannot be used; the message says why."""


def stamp_ns(header: Any) -> int:
    """Header stamp in integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def decode_image(msg: Any, msgtype: str) -> np.ndarray:
    """``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8, mono16) or ``CompressedImage`` (any
    format OpenCV reads: jpeg, png) -> (H, W, 3) uint8 RGB."""
    import cv2

    data = np.frombuffer(msg.data, np.uint8) if not isinstance(msg.data, np.ndarray) else msg.data
    if msgtype == COMPRESSED:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if bgr is None:
            raise CameraError(f"compressed image ({msg.format!r}, {data.size} bytes) could not be decoded")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    h, w, step, enc = int(msg.height), int(msg.width), int(msg.step), str(msg.encoding)
    if data.size < h * step:
        raise CameraError(f"truncated image: {data.size} bytes, expected height {h} x step {step}")
    if enc in ("mono16", "16UC1"):
        px = data[: h * step].reshape(h, step)[:, : 2 * w].copy().view(">u2" if msg.is_bigendian else "<u2")
        gray = (px >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if enc not in _CHANNELS:
        raise CameraError(f"image encoding '{enc}' is not supported (supported: {sorted(_CHANNELS)} and mono16)")
    c = _CHANNELS[enc]
    px = data[: h * step].reshape(h, step)[:, : w * c].reshape(h, w, c)
    if c == 1:
        return np.repeat(px, 3, axis=2)
    rgb = px[:, :, :3]
    return np.ascontiguousarray(rgb[:, :, ::-1] if enc.startswith("bgr") or enc.startswith("8UC") else rgb)


KITTI_CAMERAS = {"image_2": "P2", "image_3": "P3"}


def read_kitti_calib(path: str | Path, camera: str = "image_2") -> np.ndarray:
    """LiDAR -> image 3x4 from a KITTI ``calib.txt``: odometry layout (``P0..P3``, ``Tr``) or object
    layout (``P2``, ``R0_rect`` 3x3, ``Tr_velo_to_cam``): ``P @ R0_rect @ Tr`` (R0_rect = I if absent)."""
    p = Path(path)
    fields: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        key, sep, values = line.partition(":")
        if not sep or not values.strip():
            continue
        try:
            fields[key.strip()] = np.array([float(v) for v in values.split()], dtype=np.float64)
        except ValueError:
            raise CameraError(f"{p}:{lineno}: field '{key.strip()}' is not a list of numbers") from None
    name, tr_name = KITTI_CAMERAS[camera], "Tr" if "Tr" in fields else "Tr_velo_to_cam"
    for key, size in ((name, 12), (tr_name, 12), ("R0_rect", 9)):
        if key not in fields and key != "R0_rect":
            raise CameraError(f"{p}: KITTI calibration has no '{key}' (found {sorted(fields)}); expected P2 and "
                              "Tr (odometry) or P2, R0_rect and Tr_velo_to_cam (object detection)")
        if key in fields and fields[key].size != size:
            raise CameraError(f"{p}: field '{key}' has {fields[key].size} values, expected {size}")
    tr, r0 = np.eye(4), np.eye(4)
    tr[:3] = fields[tr_name].reshape(3, 4)
    if "R0_rect" in fields:
        r0[:3, :3] = fields["R0_rect"].reshape(3, 3)
    return fields[name].reshape(3, 4) @ r0 @ tr


def load_calib(path: str | Path) -> dict[str, np.ndarray]:
    """Read a calibration: a KITTI ``calib.txt`` (:func:`read_kitti_calib`, camera image_2), or a
    YAML/JSON file with ``lidar_to_image`` (3x4 or 4x4) and/or ``lidar_to_camera`` (4x4); the
    mmdetection3d names ``lidar2img`` / ``lidar2cam`` (``_4x4``) are accepted too."""
    p = Path(path)
    if not p.is_file():
        raise CameraError(f"{p}: calibration file not found")
    if p.suffix == ".txt":
        return {"lidar_to_image": read_kitti_calib(p)}
    try:
        doc = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except (ValueError, yaml.YAMLError) as e:
        raise CameraError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'} ({e})") from e
    if not isinstance(doc, dict):
        raise CameraError(f"{p}: expected a mapping with 'lidar_to_image' (3x4) or 'lidar_to_camera' (4x4)")
    out = {}
    for key, shapes in (("lidar_to_image", ((3, 4), (4, 4))), ("lidar_to_camera", ((4, 4),))):
        name = next((k for k in (key, *CALIB_ALIASES[key]) if k in doc), None)
        if name is not None:
            m = np.asarray(doc[name], dtype=np.float64)
            if m.shape not in shapes:
                raise CameraError(f"{p}: '{name}' has shape {m.shape}, expected {' or '.join(map(str, shapes))}")
            out[key] = m[:3] if key == "lidar_to_image" else m
    if not out:
        raise CameraError(f"{p}: neither 'lidar_to_image' (3x4) nor 'lidar_to_camera' (4x4) found (keys: {sorted(doc)})")
    return out


def info_projection(info: Any) -> np.ndarray:
    """``CameraInfo.P`` (ROS 2 ``p``, ROS 1 ``P``) as 3x4."""
    p = getattr(info, "p", None)
    p = info.P if p is None else p
    return np.asarray(p, dtype=np.float64).reshape(3, 4)


def projection_matrix(calib: dict[str, np.ndarray] | None, info: Any | None, source: str) -> np.ndarray:
    """LiDAR -> image 3x4 from the calibration file, or ``CameraInfo.P @ lidar_to_camera``."""
    if calib and "lidar_to_image" in calib:
        return check_projection_matrix(calib["lidar_to_image"], source)
    if calib and "lidar_to_camera" in calib:
        if info is None:
            raise CameraError(f"{source}: 'lidar_to_camera' needs the camera's P: give --info-topic (CameraInfo), "
                              "or put 'lidar_to_image' (3x4) in the calibration file")
        d = getattr(info, "d", None)
        d = getattr(info, "D", ()) if d is None else d
        if np.abs(np.asarray(d, dtype=float)).max(initial=0.0) > 1e-3:
            warnings.warn(f"{source}: CameraInfo has lens distortion; points are projected with P (rectified "
                          "camera), so the image topic should be rectified", stacklevel=2)
        return check_projection_matrix(info_projection(info) @ calib["lidar_to_camera"], source)
    raise CameraError(f"{source}: no LiDAR->camera calibration: give --calib FILE with 'lidar_to_image' (3x4) "
                      "or 'lidar_to_camera' (4x4)")


@dataclass
class _Indexed:
    stamp: int  # header stamp, ns
    time: int  # bag receive time, ns (for random access)


class CameraStream:
    """The images of one topic, indexed by header stamp, fetched on demand for the nearest stamp.

    One pass over the image (and camera info) messages between ``start`` and ``stop`` (bag time, ns;
    widened by ``max_dt``) records the stamps and takes the first CameraInfo.
    """

    def __init__(self, reader: Any, image_topic: str, info_topic: str | None, calib: dict | None,
                 max_dt: float, start: int | None = None, stop: int | None = None) -> None:
        self.reader = reader
        self.topic = resolve_topic(reader, image_topic, (IMAGE, COMPRESSED), "image")
        self.conns = connections_of(reader, self.topic)
        self.max_dt_ns = int(round(max_dt * 1e9))
        margin = self.max_dt_ns + 1_000_000_000  # stamps and receive times differ by the transport latency
        lo = None if start is None else max(0, start - margin)
        hi = None if stop is None else stop + margin
        self.index: list[_Indexed] = []
        for conn, t, raw in messages(reader, self.conns, lo, hi):
            self.index.append(_Indexed(stamp_ns(reader.deserialize(raw, conn.msgtype).header), t))
        self.index.sort(key=lambda x: x.stamp)
        self._stamps = [x.stamp for x in self.index]
        info = None
        if info_topic is not None:
            info_topic = resolve_topic(reader, info_topic, (CAMERA_INFO,), "camera info")
            for conn, _, raw in messages(reader, connections_of(reader, info_topic)):
                info = reader.deserialize(raw, conn.msgtype)
                break
            if info is None:
                raise BagError(f"{reader.paths[0]}: topic '{info_topic}' holds no CameraInfo message")
        self.matrix = projection_matrix(calib, info, f"{reader.paths[0]} camera '{self.topic}'")
        self._cache: tuple[int, np.ndarray] | None = None

    def nearest(self, stamp: int) -> tuple[np.ndarray | None, str]:
        """(RGB image, '') for the image nearest to ``stamp`` within max_dt, else (None, reason)."""
        if not self.index:
            return None, f"no image on {self.topic}"
        i = bisect.bisect_left(self._stamps, stamp)
        cands = [j for j in (i - 1, i) if 0 <= j < len(self.index)]
        j = min(cands, key=lambda k: abs(self._stamps[k] - stamp))
        dt = abs(self._stamps[j] - stamp)
        if dt > self.max_dt_ns:
            return None, f"no image within max_dt {self.max_dt_ns / 1e9:g} s (nearest {dt / 1e9:.3f} s)"
        if self._cache is not None and self._cache[0] == j:
            return self._cache[1], ""
        entry = self.index[j]
        for conn, _, raw in messages(self.reader, self.conns, entry.time, entry.time + 1):
            msg = self.reader.deserialize(raw, conn.msgtype)
            if stamp_ns(msg.header) != entry.stamp:
                continue
            try:
                image = decode_image(msg, conn.msgtype)
            except CameraError as e:
                return None, f"image {entry.stamp / 1e9:.6f}: {e}"
            self._cache = (j, image)
            return image, ""
        return None, f"image {entry.stamp / 1e9:.6f} could not be read back"
