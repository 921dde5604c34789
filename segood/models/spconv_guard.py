"""Guards around the two CPU traps of spconv 2.3.8.

1. Backward on CPU asks ``torch.cuda.current_stream()`` for a stream handle and
   crashes on CPU-only torch builds (spconv issue #366).  When CUDA is not
   available we patch ``get_current_stream`` to return 0 (the "default stream"
   value the CPU kernels ignore) in every spconv module that imported it.
2. With more than one torch intra-op thread, spconv's CPU kernels race and
   return WRONG numbers (silently).  Every spconv call on CPU must therefore run
   with ``torch.set_num_threads(1)``; :func:`single_thread` does that for a
   block, and :func:`run_sparse` runs a whole sparse sub-network so that both
   its forward and its (later, autograd-driven) backward are single-threaded.

Import this module before calling spconv (``segood.models`` does it).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from typing import Callable, Iterator, Sequence

import torch

_STREAM_MODULES = (
    "spconv.pytorch.cppcore",
    "spconv.pytorch.ops",
    "spconv.pytorch.hash",
    "spconv.pytorch.utils",
)
_patched = False
FX_NOTICE = "is_fx_tracing will return true for both fx.symbolic_trace and torch.export"


class _DropFxTracingNotice(logging.Filter):
    """Drops torch's one deprecation notice that spconv triggers on every run (spconv calls
    ``torch.fx._symbolic_trace.is_fx_tracing``); every other torch.fx message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(FX_NOTICE)


logging.getLogger("torch.fx._symbolic_trace").addFilter(_DropFxTracingNotice())


def _cpu_stream() -> int:
    """Stream handle used on CPU: 0, which spconv's CPU paths ignore."""
    return 0


def patch_spconv_stream() -> bool:
    """Make spconv's ``get_current_stream`` return 0 when CUDA is unavailable.

    Idempotent. Returns True when the patch is (or already was) applied.
    """
    global _patched
    if _patched:
        return True
    if torch.cuda.is_available():
        return False
    for name in _STREAM_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # spconv absent or layout changed: nothing to patch
            continue
        if hasattr(module, "get_current_stream"):
            module.get_current_stream = _cpu_stream
    _patched = True
    return True


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread, then restore the old count."""
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _needs_guard(tensor: torch.Tensor) -> bool:
    """The thread race only exists on CPU tensors."""
    return tensor.device.type == "cpu"


class _SingleThreadFunction(torch.autograd.Function):
    """Runs ``fn(features)`` single-threaded; its backward is single-threaded too.

    Forward builds the inner autograd graph of ``fn`` on detached inputs (under
    ``enable_grad``) and keeps it; backward differentiates that inner graph with
    ``torch.autograd.grad`` inside :func:`single_thread` and hands the gradients
    of the features and of every parameter back to the outer graph.  So the
    outer autograd sees ordinary gradients (works with ``.backward()``,
    ``torch.autograd.grad`` and gradient hooks) and nothing is recomputed.
    """

    @staticmethod
    def forward(ctx, fn, features, *params):  # type: ignore[override]
        inner_in = features.detach().requires_grad_(features.requires_grad)
        with torch.enable_grad(), single_thread():
            out = fn(inner_in)
        ctx.inner = (inner_in, out)
        ctx.params = params
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        inner_in, out = ctx.inner
        wanted = [inner_in] if inner_in.requires_grad else []
        wanted += [p for p in ctx.params if p.requires_grad]
        with single_thread():
            grads = torch.autograd.grad(out, wanted, grad_out, allow_unused=True)
        grads = list(grads)
        grad_in = grads.pop(0) if inner_in.requires_grad else None
        grad_params = [grads.pop(0) if p.requires_grad else None for p in ctx.params]
        del ctx.inner
        return (None, grad_in, *grad_params)


def run_sparse(
    fn: Callable[[torch.Tensor], torch.Tensor],
    features: torch.Tensor,
    params: Sequence[torch.nn.Parameter],
) -> torch.Tensor:
    """Evaluate a sparse sub-network ``fn(features) -> tensor`` safely on CPU.

    ``params`` must list every parameter ``fn`` uses (e.g. ``module.parameters()``),
    so that their gradients reach the outer graph.  On CUDA, or when no gradient
    is needed, this is a plain call (wrapped in :func:`single_thread` on CPU).
    """
    if not _needs_guard(features):
        return fn(features)
    needs_grad = torch.is_grad_enabled() and (
        features.requires_grad or any(p.requires_grad for p in params)
    )
    if not needs_grad:
        with single_thread():
            return fn(features)
    return _SingleThreadFunction.apply(fn, features, *params)


patch_spconv_stream()
