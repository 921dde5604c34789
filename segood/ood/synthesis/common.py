"""Helpers every synthesizer shares: per-step generators, anchor selection, bank rows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from segood.ood.feature_mixing import _step_seed


Outliers = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Batch = Mapping[str, torch.Tensor]


# ------------------------------------------------------------------ shared helpers


def step_generator(seed: int, step: int) -> torch.Generator:
    """A fresh CPU generator for (seed, step); calls never share state."""
    return torch.Generator().manual_seed(_step_seed(seed, step))


def eligible_points(batch: Batch) -> torch.Tensor:
    """Sorted CPU LongTensor of camera-visible, ID-labelled points."""
    mask = batch["visible"].bool() & (batch["target"] >= 0)
    return torch.nonzero(mask.cpu(), as_tuple=False).squeeze(1)


def subsample(index: torch.Tensor, max_points: int | None, generator: torch.Generator) -> torch.Tensor:
    """At most ``max_points`` entries of ``index``, a uniform random subset kept in order."""
    if max_points is None or index.numel() <= max_points:
        return index
    keep = torch.randperm(index.numel(), generator=generator)[:max_points]
    return index[keep.sort().values]


def beta_sample(alpha: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) float64 draws of Beta(alpha, alpha). torch's Beta takes no generator, so a numpy
    generator is seeded from ``generator`` (still a pure function of (seed, step))."""
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    return torch.from_numpy(rng.beta(alpha, alpha, size=n))


def _check_rows(feat_image: torch.Tensor, feat_lidar: torch.Tensor, batch: Batch) -> None:
    num_points = batch["target"].shape[0]
    if feat_image.shape[0] != num_points or feat_lidar.shape[0] != num_points:
        raise ValueError(f"features must have one row per point ({num_points}), got "
                         f"{feat_image.shape[0]} (image) and {feat_lidar.shape[0]} (lidar)")


def _split(rows: torch.Tensor, index: torch.Tensor, feat_image: torch.Tensor) -> Outliers:
    """(index, image part, LiDAR part) of concatenated rows, on the features' device and dtype."""
    rows = rows.to(device=feat_image.device, dtype=feat_image.dtype)
    d_c = feat_image.shape[1]
    return index.to(feat_image.device), rows[:, :d_c], rows[:, d_c:]


def _bank_rows(feat_image: torch.Tensor, feat_lidar: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Detached ``[f_c, f_l]`` of the eligible points (what the banks hold)."""
    rows = eligible.to(feat_image.device)
    return torch.cat((feat_image.detach()[rows], feat_lidar.detach()[rows]), 1)


def _empty(feat_image: torch.Tensor, feat_lidar: torch.Tensor) -> Outliers:
    dev = feat_image.device
    return (torch.zeros(0, dtype=torch.long, device=dev), feat_image.new_zeros(0, feat_image.shape[1]),
            feat_lidar.new_zeros(0, feat_lidar.shape[1]))


@dataclass(frozen=True)
class SynthesisContext:
    """What a synthesizer's builder gets besides the ``synthesis`` config section."""

    num_classes: int
    d_image: int
    d_lidar: int
    seed: int
    max_points: int | None  # outliers per step (null = all anchors)
    mix_points: str = "visible"  # Feature Mixing anchors: visible | all (synthesis.mix_points)


def section_options(cfg_synthesis: Mapping, section: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The ``synthesis.<section>`` sub-dict, rejecting keys the method does not take."""
    opts = dict(cfg_synthesis.get(section) or {})
    unknown = sorted(set(opts) - set(keys))
    if unknown:
        raise ValueError(f"synthesis.{section}: unknown keys {unknown}, valid: {list(keys)}")
    return opts
