"""Data-set readers: files on disk -> :class:`~segood.data.scan.Scan`. :data:`READERS` is the only
place a reader is named; ``data.dataset`` in a config picks one.

A reader is built as ``cls(root, sequences, label_map, camera=..., with_labels=..., **data.reader_options)``
and follows :class:`segood.data.reader.Reader`; ``segood check-data`` (:func:`segood.data.check.check_reader`), the
training / evaluation loaders and ``segood viz --sequence`` use nothing else.

To add a dataset: write a reader class that follows :class:`~segood.data.reader.Reader` (a file in this package) and add
one line to :data:`READERS`; then ``data.dataset: <name>`` (with a label map) trains, evaluates,
checks and views it. Its options (``data.reader_options``) are the class attribute ``OPTIONS: dict[str, Opt]``
(default, type, range, doc; :mod:`segood.options`), the one place they are declared: config loading checks
them and ``segood config --show data`` lists them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from segood.data.labels import LabelMap
from segood.data.reader import Reader
from segood.data.readers.carla_ood import CarlaOodReader
from segood.data.readers.nuscenes import NuScenesReader  # imports the devkit only when used
from segood.data.readers.semantickitti import SemanticKittiReader
from segood.data.readers.stu import StuReader
from segood.options import OptionError, check_options

__all__ = ["Reader", "READERS", "reader_class", "open_reader"]


READERS: dict[str, type] = {
    "semantickitti": SemanticKittiReader,
    "nuscenes": NuScenesReader,
    "carla_ood": CarlaOodReader,
    "stu": StuReader,
    "semantickitti_ood": SemanticKittiReader,  # LIDO's SemanticKITTI-OoD: KITTI layout, label map semantickitti_ood
    "nuscenes_ood": SemanticKittiReader,       # LIDO's nuScenes-OoD: KITTI layout, label map nuscenes_ood
}


def reader_class(name: str) -> type:
    """The reader registered as ``name``; ConfigError lists the valid names."""
    from segood.config import ConfigError

    if name not in READERS:
        raise ConfigError(f"data.dataset: unknown dataset '{name}', expected one of {sorted(READERS)}")
    return READERS[name]


def reader_options(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data.reader_options`` checked against the reader's declaration (``cls.OPTIONS``, none when
    absent), the defaults filled in; an unknown option or a bad value is a ConfigError."""
    from segood.config import ConfigError

    try:
        return check_options("data.reader_options", data.get("reader_options"), getattr(cls, "OPTIONS", {}))
    except OptionError as e:
        raise ConfigError(str(e)) from None


def open_reader(data: dict[str, Any], sequences: list[str] | str, label_map: LabelMap, with_labels: bool = True,
                cache: dict | None = None) -> Reader:
    """The reader of ``data.dataset`` over ``sequences``, from a config's ``data`` section. ``cache``
    lets several readers of one root share what a reader's ``shared_options`` loads once."""
    from segood.config import resolve_path

    cls = reader_class(data["dataset"])
    root = resolve_path(data["root"])
    entries = [sequences] if isinstance(sequences, str) else [str(s) for s in sequences]
    options = reader_options(cls, data)
    if cache is not None and hasattr(cls, "shared_options"):
        options = cls.shared_options(Path(root), entries, options, cache, with_labels=with_labels)
    return cls(root, entries, label_map, camera=data["camera"], with_labels=with_labels, **options)
