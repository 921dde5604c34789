"""FusionSegmenter: LiDAR + image per-point features, fused, with OOD heads.

One ``forward`` for training and evaluation.  The stages are separate methods
(``encode`` -> ``fuse`` -> ``heads``) because outlier synthesis (Feature
Mixing, NP-Mix, ...) works on the per-modality features right before fusion
and sends its outliers through the same ``fuse`` and ``heads``.

The fusion MLP and the heads use LayerNorm, not BatchNorm: outliers pass
through them in a separate call, and BatchNorm would mix outlier statistics
into its running estimates and make eval behave differently from training.

Points the camera does not see (``visible`` False, or a batch without images) get their camera
feature from ``out_of_view``: ``placeholder`` (one learned vector shared by all of them, the image
branch's) or ``predicted`` (MSeg3D-style completion: a small MLP predicts a pseudo-camera feature
from each point's LiDAR feature; the objective fits it to the detached real camera features on
visible points, ``loss.out_of_view_mse``). Either way the same forward serves training, evaluation,
the viewer and replay of LiDAR-only frames.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from segood.models.image_net import ImageBranch
from segood.models.lidar_unet import LidarBranch

Synthesizer = Callable[
    [torch.Tensor, torch.Tensor, dict], "tuple[torch.Tensor, torch.Tensor, torch.Tensor]"
]


def _ln_mlp(c_in: int, c_hidden: int, c_out: int) -> nn.Sequential:
    """Linear-LayerNorm-ReLU twice (per-point, batch-composition independent)."""
    return nn.Sequential(
        nn.Linear(c_in, c_hidden),
        nn.LayerNorm(c_hidden),
        nn.ReLU(inplace=True),
        nn.Linear(c_hidden, c_out),
        nn.LayerNorm(c_out),
        nn.ReLU(inplace=True),
    )


def standardize_outputs(block: nn.Sequential, norm: nn.Module) -> None:
    """Turn a branch's final ``[layer, BatchNorm, ReLU]`` into ``[layer, BatchNorm(affine=False)]``."""
    if not (len(block) == 3 and isinstance(block[1], nn.modules.batchnorm._BatchNorm) and isinstance(block[2], nn.ReLU)):
        raise ValueError(f"expected a [layer, BatchNorm, ReLU] output block, got {block}")
    block[1], block[2] = norm, nn.Identity()


