"""``rba``: Rejected by All (Nayal et al., ICCV 2023). Its score ``S = -sum_k tanh(logit_k)`` is
high when every class rejects the point; the loss is the same squared hinge as ``energy_margin``
on S,

    w * [mean relu(S_in - m_in)^2 + mean relu(m_out - S_out)^2],

RbA's margins 0 (ID) / 5 (outliers). The ``rba`` score (:mod:`segood.ood.scores.logit`) reads S."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from segood.ood import losses as L
from segood.ood.scores.logit import rba_score
from segood.options import Opt

OPTIONS: dict[str, Opt] = {
    "weight": Opt(0.1, float, "weight w of the hinge", min=0.0),
    "m_in": Opt(0.0, float, "ID margin: S_in is pushed below it"),
    "m_out": Opt(5.0, float, "outlier margin: S_out is pushed above it"),
}


def terms(out: Mapping, batch: Mapping, weights: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``{'rba': w * hinge}`` on ID points (``target >= 0``) and the step's outliers."""
    id_rows = batch["target"] >= 0
    hinge = L.margin_hinge(rba_score(out["logits"][id_rows]), rba_score(out["outlier_logits"]),
                           options["m_in"], options["m_out"])
    return {"rba": options["weight"] * hinge}
