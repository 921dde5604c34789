"""Mixup outliers: convex combinations of two anchor points' features."""
from __future__ import annotations

from typing import Mapping

import torch

from segood.ood.feature_mixing.anchors import Batch, Outliers, anchor_points, check_rows, step_generator, subsample
from segood.ood.synthesis.common import beta_sample, no_outliers
from segood.ood.synthesis_context import SynthesisContext, section_options


# ------------------------------------------------------------------ Mixup


class Mixup:
    """Mixup outliers (Zhang et al. 2018) between eligible points of the current batch.

    Each anchor (eligible point, at most ``max_points``) is paired with a uniformly drawn
    eligible point of another class (any eligible point when the batch holds one class only)
    and both modalities are mixed with the same lambda ~ Beta(alpha, alpha), one lambda per
    pair. Live features: differentiable. ``last_draw`` keeps partners and lambdas.
    """

    def __init__(self, alpha: float = 1.0, seed: int = 0, max_points: int | None = None) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha, self.seed, self.max_points = float(alpha), int(seed), max_points
        self.last_draw: dict[str, torch.Tensor] = {}

    @staticmethod
    def partners(labels: torch.Tensor, anchors: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Positions (into ``labels``) of a random other-class partner for each anchor position."""
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        start = counts.cumsum(0) - counts
        c = labels[anchors]
        n_other = labels.numel() - counts[c]
        single = n_other == 0                     # only one class: fall back to any point
        span = torch.where(single, torch.full_like(n_other, labels.numel()), n_other)
        r = (torch.rand(anchors.numel(), generator=g) * span).long().clamp_max(span - 1)
        skip = (~single) & (r >= start[c])        # jump over class c's block in sorted order
        return order[r + skip * counts[c]]

    def __call__(self, feat_image: torch.Tensor, feat_lidar: torch.Tensor, batch: Batch, step: int) -> Outliers:
        check_rows(feat_image, feat_lidar, batch)
        eligible = anchor_points(batch)
        if eligible.numel() == 0:
            return no_outliers(feat_image, feat_lidar)
        g = step_generator(self.seed, step)
        pos = subsample(torch.arange(eligible.numel()), self.max_points, g)
        partner = eligible[self.partners(batch["target"].cpu()[eligible], pos, g)]
        lam = beta_sample(self.alpha, pos.numel(), g)
        index = eligible[pos]
        self.last_draw = {"partner": partner, "lam": lam}
        dev = feat_image.device
        ia, ib, lam = index.to(dev), partner.to(dev), lam.to(dev, feat_image.dtype)[:, None]
        return (ia, lam * feat_image[ia] + (1 - lam) * feat_image[ib],
                lam * feat_lidar[ia] + (1 - lam) * feat_lidar[ib])


def build_mixup(cfg_synthesis: Mapping, ctx: SynthesisContext) -> Mixup:
    """``mixup``, options in ``synthesis.mixup``."""
    return Mixup(seed=ctx.seed, max_points=ctx.max_points, **section_options(cfg_synthesis, "mixup", ("alpha",)))
