"""Scores ready to use: the feature-based ones fitted on a class-balanced subsample of ID training
points (:func:`fit_scores`, saved beside the checkpoint as ``checkpoint.scores.pt`` and refitted
when missing or stale), every one with its options from the ``eval`` section
(:func:`load_scorers`, used by evaluation, replay and the viewer)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm import tqdm

from segood.config import ConfigError
from segood.engine.artifacts import (SCORES_FORMAT, checkpoint_sha, final_layer, load_fit, load_model,
                                     scores_path)
from segood.engine.builders import build_label_map, build_loader
from segood.engine.checkpoint import save_torch
from segood.ood.scores import (FITTED_SCORES, SCORES, ModelFacts, check_score_names, get_score, is_fitted,
                               score_options)
from segood.ood.scores.fitted import FEATURE_KEY, ClassBalancedSampler, FitBank, FittedScore


def eval_option(eval_cfg: Mapping[str, Any], key: str) -> Any:
    """``eval_cfg[key]`` of the ``eval`` section (every key and its default are in configs/base.yaml)."""
    try:
        return eval_cfg[key]
    except KeyError:
        raise ConfigError(f"eval.{key}: missing from the config (load it with segood.config.load_config, "
                          "which merges configs/base.yaml)") from None


def check_scores(names: list[str]) -> None:
    """Refuse unknown score names before any work is done, listing the valid ones."""
    try:
        check_score_names(names)
    except KeyError as e:
        raise ConfigError(f"eval.scores: {e.args[0]}") from None


def unavailable_scores(eval_cfg: Mapping[str, Any], train_cfg: Mapping[str, Any], num_classes: int) -> dict[str, str]:
    """``{score: why}`` for the scores of ``eval.scores`` that cannot run on (or mean nothing for) the model
    trained with ``train_cfg`` (``Score.why_not``: e.g. rba on logits no outlier loss gave a level)."""
    outlier = "none" if train_cfg["synthesis"]["method"] == "none" else train_cfg.get("loss", {}).get("outlier")
    model = ModelFacts(num_classes, outlier)
    return {n: why for n in eval_cfg["scores"] if (why := SCORES[n].unavailable(model, **score_options(eval_cfg, n)))}


@torch.no_grad()
def collect_fit_bank(model: torch.nn.Module, loader, num_classes: int, total: int, seed: int,
                     progress: bool = True) -> FitBank:
    """Run the model over ``loader`` and keep a class-balanced subsample of labelled ID points' features."""
    sampler = ClassBalancedSampler(num_classes, total, seed)
    for batch in tqdm(loader, desc="fit-scores", disable=not progress, dynamic_ncols=True):
        sampler.update(model(batch)[FEATURE_KEY].numpy(), batch["target"].numpy())
    if len(sampler.labels) == 0:
        raise ValueError("fit-scores: the training split has no labelled ID point")
    weight, bias = final_layer(model)
    return FitBank(torch.from_numpy(sampler.features), torch.from_numpy(sampler.labels), weight, bias)


def fit_meta(cfg: Mapping[str, Any], ckpt_path: str | Path) -> dict[str, Any]:
    """What a saved fit must match to be reused (checkpoint, eval.fit_points, seed, train sequences)."""
    return {"checkpoint_sha256": checkpoint_sha(ckpt_path), "fit_points": int(eval_option(cfg["eval"], "fit_points")),
            "seed": int(cfg["seed"]), "sequences": list(cfg["data"]["train_sequences"])}


def make_fitted(name: str, eval_cfg: Mapping[str, Any],
                state: Mapping[str, torch.Tensor] | None = None) -> FittedScore:
    """A fitted score object with its options from ``eval.score_options.<name>``."""
    return FITTED_SCORES[name](state, **score_options(eval_cfg, name))


