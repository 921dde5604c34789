"""Per-point anomaly scores from a model output dict; convention: higher = more anomalous.

Every score takes the model output dict (``out['logits']``: (N, C) segmentation logits;
``out['anomaly_logit']``: (N,) or (N, 1) anomaly-head logit; ``out['fused']``: (N, D) input of
the final linear classifier) and returns an (N,) tensor. Signs are flipped where needed (e.g. MSP
returns ``-max softmax``) so that all scores plug into :mod:`segood.metrics.ood` unchanged.

Logit scores are plain functions. Feature-based scores (:mod:`segood.ood.scores.fitted`) need a fitted
object: ``get_score("knn", fit=knn)`` (build them with ``segood.engine.evaluate.load_scorers``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import torch

from segood.ood.scores.fitted import FITTED_SCORES, FittedScore, free_energy

__all__ = ["anomaly_head", "msp", "maxlogit", "energy", "entropy", "gen", "SCORES", "FITTED_SCORES",
           "get_score", "check_score_names", "score_range", "is_fitted"]

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
    return free_energy(out["logits"], temperature)


def entropy(out: Output) -> torch.Tensor:
    """Shannon entropy (nats) of the softmax over classes."""
    log_p = torch.log_softmax(out["logits"], dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def gen(out: Output, gamma: float = 0.1, top_m: int | None = None) -> torch.Tensor:
    """Generalized entropy ``sum_j p_j^g (1 - p_j)^g`` over the top-M softmax probabilities
    (Liu et al., GEN, CVPR 2023; the paper's ID score is its negative). ``top_m=None``: all classes."""
    p = torch.softmax(out["logits"], dim=1)
    if top_m is not None:
        p = p.topk(min(int(top_m), p.shape[1]), dim=1).values
    return (p.pow(gamma) * (1.0 - p).pow(gamma)).sum(dim=1)


def _fitted(name: str) -> ScoreFn:
    """Registry entry of a fitted score: applies the ``fit`` object it is given."""

    def score(out: Output, fit: FittedScore | None = None) -> torch.Tensor:
        if fit is None:
            raise ValueError(f"score '{name}' is fitted on ID training features: pass fit=... "
                             "(segood.engine.evaluate.load_scorers, or `segood fit-scores`)")
        return fit(out)

    score.__name__ = name
    score.__doc__ = FITTED_SCORES[name].__doc__
    return score


SCORES: dict[str, ScoreFn] = {
    "anomaly_head": anomaly_head,
    "msp": msp,
    "maxlogit": maxlogit,
    "energy": energy,
    "entropy": entropy,
    "gen": gen,
    **{name: _fitted(name) for name in FITTED_SCORES},
}


def is_fitted(name: str) -> bool:
    """True for the feature-based scores that need a fit on ID training features."""
    return name in FITTED_SCORES


def check_score_names(names: list[str]) -> None:
    """Raise KeyError for the first unknown name; the message lists the valid names."""
    for name in names:
        if name not in SCORES:
            raise KeyError(f"unknown score {name!r}; valid names: {', '.join(sorted(SCORES))}")


def get_score(name: str, **kwargs: Any) -> ScoreFn:
    """Look up a score by name; keyword arguments are bound (``energy``'s temperature, ``gen``'s
    gamma / top_m, a fitted score's ``fit``).

    Raises:
        KeyError: unknown name; the message lists the valid names.
        ValueError: a fitted score requested without ``fit``.
    """
    check_score_names([name])
    if is_fitted(name) and kwargs.get("fit") is None:
        SCORES[name]({})  # raises the "needs a fit" message
    fn = SCORES[name]
    return functools.partial(fn, **kwargs) if kwargs else fn


def score_range(name: str, num_classes: int, gamma: float = 0.1,
                top_m: int | None = None) -> tuple[float, float] | None:
    """The score's known [lo, hi] over all inputs, or None when it is unbounded.

    anomaly head [0, 1]; MSP [-1, -1/C]; entropy [0, log C]; GEN [0, M / 4^gamma] (each term is at
    most (1/4)^gamma); kNN [0, 2] (distance between unit vectors). The rest are unbounded.
    """
    m = num_classes if top_m is None else min(int(top_m), num_classes)
    known = {
        "anomaly_head": (0.0, 1.0),
        "msp": (-1.0, -1.0 / num_classes),
        "entropy": (0.0, math.log(num_classes)),
        "gen": (0.0, m * 0.25**gamma),
        "knn": (0.0, 2.0),
    }
    return known.get(name)
