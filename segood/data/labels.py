"""Label maps as data: raw dataset ids -> learning ids -> network train ids, plus the OOD split.

The YAML files under ``segood/labels/`` are the single source of truth. Three id spaces exist:

* raw ids: what the dataset files store (SemanticKITTI: ``label & 0xFFFF``);
* learning ids: the benchmark's classes (``learning_map``), 0 = ignored;
* train ids: what the network predicts: the learning ids that are neither ignored nor OOD, renumbered
  0..C-1 in learning-id order. Ignored and OOD points get train id -1 (no segmentation loss).

``ood_target`` per point: 1 = OOD (anomaly, the positive class), 0 = in-distribution, -1 = ignored.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from segood.data.errors import DataError

LABEL_DIR = Path(__file__).resolve().parent.parent / "labels"


@dataclass(frozen=True)
class LabelMap:
    """A dataset's label map with the OOD protocol; built from YAML by :func:`load_label_map`."""

    name: str
    source: str
    learning_map: dict[int, int]
    learning_map_inv: dict[int, int]
    learning_names: dict[int, str]
    ignore_learning_ids: tuple[int, ...]
    ood_learning_ids: tuple[int, ...]
    anomaly_only: bool
    _raw_lut: np.ndarray = field(repr=False, compare=False)
    _train_lut: np.ndarray = field(repr=False, compare=False)
    _ood_lut: np.ndarray = field(repr=False, compare=False)

    @property
    def train_learning_ids(self) -> list[int]:
        """Learning ids the network predicts, in train-id order (none for an ``anomaly_only`` map)."""
        if self.anomaly_only:
            return []
        skip = set(self.ignore_learning_ids) | set(self.ood_learning_ids)
        return [i for i in sorted(self.learning_names) if i not in skip]

    @property
    def num_classes(self) -> int:
        return len(self.train_learning_ids)

    @property
    def class_names(self) -> list[str]:
        """Names of the train ids 0..C-1."""
        return [self.learning_names[i] for i in self.train_learning_ids]

    @property
    def ood_names(self) -> list[str]:
        return [self.learning_names[i] for i in self.ood_learning_ids]

    def checksum(self) -> str:
        """Stable hash of the mapping, stored in checkpoints so a model is never evaluated on a
        dataset whose label map differs from the one it was trained with."""
        blob = json.dumps(
            {
                "learning_map": sorted(self.learning_map.items()),
                "names": sorted(self.learning_names.items()),
                "ignore": list(self.ignore_learning_ids),
                "ood": list(self.ood_learning_ids),
            }
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_learning(self, raw: np.ndarray, source: str = "<array>") -> np.ndarray:
        """Map raw ids to learning ids; unknown raw ids are an error naming ``source``."""
        raw = np.asarray(raw).astype(np.int64)
        bad = (raw < 0) | (raw >= len(self._raw_lut))
        lut_vals = np.where(bad, -1, self._raw_lut[np.clip(raw, 0, len(self._raw_lut) - 1)])
        if (lut_vals < 0).any():
            unknown = np.unique(raw[lut_vals < 0])[:10].tolist()
            raise DataError(
                f"{source}: raw label id(s) {unknown} are not in the label map {self.source} "
                f"(known raw ids: {sorted(self.learning_map)})"
            )
        return lut_vals

    def to_train(self, learning: np.ndarray) -> np.ndarray:
        """Learning ids -> train ids (-1 for ignored and OOD)."""
        return self._train_lut[np.asarray(learning, dtype=np.int64)]

    def to_ood_target(self, learning: np.ndarray) -> np.ndarray:
        """Learning ids -> 1 (OOD), 0 (ID), -1 (ignored)."""
        return self._ood_lut[np.asarray(learning, dtype=np.int64)]

    def train_to_raw(self, train: np.ndarray) -> np.ndarray:
        """Train ids -> raw ids (for writing predictions back in the dataset's own ids)."""
        lut = np.array([self.learning_map_inv[i] for i in self.train_learning_ids], dtype=np.uint32)
        return lut[np.asarray(train, dtype=np.int64)]


def _int_keys(d: dict, what: str, source: str) -> dict[int, int | str]:
    try:
        return {int(k): v for k, v in d.items()}
    except (TypeError, ValueError) as e:
        raise DataError(f"{source}: field '{what}' must map integer ids, got {d!r:.200}") from e


def load_label_map(name_or_path: str | Path) -> LabelMap:
    """Load a label map by name (``segood/labels/<name>.yaml``) or from a YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = LABEL_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in LABEL_DIR.glob("*.yaml"))
        raise DataError(f"{path}: label map not found (built-in maps: {known})")
    doc = yaml.safe_load(path.read_text())
    source = str(path)
    for key in ("learning_map", "learning_map_inv", "learning_names", "ood_learning_ids"):
        if key not in doc:
            raise DataError(f"{source}: missing field '{key}'")
    learning_map = {k: int(v) for k, v in _int_keys(doc["learning_map"], "learning_map", source).items()}
    names = {k: str(v) for k, v in _int_keys(doc["learning_names"], "learning_names", source).items()}
    inv = {k: int(v) for k, v in _int_keys(doc["learning_map_inv"], "learning_map_inv", source).items()}
    ignore = tuple(int(i) for i in doc.get("ignore_learning_ids", [0]))
    ood = tuple(int(i) for i in doc["ood_learning_ids"])
    anomaly_only = bool(doc.get("anomaly_only", False))  # no segmentation classes: scored for anomalies only
    undefined = sorted(set(learning_map.values()) - set(names))
    if undefined:
        raise DataError(f"{source}: learning ids {undefined} used in learning_map have no learning_names entry")
    raw_lut = np.full(max(learning_map) + 1, -1, dtype=np.int64)
    for raw, learn in learning_map.items():
        raw_lut[raw] = learn
    n_learn = max(names) + 1
    train_lut = np.full(n_learn, -1, dtype=np.int64)
    skip = set(names) if anomaly_only else set(ignore) | set(ood)
    for t, lid in enumerate(i for i in sorted(names) if i not in skip):
        train_lut[lid] = t
    ood_lut = np.zeros(n_learn, dtype=np.int64)
    ood_lut[list(ood)] = 1
    ood_lut[list(ignore)] = -1
    return LabelMap(
        name=str(doc.get("name", path.stem)),
        source=source,
        learning_map=learning_map,
        learning_map_inv=inv,
        learning_names=names,
        ignore_learning_ids=ignore,
        ood_learning_ids=ood,
        anomaly_only=anomaly_only,
        _raw_lut=raw_lut,
        _train_lut=train_lut,
        _ood_lut=ood_lut,
    )
