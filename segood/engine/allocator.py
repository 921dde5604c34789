"""Keep streaming evaluation's memory flat: glibc's malloc raises its mmap threshold every time a
large block is freed (up to 32 MiB), so the per-batch arrays of evaluation (scores, features,
logits: 0.4-25 MiB each) move from mmap to the heap, whose fragmented free space is not given
back; peak RSS then creeps up with the number of batches (413 -> 808 MiB from 10^6 to 10^7
points in `segood bench eval-memory`). A fixed threshold keeps such blocks mmapped, so each
is returned to the OS when freed."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20
_done = False


def bound_allocator(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold (once per process); False where there is no glibc (no-op)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    return _done
