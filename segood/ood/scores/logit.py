"""The logit scores: functions of the model output dict; convention: higher = more anomalous.

Every score takes the model output dict (``out['logits']``: (N, C) segmentation logits;
``out['anomaly_logit']``: (N,) or (N, 1) anomaly-head logit; ``out['fused']``: (N, D) input of
the final linear classifier) and returns an (N,) tensor. Signs are flipped where needed (e.g. MSP
returns ``-max softmax``) so that all scores plug into :mod:`segood.metrics.ood` unchanged.

A score's options (``eval.score_options.<name>``) are declared once, in its ``*_OPTIONS`` dict of
:class:`~segood.options.Opt` (the registry entry carries it; the keyword defaults refer to it); the
registry is :data:`segood.ood.scores.SCORES`. Feature-based scores are in :mod:`segood.ood.scores.fitted`.
"""

from __future__ import annotations

from typing import Mapping

import torch

from segood.ood.scores.fitted import free_energy
from segood.options import Opt

__all__ = ["anomaly_head", "msp", "maxlogit", "energy", "relative_energy", "entropy", "gen", "rba", "rba_score"]

Output = Mapping[str, torch.Tensor]


def anomaly_head(out: Output) -> torch.Tensor:
    """Sigmoid of the dedicated anomaly head's logit (probability of being an anomaly)."""
    logit = out["anomaly_logit"]
    if logit.dim() == 2 and logit.shape[1] == 1:
        logit = logit.squeeze(1)
    return torch.sigmoid(logit)


def msp(out: Output) -> torch.Tensor:
    """Negative maximum softmax probability (Hendrycks & Gimpel 2017)."""
    return -torch.softmax(out["logits"], dim=1).max(dim=1).values


def maxlogit(out: Output) -> torch.Tensor:
    """Negative maximum logit (Hendrycks et al. 2022)."""
    return -out["logits"].max(dim=1).values


ENERGY_OPTIONS = {"temperature": Opt(1.0, float, "T of -T logsumexp(logits / T)", min=1e-3)}
RELATIVE_ENERGY_OPTIONS = {"num_id_logits": Opt(None, int, "the first that many logits are the ID classes, the rest "
                                                           "extra logits; null = none (the score is refused)",
                                                min=1, nullable=True)}
GEN_OPTIONS = {"gamma": Opt(0.1, float, "exponent g of p^g (1 - p)^g", min=1e-3),
               "top_m": Opt(None, int, "the top M probabilities summed; null = all classes", min=1, nullable=True)}


def energy(out: Output, temperature: float = ENERGY_OPTIONS["temperature"].default) -> torch.Tensor:
    """Free energy ``-T * logsumexp(logits / T)`` (Liu et al. 2020); high energy = anomalous."""
    return free_energy(out["logits"], temperature)


def relative_energy(out: Output,
                    num_id_logits: int | None = RELATIVE_ENERGY_OPTIONS["num_id_logits"].default) -> torch.Tensor:
    """Relative energy ``logsumexp(all logits) - logsumexp(ID logits)`` (NDP / REL on STU): high when the
    extra (e.g. void / outlier-class) logits hold the mass. ``num_id_logits``: the first that many columns
    of ``out['logits']`` are the ID classes, the rest the extra logits. Undefined without extra logits
    (it would be 0 everywhere, not energy): a ValueError names the option."""
    logits = out["logits"]
    c = logits.shape[1]
    if num_id_logits is None or not 0 < int(num_id_logits) < c:
        raise ValueError(
            f"relative_energy is undefined for this model: its {c} logits are all ID classes (no extra logits); "
            f"set eval.score_options.relative_energy.num_id_logits to the number of ID logits of a model with extra "
            f"logits (got {num_id_logits!r}, need 0 < num_id_logits < {c})")
    return torch.logsumexp(logits, dim=1) - torch.logsumexp(logits[:, : int(num_id_logits)], dim=1)


def entropy(out: Output) -> torch.Tensor:
    """Shannon entropy (nats) of the softmax over classes."""
    log_p = torch.log_softmax(out["logits"], dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def gen(out: Output, gamma: float = GEN_OPTIONS["gamma"].default,
        top_m: int | None = GEN_OPTIONS["top_m"].default) -> torch.Tensor:
    """Generalized entropy ``sum_j p_j^g (1 - p_j)^g`` over the top-M softmax probabilities
    (Liu et al., GEN, CVPR 2023; the paper's ID score is its negative). ``top_m=None``: all classes."""
    p = torch.softmax(out["logits"], dim=1)
    if top_m is not None:
        p = p.topk(min(int(top_m), p.shape[1]), dim=1).values
    return (p.pow(gamma) * (1.0 - p).pow(gamma)).sum(dim=1)


def rba_score(logits: torch.Tensor) -> torch.Tensor:
    """``-sum_k tanh(logit_k)`` per row, in [-K, K]: high when every class rejects the point."""
    return -torch.tanh(logits).sum(dim=1)


def rba(out: Output) -> torch.Tensor:
    """Rejected by All (Nayal et al., ICCV 2023): :func:`rba_score` of the segmentation logits."""
    return rba_score(out["logits"])
