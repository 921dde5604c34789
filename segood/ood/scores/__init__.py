"""Per-point anomaly scores (higher = more anomalous): the registry, :data:`SCORES`.

Every score reads the model output dict and returns an (N,) tensor. A *logit* score is a function
``fn(out, **options)`` (:mod:`segood.ood.scores.logit`); a *fitted* score is a
:class:`~segood.ood.scores.fitted.FittedScore` class, fitted on ID training features
(:mod:`segood.ood.scores.fitted`). Each score owns its config section ``eval.score_options.<name>``:
its registry entry carries the options, ``options: dict[str, Opt]`` (default, type, range, doc), the
one place they are declared; config loading checks the section against it and ``segood config --show
eval`` lists it.

To add a score: write its function or FittedScore class (in a file of this package, or anywhere)
and add one :class:`Score` line to :data:`SCORES` (with its ``options``); ``eval.scores: [..., <name>]``
then evaluates it.
"""
from __future__ import annotations

import difflib
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from segood.config import ConfigError
from segood.ood.scores.fitted import ASH, KNN, FittedScore, Mahalanobis, ReAct, ViM
from segood.ood.scores.logit import (ENERGY_OPTIONS, GEN_OPTIONS, RELATIVE_ENERGY_OPTIONS, anomaly_head, energy, entropy,
                                     gen, maxlogit, msp, rba, relative_energy)
from segood.options import Opt, OptionError, check_options

__all__ = ["Score", "ModelFacts", "SCORES", "FITTED_SCORES", "get_score", "check_score_names", "score_range", "is_fitted",
           "score_options", "score_reads"]

Output = Mapping[str, torch.Tensor]
ScoreFn = Callable[..., torch.Tensor]
RangeFn = Callable[..., "tuple[float, float] | None"]
WhyNotFn = Callable[..., "str | None"]


@dataclass(frozen=True)
class ModelFacts:
    """What a score's ``why_not`` may ask of the model it would run on: its number of logits, and the
    outlier loss it was trained with (``loss.outlier``; ``"none"`` for a model trained without synthesized
    outliers; None when unknown, e.g. a benchmark's fake model: no score is refused for it)."""

    num_classes: int
    outlier_loss: str | None = None


@dataclass(frozen=True)
class Score:
    """One registry entry: a logit function ``fn`` or a ``fitted`` class; ``reads``, the model outputs
    it reads (the evaluation pass hands it exactly those keys; default ``logits``, or the fitted
    class' ``reads``); optionally the score's known range ``range(num_classes, **options)
    -> (lo, hi)`` (None = unbounded, squash-binned) and ``why_not(model: ModelFacts, **options) -> str |
    None``, why it cannot run on (or means nothing for) that model (None: it can); and its options
    ``eval.score_options.<name>``, declared once (``{option: Opt}``)."""

    name: str
    fn: ScoreFn | None = None
    fitted: type[FittedScore] | None = None
    range: RangeFn | None = None
    reads: tuple[str, ...] | None = None
    why_not: WhyNotFn | None = None
    options: Mapping[str, Opt] = field(default_factory=dict)

    def inputs(self) -> tuple[str, ...]:
        """The model output keys this score reads."""
        if self.reads is not None:
            return tuple(self.reads)
        return tuple(self.fitted.reads) if self.fitted is not None else ("logits",)

    def unavailable(self, model: ModelFacts, **options: Any) -> str | None:
        """Why this score cannot run on ``model`` (or means nothing there), or None when it can."""
        return None if self.why_not is None else self.why_not(model, **options)

    def defaults(self) -> dict[str, Any]:
        """The options of ``eval.score_options.<name>`` with their defaults."""
        return {k: opt.default for k, opt in self.options.items()}

    def __call__(self, out: Output, fit: FittedScore | None = None, **options: Any) -> torch.Tensor:
        """Score an output dict (a fitted score needs its ``fit``)."""
        if self.fitted is None:
            return self.fn(out, **options)
        if fit is None:
            raise ValueError(f"score '{self.name}' is fitted on ID training features: pass fit=... "
                             "(segood.engine.fit.load_scorers, or `segood fit-scores`)")
        return fit(out)


def _gen_range(num_classes: int, gamma: float = 0.1, top_m: int | None = None) -> tuple[float, float]:
    """GEN: each term is at most (1/4)^gamma, M terms."""
    m = num_classes if top_m is None else min(int(top_m), num_classes)
    return 0.0, m * 0.25**gamma


def _needs_extra_logits(model: ModelFacts, num_id_logits: int | None) -> str | None:
    """relative_energy: defined only for a model with logits beyond its ID classes."""
    if num_id_logits is None or not 0 < int(num_id_logits) < model.num_classes:
        return (f"needs a model with extra logits (eval.score_options.relative_energy.num_id_logits = "
                f"{num_id_logits!r}, the model has {model.num_classes} logits)")
    return None


