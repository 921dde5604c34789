"""The batch: what :func:`segood.data.batching.collate` returns and every model, synthesizer, loss
and score reads. B scans, P points (all scans concatenated), V voxels, K camera images.

Voxels are only the sparse network's view: every original point keeps its own entry, and every
metric is computed on original points. Label conventions: DEVELOPERS.md, "Label conventions".
"""
from __future__ import annotations

from typing import TypedDict

import torch

__all__ = ["Batch", "BATCH_KEYS", "LABEL_KEYS"]


class _Batch(TypedDict):
    points: torch.Tensor         # float32 (P, 4): x, y, z, intensity (LiDAR frame, after augmentation)
    batch_idx: torch.Tensor      # int64 (P,): scan of each point
    voxel_coords: torch.Tensor   # int32 (V, 4): [b, z, y, x] (spconv order; spatial_shape is [Z, Y, X])
    voxel_feats: torch.Tensor    # float32 (V, 7): mean x, y, z, intensity of the voxel's points + offset of that
    #                              mean to the voxel centre
    point2voxel: torch.Tensor    # int64 (P,): index of each point's voxel
    spatial_shape: list[int]     # grid size [Z, Y, X]
    batch_size: int              # B
    sources: list[str]           # B: each scan's file or id (for messages and outputs)
    images: torch.Tensor         # float32 (K, 3, H, W): every camera image of every scan (K = sum of cameras),
    #                              ImageNet-normalised, zero-padded to the largest
    image_idx: torch.Tensor      # int64 (P,): the row of `images` each point is sampled from (its scan's offset
    #                              + its camera id)
    pixel_uv: torch.Tensor       # float32 (P, 2): continuous (u = column, v = row) in its camera's image,
    #                              integer = pixel centre; 0 where invisible
    visible: torch.Tensor        # bool (P,): the point projects into one of its scan's cameras (rule when
    #                              several do: closest to the image centre)


class Batch(_Batch, total=False):
    """The collated batch; ``target``, ``ood_target``, ``raw_label`` and ``ood_kind`` are absent at inference
    (``ood_kind`` also when the data set has no OOD kinds: only synthetic data does)."""

    target: torch.Tensor         # int64 (P,): train id, -1 for ignored and OOD points (no segmentation loss)
    ood_target: torch.Tensor     # int64 (P,): 1 = OOD (anomaly, positive), 0 = ID, -1 = ignored
    raw_label: torch.Tensor      # int64 (P,): the data set's raw id (evaluation protocols map it with their own
    #                              label map, segood.metrics.protocols)
    ood_kind: torch.Tensor       # int64 (P,): kind of the point's OOD object, an index into
    #                              segood.data.ood_kinds.OOD_KIND_NAMES, -1 = none (per-kind results)


BATCH_KEYS: frozenset[str] = frozenset(_Batch.__annotations__)
LABEL_KEYS: frozenset[str] = frozenset(Batch.__annotations__) - BATCH_KEYS
