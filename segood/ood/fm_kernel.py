"""Feature Mixing backed by the ``cuda_ext`` kernel, with a bit-exact pure-torch fallback.

The kernel (``cuda_ext/``: shared math header, CPU and CUDA sources) swaps ``n_swap`` random
dims between each selected point's image and LiDAR features. Its randomness is a counter-based
RNG, so results depend only on ``(seed, step, row index)`` and are identical on CPU and GPU:

* one Philox4x32-10 block per row and modality: key = (seed_lo, seed_hi), counter = (row_lo,
  row_hi, step, modality << 31), modality 0 = image, 1 = LiDAR; words w0..w3.
* N distinct dims of d: ``dim_k = perm(k)``, k < N, for a keyed bijection of [0, d): three rounds
  of ``x = (a_r x + c_r) mod D; x ^= x >> s`` on D = 2**ceil(log2 d) (a_r, c_r = the 16-bit
  halves of w1..w3, a_r odd), cycle-walked into [0, d), plus an offset ``(w0 * d) >> 32`` mod d.
  Every dim is equally likely; the N-subsets are not uniform over all of them.
* mix: ``out_c[ic[k]] = in_l[il[k]]``, ``out_l[il[k]] = in_c[ic[k]]``, the rest copied.

:func:`reference_feature_mixing` implements the same stream in torch (the oracle of the tests
and the fallback when the extension cannot be built); :func:`feature_mixing_op` picks one;
:class:`KernelFeatureMixing` is the trainer-facing ``synth(feat_image, feat_lidar, batch, step)``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from segood.resources import resource_dir

from .feature_mixing import _step_seed, select_anchors

__all__ = ["load_extension", "philox4x32_10", "reference_feature_mixing", "feature_mixing_op", "feature_mixing_into",
           "KernelFeatureMixing", "MAX_DIM"]

MAX_DIM = 4096  # kMaxDim in feature_mixing_math.h
_M32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_SRC_DIR = resource_dir("cuda_ext")  # top-level cuda_ext/ in a checkout, packaged in a wheel
_ext_state: dict[str, object] = {}  # "ok": bool, "reason": str; filled by load_extension


# ---------------------------------------------------------------------------------------------
# Building and loading the extension


def _build_dir(with_cuda: bool) -> Path:
    base = os.environ.get("SEGOOD_EXT_DIR") or Path.home() / ".cache" / "segood" / "torch_extensions"
    return Path(base) / torch.__version__ / ("cuda" if with_cuda else "cpu")


def _want_cuda() -> bool:
    """Build the .cu too: torch has CUDA, nvcc is found, and a GPU is present (or
    ``SEGOOD_EXT_CUDA=1``, for building on a machine without one)."""
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda is None or CUDA_HOME is None:
        return False
    return torch.cuda.is_available() or os.environ.get("SEGOOD_EXT_CUDA") == "1"


def _build(verbose: bool) -> None:
    with_cuda = _want_cuda()
    sources = [_SRC_DIR / "bindings.cpp", _SRC_DIR / "feature_mixing_cpu.cpp"]
    if with_cuda:
        sources.append(_SRC_DIR / "feature_mixing_cuda.cu")
    build_dir = _build_dir(with_cuda)
    build_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(build_dir):
        _load(with_cuda, sources, build_dir, verbose)


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


def _has_kernel(device: torch.device) -> bool:
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


# ---------------------------------------------------------------------------------------------
# Philox4x32-10 and the index stream in torch


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of ``a * m`` for u32 ``a`` (int64 tensor) and u32 constant ``m``,
    computed from 16-bit pieces so no intermediate leaves [0, 2**50) (no int64 overflow)."""
    p_lo = a * (m & 0xFFFF)
    p_hi = a * (m >> 16)
    mid = p_lo + ((p_hi & 0xFFFF) << 16)
    return (p_hi >> 16) + (mid >> 32), mid & _M32


