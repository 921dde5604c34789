"""Per-point OOD object kinds beside a scan (synthetic data): which kind of OOD object each point is on.

``sequences/SS/ood_kinds/NNNNNN.json`` (written by :mod:`segood.synthetic.writer`) maps the instance
ids of a scan's OOD objects to their kind: ``{"instances": {"12": "tilted_slab", "13": "bus"}}``; the
instance id of a point is the high 16 bits of its ``.label`` entry. A reader turns that into
``Scan.ood_kind``: one int16 per point, the index of its kind in :data:`OOD_KIND_NAMES`, -1 for a
point on no known OOD object. Data sets without these files have no kinds (``None``), and every
per-kind result is simply absent for them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from segood.data.errors import DataError
from segood.synthetic.config import OOD_KIND_FAMILY

__all__ = ["OOD_KIND_NAMES", "OOD_KIND_FAMILY", "NO_KIND", "read_ood_kinds"]

OOD_KIND_NAMES: tuple[str, ...] = tuple(OOD_KIND_FAMILY)  # code k = OOD_KIND_NAMES[k]; a stable order
NO_KIND = -1


def read_ood_kinds(kinds_path: Path, label_path: Path, num_points: int) -> np.ndarray | None:
    """(N,) int16 kind code per point, or None when ``kinds_path`` does not exist.

    ``label_path`` is the scan's ``.label`` file (already checked by the reader: one uint32 per point).
    A malformed file or an unknown kind is a DataError naming the file and the field.
    """
    kinds_path = Path(kinds_path)
    if not kinds_path.is_file():
        return None
    try:
        table = json.loads(kinds_path.read_text())["instances"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{kinds_path}: expected JSON {{\"instances\": {{instance id: kind}}}} ({e!r})") from None
    if not isinstance(table, dict):
        raise DataError(f"{kinds_path}: field 'instances' must be an object {{instance id: kind}}")
    code = np.full(1 << 16, NO_KIND, dtype=np.int16)
    for inst, kind in table.items():
        if kind not in OOD_KIND_NAMES or not str(inst).isdigit() or not 0 < int(inst) < 1 << 16:
            raise DataError(f"{kinds_path}: field 'instances.{inst}' = {kind!r}: expected an instance id in "
                            f"1..65535 and a kind in {list(OOD_KIND_NAMES)}")
        code[int(inst)] = OOD_KIND_NAMES.index(kind)
    instance = np.fromfile(label_path, dtype=np.uint32, count=num_points) >> np.uint32(16)
    return code[instance]
