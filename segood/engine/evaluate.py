"""Evaluation on a labelled split: ID mIoU and OOD metrics for every requested score, each for the
camera-visible points (FOV, paper-comparable) and for the full scan."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segood.config import ConfigError
from segood.data.labels import LabelMap
from segood.engine.builders import build_label_map, build_loader
from segood.engine.checkpoint import file_sha256, load_checkpoint, write_json
from segood.metrics.iou import ConfusionMatrix
from segood.metrics.ood import ood_metrics
from segood.models import build_model
from segood.ood.scores import get_score

CONVENTIONS = {
    "anomaly": "positive class = OOD points (learning ids {ood}); higher score = more anomalous",
    "ignored": "points with learning id 0 (unlabeled) are excluded from every metric",
    "auroc": "area under the ROC curve, anomaly positive",
    "aupr": "average precision with anomaly positive",
    "fpr95": "FPR on ID points at the first threshold where anomaly TPR >= 0.95",
    "miou": "confusion matrix over the ID classes on original points (never voxels); OOD points excluded; "
            "mean over classes present in the ground truth",
    "fov": "camera-visible points only (paper-comparable)",
    "all": "every point of the scan (points outside the camera use the image placeholder)",
}


def load_model(ckpt_path: str | Path, label_map: LabelMap | None = None) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model from its checkpoint; refuse a checkpoint trained with another label map."""
    state = load_checkpoint(ckpt_path)
    if label_map is not None and state["label_map"] != label_map.checksum():
        raise ValueError(
            f"{ckpt_path}: trained with label map checksum {state['label_map']} but the data set uses "
            f"'{label_map.source}' (checksum {label_map.checksum()}); evaluate with the label map it was trained on"
        )
    model = build_model(state["config"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def check_scores(names: list[str]) -> None:
    """Refuse unknown score names before any work is done, listing the valid ones."""
    for n in names:
        try:
            get_score(n)
        except KeyError as e:
            raise ConfigError(f"eval.scores: {e.args[0]}") from None


@torch.no_grad()
def evaluate(cfg: dict, ckpt_path: str | Path, out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Run the model over ``data.val_sequences`` and return (and write) the metrics dict."""
    label_map = build_label_map(cfg)
    score_names = list(cfg["eval"]["scores"])
    check_scores(score_names)
    model, state = load_model(ckpt_path, label_map)
    loader = build_loader(cfg, "val", label_map, shuffle=False)
    c = label_map.num_classes
    conf = {"fov": ConfusionMatrix(c), "all": ConfusionMatrix(c)}
    scores: dict[str, list[np.ndarray]] = {n: [] for n in score_names}
    ood_t, vis = [], []
    for batch in tqdm(loader, desc="eval", disable=not progress, dynamic_ncols=True):
        out = model(batch)
        pred = out["logits"].argmax(-1)
        target, visible = batch["target"], batch["visible"]
        conf["all"].update(pred, target)
        conf["fov"].update(pred[visible], target[visible])
        keep = batch["ood_target"] >= 0
        for n in score_names:
            scores[n].append(get_score(n)(out)[keep].float().numpy())
        ood_t.append(batch["ood_target"][keep].numpy())
        vis.append(visible[keep].numpy())
    ood_t_all, vis_all = np.concatenate(ood_t), np.concatenate(vis)
    metrics = {
        "checkpoint": str(ckpt_path),
        "checkpoint_sha256": file_sha256(ckpt_path),
        "config": cfg.get("_source", ""),
        "train_config": state["config"].get("_source", ""),
        "synthesis": state["config"]["synthesis"]["method"],
        "num_scans": len(loader.dataset),
        "conventions": {k: v.format(ood=list(label_map.ood_learning_ids)) for k, v in CONVENTIONS.items()},
        "ood_classes": label_map.ood_names,
        "miou": {k: conf[k].to_dict(label_map.class_names) for k in conf},
        "ood": {},
    }
    for n in score_names:
        s = np.concatenate(scores[n])
        metrics["ood"][n] = {
            "fov": _safe_ood(s[vis_all], ood_t_all[vis_all]),
            "all": _safe_ood(s, ood_t_all),
        }
    if out_dir is not None:
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def _safe_ood(scores: np.ndarray, target: np.ndarray) -> dict:
    """OOD metrics, or a dict saying why they are undefined (e.g. no OOD point in the split)."""
    try:
        return ood_metrics(scores, target)
    except ValueError as e:
        return {"error": str(e), "num_id": int((target == 0).sum()), "num_ood": int((target == 1).sum())}


def headline(metrics: dict, score: str, points: str = "fov") -> dict:
    """AUROC/AUPR/FPR95 of one score and the ID mIoU, in percent, for tables."""
    o = metrics["ood"][score][points]
    return {
        "score": score,
        "auroc": 100 * o.get("auroc", float("nan")),
        "aupr": 100 * o.get("aupr", float("nan")),
        "fpr95": 100 * o.get("fpr95", float("nan")),
        "miou": 100 * metrics["miou"][points]["miou"],
    }



