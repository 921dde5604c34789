"""Two background threads for replay: a generator read ahead, and calls run in order behind.

:class:`Prefetch` iterates a generator in a background thread, at most ``depth`` items ahead of
the consumer (replay: reading and decoding the next cloud while the model runs on this one).
:class:`InOrder` runs submitted calls one at a time in submission order in a background thread,
at most ``depth`` waiting (replay: encoding and writing the last frame's output, and passing the
other messages through, while the model runs on the next frame). Both are bounded, so memory stays
bounded when one side is slower; both hand the background thread's exception to the consumer (at
the next item / the next submit or at :meth:`InOrder.close`); both stop their thread on
:meth:`close` / :meth:`InOrder.abort`, also when the consumer fails. Each keeps the seconds the
consumer spent blocked on it (``waited``), the share of the work that the overlap did not hide.

Nothing here knows about torch: the background threads run Python and numpy code (rosbags,
OpenCV) that mostly releases the GIL in its large copies, decodes and writes. They run at a lower
scheduling priority (``BACKGROUND_NICE``, Linux): the model's two OpenMP threads wait for each
other at every parallel region, so a background thread that preempts one of them stalls both;
niced, the background work mostly fills the time a core would idle (it still gets the core when
the model waits for it).
"""
from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")
BACKGROUND_NICE = 10  # added to the background threads' nice value (Linux; elsewhere unchanged)
_END = object()
_POLL_S = 0.1  # how often a blocked put looks whether the other side has stopped


def _lower_priority() -> None:
    """Nice the calling thread by ``BACKGROUND_NICE`` (Linux: a thread is its own scheduling entity)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE)
    except (AttributeError, OSError):  # no setpriority on this platform, or not allowed: run as is
        pass


class _Failure:
    """An exception raised in the background thread, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetch(Generic[T]):
    """``iter(source)`` run in a background thread, at most ``depth`` items ahead; iterate this
    object instead. Its exception is raised in the consumer after the items before it. Use as a
    context manager (or call :meth:`close`) so that the thread stops when the consumer does."""

    def __init__(self, source: Iterable[T], depth: int = 2, name: str = "segood-prefetch") -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.waited = 0.0  # seconds the consumer waited for items
        self._thread = threading.Thread(target=self._run, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterable[T]) -> None:
        _lower_priority()
        it = iter(source)
        try:
            for item in it:
                if not self._put(item):
                    break
            else:
                self._put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(_Failure(e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # a generator is closed in the thread that ran it

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        t0 = time.perf_counter()
        item = self._queue.get()
        self.waited += time.perf_counter() - t0
        if item is _END:
            self._queue.put(_END)  # further calls end too
            raise StopIteration
        if isinstance(item, _Failure):
            self._queue.put(item)
            raise item.error
        return item

    def close(self) -> None:
        """Stop the thread (it finishes the item it is on) and wait for it."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Prefetch[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InOrder:
    """Calls run one at a time, in the order submitted, in a background thread; at most ``depth``
    wait. After a call fails no further call runs and the error is raised by the next
    :meth:`submit` or by :meth:`close`."""

    def __init__(self, depth: int = 8, name: str = "segood-writer") -> None:
        if depth < 1:
            raise ValueError(f"queue depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._aborted = threading.Event()
        self.waited = 0.0  # seconds the submitter was blocked (queue full, and close's drain)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        _lower_priority()
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if self._error is not None or self._aborted.is_set():
                continue  # drain without running: the consumer is told at its next submit / close
            fn, args = item
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the submitter
                self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; blocks while ``depth`` calls wait. Raises an earlier call's error."""
        self._raise()
        t0 = time.perf_counter()
        while True:
            try:
                self._queue.put((fn, args), timeout=_POLL_S)
                break
            except queue.Full:
                self._raise()
                if not self._thread.is_alive():
                    raise RuntimeError("the background writer thread has stopped")
        self.waited += time.perf_counter() - t0

    def close(self) -> None:
        """Run every queued call, stop the thread, and raise the first error of any call."""
        t0 = time.perf_counter()
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()
        self.waited += time.perf_counter() - t0
        self._raise()

    def abort(self) -> None:
        """Stop the thread without running the calls still queued (the consumer failed)."""
        self._aborted.set()
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()
