"""How a training process uses this CPU: memory reuse, threads, image memory layout, mixed precision.

Each is a ``train:`` key of configs/base.yaml with a measured default (``segood bench train-step``
times every switch against the path without it, in one run):

- ``train.keep_freed_memory`` (exact): glibc returns every freed block above its mmap threshold (at
  most 32 MB) to the kernel, so a training step on ~120k points, whose activations are 30-60 MB
  each, page-faults all of them in again on every step. Raising the mmap and trim thresholds keeps
  freed memory in the heap for the next step (the process keeps its peak memory).
- ``train.threads`` (exact on the CPU): torch intra-op threads for the torch parts (``null``: torch's
  default). spconv's sparse U-Net always runs single-threaded (:mod:`segood.models.spconv_guard`).
- ``train.channels_last``: the image branch's convolutions in NHWC (oneDNN's native layout).
- numpy's BLAS at one thread in the training process and its data loader workers (exact; always):
  OpenBLAS's second thread spins for a while after every multi-threaded call and takes a core
  from torch, and the data pipeline's matmuls (projection, augmentation: (P, 3) x (3, 3)) gain
  nothing from it (:func:`segood.models.concurrency.set_numpy_blas_threads`).
- ``train.parallel_branches`` (exact): the encoders' forward and backward on two cores at once
  (:mod:`segood.engine.parallel_branches`; resolved by the trainer, not here).
- ``train.amp: bf16`` on the CPU where the CPU has native bf16 (AVX512-BF16 or AMX); refused with
  a clear message elsewhere. Losses, softmaxes and reductions stay fp32
  (:func:`segood.engine.step.to_fp32`), and so does the sparse U-Net (spconv has no CPU bf16).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

import torch

from segood.config import ConfigError
from segood.engine.interrupt import ignore_signals
from segood.models.concurrency import set_numpy_blas_threads

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap and stay there when freed
KEEP_TRIM_THRESHOLD = (1 << 31) - 1
# glibc's steady state after the first large free (its dynamic rule: mmap threshold = the freed
# block's size, at most 32 MB; trim threshold = twice that): what "off" restores
DEFAULT_MMAP_THRESHOLD = 32 << 20
DEFAULT_TRIM_THRESHOLD = 64 << 20
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def keep_freed_memory(on: bool) -> bool:
    """Keep freed memory in the heap (``on``) or return large blocks to the kernel as glibc does
    by default. Process-wide; exact (changes no number). Returns False where there is no glibc
    ``mallopt`` (then nothing changes)."""
    libc = _libc()
    if libc is None:
        return False
    mmap, trim = (KEEP_MMAP_THRESHOLD, KEEP_TRIM_THRESHOLD) if on else (DEFAULT_MMAP_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))


@functools.lru_cache(maxsize=None)
def cpu_bf16() -> tuple[bool, str]:
    """(this CPU computes bf16 natively, the flag found or why not), from /proc/cpuinfo."""
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("flags")), [])
    except OSError as e:
        return False, f"cannot read /proc/cpuinfo ({e})"
    found = [f for f in BF16_FLAGS if f in flags]
    if found:
        return True, found[0]
    return False, f"this CPU has none of the flags {', '.join(BF16_FLAGS)} (/proc/cpuinfo)"


def amp_settings(mode: str, device: torch.device, key: str = "train.amp") -> tuple[torch.dtype | None, bool]:
    """``train.amp`` (or the option ``key``) -> (autocast dtype or None, use a grad scaler).

    GPU: bf16, or fp16 with a grad scaler. CPU: bf16 where the CPU computes it natively; fp16, or
    bf16 on a CPU without it, is a ConfigError saying so."""
    if mode not in ("none", "bf16", "fp16"):
        raise ConfigError(f"{key}: unknown '{mode}', expected none, bf16 or fp16")
    if mode == "none":
        return None, False
    if device.type == "cuda":
        return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)
    if mode == "fp16":
        raise ConfigError(f"{key}: fp16 runs on a GPU only (device here: {device.type}); "
                          "use bf16 on a CPU with native bf16, or none")
    ok, why = cpu_bf16()
    if not ok:
        raise ConfigError(f"{key}: bf16 on the CPU needs native bf16 and {why}; set {key}: none")
    return torch.bfloat16, False


def set_channels_last(model: torch.nn.Module, on: bool) -> None:
    """The image branch's weights and inputs in NHWC (``on``) or NCHW. Values do not change."""
    image = getattr(model, "image", None)
    if image is None:
        return
    image.to(memory_format=torch.channels_last if on else torch.contiguous_format)
    image.channels_last = bool(on)


def apply_train_runtime(train_cfg: dict, model: torch.nn.Module) -> None:
    """Apply ``train.keep_freed_memory`` (None: leave the allocator alone), ``train.threads`` and
    ``train.channels_last``; numpy's BLAS at one thread (:func:`segood.models.concurrency.set_numpy_blas_threads`)."""
    set_numpy_blas_threads(1)
    if train_cfg["keep_freed_memory"] is not None:
        keep_freed_memory(bool(train_cfg["keep_freed_memory"]))
    threads = train_cfg["threads"]
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"train.threads: {threads!r}: expected an integer >= 1 or null")
        torch.set_num_threads(threads)
    set_channels_last(model, bool(train_cfg["channels_last"]))


def loader_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of segood's data loaders: SIGINT left to the owner
    (:func:`segood.engine.interrupt.ignore_signals`) and one numpy BLAS thread."""
    ignore_signals(worker_id)
    set_numpy_blas_threads(1)
