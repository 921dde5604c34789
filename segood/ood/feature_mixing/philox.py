"""Philox4x32-10 and the Feature Mixing index stream in torch, the same numbers the kernel draws
(``feature_mixing_math.h``): one Philox block per row and modality, N distinct dims per row from a
keyed bijection of [0, d) (see :mod:`segood.ood.feature_mixing.kernel`)."""
from __future__ import annotations

import numpy as np
import torch

_M32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


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


def draw_dims(rows: torch.Tensor, d: int, n: int, seed: int, step: int, modality: int) -> torch.Tensor:
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
