"""``energy_margin``: the energy hinge of Liu et al. (NeurIPS 2020, "Energy-based OOD detection")

    w * [mean relu(E_in - m_in)^2 + mean relu(m_out - E_out)^2],  E = -logsumexp(logits),

over labelled ID points (in) and synthesized outliers (out): ID energy pushed below ``m_in``,
outlier energy above ``m_out``. Liu et al.: w 0.1, m_in -25, m_out -7 (image classification);
PEBAL / LiON on LiDAR used -12 / -6. The ``energy`` score reads the same quantity at test time."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from segood.ood import losses as L
from segood.options import Opt

OPTIONS: dict[str, Opt] = {
    "weight": Opt(0.1, float, "weight w of the hinge", min=0.0),
    "m_in": Opt(-25.0, float, "ID energy margin: E_in is pushed below it"),
    "m_out": Opt(-7.0, float, "outlier energy margin: E_out is pushed above it"),
}


def energy(logits: torch.Tensor) -> torch.Tensor:
    """Free energy ``-logsumexp(logits)`` per row."""
    return -torch.logsumexp(logits, dim=1)


def terms(out: Mapping, batch: Mapping, weights: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``{'energy_margin': w * hinge}`` on ID points (``target >= 0``) and the step's outliers."""
    id_rows = batch["target"] >= 0
    hinge = L.margin_hinge(energy(out["logits"][id_rows]), energy(out["outlier_logits"]),
                           options["m_in"], options["m_out"])
    return {"energy_margin": options["weight"] * hinge}
