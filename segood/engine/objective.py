"""The training objective: ID segmentation losses plus, when outliers were synthesized, the
outlier losses. Each term is a piece from :mod:`segood.ood.losses`; this module only weighs them."""
from __future__ import annotations

import math

import torch

from segood.ood import losses as L


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
        terms["a2d"] = weights["a2d"] * L.a2d_loss(out["logits_image"][rows], out["logits_lidar"][rows], target[rows])
    if "outlier_logits" in out and len(out["outlier_index"]) > 0:
        terms.update(outlier_modality_terms(out, weights))
        if weights["entropy"]:
            terms["entropy"] = weights["entropy"] * L.entropy_maximization(out["outlier_logits"])
        if weights["anomaly"]:
            id_mask = target >= 0
            terms["anomaly"] = weights["anomaly"] * L.anomaly_bce(
                out["anomaly_logit"][id_mask], out["outlier_anomaly_logit"]
            )
    terms["total"] = sum(terms.values())
    return terms