@torch.no_grad()
def fit_scores(cfg: Mapping[str, Any], ckpt_path: str | Path, model: torch.nn.Module | None = None,
               names: list[str] | None = None, progress: bool = True) -> Path:
    """Fit the feature-based scores on the train split (no augmentation) and save them atomically
    beside the checkpoint: the feature bank, the final layer and each score's fitted state."""
    label_map = build_label_map(cfg)
    if model is None:
        model, _ = load_model(ckpt_path, label_map)
    loader = build_loader(cfg, "train", label_map, shuffle=False)
    meta = fit_meta(cfg, ckpt_path)
    bank = collect_fit_bank(model, loader, label_map.num_classes, meta["fit_points"], meta["seed"], progress)
    names = list(FITTED_SCORES) if names is None else [n for n in names if is_fitted(n)]
    states = {}
    for n in names:
        score = make_fitted(n, cfg["eval"]).fit(bank)
        states[n] = {"params": score.params(), "state": score.state}
    blob = {"format": SCORES_FORMAT, **meta, "split": "train", "per_class": np.bincount(
        bank.labels.numpy(), minlength=label_map.num_classes).tolist(), "bank": bank.to_dict(), "states": states}
    return save_torch(scores_path(ckpt_path), blob)


def fitted_from_blob(name: str, eval_cfg: Mapping[str, Any], blob: Mapping[str, Any] | None,
                     model: torch.nn.Module | None) -> FittedScore:
    """A ready fitted score: the saved state if its parameters match, else refit from the saved bank
    (cheap: statistics of at most fit_points rows). ASH needs only the final layer of ``model``."""
    score = make_fitted(name, eval_cfg)
    saved = (blob or {}).get("states", {}).get(name)
    if saved is not None and saved["params"] == score.params():
        score.state = dict(saved["state"])
        return score
    if blob is not None:
        return score.fit(FitBank(**blob["bank"]))
    if not score.needs_data and model is not None:
        weight, bias = final_layer(model)
        return score.fit(FitBank(torch.zeros(0, weight.shape[1]), torch.zeros(0, dtype=torch.long), weight, bias))
    raise ValueError(f"score '{name}' needs a fit on ID training features and none was given")


def load_scorers(ckpt_path: str | Path, names: list[str], eval_cfg: Mapping[str, Any],
                 model: torch.nn.Module | None = None, fit_cfg: Mapping[str, Any] | None = None,
                 progress: bool = True) -> dict[str, Callable[[Mapping], torch.Tensor]]:
    """Score callables ``out -> (N,)`` for ``names``, with options from ``eval_cfg`` (the ``eval`` section).

    Fitted scores come from ``checkpoint.scores.pt``. When it is missing or stale: given ``fit_cfg``
    (the whole config to fit with) the scores are fitted on its train split and saved; otherwise
    FileNotFoundError says what to run. Without ``fit_cfg`` (replay, the viewer) the fit only has to
    belong to this exact checkpoint.
    """
    check_scores(names)
    blob = None
    if any(is_fitted(n) and FITTED_SCORES[n].needs_data for n in names):
        expect = fit_meta(fit_cfg, ckpt_path) if fit_cfg is not None else {"checkpoint_sha256": checkpoint_sha(ckpt_path)}
        blob = load_fit(ckpt_path, expect)
        if blob is None and fit_cfg is None:
            raise FileNotFoundError(f"{scores_path(ckpt_path)}: no fit for this checkpoint; run "
                                    f"`segood fit-scores CONFIG --ckpt {ckpt_path}` (or `segood eval`, which fits)")
        if blob is None:
            fit_scores(fit_cfg, ckpt_path, model, names, progress)
            blob = load_fit(ckpt_path)
    scorers = {}
    for n in names:
        if is_fitted(n):
            scorers[n] = get_score(n, fit=fitted_from_blob(n, eval_cfg, blob, model))
        else:
            scorers[n] = get_score(n, **score_options(eval_cfg, n))
    return scorers


def score_params(name: str, eval_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """All parameters of one score, for metrics.json."""
    if not is_fitted(name):
        return score_options(eval_cfg, name)
    s = make_fitted(name, eval_cfg)
    return {k: v for k, v in vars(s).items() if k not in ("state", "chunk")}
