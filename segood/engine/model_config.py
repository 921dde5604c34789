"""One model config per checkpoint: a checkpoint is always run with the model section it was trained with.

A checkpoint stores the resolved config it was trained with; its ``model`` section is the only one
that can build a model its weights fit. Every command that runs a checkpoint (``segood eval``,
``viz``, ``replay``, ``predict``) builds the model from it with :func:`model_config_from_checkpoint`
and records that config, and refuses a model key that the user stated (in a config file, a run
folder's ``config.yaml`` or ``--set``) with another value, naming the key and both values. Keys that
do not change the weights' shapes or meaning (:data:`RUNTIME_KEYS`) are taken from the user's config.
``train --resume`` refuses a config whose model differs from the checkpoint's
(:func:`check_resume_model`), naming the keys, before any weights are loaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

from segood.config import ConfigError, base_defaults, given_config, merge

__all__ = ["RUNTIME_KEYS", "model_config_from_checkpoint", "check_resume_model", "model_differences", "leaves"]

RUNTIME_KEYS = ("lidar.backend", "image.pretrained")
"""Model keys that do not change the trained weights: the sparse backend (same parameters) and the
ImageNet initialisation (overwritten by the checkpoint's weights; never loaded from a checkpoint's path)."""


def leaves(section: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested config section (an empty mapping has none)."""
    for key, value in section.items():
        if isinstance(value, Mapping):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _get(section: Mapping[str, Any], dotted: str) -> Any:
    node: Any = section
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def model_differences(given: Mapping[str, Any], trained: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, given value, trained value) for every model key of ``given`` that differs from ``trained``
    (runtime keys left out); keys are relative to the model section."""
    return [(key, value, _get(trained, key)) for key, value in leaves(given)
            if key not in RUNTIME_KEYS and value != _get(trained, key)]


def _stated_model(cfg: Mapping[str, Any]) -> dict:
    """The model keys the user stated: the config file's chain without base.yaml, and ``--set``."""
    source = cfg.get("_source")
    if not source or not Path(source).is_file():
        return {}
    return given_config(source, cfg.get("_set")).get("model") or {}


def model_config_from_checkpoint(state: Mapping[str, Any], cfg: Mapping[str, Any] | None = None,
                                 ckpt_path: str | Path = "checkpoint") -> dict:
    """The config to run a checkpoint with: ``cfg`` (data, eval, ... as the user gave them; the
    checkpoint's own config when None) with the model section the checkpoint was trained with.

    The runtime keys (:data:`RUNTIME_KEYS`) come from ``cfg`` when it states them (``--set
    model.lidar.backend=torch`` on a GPU machine); ``image.pretrained`` is always null (the weights
    come from the checkpoint). A model key that ``cfg`` states (config file, run folder config.yaml or
    ``--set``; base.yaml defaults do not count) with another value than the checkpoint's is refused
    with a ConfigError naming the key, both values and where each comes from.
    """
    trained = merge(base_defaults()["model"], state["config"]["model"])  # an older checkpoint may lack new keys
    run = merge({}, dict(cfg if cfg is not None else state["config"]))
    stated = _stated_model(cfg) if cfg is not None else {}
    bad = model_differences(stated, trained)
    if bad:
        where = cfg.get("_source", "the config") + (" and --set" if cfg.get("_set") else "")
        lines = "; ".join(f"model.{k}: {v!r} in {where}, {t!r} in the checkpoint" for k, v, t in bad)
        raise ConfigError(f"{ckpt_path}: the model is built from the checkpoint's own config, which disagrees "
                          f"with what you gave: {lines}. Drop these model keys (or --set them to the checkpoint's "
                          f"values), or use a checkpoint trained with them")
    if _get(stated, "lidar.backend") is not None:
        trained["lidar"]["backend"] = stated["lidar"]["backend"]
    trained["image"]["pretrained"] = None
    run["model"] = trained
    return run


def check_resume_model(cfg: Mapping[str, Any], state: Mapping[str, Any], ckpt_path: str | Path) -> None:
    """Refuse to resume a run whose config builds another model than its checkpoint's, naming the keys."""
    bad = model_differences(cfg["model"], merge(base_defaults()["model"], state["config"]["model"]))
    if bad:
        lines = "; ".join(f"model.{k}: {v!r} in the config, {t!r} in the checkpoint" for k, v, t in bad)
        raise ConfigError(f"{ckpt_path}: cannot resume: the config's model differs from the checkpoint's: {lines}. "
                          "Resume with the run's own config.yaml, or start a new run (another --out)")
