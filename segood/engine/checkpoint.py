"""Checkpoints and other torch files: written atomically (see :mod:`segood.atomic`), read with
``torch.load(weights_only=True)``, so a file from a stranger can hold tensors and plain Python
values (dict, list, tuple, str, int, float, bool, None) but never objects that run code when
unpickled. Truncated, foreign or code-carrying files are refused with a message naming the file.
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segood.atomic import atomic_write

CHECKPOINT_FORMAT = "segood-checkpoint-v1"
ALLOWED = "tensors, dicts, lists, tuples, strings, numbers, booleans and None"


def plain(obj: Any) -> Any:
    """``obj`` with numpy arrays and scalars turned into lists and Python numbers and paths into
    strings, so that ``torch.load(weights_only=True)`` can read it back. Tensors are kept, and a
    container none of whose items change is returned as is (a state dict keeps its metadata)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        items = {k: plain(v) for k, v in obj.items()}
        return obj if all(items[k] is v for k, v in obj.items()) else items
    if isinstance(obj, (list, tuple)):
        items = [plain(v) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return items if isinstance(obj, list) else tuple(items)
    return obj


def save_torch(path: str | Path, obj: Any) -> Path:
    """Write ``plain(obj)`` atomically with ``torch.save``."""
    obj = plain(obj)
    return atomic_write(path, lambda p: torch.save(obj, p))


def load_torch(path: str | Path, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file holding anything but tensors and
    plain values is refused before any of its code can run."""
    path = Path(path)
    check_torch_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        first = lines[0] if lines else type(e).__name__
        raise ValueError(
            f"{path}: refused to load this {what}: it holds Python objects other than {ALLOWED} "
            f"(nothing in it was executed). Detail: {first}. A file written by segood before "
            f"weights-only loading can be converted, if you trust it: python -c \"from "
            f"segood.engine.checkpoint import upgrade; upgrade('{path}')\"") from e
    except Exception as e:  # truncated zip, garbage, ...
        raise ValueError(f"{path}: not a readable {what} (truncated or corrupt?): {e}") from e


TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip (torch >= 1.6), the legacy pickle's protocol opcode


def check_torch_file(path: Path, what: str = "file") -> None:
    """Refuse a file that is no torch file at all (a text file named checkpoint.pt, an image...)
    before unpickling it, with what it starts with: pickle would read text as opcodes and call it
    a file of foreign Python objects."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head.startswith(TORCH_MAGIC):
        shown = f"it starts with {head.decode('utf-8', 'replace').splitlines()[0]!r}" if head.strip() else "it is empty"
        raise ValueError(f"{path}: not a {what}: not a file written by torch.save ({shown}; expected a zip "
                         "archive); a segood checkpoint is written by `segood train`")


def upgrade(path: str | Path) -> Path:
    """Rewrite a torch file saved by an older segood (numpy RNG states) in the weights-only form.
    This UNPICKLES the file, so it runs any code inside: only for files you made or trust."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=False)
    return save_torch(path, obj)


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write a checkpoint atomically (the ``format`` key marks it as segood's)."""
    return save_torch(path, {"format": CHECKPOINT_FORMAT, **state})


def load_checkpoint(path: str | Path) -> dict:
    """Load a segood checkpoint; refuse truncated, foreign or code-carrying files with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    state = load_torch(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a segood checkpoint (expected format '{CHECKPOINT_FORMAT}')")
    return state


def file_sha256(path: str | Path, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]
