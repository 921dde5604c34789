"""Feature Mixing synthesizers for :data:`segood.ood.synthesis.SYNTHESIZERS`: the per-point one (the
kernel, :mod:`segood.ood.feature_mixing.kernel`, else the reference,
:mod:`segood.ood.feature_mixing.reference`) and the shared-index variant."""
from __future__ import annotations

from typing import Mapping

import torch

from segood.ood.feature_mixing.anchors import Batch, Outliers, check_rows
from segood.ood.feature_mixing.reference import FeatureMixing, check_mixing_inputs
from segood.ood.synthesis_context import SynthesisContext


# ------------------------------------------------------------------ Feature Mixing, shared indices


def shared_feature_mixing(feat_image: torch.Tensor, feat_lidar: torch.Tensor, dims_image: torch.Tensor,
                          dims_lidar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap columns ``dims_image`` of ``feat_image`` with columns ``dims_lidar`` of ``feat_lidar``
    in every row (one shared set of dims). Out-of-place and differentiable."""
    mixed_image = feat_image.index_copy(1, dims_image, feat_lidar.index_select(1, dims_lidar))
    mixed_lidar = feat_lidar.index_copy(1, dims_lidar, feat_image.index_select(1, dims_image))
    return mixed_image, mixed_lidar


class SharedIndexFeatureMixing(FeatureMixing):
    """The naive Feature Mixing: one set of ``n_swap`` image dims and ``n_swap`` LiDAR dims per
    call, shared by every selected point (the reference draws them per point). Same point
    selection as :class:`FeatureMixing`; the dims of the last call are kept in ``last_dims``."""

    def __call__(self, feat_image: torch.Tensor, feat_lidar: torch.Tensor, batch: Batch, step: int) -> Outliers:
        check_rows(feat_image, feat_lidar, batch)
        check_mixing_inputs(feat_image, feat_lidar, self.n_swap)
        generator = self.generator(step)
        index = self.select(batch, generator).to(feat_image.device)
        dims_image = torch.randperm(feat_image.shape[1], generator=generator)[: self.n_swap]
        dims_lidar = torch.randperm(feat_lidar.shape[1], generator=generator)[: self.n_swap]
        self.last_dims = (dims_image, dims_lidar)
        mixed = shared_feature_mixing(feat_image[index], feat_lidar[index],
                                      dims_image.to(feat_image.device), dims_lidar.to(feat_image.device))
        return (index, *mixed)


def build_feature_mixing(cfg_synthesis: Mapping, ctx: SynthesisContext):
    """``feature_mixing``: the kernel-backed Feature Mixing when its module imports, else the torch reference."""
    try:
        from segood.ood.feature_mixing.kernel import KernelFeatureMixing as cls
    except ImportError:
        cls = FeatureMixing
    return cls(int(cfg_synthesis["n_swap"]), seed=ctx.seed, max_points=ctx.max_points, mix_points=ctx.mix_points)


def build_shared_feature_mixing(cfg_synthesis: Mapping, ctx: SynthesisContext) -> SharedIndexFeatureMixing:
    """``feature_mixing_shared``: one set of swapped dims per call."""
    return SharedIndexFeatureMixing(int(cfg_synthesis["n_swap"]), seed=ctx.seed, max_points=ctx.max_points,
                                    mix_points=ctx.mix_points)
