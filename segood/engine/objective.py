"""The training objective: ID segmentation losses plus, when outliers were synthesized, the
outlier losses. Each term is a piece from :mod:`segood.ood.losses` or the outlier loss chosen by
``loss.outlier`` (:mod:`segood.ood.outlier_losses`); this module only weighs them."""
from __future__ import annotations

import math

import torch

import torch.nn.functional as F

from segood.config import ConfigError
from segood.models.gather import masked_rows
from segood.ood import losses as L
from segood.ood.outlier_losses import outlier_loss, outlier_options, outlier_terms
from segood.options import OptionError


def id_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "ce":
        return L.cross_entropy(logits, target)
    if kind == "focal":
        return L.focal_loss(logits, target)
    raise ValueError(f"loss.id_loss: unknown '{kind}', expected 'ce' or 'focal'")


def outlier_modality_terms(out: dict, weights: dict) -> dict[str, torch.Tensor]:
    """MultiOOD's outlier losses on the per-modality heads: discrepancy and normalised entropy."""
    terms = {}
    oi, ol = out["outlier_logits_image"], out["outlier_logits_lidar"]
    if weights["discrepancy"]:
        terms["discrepancy"] = weights["discrepancy"] * L.discrepancy_loss(oi, ol)
    if weights["modality_entropy"]:
        norm = 2 * math.log(oi.shape[1])
        terms["modality_entropy"] = weights["modality_entropy"] * (
            L.entropy_maximization(oi) + L.entropy_maximization(ol)) / norm
    return terms


def out_of_view_mse(out: dict, visible: torch.Tensor) -> torch.Tensor:
    """MSE of the predicted camera features against the DETACHED real ones, on visible points only
    (MSeg3D's completion loss): it trains the completion MLP (and, through its input, the LiDAR
    branch) to imitate the camera, never the camera to imitate the prediction."""
    predicted, real = masked_rows(out["feat_image_predicted"], visible), out["feat_image"][visible].detach()
    if predicted.shape[0] == 0:
        return predicted.sum() * 0.0
    return F.mse_loss(predicted, real)


def compute_losses(out: dict, batch: dict, weights: dict) -> dict[str, torch.Tensor]:
    """All loss terms (already weighted) and their sum under ``total``."""
    target = batch["target"]
    terms = {"seg": id_loss(out["logits"], target, weights["id_loss"])}
    if weights["lovasz"]:
        terms["lovasz"] = weights["lovasz"] * L.lovasz_softmax(out["logits"].softmax(-1), target,
                                                               weights.get("lovasz_sort", "torch"))
    if weights["modality"]:
        vis = batch["visible"]
        terms["lidar"] = weights["modality"] * L.cross_entropy(out["logits_lidar"], target)
        image_target = torch.where(vis, target, torch.full_like(target, -1))
        terms["image"] = weights["modality"] * L.cross_entropy(out["logits_image"], image_target)
    if weights["a2d"]:
        rows = batch["visible"] & (target >= 0)
        terms["a2d"] = weights["a2d"] * L.a2d_loss(masked_rows(out["logits_image"], rows),
                                                   masked_rows(out["logits_lidar"], rows), target[rows])
    if "feat_image_predicted" in out and weights["out_of_view_mse"]:
        terms["out_of_view_mse"] = weights["out_of_view_mse"] * out_of_view_mse(out, batch["visible"])
    if "outlier_logits" in out and len(out["outlier_index"]) > 0:
        terms.update(outlier_modality_terms(out, weights))
        terms.update(outlier_terms(out, batch, weights))
        if weights["anomaly"]:
            id_mask = target >= 0
            terms["anomaly"] = weights["anomaly"] * L.anomaly_bce(
                masked_rows(out["anomaly_logit"], id_mask), out["outlier_anomaly_logit"]
            )
    terms["total"] = sum(terms.values())
    return terms


def check_objective(cfg: dict) -> None:
    """Refuse, before any training, the combinations of outlier loss, model and synthesis that
    cannot work (ConfigError naming the keys): an unknown ``loss.outlier`` or outlier-loss option,
    ``k_plus_one`` without ``model.fusion.extra_logit``, ``synthesis.mix_points: all`` without
    ``model.fusion.out_of_view: predicted``, and an outlier phase without synthesis or longer than
    the run."""
    loss, fusion, synthesis = cfg["loss"], cfg["model"]["fusion"], cfg["synthesis"]
    try:
        member = outlier_loss(loss["outlier"])
        for name in {loss["outlier"], *(loss.get("outlier_options") or {})}:
            outlier_options(loss, name)
    except OptionError as e:
        raise ConfigError(str(e)) from None
    if member.needs_extra_logit and not fusion["extra_logit"]:
        raise ConfigError(f"loss.outlier: {member.name} trains a (K+1)-th logit: set model.fusion.extra_logit: true")
    if synthesis["mix_points"] == "all" and fusion["out_of_view"] != "predicted":
        raise ConfigError("synthesis.mix_points: all needs model.fusion.out_of_view: predicted (with the placeholder, "
                          "every out-of-view point has the same camera feature, so mixing it makes no outlier)")
    phase, steps = int(cfg["train"]["outlier_phase"]), int(cfg["train"]["steps"])
    if phase and synthesis["method"] == "none":
        raise ConfigError("train.outlier_phase trains with synthesized outliers: set synthesis.method")
    if not 0 <= phase < steps:
        raise ConfigError(f"train.outlier_phase: {phase}: expected an integer in [0, train.steps = {steps})")
