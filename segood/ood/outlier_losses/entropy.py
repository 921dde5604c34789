"""``entropy``: entropy maximisation of the fused head on outliers (Feature Mixing's loss), weight
``loss.entropy``. Its weight stays a top-level key of the ``loss`` section (configs predate the
registry), so it declares no options of its own."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from segood.ood import losses as L
from segood.options import Opt

OPTIONS: dict[str, Opt] = {}


def terms(out: Mapping, batch: Mapping, weights: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``{'entropy': loss.entropy * mean(log K - H(softmax(outlier logits)))}`` (nothing at weight 0)."""
    if not weights["entropy"]:
        return {}
    return {"entropy": weights["entropy"] * L.entropy_maximization(out["outlier_logits"])}
