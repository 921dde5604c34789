"""Stopping cleanly on SIGINT (Ctrl-C) and SIGTERM (a scheduler, ``kill``).

While a :class:`StopRequest` is active, the first of these signals is only recorded: the trainer
finishes the step it is in, writes a checkpoint (atomically) and raises :class:`Interrupted`,
whose ``exit_code`` is the shell's convention for a signal (128 + number: 130 for SIGINT, 143 for
SIGTERM). Requests nest (a study worker holds one around train + eval, the trainer its own): a
signal is recorded in every active request, and an inner request starts with what the outer one
already received. Later signals are recorded too but change nothing; SIGKILL still stops at once
(``--resume`` then continues from the last checkpoint written before it).
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Callable

__all__ = ["SIGNALS", "Interrupted", "StopRequest", "requested", "request_stop", "exit_code", "ignore_signals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_ACTIVE: list["StopRequest"] = []


def exit_code(signum: int) -> int:
    """The exit status a shell gives a process stopped by ``signum`` (130 SIGINT, 143 SIGTERM)."""
    return 128 + int(signum)


class Interrupted(Exception):
    """A run stopped on a signal after writing what it needs to resume; ``str()`` says where."""

    def __init__(self, signum: int, message: str, step: int | None = None):
        super().__init__(message)
        self.signum, self.step = int(signum), step

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class StopRequest:
    """Context manager: while active (in the main thread), SIGINT / SIGTERM set ``signum`` instead
    of stopping the process. ``note`` is written to stderr once, when the first signal arrives;
    ``on_signal(signum)`` is called for every signal (a study tells its workers)."""

    def __init__(self, note: str = "", on_signal: Callable[[int], None] | None = None):
        self.note, self.on_signal = note, on_signal
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if _ACTIVE:
            self.signum = _ACTIVE[-1].signum
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, _record) for s in SIGNALS}
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _received(self, signum: int) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if first and self.note:
            os.write(2, f"\n{signal.Signals(signum).name} received: {self.note}\n".encode())
        if self.on_signal is not None:
            self.on_signal(signum)


def request_stop(signum: int) -> None:
    """Record ``signum`` in every active request, as if the signal had arrived (a study worker's
    watcher thread calls this when the study itself was signalled)."""
    for request in list(_ACTIVE):
        request._received(signum)


def _record(signum: int, frame) -> None:
    request_stop(signum)


def requested() -> int | None:
    """The signal the innermost active request received (None: none, or no request active)."""
    return _ACTIVE[-1].signum if _ACTIVE else None


def ignore_signals(*_args) -> None:
    """For helper processes (DataLoader workers): leave SIGINT / SIGTERM to the process that owns
    them, which stops them itself after its current step (a Ctrl-C reaches the whole process
    group, and a worker that died of it would fail the step that is being finished)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
