"""The registry families whose members declare their own options, and the config loader every command uses.

:mod:`segood.config` is a leaf: it checks the schema (:mod:`segood.config_schema`) but never imports a
registry. This module, above the data and OOD layers, names each family once in :data:`FAMILIES`:
where its members' options live in a config, which key picks members, and how to read each member's
``dict[str, Opt]`` from its registry (at check time, so a member added to the registry, even by a test's
monkeypatch, is known at once). :func:`load_config` is :func:`segood.config.load_config` with these
families: every command loads its config through it, so a member's options are checked (unknown
option: the known ones listed; bad value: the Opt's message, with the file) before any work.

A new family is one line here: ``Family(name, options, select, members)`` (see
:class:`segood.config.Family`); its config section must exist in the schema (a mapping key for flat
options, or a ``<member>`` key for one section per member).
"""
from __future__ import annotations

import difflib
from pathlib import Path

from segood import config
from segood.config import ConfigError, Family
from segood.data.readers import READERS
from segood.ood.outlier_losses import OUTLIER_LOSSES
from segood.ood.scores import SCORES
from segood.ood.synthesis import SYNTHESIZERS

__all__ = ["FAMILIES", "load_config"]

FAMILIES: tuple[Family, ...] = (
    Family("score", "eval.score_options.<member>", "eval.scores", lambda: {n: s.options for n, s in SCORES.items()}),
    Family("synthesizer", "synthesis.<member>", "synthesis.method",
           lambda: {n: getattr(s, "options", {}) for n, s in SYNTHESIZERS.items()}),
    Family("outlier loss", "loss.outlier_options.<member>", "loss.outlier",
           lambda: {n: dict(m.options) for n, m in OUTLIER_LOSSES.items()}),
    Family("reader", "data.reader_options", "data.dataset", lambda: {n: getattr(r, "OPTIONS", {}) for n, r in READERS.items()}),
)


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """An experiment config, checked against the schema, every family's member declarations and the keys
    that name a registry member outside a family (:func:`check_operating_score`)."""
    cfg = config.load_config(path, overrides, FAMILIES)
    check_operating_score(cfg)
    return cfg


def check_operating_score(cfg: dict) -> None:
    """``eval.operating_score`` (null, or the score the operating point uses) must name a known score: a
    ConfigError naming the key, the value, where it was given and the choices, before any work."""
    name = cfg["eval"].get("operating_score")
    if name is None or name in SCORES:
        return
    where = "--set" if any(str(o).strip().startswith("eval.operating_score") for o in cfg.get("_set", [])) \
        else cfg.get("_source", "the config")
    close = difflib.get_close_matches(str(name), list(SCORES), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"eval.operating_score: {name!r} in {where} is not a known score{hint} "
                      f"(expected null or one of {sorted(SCORES)})")
