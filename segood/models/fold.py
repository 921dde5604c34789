"""Inference only: fold every eval-mode BatchNorm into the layer before it.

``y = BN(layer(x))`` with frozen statistics is an affine map per output channel, so it can be
absorbed into the layer's weight and bias: ``s = gamma / sqrt(var + eps)``, ``W' = s * W`` (per
output channel, the weight's first dimension for ``nn.Linear``, ``nn.Conv2d`` and both sparse
backends' convs, whose weight is ``(out, kD, kH, kW, in)``), ``b' = s * (b - mean) + beta``. The
BatchNorm becomes ``nn.Identity`` (after a sparse conv: :class:`AddBias`, as spconv's CPU kernels
take no bias). Outputs equal the unfolded model's up to float rounding
(tests/test_speed.py states the tolerance). Covers the LiDAR point MLP and output layer, every
sparse block of the U-Net (spconv and the torch backend), the ResNet stem, blocks and downsample
paths, and the FPN's last conv; the fusion MLP and heads use LayerNorm (nothing to fold).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["fold_batchnorm", "AddBias"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"))  # ResNet stem and BasicBlock attributes


def _is_foldable(layer: nn.Module) -> bool:
    """A layer whose weight's first dimension is its output channels."""
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or isinstance(layer, _BN + (nn.LayerNorm,)):
        return False
    return isinstance(layer, (nn.Linear, nn.Conv2d)) or hasattr(layer, "indice_key")  # sparse convs


class AddBias(nn.Module):
    """``x + bias`` per channel (last dim): what is left of a BatchNorm folded into a sparse conv,
    whose CPU kernels (spconv) take no bias in eval mode."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


@torch.no_grad()
def _fold(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """Absorb ``bn`` (eval statistics) into ``layer`` in place; returns what replaces ``bn``:
    ``nn.Identity`` (the shift went into ``layer``'s bias, created if it had none) or, for a sparse
    conv, :class:`AddBias`."""
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    weight = layer.weight
    view = (-1,) + (1,) * (weight.dim() - 1)
    old_bias = layer.bias.double() if getattr(layer, "bias", None) is not None else torch.zeros_like(shift)
    weight.copy_((weight.double() * scale.view(view)).to(weight.dtype))
    bias = (old_bias * scale + shift).to(weight.dtype)
    if getattr(layer, "bias", None) is not None:
        layer.bias.copy_(bias)
    elif hasattr(layer, "indice_key"):
        return AddBias(bias)
    else:
        layer.bias = nn.Parameter(bias, requires_grad=False)
    return nn.Identity()


def _fold_sequence(seq: nn.Module) -> None:
    names = list(seq._modules)
    for a, b in zip(names, names[1:]):
        layer, bn = seq._modules[a], seq._modules[b]
        if isinstance(bn, _BN) and _is_foldable(layer) and bn.track_running_stats:
            seq._modules[b] = _fold(layer, bn)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a foldable layer (in a Sequential / a sparse
    Sequential, or as a ResNet ``convN`` / ``bnN`` pair) into it, in place; returns ``model``.
    Refuses a model in training mode (its BatchNorms still learn)."""
    if model.training:
        raise ValueError("fold_batchnorm: the model is in training mode; call model.eval() first")
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential) or type(module).__name__ == "SparseSequential":
            _fold_sequence(module)
        for conv_name, bn_name in _PAIRS:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(bn, _BN) and conv is not None and _is_foldable(conv):
                setattr(module, bn_name, _fold(conv, bn))
    return model
