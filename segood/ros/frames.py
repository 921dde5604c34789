"""A bag's PointCloud2 topic as :class:`Scan` records, paired with the nearest camera image.

Used by replay (streaming, every message once) and by the viewer (random access by frame number).
Non-finite points (organised clouds mark missing returns with NaN) are left out of the scan; the
``valid`` mask maps the scan's points back to the message's points.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from segood.data.projection import assign_cameras
from segood.data.scan import Scan
from segood.ros.bagio import POINTCLOUD2, BagError, connections_of, messages, resolve_topic, topics
from segood.ros.camera import CameraStream, stamp_ns
from segood.ros.pointcloud2 import ADDED_FIELDS, CloudError, decode_xyzi, point_records

OUTPUT_SUFFIX = "/segood"  # replay writes the scored clouds of <topic> to <topic>/segood
INTENSITY_MODES = ("error", "zero")  # a cloud without an 'intensity' field: refuse it, or use 0


def missing_intensity(bag: Any, topic: str, fields: list[str]) -> str:
    """The one line that says a topic's clouds have no intensity."""
    return (f"{bag}: PointCloud2 topic '{topic}' has no 'intensity' field (its fields: {', '.join(fields)}); "
            "segood models are trained with intensity")


def first_cloud_fields(reader: Any, topic: str) -> list[str] | None:
    """The field names of the topic's first cloud (None: no cloud, or it does not deserialise)."""
    for conn, _, raw in messages(reader, connections_of(reader, topic)):
        try:
            return [f.name for f in reader.deserialize(raw, conn.msgtype).fields]
        except Exception:  # noqa: BLE001 - a broken first message is reported when it is replayed
            return None
    return None


def scored_fields(msg: Any) -> dict[str, np.ndarray]:
    """The ``anomaly`` / ``label`` fields replay adds to a cloud (those present), per point."""
    names = {f.name for f in msg.fields}
    if not names & set(ADDED_FIELDS):
        return {}
    rec = point_records(msg)
    return {k: np.asarray(rec[k]).reshape(len(rec), -1)[:, 0].copy() for k in ADDED_FIELDS if k in names}


def scored_topic(reader: Any) -> str | None:
    """The first PointCloud2 topic that replay wrote (``<topic>/segood``), or None."""
    return next((t for t, m in topics(reader).items() if m == POINTCLOUD2 and t.endswith(OUTPUT_SUFFIX)), None)


def finite_rows(points: np.ndarray) -> np.ndarray:
    """(N,) bool: the rows of ``points`` whose values are all finite. One min / max pass when all are
    (the usual unorganised cloud): both are finite exactly when no value is NaN or infinite."""
    if len(points) and np.isfinite(points.min()) and np.isfinite(points.max()):
        return np.ones(len(points), dtype=bool)
    return np.isfinite(points).all(axis=1)


def scan_from_points(points: np.ndarray, image: np.ndarray | None, matrix: np.ndarray | None,
                     source: str, meta: dict | None = None) -> Scan:
    """A Scan of (N, 4) points, with one camera when ``image`` and ``matrix`` are given (else LiDAR-only)."""
    scan = Scan(points=np.ascontiguousarray(points, dtype=np.float32), source=source, meta=dict(meta or {}))
    if image is not None and matrix is not None:
        h, w = image.shape[:2]
        scan.images, scan.lidar_to_image = [image], [matrix]
        scan.pixel_uv, scan.camera_id = assign_cameras(scan.points[:, :3], [matrix], [(w, h)])
    return scan


@dataclass
class DecodedCloud:
    msg: Any  # the deserialised PointCloud2
    scan: Scan  # valid points only
    valid: np.ndarray  # (num points in msg,) bool
    stamp: int  # header stamp, ns
    camera_note: str  # why the scan has no image ('' when it has one, or no camera was asked for)
    decode_s: float  # deserialisation + decoding + image decoding