class FusionSegmenter(nn.Module):
    """Late-fusion point segmenter with per-modality heads and an anomaly head.

    Output dict of :meth:`forward` (P points, C classes):
    ``logits`` (P, C) fused head, ``logits_lidar`` / ``logits_image`` (P, C)
    modality heads, ``anomaly_logit`` (P,), ``feat_image`` (P, d_c),
    ``feat_lidar`` (P, d_l), ``fused`` (P, d_f); with a synthesizer also
    ``outlier_index`` (M,), ``outlier_logits`` (M, C), ``outlier_anomaly_logit`` (M,).
    """

    def __init__(self, lidar: LidarBranch, image: ImageBranch, num_classes: int, hidden: int,
                 modality_norm: str, out_of_view: str = "placeholder", extra_logit: bool = False,
                 completion_trains_lidar: bool = True) -> None:
        super().__init__()
        self.lidar = lidar
        self.image = image
        self.num_classes = num_classes
        d_l, d_c = lidar.out_channels, image.out_channels
        self.fusion = _ln_mlp(d_c + d_l + 1, hidden, hidden)
        self.seg_head = nn.Linear(hidden, num_classes)
        # A (K+1)-th "outlier class" logit for the k_plus_one outlier loss: its own linear layer on the
        # fused feature (together with seg_head, one (K+1)-way classifier), so ``logits`` stay the K ID
        # logits every score, the mIoU and the fitted scores read; the extra one is ``extra_logit``.
        self.extra_head = nn.Linear(hidden, 1) if extra_logit else None
        # Pseudo-camera features for points without a projection (MSeg3D's completion).
        self.camera_completion = (nn.Sequential(nn.Linear(d_l, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_c))
                                  if out_of_view == "predicted" else None)
        self.completion_trains_lidar = completion_trains_lidar
        self.anomaly_head = nn.Sequential(
            nn.Linear(hidden, hidden // 2), nn.ReLU(inplace=True), nn.Linear(hidden // 2, 1)
        )
        self.lidar_head = nn.Linear(d_l, num_classes)
        self.image_head = nn.Linear(d_c, num_classes)
        # Feature Mixing swaps values between the modalities. If their feature dims have different
        # ranges (each branch ends in its own BatchNorm affine + ReLU), a swapped value is out of the
        # receiving dim's range and the anomaly head can key on that instead of real anomalies.
        # "layernorm": both modalities zero-mean / unit-variance per point; "standardize": each branch
        # ends in a BatchNorm without affine and no ReLU, so every dim of both modalities is
        # zero-mean / unit-variance over points (no exact zeros, no per-dim offsets to key on).
        layer = modality_norm == "layernorm"
        self.norm_image = nn.LayerNorm(d_c, elementwise_affine=False) if layer else nn.Identity()
        self.norm_lidar = nn.LayerNorm(d_l, elementwise_affine=False) if layer else nn.Identity()
        if modality_norm == "standardize":
            standardize_outputs(lidar.out, nn.BatchNorm1d(d_l, affine=False))
            standardize_outputs(image.decoder.smooth, nn.BatchNorm2d(d_c, affine=False))

    def encode(self, batch: dict, branches: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
        """Per-point features of each modality: feat_image (P, d_c), feat_lidar (P, d_l).

        ``branches``: the image and LiDAR branches' outputs, computed already (the training step's
        :class:`segood.engine.parallel_branches.BranchCut` runs them at once); None: run them here."""
        image, lidar = branches if branches is not None else (self.image(batch), self.lidar(batch))
        fi, fl = self.norm_image(image), self.norm_lidar(lidar)
        common = torch.promote_types(fi.dtype, fl.dtype)  # under autocast the branches may differ
        return {"feat_image": fi.to(common), "feat_lidar": fl.to(common)}

    def fuse(self, feat_image: torch.Tensor, feat_lidar: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Concatenate both modalities and the visibility flag, then MLP -> (P, d_f)."""
        flag = visible.to(feat_lidar.dtype).view(-1, 1)
        return self.fusion(torch.cat([feat_image, feat_lidar, flag], dim=1))

    def encoders(self) -> list[nn.Module]:
        """The per-modality encoders (frozen in ``train.outlier_phase``); the rest is fusion and heads."""
        return [self.lidar, self.image]

    def fusion_modules(self) -> list[nn.Module]:
        """What lies between the encoders and the heads: the fusion MLP and the camera completion
        (also frozen in an outlier phase that trains the heads only)."""
        return [m for m in (self.fusion, self.camera_completion) if m is not None]

    def heads(self, fused: torch.Tensor) -> dict:
        """Fused segmentation logits (P, C), anomaly logit (P,), and with an extra head its logit (P,)."""
        out = {
            "logits": self.seg_head(fused),
            "anomaly_logit": self.anomaly_head(fused).squeeze(1),
        }
        if self.extra_head is not None:
            out["extra_logit"] = self.extra_head(fused).squeeze(1)
        return out

    def complete_camera(self, feat_image: torch.Tensor, feat_lidar: torch.Tensor,
                        visible: torch.Tensor) -> dict:
        """Camera features of every point: the real ones where visible, else (``predicted``) the
        completion MLP's prediction from the LiDAR feature; ``feat_image_predicted`` (P, d_c) is
        returned for the objective's MSE on visible points (in training without
        ``completion_trains_lidar``: predicted from the detached LiDAR feature, so that the MSE trains the
        completion MLP only). No-op for ``placeholder``."""
        if self.camera_completion is None:
            return {"feat_image": feat_image}
        predicted = self.camera_completion(feat_lidar)
        fitted = (self.camera_completion(feat_lidar.detach()) if self.training and not self.completion_trains_lidar
                  else predicted)
        return {"feat_image": torch.where(visible.view(-1, 1), feat_image, predicted),
                "feat_image_predicted": fitted}

    def _visible(self, batch: dict, n_points: int, device: torch.device) -> torch.Tensor:
        """Visibility mask; all False when the batch has no images."""
        if batch.get("images") is None or "visible" not in batch:
            return torch.zeros(n_points, dtype=torch.bool, device=device)
        return batch["visible"]

    def forward(self, batch: dict, synthesize: Optional[Synthesizer] = None,
                branches: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
        """Encode (``branches``: the branch outputs, see :meth:`encode`), fuse and run all heads;
        optionally synthesize and score outliers."""
        out = self.encode(batch, branches)
        fl = out["feat_lidar"]
        visible = self._visible(batch, fl.shape[0], fl.device)
        out.update(self.complete_camera(out["feat_image"], fl, visible))
        fi = out["feat_image"]
        fused = self.fuse(fi, fl, visible)
        out.update(self.heads(fused))
        out["fused"] = fused
        out["logits_lidar"] = self.lidar_head(fl)
        out["logits_image"] = self.image_head(fi)
        if synthesize is not None:
            index, mixed_image, mixed_lidar = synthesize(fi, fl, batch)
            out.update(self.score_outliers(index, mixed_image, mixed_lidar, visible[index]))
        return out

    def lidar_features(self, batch: dict) -> torch.Tensor:
        """Inference: the LiDAR branch's normalised per-point features (P, d_l), as in :meth:`encode`."""
        return self.norm_lidar(self.lidar(batch))

    def image_features(self, batch: dict) -> torch.Tensor:
        """Inference: the image branch's normalised per-point features (P, d_c), as in :meth:`encode`;
        reads only ``points`` (for P), ``images``, ``image_idx`` / ``batch_idx``, ``visible`` and
        ``pixel_uv`` (:func:`segood.data.batching.camera_inputs`), so it can start before voxelising."""
        return self.norm_image(self.image(batch))

    def infer(self, batch: dict, stage: Callable[[str], ContextManager] | None = None) -> "LazyOutput":
        """Inference: the forward's features, with each head computed only when read (fp32).

        ``stage(name)`` wraps each stage (``lidar``, ``image``, ``fusion``) in a context manager,
        e.g. a timer; the heads run in the caller's reads (``out["logits"]``)."""
        stage = stage or (lambda name: contextlib.nullcontext())
        with stage("lidar"):
            fl = self.lidar_features(batch)
        with stage("image"):
            fi = self.image_features(batch)
        return self.infer_features(batch, fl, fi, stage)

    def infer_features(self, batch: dict, fl: torch.Tensor, fi: torch.Tensor,
                       stage: Callable[[str], ContextManager] | None = None,
                       lidar_term: torch.Tensor | None = None) -> "LazyOutput":
        """:meth:`infer` from the two branches' features (computed by the caller, e.g. at the same
        time: :class:`segood.engine.inference.Predictor` with ``inference.parallel_branches``), and
        optionally the fusion's :meth:`fusion_lidar_term` (computed beside the image branch)."""
        stage = stage or (lambda name: contextlib.nullcontext())
        with stage("fusion"):
            common = torch.promote_types(fi.dtype, fl.dtype)
            fi, fl = fi.to(common), fl.to(common)
            visible = self._visible(batch, fl.shape[0], fl.device)
            if self.camera_completion is None:
                fused = self._fuse_split(fi, fl, visible, lidar_term)
            else:  # predicted camera features differ per point: no shared placeholder to split out
                fi = self.complete_camera(fi, fl, visible)["feat_image"]
                fused = self.fuse(fi, fl, visible)
        return LazyOutput(self, {"feat_image": fi, "feat_lidar": fl, "fused": fused})

    def fusion_lidar_term(self, feat_lidar: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Inference: the fusion's first layer for every point as if the camera saw none (LiDAR
        term, bias, the placeholder camera feature's term); :meth:`_fuse_split` adds the seen points'
        camera terms. Needs no image features, so it can run beside the image branch. Only for
        ``out_of_view: placeholder`` (the predicted camera features of ``predicted`` need them)."""
        first, d_c = self.fusion[0], self.image.out_channels
        h = F.linear(feat_lidar, first.weight[:, d_c:-1], first.bias)
        if not bool(visible.all()):
            h += F.linear(self._placeholder_feature(h.dtype), first.weight[:, :d_c])
        return h

    def _placeholder_feature(self, dtype: torch.dtype) -> torch.Tensor:
        """(1, d_c): the normalised image feature of every point the camera does not see (the image
        branch gives them its placeholder; the normalisation is per point)."""
        return self.norm_image(self.image.placeholder.view(1, -1)).to(dtype)

    def _fuse_split(self, feat_image: torch.Tensor, feat_lidar: torch.Tensor, visible: torch.Tensor,
                    lidar_term: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`fuse` without the (P, d_c + d_l + 1) concatenation, for inference: the first
        layer's matmul split by modality, and the image part computed once for every point the
        camera does not see (they all carry the same placeholder feature). Equal to :meth:`fuse`
        up to float rounding."""
        first, d_c = self.fusion[0], feat_image.shape[1]
        w_image, w_flag = first.weight[:, :d_c], first.weight[:, -1]
        h = self.fusion_lidar_term(feat_lidar, visible) if lidar_term is None else lidar_term
        rows = torch.nonzero(visible, as_tuple=True)[0]
        if rows.numel():
            seen = F.linear(feat_image[rows], w_image) + w_flag.to(h.dtype)
            if rows.numel() < visible.numel():
                seen -= F.linear(self._placeholder_feature(feat_image.dtype), w_image)
            h.index_add_(0, rows, seen)
        return self.fusion[1:](h)

    def score_outliers(self, index: torch.Tensor, mixed_image: torch.Tensor, mixed_lidar: torch.Tensor,
                       visible: Optional[torch.Tensor] = None) -> dict:
        """Send synthesized outliers through fuse and the heads, each with its anchor's visibility
        flag (``visible``, (M,); None: all visible, as every anchor was before ``mix_points: all``)."""
        if visible is None:
            visible = torch.ones(index.shape[0], dtype=torch.bool, device=mixed_lidar.device)
        heads = self.heads(self.fuse(mixed_image, mixed_lidar, visible))
        out = {
            "outlier_index": index,
            "outlier_logits": heads["logits"],
            "outlier_anomaly_logit": heads["anomaly_logit"],
            "outlier_logits_image": self.image_head(mixed_image),
            "outlier_logits_lidar": self.lidar_head(mixed_lidar),
        }
        if "extra_logit" in heads:
            out["outlier_extra_logit"] = heads["extra_logit"]
        return out


class LazyOutput(Mapping):
    """The output dict of :meth:`FusionSegmenter.forward` (without outliers), whose heads are
    computed on first read: a score that reads only ``anomaly_logit`` never runs the segmentation
    and modality heads on every point. Every value is returned in fp32."""

    _HEADS: dict[str, Callable[["FusionSegmenter", dict], torch.Tensor]] = {
        "logits": lambda m, o: m.seg_head(o["fused"]),
        "anomaly_logit": lambda m, o: m.anomaly_head(o["fused"]).squeeze(1),
        "logits_lidar": lambda m, o: m.lidar_head(o["feat_lidar"]),
        "logits_image": lambda m, o: m.image_head(o["feat_image"]),
    }

    def __init__(self, model: FusionSegmenter, features: dict) -> None:
        self._model, self._values = model, dict(features)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._values:
            if key not in self._HEADS:
                raise KeyError(key)
            self._values[key] = self._HEADS[key](self._model, self._values)
        return self._values[key].float()

    def __contains__(self, key: object) -> bool:  # without computing the head
        return key in self._values or key in self._HEADS

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._values, *self._HEADS]))

    def __len__(self) -> int:
        return len(set(self._values) | set(self._HEADS))

    def computed(self) -> list[str]:
        """The keys computed so far (features and the heads read)."""
        return list(self._values)
