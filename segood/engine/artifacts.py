"""What a checkpoint leaves beside itself and how it is read back: the model (with its label map
checked), the fitted-score file ``RUN/checkpoint.scores.pt`` and the operating point
``RUN/checkpoint.operating_point.json``. Evaluation, fitting, replay and the viewer all load through
here; nothing in this module runs a pass."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from segood.data.labels import LabelMap
from segood.engine.builders import build_label_map
from segood.engine.checkpoint import file_sha256, load_checkpoint, load_torch
from segood.models import build_model

SCORES_FORMAT = "segood-scores-v1"


@functools.lru_cache(maxsize=16)
def _sha_cached(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(path)


def checkpoint_sha(path: str | Path) -> str:
    """file_sha256 of a checkpoint, hashed once per (path, mtime, size)."""
    st = Path(path).stat()
    return _sha_cached(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


# --------------------------------------------------------------------------- model and label map


def check_label_map(state: Mapping[str, Any], label_map: LabelMap, ckpt_path: str | Path) -> None:
    """Refuse a checkpoint trained with another label map, naming both maps."""
    if state["label_map"] == label_map.checksum():
        return
    trained = state.get("config", {}).get("data", {}).get("label_map", "<unknown>")
    raise ValueError(
        f"{ckpt_path}: label map mismatch: the checkpoint was trained with label map '{trained}' "
        f"(label map checksum {state['label_map']}) but the data set uses '{label_map.source}' "
        f"(label map checksum {label_map.checksum()}); evaluate with the label map it was trained on"
    )


def load_model(ckpt_path: str | Path, label_map: LabelMap | None = None) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model (eval mode) from its checkpoint; refuse one trained with another label map."""
    state = load_checkpoint(ckpt_path)
    if label_map is not None:
        check_label_map(state, label_map, ckpt_path)
    model = build_model(state["config"]["model"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def model_label_map(label_map: LabelMap, state: Mapping[str, Any], ckpt_path: str | Path) -> LabelMap:
    """The label map of the model's classes: the data's, or for an ``anomaly_only`` data map (STU) the one
    the checkpoint was trained with (its checksum checked)."""
    if not label_map.anomaly_only:
        return label_map
    trained = build_label_map(state["config"])
    check_label_map(state, trained, ckpt_path)
    return trained


def final_layer(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (C, D) and bias (C,) of the final linear classifier, whose input is the fused features."""
    head = model.seg_head
    return head.weight.detach().float().clone(), head.bias.detach().float().clone()


# --------------------------------------------------------------------------- files beside the checkpoint


def scores_path(ckpt_path: str | Path) -> Path:
    """``RUN/checkpoint.scores.pt`` beside ``RUN/checkpoint.pt``."""
    return Path(ckpt_path).with_suffix(".scores.pt")


def operating_point_path(ckpt_path: str | Path) -> Path:
    """``RUN/checkpoint.operating_point.json`` beside ``RUN/checkpoint.pt``."""
    return Path(ckpt_path).with_suffix(".operating_point.json")


def load_fit(ckpt_path: str | Path, expect: Mapping[str, Any] | None = None) -> dict | None:
    """The saved fit beside ``ckpt_path``, or None if missing or if a key of ``expect`` differs
    (e.g. the checkpoint changed since the fit)."""
    path = scores_path(ckpt_path)
    if not path.is_file():
        return None
    blob = load_torch(path, "scores file")
    if not isinstance(blob, dict) or blob.get("format") != SCORES_FORMAT:
        raise ValueError(f"{path}: not a segood scores file (expected format '{SCORES_FORMAT}')")
    if expect and any(blob.get(k) != v for k, v in expect.items()):
        return None
    return blob


def load_operating_point(ckpt_path: str | Path) -> dict:
    """The stored operating point of a checkpoint (``{"score", "threshold", "tpr", "split", ...}``),
    for replay and the viewer: flag points whose score >= threshold."""
    path = operating_point_path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no operating point; run `segood eval CONFIG --ckpt {ckpt_path} --out DIR`")
    try:
        op = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON operating point: {e}") from e
    if not isinstance(op, dict) or op.get("checkpoint_sha256") != checkpoint_sha(ckpt_path):
        raise ValueError(f"{path}: computed for another version of {ckpt_path}; re-run `segood eval`")
    return op
