"""The training objective: ID segmentation losses plus, when outliers were synthesized, the
outlier losses. Each term is a piece from :mod:`segood.ood.losses`; this module only weighs them."""
from __future__ import annotations

import torch

from segood.ood import losses as L


def id_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "ce":
        return L.cross_entropy(logits, target)
    if kind == "focal":
        return L.focal_loss(logits, target)
    raise ValueError(f"loss.id_loss: unknown '{kind}', expected 'ce' or 'focal'")


def compute_losses(out: dict, batch: dict, weights: dict) -> dict[str, torch.Tensor]:
    """All loss terms (already weighted) and their sum under ``total``."""
    target = batch["target"]
    terms = {"seg": id_loss(out["logits"], target, weights["id_loss"])}
    if weights["lovasz"]:
        terms["lovasz"] = weights["lovasz"] * L.lovasz_softmax(out["logits"].softmax(-1), target)
    if weights["modality"]:
        vis = batch["visible"]
        terms["lidar"] = weights["modality"] * L.cross_entropy(out["logits_lidar"], target)
        image_target = torch.where(vis, target, torch.full_like(target, -1))
        terms["image"] = weights["modality"] * L.cross_entropy(out["logits_image"], image_target)
    if "outlier_logits" in out and len(out["outlier_index"]) > 0:
        if weights["entropy"]:
            terms["entropy"] = weights["entropy"] * L.entropy_maximization(out["outlier_logits"])
        if weights["anomaly"]:
            id_mask = target >= 0
            terms["anomaly"] = weights["anomaly"] * L.anomaly_bce(
                out["anomaly_logit"][id_mask], out["outlier_anomaly_logit"]
            )
    terms["total"] = sum(terms.values())
    return terms