class CloudDecoder:
    """Deserialise a PointCloud2 message and build its Scan (with the nearest image, if a camera is set)."""

    def __init__(self, reader: Any, camera: CameraStream | None = None, intensity_scale: float = 1.0,
                 intensity: str = "zero", note: Callable[[str], None] | None = None) -> None:
        if intensity not in INTENSITY_MODES:
            raise ValueError(f"--intensity: '{intensity}', expected one of {', '.join(INTENSITY_MODES)}")
        self.reader = reader
        self.camera = camera
        self.intensity_scale = float(intensity_scale)
        self.intensity = intensity  # what to do with a cloud that has no intensity field
        self.note = note or (lambda text: print(text, file=sys.stderr))
        self.without_intensity = 0  # clouds decoded with intensity 0 (said once)

    def __call__(self, conn: Any, raw: bytes, index: int) -> DecodedCloud:
        """Raises CloudError (with the reason) for a message that cannot be used."""
        t0 = time.perf_counter()
        try:
            msg = self.reader.deserialize(raw, conn.msgtype)
        except Exception as e:  # rosbags: truncated or corrupt serialisation
            raise CloudError(f"message does not deserialise ({type(e).__name__}: {e})") from e
        fields = [f.name for f in msg.fields]
        if "intensity" not in fields:
            if self.intensity == "error":
                raise CloudError(f"no 'intensity' field (fields: {', '.join(fields)}; --intensity zero uses 0)")
            if not self.without_intensity:
                self.note(f"warning: {missing_intensity(self.reader.paths[0], conn.topic, fields)}: "
                          "intensity 0 used for every point (--intensity zero); said once per bag")
            self.without_intensity += 1
        points = decode_xyzi(msg)
        valid = finite_rows(points)
        scored = scored_fields(msg)
        if not valid.any():
            raise CloudError(f"no finite point among {len(points)}")
        pts = points if valid.all() else points[valid]  # a view of the message when every point is finite
        if self.intensity_scale != 1.0:
            pts = pts * np.array([1, 1, 1, self.intensity_scale], dtype=np.float32)
        stamp = stamp_ns(msg.header)
        image, note = None, ""
        if self.camera is not None:
            image, note = self.camera.nearest(stamp)
        source = f"{self.reader.paths[0]}:{conn.topic}#{index}"
        meta = {"topic": conn.topic, "index": index, "stamp_ns": stamp,
                **{k: v[valid] for k, v in scored.items()}}
        scan = scan_from_points(pts, image, self.camera.matrix if image is not None else None, source, meta)
        return DecodedCloud(msg, scan, valid, stamp, note, time.perf_counter() - t0)


class BagFrames:
    """Random access to the scans of one PointCloud2 topic (the viewer's frame list).

    Indexes the topic's receive times once; frame ``i`` is read back by time. The reader must stay
    open while this object is used.
    """

    def __init__(self, reader: Any, topic: str | None = None, camera: CameraStream | None = None,
                 intensity_scale: float = 1.0) -> None:
        self.reader = reader
        self.topic = resolve_topic(reader, topic, (POINTCLOUD2,), "PointCloud2")
        self.conns = connections_of(reader, self.topic)
        self.times = [t for _, t, _ in messages(reader, self.conns)]
        self.decode = CloudDecoder(reader, camera, intensity_scale)

    def __len__(self) -> int:
        return len(self.times)

    def __getitem__(self, i: int) -> Scan:
        if not 0 <= i < len(self.times):
            raise IndexError(f"frame {i} out of range: topic '{self.topic}' has {len(self.times)} clouds")
        t = self.times[i]
        k = self.times.index(t)  # messages sharing one receive time come back in order
        for j, (conn, _, raw) in enumerate(messages(self.reader, self.conns, t, t + 1)):
            if k + j == i:
                try:
                    return self.decode(conn, raw, i).scan
                except CloudError as e:
                    raise BagError(f"{self.reader.paths[0]}: cloud {i} on '{self.topic}': {e}") from e
        raise BagError(f"{self.reader.paths[0]}: cloud {i} on '{self.topic}' could not be read back")
