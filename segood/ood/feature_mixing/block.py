"""Feature Mixing with one contiguous block of dims per step (``feature_mixing_block``)."""
from __future__ import annotations

from typing import Mapping

import torch

from segood.ood.feature_mixing.anchors import Batch, Outliers, check_rows
from segood.ood.feature_mixing.reference import FeatureMixing, check_mixing_inputs
from segood.ood.feature_mixing.synthesizers import shared_feature_mixing
from segood.ood.synthesis_context import SynthesisContext
from segood.options import Opt


class BlockFeatureMixing(FeatureMixing):
    """Feature Mixing as the paper's first author swaps features in later public code
    (``mona4399/ACR``, ``--use_mfs``): per call, one block length N drawn uniformly from
    ``[n_min, n_max]``, one contiguous block of N image dims starting at a random offset and one
    of N LiDAR dims at an independent offset, the same columns for every selected point. Same
    point selection as :class:`FeatureMixing`; ``last_dims`` keeps the block of the last call."""

    OPTIONS = {"n_min": Opt(8, int, "shortest block of swapped dims", min=1),
               "n_max": Opt(32, int, "longest block of swapped dims (>= n_min, <= min(d_c, d_l))", min=1)}

    def __init__(self, n_min: int, n_max: int, seed: int = 0, max_points: int | None = None,
                 mix_points: str = "visible") -> None:
        if not 1 <= n_min <= n_max:
            raise ValueError(f"block n_min/n_max must satisfy 1 <= n_min <= n_max, got {n_min}, {n_max}")
        super().__init__(n_max, seed=seed, max_points=max_points, mix_points=mix_points)
        self.n_min, self.n_max = int(n_min), int(n_max)

    def __call__(self, feat_image: torch.Tensor, feat_lidar: torch.Tensor, batch: Batch, step: int) -> Outliers:
        check_rows(feat_image, feat_lidar, batch)
        check_mixing_inputs(feat_image, feat_lidar, self.n_max)
        generator = self.generator(step)
        index = self.select(batch, generator).to(feat_image.device)
        n = int(torch.randint(self.n_min, self.n_max + 1, (1,), generator=generator))
        start_image = int(torch.randint(0, feat_image.shape[1] - n + 1, (1,), generator=generator))
        start_lidar = int(torch.randint(0, feat_lidar.shape[1] - n + 1, (1,), generator=generator))
        dims_image = torch.arange(start_image, start_image + n)
        dims_lidar = torch.arange(start_lidar, start_lidar + n)
        self.last_dims = (dims_image, dims_lidar)
        mixed = shared_feature_mixing(feat_image[index], feat_lidar[index],
                                      dims_image.to(feat_image.device), dims_lidar.to(feat_image.device))
        return (index, *mixed)


def build_block_feature_mixing(cfg_synthesis: Mapping, ctx: SynthesisContext) -> BlockFeatureMixing:
    """``feature_mixing_block``, options (:attr:`BlockFeatureMixing.OPTIONS`) in ``synthesis.feature_mixing_block``."""
    return BlockFeatureMixing(ctx.options["n_min"], ctx.options["n_max"], seed=ctx.seed, max_points=ctx.max_points,
                              mix_points=ctx.mix_points)
