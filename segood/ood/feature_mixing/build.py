"""Building and loading the Feature Mixing kernel library (``cuda_ext/``: shared math header, CPU
and CUDA sources) as ``torch.ops.segood.*``, with its autograd and fake-tensor registrations.

:func:`load_extension` builds on first use (cached per torch version and device kind) and says
whether the ops are usable; :func:`extension_reason` says why not. Callers fall back to the bit-exact
torch reference (:func:`segood.ood.feature_mixing.kernel.reference_feature_mixing`).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch

from segood.resources import resource_dir

_SRC_DIR = resource_dir("cuda_ext")  # top-level cuda_ext/ in a checkout, packaged in a wheel
_ext_state: dict[str, object] = {}  # "ok": bool, "reason": str; filled by load_extension


def build_dir(with_cuda: bool) -> Path:
    """Where the library for CPU (or CPU + CUDA) is built: ``$SEGOOD_EXT_DIR`` or the user cache."""
    base = os.environ.get("SEGOOD_EXT_DIR") or Path.home() / ".cache" / "segood" / "torch_extensions"
    return Path(base) / torch.__version__ / ("cuda" if with_cuda else "cpu")


def want_cuda() -> bool:
    """Build the .cu too: torch has CUDA, nvcc is found, and a GPU is present (or
    ``SEGOOD_EXT_CUDA=1``, for building on a machine without one)."""
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda is None or CUDA_HOME is None:
        return False
    return torch.cuda.is_available() or os.environ.get("SEGOOD_EXT_CUDA") == "1"


def _build(verbose: bool) -> None:
    with_cuda = want_cuda()
    sources = [_SRC_DIR / "bindings.cpp", _SRC_DIR / "feature_mixing_cpu.cpp"]
    if with_cuda:
        sources.append(_SRC_DIR / "feature_mixing_cuda.cu")
    folder = build_dir(with_cuda)
    folder.mkdir(parents=True, exist_ok=True)
    with _build_lock(folder):
        _load(with_cuda, sources, folder, verbose)


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """One segood build per directory at a time, with an OS lock (released when the process
    dies). torch's own ``lock`` file is not: a build killed mid-way (Ctrl-C, OOM) leaves it
    behind and every later ``load`` waits on it forever. Holding our lock, any such file is
    stale, so it is removed (with a warning)."""
    import fcntl

    with open(build_dir / ".segood-build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = build_dir / "lock"
            if stale.exists():
                warnings.warn(f"segood: removing {stale}, left by an interrupted extension build",
                              RuntimeWarning, stacklevel=4)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load(with_cuda: bool, sources: list[Path], build_dir: Path, verbose: bool) -> None:
    from torch.utils.cpp_extension import load

    # is_python_module=False: a plain op library (no pybind, no Python ABI), loaded with
    # torch.ops.load_library; the ops appear as torch.ops.segood.*.
    # -fopenmp: at::parallel_for is an inline `#pragma omp parallel` (torch's CPU backend is
    # OpenMP); without the flag the pragma is ignored and the CPU kernel runs on one thread.
    # The library then links libgomp.so.1, the soname torch has already loaded.
    load(name="segood_fm_cuda" if with_cuda else "segood_fm_cpu", sources=[str(s) for s in sources],
         build_directory=str(build_dir), extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
         extra_cuda_cflags=["-O3"], extra_include_paths=[str(_SRC_DIR)],
         is_python_module=False, verbose=verbose)


def _register_python_side() -> None:
    """Autograd (the swap is its own transpose, so backward = the backward op on the grads,
    whose own backward is the forward op) and fake tensors for torch.compile."""
    lib = "segood::feature_mixing"

    def make_backward(op):
        def backward(ctx, grad_c, grad_l):
            if grad_c is None:
                grad_c = torch.zeros(ctx.shape_c, dtype=ctx.dtype, device=ctx.device)
            if grad_l is None:
                grad_l = torch.zeros(ctx.shape_l, dtype=ctx.dtype, device=ctx.device)
            grad_c, grad_l = grad_c.contiguous(), grad_l.contiguous()
            gc, gl = op(grad_c, grad_l, ctx.mask, ctx.n_swap, ctx.seed, ctx.step)
            return gc, gl, None, None, None, None
        return backward

    def setup_context(ctx, inputs, output):
        c, l, ctx.mask, ctx.n_swap, ctx.seed, ctx.step = inputs
        ctx.shape_c, ctx.shape_l, ctx.dtype, ctx.device = c.shape, l.shape, c.dtype, c.device

    ops = torch.ops.segood
    torch.library.register_autograd(lib, make_backward(ops.feature_mixing_backward),
                                    setup_context=setup_context)
    torch.library.register_autograd(lib + "_backward", make_backward(ops.feature_mixing),
                                    setup_context=setup_context)
    for name in (lib, lib + "_backward"):
        torch.library.register_fake(name)(
            lambda c, l, mask, n_swap, seed, step: (torch.empty_like(c), torch.empty_like(l)))
    torch.library.register_fake(lib + "_into")(lambda c, l, mask, n_swap, seed, step, out_c, out_l: None)


def has_kernel(device: torch.device) -> bool:
    """The loaded library has a kernel for ``device`` (e.g. False for CUDA tensors when the
    extension was built without nvcc); warns once per device type when it has not."""
    key = device.type
    if key not in _ext_state.setdefault("devices", {}):
        try:
            has = torch._C._dispatch_has_kernel_for_dispatch_key(
                "segood::feature_mixing", {"meta": "Meta", "mps": "MPS"}.get(key, key.upper()))
        except RuntimeError:  # not a dispatch key name
            has = False
        _ext_state["devices"][key] = has
        if not has:
            warnings.warn(f"segood: Feature Mixing extension has no {key} kernel (built without it); "
                          "using the torch reference", RuntimeWarning, stacklevel=3)
    return bool(_ext_state["devices"][key])


def load_extension(verbose: bool = False) -> bool:
    """Build (first use; cached) and load the kernel; True when ``torch.ops.segood`` is usable.

    Build dir: ``$SEGOOD_EXT_DIR`` or ``~/.cache/segood/torch_extensions``, then
    ``<torch version>/{cpu,cuda}``. ``SEGOOD_FM_EXT=0`` skips the extension. On failure,
    warns once and returns False (callers then use :func:`reference_feature_mixing`).
    """
    if "ok" in _ext_state:
        return bool(_ext_state["ok"])
    try:
        if os.environ.get("SEGOOD_FM_EXT") == "0":
            raise RuntimeError("disabled by SEGOOD_FM_EXT=0")
        if not hasattr(torch.ops.segood, "feature_mixing"):  # not loaded by someone else already
            _build(verbose)
        _register_python_side()
        _ext_state.update(ok=True, reason="")
    except Exception as exc:  # noqa: BLE001 - any build/load failure means: use the reference
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        _ext_state.update(ok=False, reason=reason)
        warnings.warn(f"segood: Feature Mixing extension unavailable ({reason}); using the torch reference",
                      RuntimeWarning, stacklevel=2)
    return bool(_ext_state["ok"])


def extension_reason() -> str:
    """Why the extension is not in use ('' when it is, or before :func:`load_extension` ran)."""
    return str(_ext_state.get("reason", ""))
