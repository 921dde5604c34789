"""PLY point files with per-point scores as extra vertex properties (binary little-endian).

Written by hand (a header and one structured array) so any column can be stored with its exact
type: ``x y z intensity anomaly label red green blue`` opens in CloudCompare / MeshLab and in
``open3d.t.io.read_point_cloud`` (custom attributes become ``pcd.point['anomaly']`` etc.).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segood.atomic import atomic_write

_PLY_TYPES = {"f4": "float", "f8": "double", "u1": "uchar", "i1": "char", "u2": "ushort", "i2": "short",
              "u4": "uint", "i4": "int"}
_NP_TYPES = {v: k for k, v in _PLY_TYPES.items()} | {"float32": "f4", "float64": "f8", "uint8": "u1", "int8": "i1",
                                                     "uint16": "u2", "int16": "i2", "uint32": "u4", "int32": "i4"}


def write_ply(path: str | Path, columns: dict[str, np.ndarray]) -> Path:
    """Write equally long 1-D columns (in order) as vertex properties; written atomically."""
    n = {len(v) for v in columns.values()}
    if len(n) != 1:
        raise ValueError(f"columns differ in length: { {k: len(v) for k, v in columns.items()} }")
    dtype = []
    for k, v in columns.items():
        code = np.asarray(v).dtype.str[1:]
        if code not in _PLY_TYPES:
            raise ValueError(f"column '{k}': dtype {np.asarray(v).dtype} has no PLY type")
        dtype.append((k, "<" + code))
    rec = np.zeros(n.pop(), dtype=dtype)
    for k, v in columns.items():
        rec[k] = v
    header = ["ply", "format binary_little_endian 1.0", "comment written by segood", f"element vertex {len(rec)}"]
    header += [f"property {_PLY_TYPES[np.dtype(t).str[1:]]} {k}" for k, t in dtype] + ["end_header"]

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            f.write(("\n".join(header) + "\n").encode("ascii"))
            f.write(rec.tobytes())

    return atomic_write(path, write)


def read_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Read the vertex properties of a binary little-endian PLY with one element (as written above)."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    lines = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise ValueError(f"{path}: only binary_little_endian PLY files are read here")
    count, dtype = 0, []
    for line in lines:
        parts = line.split()
        if parts[:2] == ["element", "vertex"]:
            count = int(parts[2])
        elif parts[:1] == ["element"]:
            raise ValueError(f"{path}: element '{parts[1]}' not supported (vertex only)")
        elif parts[:1] == ["property"]:
            if parts[1] == "list" or parts[1] not in _NP_TYPES:
                raise ValueError(f"{path}: property type '{parts[1]}' not supported")
            dtype.append((parts[2], "<" + _NP_TYPES[parts[1]]))
    rec = np.frombuffer(data, dtype=np.dtype(dtype), count=count, offset=end + len(b"end_header\n"))
    return {k: rec[k].copy() for k in rec.dtype.names}
