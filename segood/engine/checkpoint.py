"""Checkpoints: written atomically (see :mod:`segood.atomic`), refused when truncated or foreign."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from segood.atomic import atomic_write

CHECKPOINT_FORMAT = "segood-checkpoint-v1"


def save_checkpoint(path: str | Path, state: dict) -> Path:
    state = {"format": CHECKPOINT_FORMAT, **state}
    return atomic_write(path, lambda p: torch.save(state, p))


def load_checkpoint(path: str | Path) -> dict:
    """Load a segood checkpoint; refuse truncated or foreign files with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, ...
        raise ValueError(f"{path}: not a readable checkpoint (truncated or corrupt?): {e}") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a segood checkpoint (expected format '{CHECKPOINT_FORMAT}')")
    return state


def file_sha256(path: str | Path, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]
