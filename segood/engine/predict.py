"""Inference on single scans (viewer, replay, reports): one network pass, per-point outputs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from segood.data.batching import VoxelGrid, collate, scan_to_sample
from segood.data.scan import Scan
from segood.ood.scores import get_score


@dataclass
class Prediction:
    """Per-point outputs for one scan, in the scan's original point order."""

    label: np.ndarray  # (N,) int64 train ids (argmax of the fused head)
    scores: dict[str, np.ndarray]  # score name -> (N,) float32, higher = more anomalous


@torch.no_grad()
def predict_scan(model: torch.nn.Module, scan: Scan, grid: VoxelGrid,
                 scores: tuple[str, ...] = ("anomaly_head",)) -> Prediction:
    """Run ``model`` (in eval mode) on one scan; scans without images run LiDAR-only."""
    batch = collate([scan_to_sample(scan, None)], grid)
    out = model(batch)
    return Prediction(
        label=out["logits"].argmax(-1).numpy(),
        scores={name: get_score(name)(out).float().numpy() for name in scores},
    )
