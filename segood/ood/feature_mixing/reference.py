"""Feature Mixing outlier synthesis, plain-torch reference (DEVELOPERS.md "Feature Mixing kernel").

For each camera-visible, ID-labelled point p, pick ``n_swap`` distinct dims of the image feature
``f_c[p]`` and ``n_swap`` distinct dims of the LiDAR feature ``f_l[p]`` uniformly at random,
independently per point, and swap their values between the modalities. The outlier is the
concatenation of the two mixed vectors. The swap is a permutation of each point's values, so
it is differentiable (gradients flow back to both inputs) and preserves every point's multiset
of values (image values together with LiDAR values).

This module is the reference the ``cuda_ext`` kernel is tested against; it draws its indices
from a ``torch.Generator`` rather than the kernel's counter-based RNG, so the two agree in
distribution and properties, not bit for bit.
"""

from __future__ import annotations

import torch

from segood.ood.feature_mixing.anchors import Batch, check_rows, select_anchors, step_generator

__all__ = ["feature_mixing", "FeatureMixing", "check_mixing_inputs"]


def check_mixing_inputs(feat_image: torch.Tensor, feat_lidar: torch.Tensor, n_swap: int) -> None:
    """Raise ValueError for shapes, dtypes or ``n_swap`` that make the swap ill-defined."""
    if feat_image.dim() != 2 or feat_lidar.dim() != 2:
        raise ValueError(f"features must be 2-D (M, d), got {tuple(feat_image.shape)} "
                         f"and {tuple(feat_lidar.shape)}")
    if feat_image.shape[0] != feat_lidar.shape[0]:
        raise ValueError(f"row counts differ: image {feat_image.shape[0]} vs lidar {feat_lidar.shape[0]}")
    if feat_image.dtype != feat_lidar.dtype or feat_image.device != feat_lidar.device:
        raise ValueError(f"features must share dtype and device, got {feat_image.dtype}/{feat_image.device} "
                         f"and {feat_lidar.dtype}/{feat_lidar.device}")
    max_swap = min(feat_image.shape[1], feat_lidar.shape[1])
    if not 0 <= n_swap <= max_swap:
        raise ValueError(f"n_swap must be in [0, min(d_c, d_l)] = [0, {max_swap}], got {n_swap}")


def _random_dims(rows: int, dims: int, n_swap: int, generator: torch.Generator,
                 device: torch.device) -> torch.Tensor:
    """(rows, n_swap) distinct column indices per row, uniform: argsort of a uniform matrix.

    Drawn on the generator's device, then moved, so a given generator state yields the same
    indices whatever device the features live on.
    """
    noise = torch.rand((rows, dims), generator=generator, device=generator.device)
    return noise.argsort(dim=1)[:, :n_swap].to(device)


def feature_mixing(feat_image: torch.Tensor, feat_lidar: torch.Tensor, n_swap: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap ``n_swap`` random dims between the image and LiDAR features of every row.

    Args:
        feat_image: (M, d_c) image features right before fusion.
        feat_lidar: (M, d_l) LiDAR features right before fusion.
        n_swap: number of dims swapped per point, 0 <= n_swap <= min(d_c, d_l).
        generator: source of randomness (image indices are drawn first, then LiDAR indices).

    Returns:
        (mixed_image, mixed_lidar), new tensors with
        ``mixed_image[p, ic[p, k]] = feat_lidar[p, il[p, k]]`` and
        ``mixed_lidar[p, il[p, k]] = feat_image[p, ic[p, k]]``. Inputs are not modified.
    """
    check_mixing_inputs(feat_image, feat_lidar, n_swap)
    if n_swap == 0:
        return feat_image.clone(), feat_lidar.clone()
    rows, device = feat_image.shape[0], feat_image.device
    idx_image = _random_dims(rows, feat_image.shape[1], n_swap, generator, device)
    idx_lidar = _random_dims(rows, feat_lidar.shape[1], n_swap, generator, device)
    from_lidar = feat_lidar.gather(1, idx_lidar)
    from_image = feat_image.gather(1, idx_image)
    mixed_image = feat_image.scatter(1, idx_image, from_lidar)
    mixed_lidar = feat_lidar.scatter(1, idx_lidar, from_image)
    return mixed_image, mixed_lidar


class FeatureMixing:
    """Outlier synthesis for one training step: select points, then :func:`feature_mixing`.

    Points used are the anchors (:func:`segood.ood.feature_mixing.anchors.select_anchors`:
    camera-visible, ID-labelled), optionally subsampled to ``max_points``. A fresh CPU
    ``torch.Generator`` seeded from ``(seed, step)`` drives both the subsampling and the
    swapped dims, so the same (seed, step) reproduces the same outliers and a new step
    draws new ones.
    """

    def __init__(self, n_swap: int, seed: int = 0, max_points: int | None = None, mix_points: str = "visible") -> None:
        if n_swap < 0:
            raise ValueError(f"n_swap must be >= 0, got {n_swap}")
        if max_points is not None and max_points < 1:
            raise ValueError(f"max_points must be >= 1 or None, got {max_points}")
        self.n_swap, self.seed, self.max_points = int(n_swap), int(seed), max_points
        self.mix_points = mix_points  # synthesis.mix_points: visible | all (the anchor rule)

    def generator(self, step: int) -> torch.Generator:
        """The CPU generator for ``step`` (a new one each call, so calls never interfere)."""
        return step_generator(self.seed, step)

    def select(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """Sorted LongTensor of the anchors, subsampled to ``max_points``."""
        return select_anchors(batch, self.max_points, generator, self.mix_points)

    def __call__(self, feat_image: torch.Tensor, feat_lidar: torch.Tensor,
                 batch: Batch, step: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (index, mixed_image, mixed_lidar) for the selected points of ``batch``.

        ``feat_image`` (P, d_c) and ``feat_lidar`` (P, d_l) are per-point features for all P
        points of the batch; the outputs have one row per entry of ``index`` (on the features'
        device).
        """
        check_rows(feat_image, feat_lidar, batch)
        generator = self.generator(step)
        index = self.select(batch, generator).to(feat_image.device)
        mixed_image, mixed_lidar = feature_mixing(feat_image[index], feat_lidar[index],
                                                  self.n_swap, generator)
        return index, mixed_image, mixed_lidar