def _philox_cols(x0, x1, x2, x3, k0: int, k1: int) -> list[torch.Tensor]:
    """Philox4x32-10 on four int64 tensors of u32 values (the counter words); key = (k0, k1).
    Contiguous 1-D columns: elementwise ops on strided (n, 4) views are ~10x slower."""
    for rnd in range(10):
        if rnd:
            k0, k1 = (k0 + _PHILOX_W[0]) & _M32, (k1 + _PHILOX_W[1]) & _M32
        hi0, lo0 = _mulhilo(x0, _PHILOX_M[0])
        hi1, lo1 = _mulhilo(x2, _PHILOX_M[1])
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
    return [x0, x1, x2, x3]


def philox4x32_10(counter, key):
    """Philox4x32-10 (Random123), vectorised over rows.

    Args:
        counter: (n, 4) u32 values, numpy (any integer dtype) or torch (int64 or uint32).
        key: (2,) u32 values (sequence, numpy or torch).

    Returns:
        (n, 4) words: numpy uint32 for numpy input, torch int64 holding u32 values for torch
        input (torch's uint32 supports few ops), on the counter's device.
    """
    as_numpy = isinstance(counter, np.ndarray)
    ctr = torch.from_numpy(np.asarray(counter, dtype=np.int64)) if as_numpy else counter.to(torch.int64)
    if ctr.dim() != 2 or ctr.shape[1] != 4:
        raise ValueError(f"counter must have shape (n, 4), got {tuple(ctr.shape)}")
    k0, k1 = (int(k) & _M32 for k in (key.tolist() if hasattr(key, "tolist") else key))
    out = torch.stack(_philox_cols(*(ctr & _M32).t().contiguous(), k0, k1), dim=1)
    return out.numpy().astype(np.uint32) if as_numpy else out


def _seed_key(seed: int) -> tuple[int, int]:
    seed = int(seed) & ((1 << 64) - 1)
    return seed & _M32, seed >> 32


def perm_shape(d: int) -> tuple[int, int]:
    """(D - 1, s) of dimension d: D = 2**ceil(log2 d), s = max(1, ceil(bits / 2)) (perm_shape in
    feature_mixing_math.h)."""
    bits = max(0, (d - 1).bit_length())
    return (1 << bits) - 1, (bits + 1) // 2 if bits > 1 else 1


def _permute_pow2(x: torch.Tensor, a: list[torch.Tensor], c: list[torch.Tensor], mask: int, shift: int) -> torch.Tensor:
    """pi(x): three rounds of ``x = (a_r x + c_r) mod D; x ^= x >> s`` (int64, per-row keys (M, 1))."""
    for a_r, c_r in zip(a, c):
        x = (a_r * x + c_r) & mask
        x = x ^ (x >> shift)
    return x


def _draw_dims(rows: torch.Tensor, d: int, n: int, seed: int, step: int, modality: int) -> torch.Tensor:
    """(M, n) int64 dims selected for ``rows`` (int64 row indices): dim_k = perm(k) of each row's
    keyed permutation (select_dims in feature_mixing_math.h), vectorised over rows and k."""
    k0, k1 = _seed_key(seed)
    m = len(rows)
    ctr = (rows & _M32, rows >> 32, torch.full((m,), step, dtype=torch.int64, device=rows.device),
           torch.full((m,), modality << 31, dtype=torch.int64, device=rows.device))
    w = [col[:, None] for col in _philox_cols(*ctr, k0, k1)]  # 4 x (M, 1)
    mask, shift = perm_shape(d)
    offset = (w[0] * d) >> 32  # < 2**44: exact in int64
    a = [(w[r + 1] & 0xFFFF) | 1 for r in range(3)]
    c = [w[r + 1] >> 16 for r in range(3)]
    y = _permute_pow2(torch.arange(n, device=rows.device, dtype=torch.int64)[None].expand(m, n), a, c, mask, shift)
    outside = y >= d  # cycle walking (only when d is not a power of two)
    while bool(outside.any()):
        y = torch.where(outside, _permute_pow2(y, a, c, mask, shift), y)
        outside = y >= d
    y = y + offset
    return torch.where(y >= d, y - d, y)


# ---------------------------------------------------------------------------------------------
# Argument checks (same texts as check_inputs in cuda_ext/bindings.cpp)


