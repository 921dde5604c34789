"""The reader protocol: what segood needs from a data set (the registry is :mod:`segood.data.readers`)."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from segood.data.labels import LabelMap
from segood.data.scan import Scan


@runtime_checkable
class Reader(Protocol):
    """What segood needs from a data set. Optional: ``sweep_problems() -> list[str]`` (data-set
    level problems for check-data) and a classmethod ``shared_options(root, entries, options, cache)
    -> dict`` (constructor arguments several readers of one root share, e.g. loaded tables)."""

    label_map: LabelMap
    with_labels: bool

    def __len__(self) -> int:
        """Number of scans."""

    def __getitem__(self, i: int) -> Scan:
        """Scan ``i`` with points, labels (when ``with_labels``) and cameras; DataError on a bad file."""

    def frame_id(self, i: int) -> str:
        """A stable name of scan ``i`` within its sequence (``segood viz --frame``)."""

    def check_scan(self, i: int, decode_images: bool = True) -> tuple[list[str], np.ndarray | None, dict[str, int]]:
        """Every problem of scan ``i`` (each piece read on its own), its raw labels (None when they
        could not be read) and ``{camera: points inside its image}``."""
