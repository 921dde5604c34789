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

from typing import Mapping

import numpy as np
import torch

from segood.ood.feature_mixing.anchors import check_rows, select_anchors, step_generator
from segood.ood.feature_mixing.build import has_kernel, load_extension
from segood.ood.feature_mixing.philox import draw_dims

__all__ = ["reference_feature_mixing", "feature_mixing_op", "feature_mixing_into", "KernelFeatureMixing", "MAX_DIM"]

MAX_DIM = 4096  # kMaxDim in feature_mixing_math.h
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


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
    parts = [(draw_dims(r, feat_image.shape[1], n_swap, seed, step, 0),
              draw_dims(r, feat_lidar.shape[1], n_swap, seed, step, 1)) for r in rows.split(chunk)]
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
    if not (load_extension() and has_kernel(feat_image.device)):
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
    if not (load_extension() and has_kernel(feat_image.device)):
        mixed = reference_feature_mixing(feat_image, feat_lidar, mask, n_swap, seed, step)
        out_image.copy_(mixed[0]), out_lidar.copy_(mixed[1])
        return
    signed_seed = seed - (1 << 64) if seed >= 1 << 63 else seed
    torch.ops.segood.feature_mixing_into(feat_image, feat_lidar, mask, int(n_swap), int(signed_seed), int(step),
                                         out_image, out_lidar)


def _mix_rows(feat_image: torch.Tensor, feat_lidar: torch.Tensor, index: torch.Tensor, n_swap: int, seed: int,
              step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's outputs at rows ``index`` only, bit for bit (the dims of a row depend only on
    (seed, step, row index)), computed on those rows alone: the op runs over all P rows and its
    backward over two dense (P, d) gradients, wasted when M = 4096 of P = 120k rows are outliers
    (``segood bench train-step``, row ``fm_rows_only``; weights after training bit-equal,
    tests/test_speed.py)."""
    fi, fl = feat_image[index], feat_lidar[index]
    _check_args(fi, fl, None, n_swap, seed, step)
    ic = draw_dims(index, feat_image.shape[1], n_swap, seed, step, 0)
    il = draw_dims(index, feat_lidar.shape[1], n_swap, seed, step, 1)
    r = torch.arange(index.numel(), device=index.device)[:, None].expand_as(ic)
    return fi.index_put((r, ic), fl[r, il]), fl.index_put((r, il), fi[r, ic])


class KernelFeatureMixing:
    """Drop-in for :class:`segood.ood.feature_mixing.reference.FeatureMixing`, backed by the kernel.

    Selects the anchors (:func:`segood.ood.feature_mixing.anchors.select_anchors`: ``mix_points``,
    ID-labelled points), optionally subsampled to ``max_points`` with a CPU generator seeded from (seed, step), mixes
    them with :func:`feature_mixing_op` (RNG counter = row index in the batch, so a point's
    outlier does not depend on which other points were selected) and returns their rows.
    """

    def __init__(self, n_swap: int, seed: int = 0, max_points: int | None = None, mix_points: str = "visible",
                 rows_only: bool = True) -> None:
        if n_swap < 0:
            raise ValueError(f"n_swap must be >= 0, got {n_swap}")
        if max_points is not None and max_points < 1:
            raise ValueError(f"max_points must be >= 1 or None, got {max_points}")
        if not 0 <= seed < 1 << 64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self.n_swap, self.seed, self.max_points = int(n_swap), int(seed), max_points
        self.rows_only = rows_only  # a subset of anchors: mix those rows alone (_mix_rows, bit-equal)
        self.mix_points = mix_points  # synthesis.mix_points: visible | all (the anchor rule)

    def select(self, batch: Mapping[str, torch.Tensor], step: int) -> torch.Tensor:
        """Sorted LongTensor (CPU) of visible, ID-labelled points, subsampled to ``max_points``."""
        return select_anchors(batch, self.max_points, step_generator(self.seed, step), self.mix_points)

    def __call__(self, feat_image: torch.Tensor, feat_lidar: torch.Tensor,
                 batch: Mapping[str, torch.Tensor], step: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(index, mixed_image, mixed_lidar): outputs have one row per entry of ``index``."""
        check_rows(feat_image, feat_lidar, batch)
        num_points = batch["target"].shape[0]
        device = feat_image.device
        index = self.select(batch, step).to(device)
        every = index.numel() == num_points  # every point is an outlier: no mask, no second copy
        if not every and self.rows_only:
            return (index, *_mix_rows(feat_image, feat_lidar, index, self.n_swap, self.seed, step))
        mask = None
        if not every:
            mask = torch.zeros(num_points, dtype=torch.bool, device=device)
            mask[index] = True
        mixed_image, mixed_lidar = feature_mixing_op(feat_image.contiguous(), feat_lidar.contiguous(),
                                                     mask, self.n_swap, self.seed, step)
        if every:
            return index, mixed_image, mixed_lidar
        return index, mixed_image[index], mixed_lidar[index]
