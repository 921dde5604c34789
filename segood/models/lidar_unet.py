"""LiDAR branch: a sparse voxel U-Net plus a per-point MLP.

Voxels go through a SubMConv3d encoder with stride-2 ``SparseConv3d``
downsampling, then a decoder that undoes each downsampling with the paired
``SparseInverseConv3d`` (same ``indice_key``) and merges the skip (sum or concatenation).
Voxel features are gathered back to points through ``point2voxel`` and joined
with an MLP on the raw point (x, y, z, intensity), so points sharing a voxel
still differ: the result is the per-point LiDAR feature ``f_l`` (d_l dims).

The sparse layers come from the backend ``model.lidar.backend`` names
(:mod:`segood.models.sparse_backend`: spconv, or the pure-torch
:mod:`segood.models.sparse_torch`); both have the same parameter names and
shapes, so the state dict does not depend on the backend.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Sequence

import torch
from torch import nn

from segood.models import gather
from segood.models.sparse_backend import resolve_backend, run_sparse, sparse_ops


def _subm_block(ops: ModuleType, c_in: int, c_out: int, key: str) -> nn.Module:
    """SubMConv3d 3x3x3 + BatchNorm1d + ReLU (keeps the active voxel set)."""
    return ops.SparseSequential(
        ops.SubMConv3d(c_in, c_out, 3, padding=1, bias=False, indice_key=key),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


def _down_block(ops: ModuleType, c_in: int, c_out: int, key: str) -> nn.Module:
    """Stride-2 SparseConv3d (2x2x2) + BN + ReLU; ``key`` pairs it with its inverse."""
    return ops.SparseSequential(
        ops.SparseConv3d(c_in, c_out, 2, stride=2, bias=False, indice_key=key),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


def _up_block(ops: ModuleType, c_in: int, c_out: int, key: str) -> nn.Module:
    """SparseInverseConv3d back onto the voxels of the paired down block."""
    return ops.SparseSequential(
        ops.SparseInverseConv3d(c_in, c_out, 2, bias=False, indice_key=key),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


class SparseUNet(nn.Module):
    """Voxel U-Net: features (V, in) at level 0 -> features (V, channels[0]).

    ``channels[i]`` is the width at level i (level i has stride 2**i).  Each
    level has one SubM block; each decoder step is inverse-conv, skip
    (``"add"``: sum, cheaper; ``"concat"``: concatenation), SubM block.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], skip: str = "add",
                 ops: ModuleType | None = None) -> None:
        super().__init__()
        if skip not in ("add", "concat"):
            raise ValueError(f"skip must be 'add' or 'concat', got {skip!r}")
        ops = ops if ops is not None else sparse_ops("torch")
        self.channels = list(channels)
        self.skip = skip
        self.stem = _subm_block(ops, in_channels, channels[0], "subm0")
        self.down = nn.ModuleList()
        self.enc = nn.ModuleList()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(1, len(channels)):
            c_prev, c = channels[i - 1], channels[i]
            self.down.append(_down_block(ops, c_prev, c, f"down{i}"))
            self.enc.append(_subm_block(ops, c, c, f"subm{i}"))
            self.up.append(_up_block(ops, c, c_prev, f"down{i}"))
            c_dec = 2 * c_prev if skip == "concat" else c_prev
            self.dec.append(_subm_block(ops, c_dec, c_prev, f"subm{i - 1}"))

    @property
    def out_channels(self) -> int:
        return self.channels[0]

    def _merge(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Join upsampled and skip features (same voxels, same order)."""
        return up + skip if self.skip == "add" else torch.cat([up, skip], dim=1)

    def forward(self, x: Any) -> Any:
        """Sparse tensor in, sparse tensor on the same voxels out."""
        x = self.stem(x)
        skips = []
        for down, enc in zip(self.down, self.enc):
            skips.append(x)
            x = enc(down(x))
        for i in reversed(range(len(self.up))):
            x = self.up[i](x)
            skip = skips[i]
            x = x.replace_feature(self._merge(x.features, skip.features))
            x = self.dec[i](x)
        return x


def _mlp(c_in: int, c_hidden: int, c_out: int) -> nn.Sequential:
    """Two Linear+BN+ReLU layers for per-point features."""
    return nn.Sequential(
        nn.Linear(c_in, c_hidden, bias=False),
        nn.BatchNorm1d(c_hidden),
        nn.ReLU(inplace=True),
        nn.Linear(c_hidden, c_out, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


class LidarBranch(nn.Module):
    """Batch -> per-point LiDAR features (P, out_channels).

    ``backend``: ``auto`` | ``spconv`` | ``torch`` (:func:`segood.models.sparse_backend.resolve_backend`);
    the resolved name is ``self.backend``.

    Uses ``voxel_feats``, ``voxel_coords``, ``spatial_shape``, ``batch_size``,
    ``point2voxel`` and ``points`` from the batch (:class:`segood.data.batch.Batch`).
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        out_channels: int,
        point_hidden: int,
        skip: str,
        backend: str,
        point_channels: int = 4,
    ) -> None:
        super().__init__()
        self.backend = resolve_backend(backend)
        self.unet = SparseUNet(in_channels, channels, skip, sparse_ops(self.backend))
        self.point_mlp = _mlp(point_channels, point_hidden, point_hidden)
        self.out = nn.Sequential(
            nn.Linear(self.unet.out_channels + point_hidden, out_channels, bias=False),
            nn.BatchNorm1d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.out_channels = out_channels

    def voxel_features(self, batch: dict) -> torch.Tensor:
        """Run the sparse U-Net and return voxel features (V, channels[0])."""
        coords = batch["voxel_coords"].int()
        shape = [int(s) for s in batch["spatial_shape"]]
        bs = int(batch["batch_size"])
        ops = sparse_ops(self.backend)

        def fn(feats: torch.Tensor) -> torch.Tensor:
            x = ops.SparseConvTensor(feats, coords, shape, bs)
            return self.unet(x).features

        feats = batch["voxel_feats"]
        # fp32 under autocast too: spconv's CPU kernels have no bf16, and the sums over kernel
        # offsets keep their fp32 accuracy with either backend
        with torch.autocast(feats.device.type, enabled=False):
            return run_sparse(self.backend, fn, feats.float(), list(self.unet.parameters()))

    def forward(self, batch: dict) -> torch.Tensor:
        """Per-point feature = Linear-BN-ReLU([voxel feature at point2voxel, MLP(raw point)]).

        One layer only: it runs on every point (P ~ 64k per step), so it is
        where width costs most.
        """
        voxel = self.voxel_features(batch)
        per_point = gather.rows(voxel, batch["point2voxel"])  # voxel[point2voxel], cheaper backward
        raw = self.point_mlp(batch["points"])
        return self.out(torch.cat([per_point, raw], dim=1))