def _check_args(feat_image, feat_lidar, mask, n_swap, seed, step) -> None:
    for name, t in (("feat_image", feat_image), ("feat_lidar", feat_lidar)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D (P, d), got shape {list(t.shape)}")
        if t.shape[1] > MAX_DIM:
            raise ValueError(f"{name} has {t.shape[1]} dims; the kernel supports at most {MAX_DIM}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    if feat_image.dtype != feat_lidar.dtype:
        raise TypeError(f"feat_image and feat_lidar must have the same dtype, got {feat_image.dtype} "
                        f"and {feat_lidar.dtype}")
    if feat_image.device != feat_lidar.device:
        raise ValueError(f"feat_image and feat_lidar must be on the same device, got {feat_image.device} "
                         f"and {feat_lidar.device}")
    if feat_image.shape[0] != feat_lidar.shape[0]:
        raise ValueError(f"feat_image and feat_lidar must have the same number of points, got "
                         f"{feat_image.shape[0]} and {feat_lidar.shape[0]}")
    for name, v in (("n_swap", n_swap), ("seed", seed), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    max_swap = min(feat_image.shape[1], feat_lidar.shape[1])
    if not 0 <= n_swap <= max_swap:
        raise ValueError(f"n_swap must be in [0, min(d_c, d_l)] = [0, {max_swap}], got {n_swap}")
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    if not 0 <= step < 1 << 32:
        raise ValueError(f"step must be in [0, 2**32), got {step}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.shape != (feat_image.shape[0],):
            raise ValueError(f"mask must have shape (P,) = ({feat_image.shape[0]},), got {list(mask.shape)}")
        if mask.device != feat_image.device:
            raise ValueError(f"mask must be on the features' device {feat_image.device}, got {mask.device}")


# ---------------------------------------------------------------------------------------------
# The op, its reference, and the trainer-facing class


def reference_feature_mixing(feat_image: torch.Tensor, feat_lidar: torch.Tensor, mask: torch.Tensor | None,
                             n_swap: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch Feature Mixing, bit-exact with the kernel and differentiable (index_put).

    Args:
        feat_image: (P, d_c) floating, contiguous. feat_lidar: (P, d_l), same dtype/device.
        mask: bool (P,) rows to mix, or None for all; other rows are copied unchanged.
        n_swap: dims swapped per modality, 0 <= n_swap <= min(d_c, d_l).
        seed: in [0, 2**64); step: in [0, 2**32).

    Returns:
        (mixed_image (P, d_c), mixed_lidar (P, d_l)), new tensors.
    """
    _check_args(feat_image, feat_lidar, mask, n_swap, seed, step)
    device = feat_image.device
    rows = (torch.arange(feat_image.shape[0], device=device) if mask is None
            else torch.nonzero(mask, as_tuple=False).squeeze(1))
    if n_swap == 0 or rows.numel() == 0:
        return feat_image.clone(), feat_lidar.clone()
    chunk = max(1, (1 << 22) // n_swap)  # bound the (rows, n_swap) index memory
    parts = [(_draw_dims(r, feat_image.shape[1], n_swap, seed, step, 0),
              _draw_dims(r, feat_lidar.shape[1], n_swap, seed, step, 1)) for r in rows.split(chunk)]
    ic = torch.cat([p[0] for p in parts])
    il = torch.cat([p[1] for p in parts])
    r = rows[:, None].expand_as(ic)
    mixed_image = feat_image.index_put((r, ic), feat_lidar[r, il])
    mixed_lidar = feat_lidar.index_put((r, il), feat_image[r, ic])
    return mixed_image, mixed_lidar


def feature_mixing_op(feat_image: torch.Tensor, feat_lidar: torch.Tensor, mask: torch.Tensor | None,
                      n_swap: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.segood.feature_mixing`` (autograd-enabled) when the extension loads, else
    :func:`reference_feature_mixing`; same arguments, same results bit for bit."""
    _check_args(feat_image, feat_lidar, mask, n_swap, seed, step)
    if not (load_extension() and _has_kernel(feat_image.device)):
        return reference_feature_mixing(feat_image, feat_lidar, mask, n_swap, seed, step)
    signed_seed = seed - (1 << 64) if seed >= 1 << 63 else seed  # the schema's int is int64
    return tuple(torch.ops.segood.feature_mixing(feat_image, feat_lidar, mask, int(n_swap),
                                                 int(signed_seed), int(step)))


def feature_mixing_into(feat_image: torch.Tensor, feat_lidar: torch.Tensor, mask: torch.Tensor | None,
                        n_swap: int, seed: int, step: int, out_image: torch.Tensor, out_lidar: torch.Tensor) -> None:
    """:func:`feature_mixing_op` written into ``out_image`` / ``out_lidar`` (contiguous, same
    shape, dtype and device as the inputs, not overlapping them); no autograd. For buffers
    reused across calls (inference, benchmarks): a fresh output above ~32 MB is a new ``mmap``
    whose page faults cost more than the mix."""
    _check_args(feat_image, feat_lidar, mask, n_swap, seed, step)
    if not (load_extension() and _has_kernel(feat_image.device)):
        mixed = reference_feature_mixing(feat_image, feat_lidar, mask, n_swap, seed, step)
        out_image.copy_(mixed[0]), out_lidar.copy_(mixed[1])
        return
    signed_seed = seed - (1 << 64) if seed >= 1 << 63 else seed
    torch.ops.segood.feature_mixing_into(feat_image, feat_lidar, mask, int(n_swap), int(signed_seed), int(step),
                                         out_image, out_lidar)


class KernelFeatureMixing:
    """Drop-in for :class:`segood.ood.feature_mixing.FeatureMixing`, backed by the kernel.

    Selects camera-visible (``batch['visible']``) ID-labelled (``batch['target'] >= 0``) points,
    optionally subsampled to ``max_points`` with a CPU generator seeded from (seed, step), mixes
    them with :func:`feature_mixing_op` (RNG counter = row index in the batch, so a point's
    outlier does not depend on which other points were selected) and returns their rows.
    """

    def __init__(self, n_swap: int, seed: int = 0, max_points: int | None = None, mix_points: str = "visible") -> None:
        if n_swap < 0:
            raise ValueError(f"n_swap must be >= 0, got {n_swap}")
        if max_points is not None and max_points < 1:
            raise ValueError(f"max_points must be >= 1 or None, got {max_points}")
        if not 0 <= seed < 1 << 64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self.n_swap, self.seed, self.max_points = int(n_swap), int(seed), max_points
        self.mix_points = mix_points

    def select(self, batch: Mapping[str, torch.Tensor], step: int) -> torch.Tensor:
        """Sorted LongTensor (CPU) of (``mix_points``) ID-labelled points, subsampled to ``max_points``."""
        return select_anchors(batch, self.max_points, torch.Generator().manual_seed(_step_seed(self.seed, step)),
                              self.mix_points)

    def __call__(self, feat_image: torch.Tensor, feat_lidar: torch.Tensor,
                 batch: Mapping[str, torch.Tensor], step: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(index, mixed_image, mixed_lidar): outputs have one row per entry of ``index``."""
        num_points = batch["target"].shape[0]
        if feat_image.shape[0] != num_points or feat_lidar.shape[0] != num_points:
            raise ValueError(f"features must have one row per point ({num_points}), got "
                             f"{feat_image.shape[0]} (image) and {feat_lidar.shape[0]} (lidar)")
        device = feat_image.device
        index = self.select(batch, step).to(device)
        every = index.numel() == num_points  # every point is an outlier: no mask, no second copy
        mask = None
        if not every:
            mask = torch.zeros(num_points, dtype=torch.bool, device=device)
            mask[index] = True
        mixed_image, mixed_lidar = feature_mixing_op(feat_image.contiguous(), feat_lidar.contiguous(),
                                                     mask, self.n_swap, self.seed, step)
        if every:
            return index, mixed_image, mixed_lidar
        return index, mixed_image[index], mixed_lidar[index]
