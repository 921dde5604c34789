"""Image branch: ResNet-18/34 encoder, light FPN decoder, per-point sampling.

The encoder's parameter/buffer names are exactly torchvision's ``resnet18`` /
``resnet34`` state-dict names (minus ``fc.*``), so an ImageNet checkpoint saved
from torchvision loads with :func:`load_pretrained` without torchvision being
importable.  Nothing is ever downloaded.

Geometry convention (used by the decoder and by :func:`sample_points`): pixel
coordinates are continuous with integer values at pixel centres (u = column,
v = row, as produced by a pinhole projection).  With ResNet's symmetric
padding, cell ``j`` of a stride-``s`` feature map is centred on input pixel
``s * j``, so a pixel ``u`` lies at feature coordinate ``u / s``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (same attribute names)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet-18/34 trunk returning the stride 4, 8, 16, 32 feature maps.

    ``width_scale`` != 1 narrows every layer (faster on CPU) but then ImageNet
    weights no longer fit; :func:`load_pretrained` says so.
    """

    def __init__(self, depth: int = 18, width_scale: float = 1.0) -> None:
        super().__init__()
        if depth not in _LAYERS:
            raise ValueError(f"ResNet depth must be one of {sorted(_LAYERS)}, got {depth!r}")
        if not width_scale > 0:
            raise ValueError(f"width_scale must be > 0, got {width_scale!r}")
        self.depth = depth
        self.width_scale = float(width_scale)
        widths = [max(8, int(round(w * width_scale))) for w in (64, 128, 256, 512)]
        self.widths = widths
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = widths[0]
        for i, (w, n) in enumerate(zip(widths, _LAYERS[depth])):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(c_in, w, stride)] + [BasicBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = w

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Image (B, 3, H, W) -> [C2 (stride 4), C3 (8), C4 (16), C5 (32)]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats

    def load_pretrained(self, path: str | Path) -> None:
        """Load a torchvision ResNet checkpoint from disk (see :func:`load_pretrained`)."""
        load_pretrained(self, path)


def _unwrap_state_dict(obj: object) -> dict:
    """Accept a bare state dict or one nested under 'state_dict'/'model'; strip 'module.'."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict, got {type(obj).__name__}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_pretrained(encoder: ResNetEncoder, path: str | Path) -> None:
    """Load ImageNet weights saved from torchvision ``resnetXX().state_dict()``.

    ``fc.*`` is ignored; every other key must match in name and shape (strict),
    otherwise a ValueError names the file and the missing / unexpected /
    mis-shaped keys.  Reads with ``weights_only=True``; never downloads.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained ResNet checkpoint not found: {path}")
    try:
        state = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # unreadable / not a state dict
        raise ValueError(f"cannot read pretrained ResNet checkpoint {path}: {exc}") from exc
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"checkpoint {path} does not fit resnet{encoder.depth} "
            f"(width_scale={encoder.width_scale}): missing keys {missing}, "
            f"unexpected keys {unexpected}, shape mismatches {mis_shaped}"
        )
    encoder.load_state_dict(state, strict=True)


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear 2x upsampling that respects the "cell j centred at s*j" convention.

    Fine cell i must read coarse coordinate i / 2.  Replicate-pad one cell,
    resize to 2n+1 with ``align_corners=True`` (output i -> input i/2 exactly),
    then crop to ``size`` (at most 2n, as produced by a stride-2 conv).
    """
    h, w = x.shape[-2:]
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    x = F.interpolate(x, size=(2 * h + 1, 2 * w + 1), mode="bilinear", align_corners=True)
    return x[..., : size[0], : size[1]]


class FPNDecoder(nn.Module):
    """Light FPN: 1x1 laterals, top-down sum, one 3x3 conv at stride 4."""

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Conv2d(c, out_channels, 1, bias=False) for c in in_channels
        )
        self.smooth = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """[C2..C5] -> (B, out_channels, H/4, W/4)."""
        x = self.lateral[-1](feats[-1])
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            x = lateral(f) + upsample_to(x, f.shape[-2:])
        return self.smooth(x)


def sample_points(
    fmap: torch.Tensor, uv: torch.Tensor, stride: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Bilinearly sample a (C, Hf, Wf) feature map at input-pixel coords ``uv`` (N, 2).

    Pixel u maps to feature coordinate u / stride (see module docstring); with
    ``align_corners=True`` grid_sample's -1 / +1 are the centres of the first /
    last cells, so normalised x = 2 * (u / stride) / (Wf - 1) - 1.  Points past
    the last cell centre are clamped (``padding_mode='border'``).  Returns (N, C).
    """
    c, hf, wf = fmap.shape
    f = uv / stride
    scale = torch.tensor([max(wf - 1, 1), max(hf - 1, 1)], dtype=uv.dtype, device=uv.device)
    grid = 2.0 * f / scale - 1.0
    sampled = F.grid_sample(
        fmap[None], grid.view(1, 1, -1, 2).to(fmap.dtype),
        mode="bilinear", padding_mode="border", align_corners=True,
    )
    return sampled.view(c, -1).t()


class ImageBranch(nn.Module):
    """Batch -> per-point image features (P, out_channels).

    Each visible point samples its own scan's decoded feature map at
    ``pixel_uv``; invisible points (or all points if the batch has no images)
    get the learned ``placeholder`` vector.
    """

    stride = 4
    channels_last = False  # NHWC images (set with the weights by segood.engine.runtime.set_channels_last)

    def __init__(self, depth: int, out_channels: int, width_scale: float) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(depth, width_scale)
        self.decoder = FPNDecoder(self.encoder.widths, out_channels)
        self.placeholder = nn.Parameter(0.1 * torch.randn(out_channels))
        self.out_channels = out_channels

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> decoded maps (B, out_channels, ~H/4, ~W/4)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.decoder(self.encoder(images))

    def forward(self, batch: dict) -> torch.Tensor:
        """Per-point image features (P, out_channels)."""
        n_points = batch["points"].shape[0]
        out = self.placeholder.expand(n_points, -1)
        images = batch.get("images")
        if images is None:
            return out.clone()
        fmaps = self.feature_maps(images)
        image_idx = batch.get("image_idx", batch["batch_idx"])  # several cameras per scan: one image each
        sels, vals = [], []
        for b in range(fmaps.shape[0]):
            sel = torch.nonzero(batch["visible"] & (image_idx == b), as_tuple=True)[0]
            sels.append(sel)
            vals.append(sample_points(fmaps[b], batch["pixel_uv"][sel], self.stride))
        return out.index_copy(0, torch.cat(sels), torch.cat(vals))
