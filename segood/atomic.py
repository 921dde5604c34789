"""Atomic file writes: a crash mid-write leaves the previous file intact. A leaf module, usable
from every layer (checkpoints, metrics, pictures, bag outputs).

The new file gets the permissions an ordinary ``open()`` would give it under the process umask
(``mkstemp`` alone would leave every output 0600, unreadable by colleagues sharing a run folder),
and the folder is fsynced after the rename so that the new name itself survives a power cut.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def current_umask() -> int:
    """The process umask (Linux: read from /proc without touching it; else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder so that a rename into it is durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file in the target folder, give it the umask's
    permissions, fsync it, rename it over ``path`` (atomic on POSIX within one file system), then
    fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~current_umask())
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


class OutputError(ValueError):
    """An output location that cannot be written (said before any work starts)."""


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Raise :class:`OutputError` naming ``folder`` unless files can be created in it (or, when it
    does not exist yet, in the nearest existing folder above it, where it would be made): checked
    before hours of work, not after. Probes with a temporary file, so read-only mounts and
    permissions are found whoever runs it."""
    folder = Path(folder)
    base = folder
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise OutputError(f"{folder}: cannot write this {what}: {base} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        raise OutputError(f"{folder}: cannot write this {what}: {e.strerror or e} in {base}") from e
    return folder
