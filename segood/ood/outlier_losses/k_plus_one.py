"""``k_plus_one``: a (K+1)-th "outlier class" logit, as the Feature Mixing first author's later
code does (``mona4399/ACR``). Over the K+1 logits ``[logits, extra_logit]``:

    w * [CE(ID points, y) + soft CE(outliers, (1 - lam) onehot(y_anchor) + lam onehot(K))],

each a mean over its points; ``y_anchor`` is the class of the ID point the outlier was made from.
ACR sets lam = N / N_max from the number of swapped dims; with a fixed ``synthesis.n_swap`` it is one
constant, the option ``lam``. The extra logit is dropped at test time: ``out['logits']`` holds the K
ID logits, which every score and the mIoU read. Needs ``model.fusion.extra_logit: true``."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from segood.ood import losses as L
from segood.options import Opt

OPTIONS: dict[str, Opt] = {
    "weight": Opt(1.0, float, "weight w of the (K+1)-way cross-entropy", min=0.0),
    "lam": Opt(0.5, float, "outliers' target mass on the outlier class", min=0.0, max=1.0),
}


def soft_targets(anchor_class: torch.Tensor, num_classes: int, lam: float, dtype: torch.dtype) -> torch.Tensor:
    """(M, K+1) rows ``(1 - lam) onehot(anchor_class) + lam onehot(K)``."""
    t = F.one_hot(anchor_class, num_classes + 1).to(dtype) * (1.0 - lam)
    t[:, num_classes] += lam
    return t


def terms(out: Mapping, batch: Mapping, weights: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``{'k_plus_one': w * (CE_id + soft CE_outliers)}`` over the K+1 logits."""
    if "extra_logit" not in out:
        raise ValueError("loss.outlier: k_plus_one needs the model's (K+1)-th logit: set model.fusion.extra_logit: true")
    logits = torch.cat([out["logits"], out["extra_logit"].unsqueeze(1)], 1)
    outlier_logits = torch.cat([out["outlier_logits"], out["outlier_extra_logit"].unsqueeze(1)], 1)
    num_classes = out["logits"].shape[1]
    anchor_class = batch["target"][out["outlier_index"]]
    if (anchor_class < 0).any():
        raise ValueError("k_plus_one: every outlier's anchor must be a labelled ID point (target >= 0)")
    target = soft_targets(anchor_class, num_classes, options["lam"], outlier_logits.dtype)
    ce_out = -(target * F.log_softmax(outlier_logits, dim=1)).sum(1).mean()
    return {"k_plus_one": options["weight"] * (L.cross_entropy(logits, batch["target"]) + ce_out)}
