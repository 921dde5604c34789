"""Error messages for people: the one line that says what is wrong, without tracebacks that
torch's DataLoader packs into exceptions re-raised from its worker processes."""
from __future__ import annotations

import re

_WORKER = "\nOriginal Traceback (most recent call last):\n"


def user_message(exc: BaseException) -> str:
    """``str(exc)``; for an exception re-raised from a DataLoader worker (whose message is
    "Caught X in DataLoader worker process N" + the worker's traceback), only the original
    message, prefixed with the worker it came from."""
    text = str(exc)
    if _WORKER not in text:
        return text
    head, tb = text.split(_WORKER, 1)
    name = re.escape(type(exc).__name__)
    last = None
    for m in re.finditer(rf"^(?:[\w.]+\.)?{name}: ", tb, flags=re.MULTILINE):
        last = m
    if last is None:
        return text
    where = head.removeprefix(f"Caught {type(exc).__name__} in ").rstrip(".")
    return f"{tb[last.end():].rstrip()} (in {where})"
