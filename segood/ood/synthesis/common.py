"""Helpers the bank-based and mixing baselines share: Beta draws, bank rows, splitting rows back
into (image, LiDAR) parts. The anchor rule and per-step generators are
:mod:`segood.ood.feature_mixing.anchors`; the builder's context is :mod:`segood.ood.synthesis_context`."""
from __future__ import annotations

import numpy as np
import torch

from segood.ood.feature_mixing.anchors import Outliers


# ------------------------------------------------------------------ shared helpers


def beta_sample(alpha: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) float64 draws of Beta(alpha, alpha). torch's Beta takes no generator, so a numpy
    generator is seeded from ``generator`` (still a pure function of (seed, step))."""
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    return torch.from_numpy(rng.beta(alpha, alpha, size=n))


def split_rows(rows: torch.Tensor, index: torch.Tensor, feat_image: torch.Tensor) -> Outliers:
    """(index, image part, LiDAR part) of concatenated rows, on the features' device and dtype."""
    rows = rows.to(device=feat_image.device, dtype=feat_image.dtype)
    d_c = feat_image.shape[1]
    return index.to(feat_image.device), rows[:, :d_c], rows[:, d_c:]


def bank_rows(feat_image: torch.Tensor, feat_lidar: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Detached ``[f_c, f_l]`` of the eligible points (what the banks hold)."""
    rows = eligible.to(feat_image.device)
    return torch.cat((feat_image.detach()[rows], feat_lidar.detach()[rows]), 1)


def no_outliers(feat_image: torch.Tensor, feat_lidar: torch.Tensor) -> Outliers:
    """No outlier: empty index and parts on the features' device and dtype."""
    dev = feat_image.device
    return (torch.zeros(0, dtype=torch.long, device=dev), feat_image.new_zeros(0, feat_image.shape[1]),
            feat_lidar.new_zeros(0, feat_lidar.shape[1]))
