"""Open, list and write bags of every format with the pure-Python ``rosbags`` package.

Formats: ``ros1`` (a ``.bag`` file), ``sqlite3`` and ``mcap`` (ROS 2: a folder with ``metadata.yaml``,
or a bare ``.db3`` / ``.mcap`` file). Reading goes through ``rosbags.highlevel.AnyReader``, which
uses the message definitions stored in the bag (ROS 2 bags without them fall back to Humble's).

:class:`BagWriter` writes to a temporary path beside the target and renames it into place when the
``with`` block ends without an exception, so a crash never leaves a half-written bag under the
target name. It copies connections verbatim (same message definition and hash), so original topics
can be passed through as raw bytes without deserialising them.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rosbags.highlevel import AnyReader
from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Writer2
from rosbags.typesys import Stores, get_typestore

from segood.atomic import fsync_dir

ROS1, SQLITE3, MCAP = "ros1", "sqlite3", "mcap"
FORMAT_NAMES = {ROS1: "ROS 1 (.bag)", SQLITE3: "ROS 2 sqlite3 (.db3)", MCAP: "ROS 2 MCAP (.mcap)"}
_SUFFIX = {".bag": ROS1, ".db3": SQLITE3, ".mcap": MCAP}
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"


class BagError(ValueError):
    """A bag that cannot be read or written, or a topic that is not in it; names the file."""


def typestore_for(fmt: str) -> Any:
    """The typestore used to build new messages: ROS 1 Noetic for ``.bag``, ROS 2 Humble otherwise."""
    return get_typestore(Stores.ROS1_NOETIC if fmt == ROS1 else Stores.ROS2_HUMBLE)


def detect_format(path: str | Path) -> str:
    """``ros1`` / ``sqlite3`` / ``mcap`` from the file suffix or the ROS 2 folder's contents."""
    p = Path(path)
    if p.is_dir():
        meta = p / "metadata.yaml"
        if meta.is_file():
            text = meta.read_text(errors="replace")
            for fmt in (MCAP, SQLITE3):
                if f"storage_identifier: {fmt}" in text:
                    return fmt
        for suffix in (".mcap", ".db3"):
            if any(p.glob(f"*{suffix}")):
                return _SUFFIX[suffix]
        raise BagError(f"{p}: folder is not a ROS 2 bag (no metadata.yaml, .db3 or .mcap file inside)")
    if p.suffix in _SUFFIX:
        return _SUFFIX[p.suffix]
    raise BagError(f"{p}: unknown bag format '{p.suffix}' (expected .bag, .db3, .mcap or a ROS 2 bag folder)")


