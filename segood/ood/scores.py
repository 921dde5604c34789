"""Per-point anomaly scores from a model output dict; convention: higher = more anomalous.

Every score takes the model output dict (``out['logits']``: (N, C) segmentation logits;
``out['anomaly_logit']``: (N,) or (N, 1) anomaly-head logit) and returns an (N,) tensor. The
signs are flipped where needed (e.g. MSP returns ``-max softmax``) so that all scores plug
into :mod:`segood.metrics.ood` unchanged.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import torch

__all__ = ["anomaly_head", "msp", "maxlogit", "energy", "entropy", "SCORES", "get_score"]

Output = Mapping[str, torch.Tensor]
ScoreFn = Callable[..., torch.Tensor]


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


def energy(out: Output, temperature: float = 1.0) -> torch.Tensor:
    """Free energy ``-T * logsumexp(logits / T)`` (Liu et al. 2020); high energy = anomalous."""
    return -temperature * torch.logsumexp(out["logits"] / temperature, dim=1)


def entropy(out: Output) -> torch.Tensor:
    """Shannon entropy (nats) of the softmax over classes."""
    log_p = torch.log_softmax(out["logits"], dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


SCORES: dict[str, ScoreFn] = {
    "anomaly_head": anomaly_head,
    "msp": msp,
    "maxlogit": maxlogit,
    "energy": energy,
    "entropy": entropy,
}


def get_score(name: str, **kwargs: Any) -> ScoreFn:
    """Look up a score by name; keyword arguments are bound (e.g. ``energy``'s temperature).

    Raises:
        KeyError: unknown name; the message lists the valid names.
    """
    if name not in SCORES:
        raise KeyError(f"unknown score {name!r}; valid names: {', '.join(sorted(SCORES))}")
    fn = SCORES[name]
    return functools.partial(fn, **kwargs) if kwargs else fn
