"""Which points become outliers, and the per-step randomness every synthesizer shares.

The anchor rule (the one place it is written): a point may be mixed, or anchor an outlier, when it
is ID-labelled (``batch['target'] >= 0``) and, with ``mix_points='visible'`` (the default),
camera-visible (``batch['visible']``). ``mix_points='all'`` (``synthesis.mix_points``) admits
out-of-view points too, for models that give them a predicted camera feature
(``model.fusion.out_of_view: predicted``). Ignored and OOD points (target -1) never are. A step's randomness is a fresh CPU
``torch.Generator`` seeded from ``(seed, step)``, so the same seed and step give the same draw.
"""
from __future__ import annotations

from typing import Mapping

import torch

__all__ = ["MIX_POINTS", "Batch", "Outliers", "anchor_mask", "anchor_points", "subsample", "select_anchors", "step_seed",
           "step_generator", "check_rows"]

Outliers = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (index (M,), image part (M, d_c), LiDAR part (M, d_l))
Batch = Mapping[str, torch.Tensor]

_MASK64 = (1 << 64) - 1


MIX_POINTS = ("visible", "all")  # synthesis.mix_points


def anchor_mask(batch: Batch, mix_points: str = "visible") -> torch.Tensor:
    """(P,) bool on the batch's device: the points that may be mixed (ID-labelled; camera-visible
    unless ``mix_points='all'``)."""
    if mix_points not in MIX_POINTS:
        raise ValueError(f"synthesis.mix_points: {mix_points!r}: expected one of {', '.join(map(repr, MIX_POINTS))}")
    labelled = batch["target"] >= 0
    return labelled if mix_points == "all" else batch["visible"].bool() & labelled


def anchor_points(batch: Batch, mix_points: str = "visible") -> torch.Tensor:
    """Sorted CPU LongTensor of the points of :func:`anchor_mask`."""
    return torch.nonzero(anchor_mask(batch, mix_points).cpu(), as_tuple=False).squeeze(1)


def subsample(index: torch.Tensor, max_points: int | None, generator: torch.Generator) -> torch.Tensor:
    """At most ``max_points`` entries of ``index``, a uniform random subset kept in order."""
    if max_points is None or index.numel() <= max_points:
        return index
    keep = torch.randperm(index.numel(), generator=generator)[:max_points]
    return index[keep.sort().values]


def select_anchors(batch: Batch, max_points: int | None, generator: torch.Generator,
                   mix_points: str = "visible") -> torch.Tensor:
    """Sorted (CPU) LongTensor of the anchors, randomly subsampled to ``max_points``."""
    return subsample(anchor_points(batch, mix_points), max_points, generator)


def step_seed(seed: int, step: int) -> int:
    """Mix (seed, step) into one 63-bit seed (splitmix64 finaliser), distinct per step."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(step) + 0x632BE59BD9B4E019) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> 1


def step_generator(seed: int, step: int) -> torch.Generator:
    """A fresh CPU generator for (seed, step); calls never share state."""
    return torch.Generator().manual_seed(step_seed(seed, step))


def check_rows(feat_image: torch.Tensor, feat_lidar: torch.Tensor, batch: Batch) -> None:
    """Refuse features that do not have one row per point of ``batch``."""
    num_points = batch["target"].shape[0]
    if feat_image.shape[0] != num_points or feat_lidar.shape[0] != num_points:
        raise ValueError(f"features must have one row per point ({num_points}), got "
                         f"{feat_image.shape[0]} (image) and {feat_lidar.shape[0]} (lidar)")
