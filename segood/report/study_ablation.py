"""The data of the study's ablation table and the provenance of each headline score (plain dicts; the
Markdown is :func:`segood.report.study.ablation_table`).

Per configuration: its config file and ``inherit`` chain, the config keys whose resolved values (each
run's ``config.yaml``) differ from the reference configuration's, the seeds run, the mean training
wall time per run (``run_summary.json`` ``seconds``), the command that runs it, its headline numbers,
and whether its headline score is one the outlier training shaped: the anomaly head (trained on the
synthetic outliers), a logit score of a model trained with an outlier loss (``loss.outlier``), or a
post-hoc score the outlier training did not train (a model without outliers, or a fitted score).
"""
from __future__ import annotations

from typing import Any, Mapping

from segood.engine.model_config import leaves
from segood.metrics.headline import ANOMALY_HEAD
from segood.metrics.stats import summarize
from segood.ood.scores import is_fitted

__all__ = ["config_differences", "headline_provenance", "summarize_ablation"]

VARYING = ("seed", "data.root")  # differ between runs of one study by construction, not by configuration


def config_differences(config: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, list]:
    """``{dotted key: [value, reference value]}`` for every resolved key whose values differ (None where a
    config lacks the key); the seed, the data root and the private ``_source`` / ``_set`` left out."""
    mine, ref = dict(leaves(config)), dict(leaves(reference))
    return {k: [mine.get(k), ref.get(k)] for k in sorted(set(mine) | set(ref))
            if k not in VARYING and not k.startswith("_") and mine.get(k) != ref.get(k)}


def headline_provenance(score: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"shaped": bool | None, "text": str}``: was the headline ``score`` trained by the outlier
    training of the model its run's resolved ``config`` describes (None: no config to tell)."""
    if config is None:
        return {"shaped": None, "text": "unknown (the run folder has no config.yaml)"}
    synthesis = config.get("synthesis", {}).get("method", "none")
    loss = config.get("loss", {})
    if synthesis == "none":
        kind = "fitted" if is_fitted(score) else ("untrained anomaly-head" if score == ANOMALY_HEAD else "logit")
        return {"shaped": False, "text": f"no: post-hoc {kind} score of a model trained without outliers"}
    if score == ANOMALY_HEAD:
        weight = loss.get("anomaly")
        if weight == 0:
            return {"shaped": False, "text": "no: anomaly head with loss.anomaly 0 (never trained)"}
        return {"shaped": True, "text": f"yes: anomaly head trained on the {synthesis} outliers (loss.anomaly {weight})"}
    outlier = loss.get("outlier", "?")
    weight = loss.get("outlier_options", {}).get(outlier, {}).get("weight")
    trained_with = f"loss.outlier {outlier}" + ("" if weight is None else f" (weight {weight})")
    phase = int(config.get("train", {}).get("outlier_phase") or 0)
    trained_with += f", outlier phase of {phase} steps" if phase else ""
    if is_fitted(score):
        return {"shaped": False, "text": f"no: post-hoc fitted score (features) of a model trained with {trained_with}"}
    return {"shaped": True, "text": f"yes: logit score of a model trained with {synthesis} outliers, {trained_with}"}


def _run_config(seeds: Mapping[int, Mapping[str, Any]]) -> dict | None:
    """The resolved training config of a configuration's first run that has one (seeds differ in ``seed`` only)."""
    return next((r["run"]["config"] for _, r in sorted(seeds.items()) if (r.get("run") or {}).get("config")), None)


def summarize_ablation(results: Mapping[str, Mapping[int, Mapping[str, Any]]], rows: Mapping[str, Mapping[str, Any]],
                       reference: str | None, arms: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """Per configuration: config file, inherit chain and command (from ``arms``, what the study command
    knows), the resolved config keys that differ from the reference's, seeds run, training wall time per
    run (s, mean ± std over runs), headline score with its provenance and test numbers (from ``rows``)."""
    arms = arms or {}
    ref_config = _run_config(results[reference]) if reference in results else None
    out = {}
    for arm, seeds in results.items():
        config = _run_config(seeds)
        seconds = [r["run"]["seconds"] for r in seeds.values() if (r.get("run") or {}).get("seconds") is not None]
        info = arms.get(arm, {})
        out[arm] = {
            "config": info.get("config") or (config or {}).get("_source"),
            "chain": list(info.get("chain", [])),
            "command": info.get("command"),
            "differences": (config_differences(config, ref_config)
                            if config is not None and ref_config is not None else None),
            "seeds": sorted(seeds),
            "train_seconds": summarize(seconds) if seconds else None,
            "score": rows[arm]["score"],
            "provenance": headline_provenance(rows[arm]["score"], config),
            "headline": {p: {k: rows[arm]["summary"][p][k] for k in ("auroc", "fpr95", "miou")} for p in ("fov", "all")},
        }
    return out
