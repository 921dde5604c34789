"""Run two torch callables at the same time on a CPU, each with its own intra-op thread count.

Why: on a small CPU the sparse U-Net (spconv) must run single-threaded (its CPU kernels race with
more than one thread, :mod:`segood.models.spconv_guard`), so while it runs the other cores idle.
:func:`run_concurrently` runs ``main`` (e.g. the LiDAR branch) in the calling thread and ``side``
(e.g. the image branch) in one persistent worker thread, at the same time; the process's torch
thread budget is split between them (``main`` gets ``main_threads``, ``side`` the rest).

Why this is safe with spconv, although ``torch.set_num_threads`` looks process-wide:

- With torch's OpenMP backend (the CPU wheels; :func:`supported` checks it) the thread count that
  an operator uses is the OpenMP ``nthreads`` ICV of the thread that calls it, and that ICV is
  per thread: ``torch.set_num_threads(n)`` sets it for the calling thread only (plus MKL's
  thread-local count). What is process-wide is torch's remembered default, which only threads that
  run their first operator later start from. So the caller's count and the worker's count do not
  affect each other, and spconv, which runs only in the caller, sees exactly the count the caller
  set (1 for the LiDAR branch: the same as spconv's guard sets).
- Every ``set_num_threads`` of the worker happens before :func:`run_concurrently` has waited for it;
  the caller restores its own count only after that wait, so the remembered default ends where it
  began, and so does the caller's count, also when either callable raises.
- With another parallel backend (native thread pool: one pool for the process) the counts would be
  shared; :func:`run_concurrently` then runs the two one after the other, unchanged.

The worker runs under the caller's grad / inference mode and CPU autocast state (all thread-local
in torch, so they would otherwise be off there). Both callables must not write to tensors the other
reads (two branches of one model reading the same weights and batch: fine).
"""
from __future__ import annotations

import contextlib
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, TypeVar

import torch

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # a declared dependency; the GPU check's machine installs nothing: BLAS left as it is
    threadpool_limits = None

A = TypeVar("A")
B = TypeVar("B")

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def supported() -> bool:
    """True when torch's intra-op thread count is per calling thread (the OpenMP backend)."""
    return "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


def _worker() -> ThreadPoolExecutor:
    """The one persistent worker thread (created on first use; it lives as long as the process)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segood-branch")
        return _executor


def _in_caller_state(fn: Callable[[], B], threads: int) -> Callable[[], B]:
    """``fn`` wrapped to run in another thread with ``threads`` torch threads and the calling
    thread's grad / inference mode and CPU autocast state."""
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
    autocast, dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

    def run() -> B:
        torch.set_num_threads(threads)
        mode = torch.inference_mode() if inference else torch.set_grad_enabled(grad)
        with mode, torch.autocast("cpu", dtype=dtype, enabled=autocast):
            return fn()

    return run


def run_concurrently(main: Callable[[], A], side: Callable[[], B], main_threads: int = 1) -> tuple[A, B]:
    """``(main(), side())``, run at the same time: ``main`` in the calling thread with
    ``main_threads`` torch threads, ``side`` in the worker thread with the rest of the caller's
    count (at least 1). Sequential (the caller's thread count for both) when torch's thread counts
    are not per thread (:func:`supported`). Whether two at once pay is the caller's decision (the
    predictor and ``train.parallel_branches`` use it with two or more torch threads; at one thread
    it still runs both at once, one thread each, which is how the tests compare it bit for bit
    with the sequential path).

    The caller's thread count is restored afterwards; an exception of ``main`` is raised after
    ``side`` has finished, else one of ``side``. Not from inside ``side`` (one worker: it would
    wait for itself)."""
    total = torch.get_num_threads()
    if not supported():
        return main(), side()
    future = _worker().submit(_in_caller_state(side, max(total - main_threads, 1)))
    torch.set_num_threads(main_threads)
    try:
        first: Any = main()
    finally:
        try:
            future.exception()  # wait for the worker whatever happened here: it reads the same weights
        finally:
            torch.set_num_threads(total)
    return first, future.result()


@contextlib.contextmanager
def numpy_blas_threads(threads: int) -> Iterator[None]:
    """numpy's BLAS (OpenBLAS; torch has its own MKL, untouched) limited to ``threads`` for the
    block, process-wide (threadpoolctl). Why: after a call on two threads, OpenBLAS's second thread
    spins waiting for more work and takes a core from torch; one small matmul per frame (the camera
    projection) slowed ``segood replay``'s LiDAR and image stages by ~30 % on 2 cores. One thread
    computes the same numbers (each row's dot product is the same)."""
    if threadpool_limits is None:
        yield
        return
    with threadpool_limits(threads, user_api="blas"):
        yield


def set_numpy_blas_threads(threads: int) -> None:
    """:func:`numpy_blas_threads` for the rest of the process (a training process and its data
    loader workers, a benchmark)."""
    if threadpool_limits is not None:
        threadpool_limits(threads, user_api="blas")