LOGIT_LEVEL_LOSSES = ("rba", "energy_margin")
"""Outlier losses that pin the level of the logits (margins on -sum tanh(logits), on logsumexp): softmax
cross-entropy alone (and the entropy and K+1 losses, also softmax-based) is unchanged when a constant is
added to every logit of a point, so the logits' level is left free."""


def _needs_logit_level(model: ModelFacts) -> str | None:
    """rba: -sum tanh(logits) reads the logits' level, which only a level-pinning outlier loss trains; on a
    model trained without one it is arbitrary and came out inverted (val FOV AUROC 10-17, near benchmark)."""
    if model.outlier_loss is None or model.outlier_loss in LOGIT_LEVEL_LOSSES:
        return None
    trained = "without outliers" if model.outlier_loss == "none" else f"with loss.outlier {model.outlier_loss}"
    return (f"needs a model trained with loss.outlier {' or '.join(LOGIT_LEVEL_LOSSES)} (this one was trained "
            f"{trained}: softmax cross-entropy leaves the level of the logits free, and -sum tanh(logits) reads "
            "exactly that level, so its number would mean nothing)")


SCORES: dict[str, Score] = {s.name: s for s in (
    Score("anomaly_head", anomaly_head, range=lambda c, **_: (0.0, 1.0), reads=("anomaly_logit",)),
    Score("msp", msp, range=lambda c, **_: (-1.0, -1.0 / c)),
    Score("maxlogit", maxlogit),
    Score("energy", energy, options=ENERGY_OPTIONS),
    Score("relative_energy", relative_energy, why_not=_needs_extra_logits,
          options=RELATIVE_ENERGY_OPTIONS),  # = -log(softmax mass of the ID logits): [0, inf)
    Score("entropy", entropy, range=lambda c, **_: (0.0, math.log(c))),
    Score("gen", gen, range=_gen_range, options=GEN_OPTIONS),
    Score("rba", rba, range=lambda c, **_: (-float(c), float(c)), why_not=_needs_logit_level),
    Score("mahalanobis", fitted=Mahalanobis),
    Score("knn", fitted=KNN, range=lambda c, **_: (0.0, 2.0), options=KNN.OPTIONS),  # distance between unit vectors
    Score("vim", fitted=ViM, options=ViM.OPTIONS),
    Score("react", fitted=ReAct, options=ReAct.OPTIONS),
    Score("ash", fitted=ASH, options=ASH.OPTIONS),
)}

# A view of the registry: the fitted scores' classes by name.
FITTED_SCORES: dict[str, type[FittedScore]] = {n: s.fitted for n, s in SCORES.items() if s.fitted is not None}


def is_fitted(name: str) -> bool:
    """True for the feature-based scores that need a fit on ID training features."""
    return SCORES[name].fitted is not None if name in SCORES else False


def check_score_names(names: list[str]) -> None:
    """Raise KeyError for the first unknown name; the message lists the valid names."""
    for name in names:
        if name not in SCORES:
            raise KeyError(f"unknown score {name!r}; valid names: {', '.join(sorted(SCORES))}")


def get_score(name: str, **kwargs: Any) -> ScoreFn:
    """Look up a score by name; keyword arguments are bound (its options, a fitted score's ``fit``).

    Raises:
        KeyError: unknown name; the message lists the valid names.
        ValueError: a fitted score requested without ``fit``.
    """
    check_score_names([name])
    score = SCORES[name]
    if score.fitted is not None and kwargs.get("fit") is None:
        score({})  # raises the "needs a fit" message
    return functools.partial(score, **kwargs) if kwargs else score


def score_range(name: str, num_classes: int, **options: Any) -> tuple[float, float] | None:
    """The score's known [lo, hi] over all inputs (given its options), or None when it is unbounded.

    anomaly head [0, 1]; MSP [-1, -1/C]; entropy [0, log C]; GEN [0, M / 4^gamma]; kNN [0, 2].
    """
    score = SCORES[name]
    return None if score.range is None else score.range(num_classes, **options)


def score_reads(names: list[str]) -> tuple[str, ...]:
    """The model output keys the scores ``names`` read together, in first-use order."""
    return tuple(dict.fromkeys(k for n in names for k in SCORES[n].inputs()))


def score_options(eval_cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The options of one score: its declared defaults, overridden by ``eval_cfg['score_options'][name]``
    (``eval_cfg``: the ``eval`` section of a config).

    Unknown scores, unknown options and bad values are refused (ConfigError naming the key and, for an
    unknown option, the known ones; config loading already checked a config loaded with
    :func:`segood.engine.families.load_config`).
    """
    given = dict((eval_cfg or {}).get("score_options") or {})
    for other in given:
        if other not in SCORES:
            close = difflib.get_close_matches(str(other), list(SCORES), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"eval.score_options.{other}: unknown score{hint} (valid: {sorted(SCORES)})")
    section = given.get(name) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"eval.score_options.{name} must be a mapping of options, got {section!r}")
    try:
        return check_options(f"eval.score_options.{name}", section, SCORES[name].options)
    except OptionError as e:
        raise ConfigError(str(e)) from None
