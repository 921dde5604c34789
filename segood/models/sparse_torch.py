"""Sparse 3-D convolutions in plain torch: the ``torch`` backend of the LiDAR U-Net.

Drop-in for the spconv 2.3 modules the U-Net uses (``SubMConv3d``, ``SparseConv3d``,
``SparseInverseConv3d``, ``SparseSequential``, ``SparseConvTensor``), with the same parameter
names and shapes (weight ``(out, kD, kH, kW, in)``, optional ``bias``), so one checkpoint serves
both backends. Runs on any device torch runs on: tensors never leave their device (one host sync
per kernel map reads its per-offset pair counts).

**Kernel maps.** Voxel coordinates ``[b, z, y, x]`` become int64 keys on a padded grid, sorted
once; one ``torch.searchsorted`` finds every kernel offset's neighbours (submanifold: only the
offsets before the centre are searched, the others are the same pairs swapped; strided k = s:
``o = c // s``). A map is the list of (input row, output row) pairs grouped by offset, with
``bounds`` per offset. Maps are cached in the tensor's ``indice_dict`` under the conv's
``indice_key`` (shared by every tensor derived from the input), as spconv does: all submanifold
convs of a level share one map, and an inverse conv reuses its strided conv's map, transposed.

**Compute: gather - matmul - scatter-add,** as spconv's CPU path: one ``index_select`` of every
pair's input row, one matmul per offset (the only Python loop: over the K offsets, never over
points), one ``index_add_`` into the outputs; the submanifold centre is a dense matmul. The
backward pass reads the same pairs the other way. ``index_add_`` on the CPU adds in index order
(deterministic with any thread count: no race as in spconv's CPU scatter); on CUDA it is atomic.
Under autocast the conv runs in the autocast dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn

IntOrSeq = Union[int, Sequence[int]]


def _triple(value: IntOrSeq) -> tuple[int, int, int]:
    """An int or a 3-sequence -> a 3-tuple of ints."""
    if isinstance(value, int):
        return (value, value, value)
    out = tuple(int(v) for v in value)
    if len(out) != 3:
        raise ValueError(f"expected an int or 3 ints, got {value!r}")
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- tensor


class SparseConvTensor:
    """Active voxels: ``features (N, C)`` at ``indices (N, 4)`` = ``[b, z, y, x]`` (int32).

    ``spatial_shape`` is ``[Z, Y, X]``. ``indice_dict`` holds the kernel maps of one forward
    pass; every tensor derived from this one (``replace_feature``, conv outputs) shares it.
    """

    def __init__(self, features: torch.Tensor, indices: torch.Tensor, spatial_shape: Sequence[int],
                 batch_size: int, indice_dict: Optional[dict] = None) -> None:
        if features.dim() != 2 or indices.dim() != 2 or indices.shape[1] != 4:
            raise ValueError(f"features must be (N, C) and indices (N, 4); got {tuple(features.shape)} "
                             f"and {tuple(indices.shape)}")
        if features.shape[0] != indices.shape[0]:
            raise ValueError(f"features has {features.shape[0]} rows, indices {indices.shape[0]}")
        self.features = features
        self.indices = indices
        self.spatial_shape = [int(s) for s in spatial_shape]
        self.batch_size = int(batch_size)
        self.indice_dict = {} if indice_dict is None else indice_dict

    def replace_feature(self, features: torch.Tensor) -> "SparseConvTensor":
        """Same voxels (and map cache), new features."""
        return SparseConvTensor(features, self.indices, self.spatial_shape, self.batch_size, self.indice_dict)


# ----------------------------------------------------------------------------- kernel maps


@dataclass
class KernelMap:
    """The (input row, output row) pairs of every kernel offset, grouped by offset.

    Offset k's pairs are ``in_rows[bounds[k]:bounds[k + 1]]`` -> ``out_rows[...]``; within one
    offset every input row and every output row occurs at most once, so one offset's scatter-add
    never writes a row twice. ``identity``: the offset whose pairs are all (i, i) (the centre of a
    submanifold kernel); its pairs are not stored, it is one dense matmul.
    """

    n_in: int
    n_out: int
    kernel_volume: int
    in_rows: torch.Tensor
    out_rows: torch.Tensor
    bounds: list[int]
    identity: Optional[int]
    in_indices: torch.Tensor  # the input voxels' coordinates (an inverse conv's output voxels)
    in_shape: list[int]

    def transposed(self) -> "KernelMap":
        """The same pairs read the other way (an inverse convolution's map)."""
        return KernelMap(self.n_out, self.n_in, self.kernel_volume, self.out_rows, self.in_rows, self.bounds,
                         self.identity, self.in_indices, self.in_shape)


def _keys(coords: torch.Tensor, shape: Sequence[int], margin: int) -> torch.Tensor:
    """int64 key per voxel of ``[b, z, y, x]`` on a grid padded by ``margin`` on every side, so that
    adding an offset's scalar delta never wraps into another row or scan."""
    z, y, x = (int(s) + 2 * margin for s in shape)
    c = coords.long() + margin
    return ((coords[:, 0].long() * z + c[:, 1]) * y + c[:, 2]) * x + c[:, 3]


def _offsets(kernel: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """(K, 3) kernel positions (kz, ky, kx) in weight order (row-major over the kernel)."""
    grids = torch.meshgrid(*(torch.arange(k, device=device) for k in kernel), indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], 1)


def _group(valid: torch.Tensor, partner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(K, N) hit mask and partner rows -> (rows, partners, bounds) grouped by offset."""
    k, n = valid.shape
    rows = torch.arange(n, device=valid.device).expand(k, n)[valid]
    counts = valid.sum(1).cumsum(0).tolist()  # the one host sync of a map
    return rows, partner[valid], [0, *counts]


def submanifold_map(x: SparseConvTensor, kernel: tuple[int, int, int]) -> KernelMap:
    """Map of a submanifold conv (odd kernel, centred): output voxels = input voxels.

    Only the offsets before the centre are searched: offset K-1-k is offset k's pairs swapped."""
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"submanifold convolution needs an odd kernel, got {kernel}")
    margin = max(kernel) // 2
    device = x.indices.device
    keys = _keys(x.indices, x.spatial_shape, margin)
    n = keys.shape[0]
    sorted_keys, order = torch.sort(keys)
    volume = math.prod(kernel)
    centre = volume // 2
    offsets = _offsets(kernel, device)[:centre] - torch.tensor([k // 2 for k in kernel], device=device)
    _, y, xx = (int(s) + 2 * margin for s in x.spatial_shape)
    deltas = (offsets[:, 0] * y + offsets[:, 1]) * xx + offsets[:, 2]  # (centre,)
    query = deltas[:, None] + keys[None, :]  # (centre, N): neighbour of output o through offset k
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=max(n - 1, 0))
    hit = sorted_keys[pos] == query if n else torch.zeros_like(query, dtype=torch.bool)
    outs, ins, bounds = _group(hit, order[pos])
    half = len(ins)
    # offset K-1-k (k < centre, in reverse) = offset k with inputs and outputs swapped; centre: identity
    flip_in = [outs[bounds[k]:bounds[k + 1]] for k in reversed(range(centre))]
    flip_out = [ins[bounds[k]:bounds[k + 1]] for k in reversed(range(centre))]
    in_rows = torch.cat([ins, *flip_in])
    out_rows = torch.cat([outs, *flip_out])
    sizes = [bounds[k + 1] - bounds[k] for k in range(centre)]
    all_bounds = [*bounds, half]  # centre offset: no stored pairs
    for size in reversed(sizes):
        all_bounds.append(all_bounds[-1] + size)
    return KernelMap(n, n, volume, in_rows, out_rows, all_bounds, centre, x.indices, x.spatial_shape)


def strided_map(x: SparseConvTensor, kernel: tuple[int, int, int], stride: tuple[int, int, int],
                padding: tuple[int, int, int]) -> tuple[KernelMap, torch.Tensor, list[int]]:
    """Map of a regular (strided) sparse conv: output voxels are every site any input reaches.

    Returns the map, the output coordinates ``(N_out, 4)`` int32 (sorted by [b, z, y, x]) and the
    output spatial shape ``(S + 2p - k) // s + 1`` per axis (spconv's rule: inputs that fall
    outside every window, e.g. the last plane of an odd-sized axis at k = s = 2, are dropped).
    """
    device = x.indices.device
    s_t, p_t = torch.tensor(stride, device=device), torch.tensor(padding, device=device)
    out_shape = [(int(s) + 2 * p - k) // st + 1 for s, k, st, p in zip(x.spatial_shape, kernel, stride, padding)]
    if min(out_shape) <= 0:
        raise ValueError(f"strided conv: spatial shape {x.spatial_shape} is smaller than the kernel {kernel}")
    coords = x.indices.long()
    if kernel == stride and padding == (0, 0, 0):  # one window per input: o = c // s, offset = c % s
        o = torch.div(coords[:, 1:], s_t, rounding_mode="floor")
        r = coords[:, 1:] - o * s_t
        slot = (r[:, 0] * kernel[1] + r[:, 1]) * kernel[2] + r[:, 2]
        inside = (o < torch.tensor(out_shape, device=device)).all(1)
        valid = (slot[None, :] == torch.arange(math.prod(kernel), device=device)[:, None]) & inside[None, :]
        o = o[None].expand(valid.shape[0], -1, -1)
    else:
        offsets = _offsets(kernel, device)  # (K, 3)
        num = coords[None, :, 1:] + p_t - offsets[:, None]  # (K, N, 3): s * o
        o = torch.div(num, s_t, rounding_mode="floor")
        valid = ((num - o * s_t) == 0).all(2) & (o >= 0).all(2) & (o < torch.tensor(out_shape, device=device)).all(2)
    k, n_in = valid.shape
    cand = torch.cat([coords[None, :, :1].expand(k, n_in, 1), o], 2)[valid]  # (pairs, 4), grouped by offset
    out_keys, inverse = torch.unique(_keys(cand, out_shape, 0), sorted=True, return_inverse=True)
    out_coords = torch.empty(out_keys.shape[0], 4, dtype=torch.long, device=device)
    out_coords[inverse] = cand
    partner = torch.zeros(k, n_in, dtype=torch.long, device=device)
    partner[valid] = inverse
    in_rows, out_rows, bounds = _group(valid, partner)
    kmap = KernelMap(n_in, out_keys.shape[0], k, in_rows, out_rows, bounds, None, x.indices, x.spatial_shape)
    return kmap, out_coords.int(), out_shape


# ----------------------------------------------------------------------------- compute


def _offset_mm(rows: torch.Tensor, weight: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    """``rows[bounds[k]:bounds[k+1]] @ weight[k]`` for every offset k, into one (P, C_out) tensor."""
    out = rows.new_empty(rows.shape[0], weight.shape[2])
    for k in range(weight.shape[0]):
        s, e = bounds[k], bounds[k + 1]
        if e > s:
            torch.mm(rows[s:e], weight[k], out=out[s:e])
    return out


def _conv_forward(features: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """``out[o] = sum over pairs (i, o, k) of features[i] @ weight[k]``; weight (K, C_in, C_out).

    One gather of every pair's input row, one matmul per offset, one scatter-add (a fixed order:
    deterministic on the CPU; atomics on CUDA)."""
    if kmap.identity is not None:
        out = features @ weight[kmap.identity]
    else:
        out = features.new_zeros(kmap.n_out, weight.shape[2])
    if kmap.in_rows.numel():
        products = _offset_mm(features.index_select(0, kmap.in_rows), weight, kmap.bounds)
        out.index_add_(0, kmap.out_rows, products)
    return out


def _conv_backward(features: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, grad_out: torch.Tensor,
                   need_input: bool, need_weight: bool) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients wrt features (the same pairs read backwards) and weight (K, C_in, C_out)."""
    grad_in = grad_w = None
    grads = grad_out.index_select(0, kmap.out_rows) if kmap.out_rows.numel() else None
    if need_input:
        grad_in = (grad_out @ weight[kmap.identity].t() if kmap.identity is not None
                   else grad_out.new_zeros(kmap.n_in, weight.shape[1]))
        if grads is not None:
            grad_in.index_add_(0, kmap.in_rows, _offset_mm(grads, weight.transpose(1, 2), kmap.bounds))
    if need_weight:
        grad_w = weight.new_zeros(weight.shape)
        if kmap.identity is not None:
            torch.mm(features.t(), grad_out, out=grad_w[kmap.identity])
        if grads is not None:
            rows = features.index_select(0, kmap.in_rows)
            for k in range(kmap.kernel_volume):
                s, e = kmap.bounds[k], kmap.bounds[k + 1]
                if e > s:
                    torch.mm(rows[s:e].t(), grads[s:e], out=grad_w[k])
    return grad_in, grad_w


class _SparseConvFunction(torch.autograd.Function):
    """features (N_in, C_in), weight (K, C_in, C_out) -> (N_out, C_out) through a KernelMap.

    Backward re-gathers the inputs instead of keeping every offset's gathered rows."""

    @staticmethod
    def forward(ctx, features, weight, kmap):  # type: ignore[override]
        ctx.kmap = kmap
        ctx.save_for_backward(features, weight)
        return _conv_forward(features, weight, kmap)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        features, weight = ctx.saved_tensors
        grad_in, grad_w = _conv_backward(features, weight, ctx.kmap, grad_out.contiguous(),
                                         ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return grad_in, grad_w, None


def sparse_conv(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                kmap: KernelMap) -> torch.Tensor:
    """Apply a spconv-layout weight ``(C_out, kD, kH, kW, C_in)`` through ``kmap``.

    Under autocast the features and weight are cast to the autocast dtype first (as autocast
    does for a matmul) and the whole op runs in it."""
    device_type = features.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        features, weight = features.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    c_out, c_in = weight.shape[0], weight.shape[-1]
    w = weight.reshape(c_out, -1, c_in).permute(1, 2, 0).contiguous()  # (K, C_in, C_out)
    with torch.autocast(device_type, enabled=False):
        out = _SparseConvFunction.apply(features.contiguous(), w, kmap)
        return out + bias if bias is not None else out


# ----------------------------------------------------------------------------- modules


class _SparseConvModule(nn.Module):
    """Weight (out, kD, kH, kW, in) and optional bias, initialised as spconv does."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrSeq, stride: IntOrSeq,
                 padding: IntOrSeq, bias: bool, indice_key: Optional[str]) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = _triple(kernel_size), _triple(stride), _triple(padding)
        self.indice_key = indice_key
        self.weight = nn.Parameter(torch.zeros(out_channels, *self.kernel_size, in_channels))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform with a = sqrt(5) over fan_in = in * kernel volume (spconv 2.3's rule)."""
        fan_in = self.in_channels * math.prod(self.kernel_size)
        bound = math.sqrt(3.0) * nn.init.calculate_gain("leaky_relu", math.sqrt(5)) / math.sqrt(fan_in)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, indice_key={self.indice_key!r}, bias={self.bias is not None}")


class SubMConv3d(_SparseConvModule):
    """Submanifold conv: outputs on exactly the input voxels (maps shared per ``indice_key``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrSeq = 3, stride: IntOrSeq = 1,
                 padding: IntOrSeq = 0, bias: bool = True, indice_key: Optional[str] = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, 1, padding, bias, indice_key)

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        kmap = x.indice_dict.get(self.indice_key) if self.indice_key else None
        if kmap is None or kmap.identity is None or kmap.kernel_volume != math.prod(self.kernel_size):
            kmap = submanifold_map(x, self.kernel_size)
            if self.indice_key:
                x.indice_dict[self.indice_key] = kmap
        return x.replace_feature(sparse_conv(x.features, self.weight, self.bias, kmap))


class SparseConv3d(_SparseConvModule):
    """Regular strided conv; its map is stored under ``indice_key`` for the paired inverse conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrSeq = 3, stride: IntOrSeq = 1,
                 padding: IntOrSeq = 0, bias: bool = True, indice_key: Optional[str] = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias, indice_key)

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        kmap, coords, shape = strided_map(x, self.kernel_size, self.stride, self.padding)
        if self.indice_key:
            x.indice_dict[self.indice_key] = kmap
        out = sparse_conv(x.features, self.weight, self.bias, kmap)
        return SparseConvTensor(out, coords, shape, x.batch_size, x.indice_dict)


class SparseInverseConv3d(_SparseConvModule):
    """Undo the ``SparseConv3d`` stored under ``indice_key``: back onto its input voxels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrSeq, bias: bool = True,
                 indice_key: Optional[str] = None) -> None:
        if not indice_key:
            raise ValueError("SparseInverseConv3d needs the indice_key of its SparseConv3d")
        super().__init__(in_channels, out_channels, kernel_size, 1, 0, bias, indice_key)

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:
        kmap = x.indice_dict.get(self.indice_key)
        if kmap is None:
            raise KeyError(f"SparseInverseConv3d: no SparseConv3d ran with indice_key {self.indice_key!r}")
        if kmap.n_out != x.features.shape[0] or kmap.kernel_volume != math.prod(self.kernel_size):
            raise ValueError(f"SparseInverseConv3d {self.indice_key!r}: the input is not the output "
                             f"of the paired SparseConv3d")
        inv = kmap.transposed()
        out = sparse_conv(x.features, self.weight, self.bias, inv)
        return SparseConvTensor(out, kmap.in_indices, kmap.in_shape, x.batch_size, x.indice_dict)


class SparseSequential(nn.Sequential):
    """Sequential over a SparseConvTensor: sparse convs see the tensor, other modules its features."""

    def forward(self, x: SparseConvTensor) -> SparseConvTensor:  # type: ignore[override]
        for module in self:
            if isinstance(module, _SparseConvModule):
                x = module(x)
            else:
                x = x.replace_feature(module(x.features))
        return x
