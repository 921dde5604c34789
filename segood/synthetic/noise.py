"""Procedural noise: value noise from fixed random lattice tables (tiling), deterministic and vectorised."""
from __future__ import annotations

import math

import numpy as np

_HASH_PRIMES = (np.uint32(0x8DA6B343), np.uint32(0xD8163841), np.uint32(0xCB1AB31F))
_NOISE_SIZE = {2: 256, 3: 64}  # lattice cells per axis before the table repeats
_NOISE_TABLES = {d: np.random.default_rng(12345 + d).random(n**d, dtype=np.float32) for d, n in _NOISE_SIZE.items()}


def hash01(cells: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) value per integer lattice cell (n, d), a pure function of cell and seed."""
    h = np.full(len(cells), np.uint32(seed & 0xFFFFFFFF), dtype=np.uint32)
    for k in range(cells.shape[1]):
        h ^= cells[:, k].astype(np.uint32) * _HASH_PRIMES[k]
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    return h.astype(np.float64) * (1.0 / 4294967296.0)


def value_noise(p: np.ndarray, freq: float, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1] at points p (n, d), d = 2 or 3, with ``freq`` cells per metre.

    Lattice values come from a fixed random table (tiling every 256 / 64 cells); ``seed`` shifts
    the lattice so different materials get different noise. Interpolation runs in float32 (speed).
    """
    d = p.shape[1]
    size = _NOISE_SIZE[d]
    shift = (seed * np.array([0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35][:d], dtype=np.int64)) % size
    q = p * freq
    base = np.floor(q)
    f = (q - base).astype(np.float32)
    w = f * f * (np.float32(3.0) - np.float32(2.0) * f)
    cell = (base.astype(np.int64) + shift).astype(np.int32) & (size - 1)
    idx = np.zeros((1, len(p)), dtype=np.int32)
    for k in range(d):  # flat table index of every corner, first axis most significant
        stride = size ** (d - 1 - k)
        part = np.stack([cell[:, k] * stride, ((cell[:, k] + 1) & (size - 1)) * stride])
        idx = (idx[:, None, :] + part[None, :, :]).reshape(-1, len(p))
    v = _NOISE_TABLES[d][idx]  # (2^d, n)
    for k in range(d):
        half = len(v) // 2
        v = v[:half] + (v[half:] - v[:half]) * w[:, k]
    return v[0].astype(np.float64)


def fbm(p: np.ndarray, freq: float, seed: int, octaves: int = 2) -> np.ndarray:
    """Fractal sum of value noise, normalised to [0, 1]."""
    total, amp, norm = np.zeros(len(p)), 1.0, 0.0
    for o in range(octaves):
        total += amp * value_noise(p, freq * 2.0**o, seed + 101 * o)
        norm += amp
        amp *= 0.5
    return total / norm


def hue_rotate(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate colours (..., 3) about the grey axis: a cheap hue shift that keeps brightness."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    k = 1.0 / 3.0
    sq = math.sqrt(k)
    m = np.array([
        [c + (1 - c) * k, k * (1 - c) - sq * s, k * (1 - c) + sq * s],
        [k * (1 - c) + sq * s, c + (1 - c) * k, k * (1 - c) - sq * s],
        [k * (1 - c) - sq * s, k * (1 - c) + sq * s, c + (1 - c) * k],
    ])
    return np.clip(rgb @ m.T, 0.0, 1.0)


def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
    """Vectorised HSV -> RGB for hue array h in [0, 1)."""
    k = (np.array([5.0, 3.0, 1.0])[None, :] + h[:, None] * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
