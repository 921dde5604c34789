"""``sensor_msgs/PointCloud2`` <-> numpy, for any field layout, without a Python loop per point.

A cloud's bytes are ``height`` rows of ``row_step`` bytes; each row holds ``width`` points of
``point_step`` bytes (rows may be padded: ``row_step >= width * point_step``). Each field sits at its
``offset`` inside a point with its ``datatype`` and ``count``, all in the byte order given by
``is_bigendian``. We describe that as one numpy structured dtype (offsets, itemsize = point_step) and
view the buffer through it: padding bytes, extra fields and any field order are handled by the dtype.

Messages are duck-typed: anything with the PointCloud2 attributes works (rosbags messages of any
typestore, test doubles). Building messages needs a rosbags typestore for the message classes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

# sensor_msgs/PointField datatype constants -> numpy type codes (byte order added per message).
DATATYPES: dict[int, str] = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
_CODES = {np.dtype(v).str[1:]: k for k, v in DATATYPES.items()}
FLOAT32, UINT16 = 7, 4
ADDED_FIELDS = ("anomaly", "label")


class CloudError(ValueError):
    """A PointCloud2 message that cannot be decoded; the message says why (used as the drop reason)."""


def cloud_dtype(fields: list[Any], point_step: int, is_bigendian: bool) -> np.dtype:
    """The structured dtype of one point: named fields at their offsets, itemsize ``point_step``.

    Fields with an empty name (some drivers' padding) are skipped; ``count > 1`` becomes a sub-array.
    """
    order = ">" if is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in fields:
        if not f.name:
            continue
        if f.datatype not in DATATYPES:
            raise CloudError(f"field '{f.name}' has unknown datatype {f.datatype} (expected 1..8)")
        if f.name in names:
            raise CloudError(f"field '{f.name}' appears twice")
        base = np.dtype(order + DATATYPES[f.datatype])
        count = max(int(f.count), 1)  # count 0 is seen in the wild and means 1
        if f.offset < 0 or f.offset + base.itemsize * count > point_step:
            raise CloudError(
                f"field '{f.name}' (offset {f.offset}, {count} x {base.itemsize} bytes) does not fit in "
                f"point_step {point_step}"
            )
        names.append(f.name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(int(f.offset))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(point_step)})


def point_bytes(msg: Any) -> np.ndarray:
    """The cloud's points as an (height * width, point_step) uint8 array, row padding removed.

    Raises CloudError for inconsistent sizes or a data buffer shorter than ``height * row_step``.
    """
    h, w, ps, rs = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    if ps <= 0:
        raise CloudError(f"point_step is {ps}")
    if h * w and rs < w * ps:
        raise CloudError(f"row_step {rs} is smaller than width {w} x point_step {ps}")
    data = np.frombuffer(msg.data, dtype=np.uint8) if not isinstance(msg.data, np.ndarray) else msg.data
    data = data.reshape(-1).view(np.uint8)
    if data.size < h * rs:
        raise CloudError(f"truncated data: {data.size} bytes, expected height {h} x row_step {rs} = {h * rs}")
    rows = data[: h * rs].reshape(h, rs)[:, : w * ps]
    return np.ascontiguousarray(rows).reshape(h * w, ps)


def point_records(msg: Any) -> np.ndarray:
    """The cloud as a (height * width,) structured array (a view through :func:`cloud_dtype`)."""
    dtype = cloud_dtype(list(msg.fields), int(msg.point_step), bool(msg.is_bigendian))
    return point_bytes(msg).reshape(-1).view(dtype)


def decode_xyzi(msg: Any, intensity_field: str = "intensity") -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity in the message's point order (row-major for organised clouds).

    x, y, z are required; intensity is 0 when the field is missing. Non-finite points (organised
    clouds mark missing returns with NaN) are kept, so the order and count match the message.
    The common float32 x, y, z, intensity layout comes back as a view of the message's buffer (no
    copy; read-only when the buffer is): copy it before writing to it.
    """
    rec = point_records(msg)
    names = rec.dtype.names or ()
    missing = [n for n in "xyz" if n not in names]
    if missing:
        raise CloudError(f"fields {missing} are missing (the cloud has {list(names)}); x, y, z are required")
    view = _xyzi_view(rec, intensity_field)
    if view is not None:
        return view
    out = np.zeros((len(rec), 4), dtype=np.float32)
    for i, n in enumerate("xyz"):
        out[:, i] = _scalar(rec, n)
    if intensity_field in names:
        out[:, 3] = _scalar(rec, intensity_field)
    return out


def _xyzi_view(rec: np.ndarray, intensity_field: str) -> np.ndarray | None:
    """The common layout (native-order float32 x, y, z, intensity at offsets 0, 4, 8, 12) as an
    (N, 4) float32 view of the message's bytes, without a copy (read-only when they are); None for
    any other layout."""
    native = np.dtype(np.float32).newbyteorder("=")
    for k, name in enumerate(("x", "y", "z", intensity_field)):
        field = rec.dtype.fields.get(name)
        if field is None or field[0] != native or field[1] != 4 * k:
            return None
    if not len(rec) or rec.dtype.itemsize % 4 or rec.strides[0] != rec.dtype.itemsize:
        return None  # an empty cloud: the copy below (reshape cannot infer a width from 0 points)
    return rec.view(np.uint8).reshape(len(rec), -1).view(np.float32)[:, :4]


def _scalar(rec: np.ndarray, name: str) -> np.ndarray:
    col = rec[name]
    if col.ndim > 1:  # count > 1: take the first element
        col = col[:, 0]
    return col.astype(np.float32)


def with_scores(msg: Any, anomaly: np.ndarray, label: np.ndarray, typestore: Any) -> Any:
    """A copy of ``msg`` whose points carry two more fields, ``anomaly`` (float32) and ``label`` (uint16).

    Same header, size, point order, original fields and byte order; the new fields are appended
    after the original point bytes (4-byte aligned) and rows are written without padding.
    """
    existing = [f.name for f in msg.fields]
    clash = [n for n in ADDED_FIELDS if n in existing]
    if clash:
        raise CloudError(f"the cloud already has field(s) {clash} (is this a segood output?)")
    raw = point_bytes(msg)
    n, ps = raw.shape
    if len(anomaly) != n or len(label) != n:
        raise ValueError(f"{len(anomaly)} scores / {len(label)} labels for a cloud of {n} points")
    off = (ps + 3) // 4 * 4
    order = ">" if msg.is_bigendian else "<"
    out_dtype = np.dtype({"names": ["orig", "anomaly", "label"], "formats": [(np.uint8, (ps,)), order + "f4", order + "u2"],
                          "offsets": [0, off, off + 4], "itemsize": off + 8})
    out = np.zeros(n, dtype=out_dtype)
    out["orig"] = raw
    out["anomaly"] = anomaly
    out["label"] = label
    point_field = typestore.types["sensor_msgs/msg/PointField"]
    fields = [point_field(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in msg.fields]
    fields += [point_field(name="anomaly", offset=off, datatype=FLOAT32, count=1),
               point_field(name="label", offset=off + 4, datatype=UINT16, count=1)]
    cls = typestore.types["sensor_msgs/msg/PointCloud2"]
    return cls(header=msg.header, height=msg.height, width=msg.width, fields=fields, is_bigendian=msg.is_bigendian,
               point_step=out_dtype.itemsize, row_step=out_dtype.itemsize * int(msg.width),
               data=out.view(np.uint8).reshape(-1), is_dense=msg.is_dense)


def from_records(records: np.ndarray, typestore: Any, header: Any, height: int = 1, row_padding: int = 0,
                 is_dense: bool = True) -> Any:
    """Build a PointCloud2 from a structured array (its dtype gives the fields, offsets and point_step).

    All multi-byte fields must share one byte order, which sets ``is_bigendian``. ``height > 1``
    makes an organised cloud; ``row_padding`` bytes are added at the end of every row.
    """
    dt = records.dtype
    if len(records) % height:
        raise ValueError(f"{len(records)} points do not fill {height} rows")
    width = len(records) // height
    point_field = typestore.types["sensor_msgs/msg/PointField"]
    fields, orders = [], set()
    for name, (fdt, offset, *_) in dt.fields.items():
        base, count = (fdt.base, int(np.prod(fdt.shape))) if fdt.shape else (fdt, 1)
        if base.str[1:] not in _CODES:
            raise ValueError(f"field '{name}': dtype {base} has no PointField datatype")
        if base.itemsize > 1:
            orders.add(base.str[0])
        fields.append(point_field(name=name, offset=int(offset), datatype=_CODES[base.str[1:]], count=count))
    if len(orders) > 1:
        raise ValueError(f"fields mix byte orders {sorted(orders)}")
    ps = dt.itemsize
    rows = np.zeros((height, width * ps + row_padding), dtype=np.uint8)
    rows[:, : width * ps] = np.ascontiguousarray(records).view(np.uint8).reshape(height, width * ps)
    cls = typestore.types["sensor_msgs/msg/PointCloud2"]
    return cls(header=header, height=height, width=width, fields=fields, is_bigendian=orders == {">"},
               point_step=ps, row_step=width * ps + row_padding, data=rows.reshape(-1), is_dense=is_dense)


def xyzi_records(points: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """(N, 4) x, y, z, intensity (+ extra columns) as the common float32 layout of LiDAR drivers."""
    extra = extra or {}
    dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")]
                  + [(k, v.dtype.newbyteorder("<") if v.dtype.itemsize > 1 else v.dtype) for k, v in extra.items()])
    rec = np.zeros(len(points), dtype=dt)
    for i, n in enumerate(("x", "y", "z", "intensity")):
        rec[n] = points[:, i]
    for k, v in extra.items():
        rec[k] = v
    return rec
