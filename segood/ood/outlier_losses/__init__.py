"""Outlier losses on the fused segmentation logits: the registry, :data:`OUTLIER_LOSSES`.

``loss.outlier: <name>`` picks the loss that trains the model on its synthesized outliers (and,
for the margin losses, on its ID points); the scores are then read post-hoc from the same logits
(:mod:`segood.ood.scores`). Every member is a module of this package with

* ``OPTIONS: dict[str, Opt]``: its options, set in ``loss.outlier_options.<name>`` (checked with
  :func:`segood.options.check_options`, defaults filled in);
* ``terms(out, batch, weights, options) -> dict[str, Tensor]``: its weighted loss terms, called by
  the objective when the step has outliers (``out['outlier_index']`` non-empty). ``out`` is the
  model output (``logits`` (P, K), ``outlier_logits`` (M, K), ``outlier_index`` (M,), with an extra
  logit ``extra_logit`` (P,) / ``outlier_extra_logit`` (M,)), ``weights`` the ``loss`` section.

The anomaly head's BCE (``loss.anomaly``) is not part of any member: it is added beside whichever
outlier loss trains the logits. To add an outlier loss: write its module and add one
:class:`OutlierLoss` line to :data:`OUTLIER_LOSSES`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from segood.ood.outlier_losses import energy_margin, entropy, k_plus_one, rba
from segood.options import Opt, OptionError, check_options

__all__ = ["OutlierLoss", "OUTLIER_LOSSES", "outlier_loss", "outlier_options", "outlier_terms"]

Terms = Callable[[Mapping, Mapping, Mapping, Mapping], "dict[str, torch.Tensor]"]


@dataclass(frozen=True)
class OutlierLoss:
    """One registry entry: the member's ``terms`` function, its declared ``options`` and whether it
    needs the model's (K+1)-th logit (``model.fusion.extra_logit``)."""

    name: str
    terms: Terms
    options: Mapping[str, Opt] = field(default_factory=dict)
    needs_extra_logit: bool = False


OUTLIER_LOSSES: dict[str, OutlierLoss] = {m.name: m for m in (
    OutlierLoss("entropy", entropy.terms, entropy.OPTIONS),
    OutlierLoss("energy_margin", energy_margin.terms, energy_margin.OPTIONS),
    OutlierLoss("k_plus_one", k_plus_one.terms, k_plus_one.OPTIONS, needs_extra_logit=True),
    OutlierLoss("rba", rba.terms, rba.OPTIONS),
)}


def outlier_loss(name: str) -> OutlierLoss:
    """The registry entry called ``name``; an unknown one is an :class:`OptionError` listing the valid ones."""
    if name not in OUTLIER_LOSSES:
        raise OptionError(f"loss.outlier: {name!r}: expected one of {', '.join(repr(n) for n in OUTLIER_LOSSES)}")
    return OUTLIER_LOSSES[name]


def outlier_options(weights: Mapping[str, Any], name: str, source: str = "") -> dict[str, Any]:
    """The options of outlier loss ``name``: ``loss.outlier_options.<name>`` checked against its
    ``OPTIONS``, defaults filled in."""
    given = (weights.get("outlier_options") or {}).get(name)
    return check_options(f"loss.outlier_options.{name}", given, dict(outlier_loss(name).options), source)


def outlier_terms(out: Mapping, batch: Mapping, weights: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weighted terms of the configured outlier loss (``loss.outlier``, default ``entropy``)."""
    name = weights.get("outlier", "entropy")
    return outlier_loss(name).terms(out, batch, weights, outlier_options(weights, name))