@contextmanager
def open_bag(path: str | Path) -> Iterator[AnyReader]:
    """An open ``AnyReader`` on one bag; any failure to open is a BagError naming the file and the reason."""
    p = Path(path)
    if not p.exists():
        raise BagError(f"{p}: bag not found")
    fmt = detect_format(p)
    reader = AnyReader([p], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
    try:
        reader.open()
    except Exception as e:  # rosbags raises several unrelated types (ReaderError, KeyError, struct.error...)
        raise BagError(f"{p}: not a readable {FORMAT_NAMES[fmt]} bag ({type(e).__name__}: {e})") from e
    try:
        yield reader
    finally:
        reader.close()


def messages(reader: AnyReader, connections: list | None = None, start: int | None = None,
             stop: int | None = None) -> Iterator[tuple[Any, int, bytes]]:
    """``reader.messages`` with read errors (corrupt chunk, truncated file) turned into BagError."""
    it = reader.messages(connections=connections or (), start=start, stop=stop)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as e:
            raise BagError(f"{reader.paths[0]}: read error ({type(e).__name__}: {e})") from e
        yield item


def topics(reader: AnyReader) -> dict[str, str]:
    """Topic -> message type, in the bag's connection order."""
    out: dict[str, str] = {}
    for c in reader.connections:
        out.setdefault(c.topic, c.msgtype)
    return out


def describe_topics(reader: AnyReader) -> str:
    counts: dict[str, int] = {}
    for c in reader.connections:
        counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
    return "; ".join(f"{t} [{m}, {counts[t]} msgs]" for t, m in topics(reader).items()) or "(no topics)"


def resolve_topic(reader: AnyReader, topic: str | None, msgtypes: tuple[str, ...], what: str) -> str:
    """The given topic after checking it exists with one of ``msgtypes``; None = the first such topic."""
    found = topics(reader)
    if topic is None:
        for t, m in found.items():
            if m in msgtypes:
                return t
        raise BagError(f"{reader.paths[0]}: no {what} topic ({' or '.join(msgtypes)}); topics: {describe_topics(reader)}")
    if topic not in found:
        raise BagError(f"{reader.paths[0]}: topic '{topic}' does not exist; topics: {describe_topics(reader)}")
    if found[topic] not in msgtypes:
        raise BagError(f"{reader.paths[0]}: topic '{topic}' has type {found[topic]}, expected {' or '.join(msgtypes)}")
    return topic


def connections_of(reader: AnyReader, topic: str) -> list:
    return [c for c in reader.connections if c.topic == topic]


def output_format(in_fmt: str, out: Path) -> tuple[str, bool]:
    """(format, bare file?) of the output: same family as the input; the suffix of OUT may pick
    ``.db3`` / ``.mcap`` as a bare file (ROS 2), otherwise a ROS 2 folder with the input's storage."""
    suffix_fmt = _SUFFIX.get(out.suffix)
    if in_fmt == ROS1:
        if suffix_fmt != ROS1:
            raise BagError(f"{out}: a ROS 1 input is written as a ROS 1 bag; name the output '*.bag'")
        return ROS1, True
    if suffix_fmt == ROS1:
        raise BagError(f"{out}: a ROS 2 input cannot be written as a ROS 1 .bag (use rosbags-convert)")
    return (suffix_fmt, True) if suffix_fmt else (in_fmt, False)


class BagWriter:
    """Writes a bag atomically: to a hidden temporary path beside ``path``, renamed on success.

    ``fmt`` is ros1 / sqlite3 / mcap; ``bare`` writes a single ``.db3`` / ``.mcap`` file instead of a
    ROS 2 folder. An existing ``path`` is refused unless ``overwrite``.
    """

    def __init__(self, path: str | Path, fmt: str, bare: bool = False, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.fmt = fmt
        self.bare = bare or fmt == ROS1
        self.overwrite = overwrite
        self.typestore = typestore_for(fmt)
        self._tmpdir = self.path.parent / f".{self.path.name}.tmp{os.getpid()}"
        # rosbags names a ROS 2 storage file after its folder: folder 'x' -> 'x/x.mcap'
        self._tmp = self._tmpdir / (self.path.stem if self.bare and fmt != ROS1 else self.path.name)
        self._writer: Any = None
        self._copied: dict[tuple, Any] = {}

    def __enter__(self) -> BagWriter:
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(f"{self.path}: output exists; pass --overwrite to replace it")
        _remove(self._tmpdir)
        self._tmpdir.mkdir(parents=True)
        try:
            if self.fmt == ROS1:
                self._writer = Writer1(self._tmp)
            else:
                plugin = StoragePlugin.MCAP if self.fmt == MCAP else StoragePlugin.SQLITE3
                self._writer = Writer2(self._tmp, version=9, storage_plugin=plugin)
            self._writer.open()
        except Exception as e:
            _remove(self._tmpdir)
            raise BagError(f"{self.path}: cannot write a {FORMAT_NAMES[self.fmt]} bag ({e})") from e
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._writer.abort()
            _remove(self._tmpdir)
            return
        try:
            self._writer.close()
            src = self._tmp
            if self.bare and self.fmt != ROS1:  # the storage file alone, out of the folder rosbags writes
                src = self._tmp / self.path.name
            old = None
            if self.path.is_dir() or (self.path.exists() and src.is_dir()):  # rename cannot replace a folder
                old = self.path.parent / f".{self.path.name}.old{os.getpid()}"
                os.replace(self.path, old)
            os.replace(src, self.path)  # atomic for files
            fsync_dir(self.path.parent)  # make the new name durable
            if old is not None:
                _remove(old)
        finally:
            _remove(self._tmpdir)

    def copy_connection(self, conn: Any, reader_typestore: Any = None) -> Any:
        """An output connection identical to ``conn`` (same type definition and hash): raw bytes of
        ``conn``'s messages can be written to it unchanged. Duplicate input connections share one."""
        if self.fmt == ROS1:
            key = (conn.topic, conn.msgtype, conn.ext.callerid)
            if key not in self._copied:
                self._copied[key] = self._writer.add_connection(
                    conn.topic, conn.msgtype, msgdef=conn.msgdef.data, md5sum=conn.digest,
                    callerid=conn.ext.callerid, latching=conn.ext.latching)
            return self._copied[key]
        key = (conn.topic, conn.msgtype, conn.ext.serialization_format)
        if key not in self._copied:
            kw: dict[str, Any] = {"serialization_format": conn.ext.serialization_format,
                                  "offered_qos_profiles": conn.ext.offered_qos_profiles}
            if conn.msgdef.data and conn.digest:
                kw.update(msgdef=conn.msgdef.data, rihs01=conn.digest)
            else:  # older ROS 2 bags store no definitions: take them from the reader's typestore
                kw["typestore"] = reader_typestore or self.typestore
            self._copied[key] = self._writer.add_connection(conn.topic, conn.msgtype, **kw)
        return self._copied[key]

    def add_connection(self, topic: str, msgtype: str) -> Any:
        """A new connection whose type definition comes from this writer's typestore."""
        return self._writer.add_connection(topic, msgtype, typestore=self.typestore)

    def serialize(self, msg: Any, msgtype: str) -> bytes:
        if self.fmt == ROS1:
            return self.typestore.serialize_ros1(msg, msgtype)
        return self.typestore.serialize_cdr(msg, msgtype)

    def write(self, conn: Any, timestamp: int, data: bytes | memoryview) -> None:
        self._writer.write(conn, int(timestamp), data)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
