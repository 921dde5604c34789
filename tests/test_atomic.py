"""Atomic writes: the umask's permissions (not mkstemp's 0600), the folder fsynced after the rename,
no temporary file left behind, and the previous file kept when the writer fails."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from segood.atomic import atomic_write, current_umask, write_json, write_text


@pytest.fixture
def umask():
    """Set a umask for one test, restore the previous one after it."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_get_the_permissions_of_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask
    for p in (write_text(tmp_path / "a.txt", "x"), write_json(tmp_path / "b.json", {"a": 1}),
              atomic_write(tmp_path / "c.bin", lambda p: p.write_bytes(b"123"))):
        assert stat.S_IMODE(p.stat().st_mode) == mode, p
    with open(tmp_path / "plain.txt", "w"):  # what an ordinary open() gives
        pass
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == mode


def test_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(a, b):
        events.append("rename")
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text(tmp_path / "a.txt", "x")
    assert events == ["fsync file", "rename", "fsync dir"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_text(tmp_path / "a.txt", "old")

    def broken(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
