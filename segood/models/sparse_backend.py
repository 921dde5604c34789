"""Which sparse-convolution implementation the LiDAR U-Net uses (``model.lidar.backend``).

- ``spconv``: spconv 2.3 (imported only when chosen). On the CPU its kernels race with more than
  one thread, so the whole sparse network runs single-threaded (:mod:`segood.models.spconv_guard`).
- ``torch``: :mod:`segood.models.sparse_torch`, torch ops only, any device, race-free with any
  number of threads.
- ``auto``: spconv when it is importable and can run where the model will (a CPU, or a GPU with
  spconv's CUDA build); otherwise ``torch`` (no spconv installed, as on the GPU check machine, or
  a GPU with a CPU-only spconv). Why spconv stays first on the CPU: measured on the 2-core
  development machine (demo model, one run, variants interleaved, ``segood bench sparse-backends``),
  the torch backend is on par with spconv at one thread but loses at two threads when the
  machine is oversubscribed (its ~30 small ops per conv each pay an OpenMP barrier), while
  spconv's guard keeps its sparse part single-threaded; see DEVELOPERS.md for the figures.

Both backends have the same parameter names and shapes, so a checkpoint trained with one loads
into a model built with the other. A checkpoint's config keeps ``auto`` unresolved, so it is
resolved again where the checkpoint is loaded (torch on a machine without spconv).
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Callable, Sequence

import torch

BACKENDS = ("auto", "spconv", "torch")


@functools.lru_cache(maxsize=None)
def spconv_status() -> tuple[bool, bool, str]:
    """(importable, built with CUDA, why not importable). Imports spconv once, on first call."""
    try:
        import spconv.pytorch  # noqa: F401
        from spconv.cppconstants import CPU_ONLY_BUILD
    except Exception as err:  # ImportError, or a broken binary wheel (OSError, RuntimeError)
        return False, False, f"{type(err).__name__}: {err}"
    return True, not bool(CPU_ONLY_BUILD), ""


def resolve_backend(name: str) -> str:
    """``auto`` | ``spconv`` | ``torch`` -> ``spconv`` or ``torch`` (see the module docstring).

    Raises ValueError for an unknown name, and RuntimeError when ``spconv`` is asked for but
    cannot be imported (naming the config key that avoids it)."""
    if name not in BACKENDS:
        raise ValueError(f"model.lidar.backend must be one of {list(BACKENDS)}, got {name!r}")
    if name == "torch":
        return "torch"
    importable, has_cuda, why = spconv_status()
    if name == "spconv":
        if not importable:
            raise RuntimeError(f"model.lidar.backend is 'spconv' but spconv cannot be imported ({why}); "
                               f"set model.lidar.backend to 'torch' or 'auto'")
        return "spconv"
    if not importable:
        return "torch"
    return "spconv" if has_cuda or not torch.cuda.is_available() else "torch"


def sparse_ops(backend: str) -> ModuleType:
    """The module with ``SubMConv3d, SparseConv3d, SparseInverseConv3d, SparseSequential,
    SparseConvTensor`` for a resolved backend (spconv gets its CPU guards applied first)."""
    if backend == "spconv":
        from segood.models import spconv_guard

        spconv_guard.patch_spconv_stream()
        import spconv.pytorch as spconv

        return spconv
    if backend == "torch":
        from segood.models import sparse_torch

        return sparse_torch
    raise ValueError(f"unresolved sparse backend {backend!r}")


def run_sparse(backend: str, fn: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor,
               params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """``fn(features)``: through spconv's single-thread guard for spconv, a plain call for torch."""
    if backend == "spconv":
        from segood.models.spconv_guard import run_sparse as guarded

        return guarded(fn, features, params)
    return fn(features)
