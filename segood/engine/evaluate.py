"""Evaluation on a labelled split in one streaming pass: ID mIoU and OOD metrics for every requested
score, each for the camera-visible points (FOV, paper-comparable) and for the full scan.

The network runs once per batch; every score is computed from that one output dict, and gets
exactly the output keys it declares (``Score.reads``). Nothing per-point is kept: the whole state is
an :class:`~segood.metrics.accumulator.EvalAccumulator` (confusion matrices, fixed-bin score
histograms), so memory does not grow with the data set.

The checkpoint and its fitted scores are read through :mod:`segood.engine.artifacts` and
:mod:`segood.engine.fit`; the operating point is :mod:`segood.engine.operating_point`.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm import tqdm

from segood.atomic import atomic_write, write_json
from segood.config import ConfigError
from segood.data.labels import LabelMap
from segood.engine.allocator import bound_allocator
from segood.engine.artifacts import checkpoint_sha, load_fit, load_model, model_label_map, operating_point_path, scores_path
from segood.engine.builders import build_label_map, build_loader
from segood.engine.model_config import model_config_from_checkpoint
from segood.engine.fit import check_scores, eval_option, load_scorers, score_params, unavailable_scores
from segood.engine.monitor import load_monitor
from segood.engine.operating_point import operating_point
from segood.data.ood_kinds import OOD_KIND_FAMILY, OOD_KIND_NAMES
from segood.metrics.accumulator import SUBSETS, EvalAccumulator
from segood.metrics.kinds import KindHistograms, add_kinds, kind_metrics
from segood.metrics.ood import ScoreHistogram
from segood.metrics.protocols import PROTOCOLS, ProtocolAccumulator, protocol_names
from segood.ood.scores import SCORES, is_fitted, score_options, score_range

CONVENTIONS = {
    "anomaly": "positive class = OOD points (learning ids {ood}); higher score = more anomalous",
    "ignored": "points with learning id 0 (unlabeled) are excluded from every metric",
    "auroc": "area under the ROC curve, anomaly positive",
    "aupr": "average precision with anomaly positive",
    "fpr95": "FPR on ID points at the first threshold where anomaly TPR >= 0.95",
    "miou": "confusion matrix over the ID classes on original points (never voxels); OOD points excluded; "
            "mean over classes present in the ground truth",
    "fov": "camera-visible points only (paper-comparable)",
    "ood_kinds": "per kind of OOD object (synthetic data): that kind's OOD points against every ID point of the subset; "
                 "histograms coarsened to ood_kind_bins bins (bin_error_bound per entry); ood_families sums a "
                 "family's kinds (novel, mixed = cross-modal, near = held-out ID-like vehicles)",
    "all": "every point of the scan (points outside the camera use the image placeholder)",
    "histogram": "OOD metrics from fixed-bin histograms: linear bins on a known range, else bins of the monotone "
                 "squash z/(1+|z|), z=(s-median)/spread of the first batch; bin_error_bound gives |binned - exact| "
                 "bounds for AUROC and FPR95",
    "fitted_scores": "mahalanobis/knn/vim/react/ash use the fused features (input of the final linear layer), "
                     "fitted on a class-balanced subsample of labelled ID training points "
                     "(full scans, no augmentation)",
}

# report(out_dir, metrics, histograms {score: {subset: ScoreHistogram}}, binnings {score: Binning})
ReportSink = Callable[[Path, dict, Mapping[str, Mapping[str, ScoreHistogram]], Mapping[str, Any]], Any]


def score_ranges(names: list[str], eval_cfg: Mapping[str, Any],
                 num_classes: int) -> dict[str, tuple[float, float] | None]:
    """Known [lo, hi] of each score (None = unbounded, squash-binned)."""
    return {n: score_range(n, num_classes, **score_options(eval_cfg, n)) for n in names}


def score_inputs(out: Mapping[str, torch.Tensor], name: str, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Exactly the output keys score ``name`` reads (``Score.reads``), restricted to ``rows``."""
    missing = [k for k in SCORES[name].inputs() if k not in out]
    if missing:
        raise KeyError(f"score '{name}' reads model outputs {missing} that the model does not return "
                       f"(it returns {sorted(out)})")
    return {k: out[k][rows] for k in SCORES[name].inputs()}


def score_batch(out: Mapping[str, torch.Tensor], scorers: Mapping[str, Callable],
                rows: torch.Tensor) -> dict[str, np.ndarray]:
    """Every score of one batch on the points ``rows`` (bool mask), as float numpy arrays."""
    return {n: f(score_inputs(out, n, rows)).float().numpy() for n, f in scorers.items()}


@torch.no_grad()
def run_pass(model: torch.nn.Module, loader, scorers: Mapping[str, Callable], acc: EvalAccumulator,
             progress: bool = True, protocols: list[ProtocolAccumulator] = (),
             kinds: KindHistograms | None = None) -> EvalAccumulator:
    """One network pass per batch; every score from that output; only accumulators are kept. With
    ``protocols`` every point is scored (a protocol's label map may label points segood ignores); with
    ``kinds`` the OOD points of each kind are counted too (data with ``Batch["ood_kind"]``)."""
    bound_allocator()  # per-batch arrays must not fragment the heap (segood.engine.allocator)
    for batch in tqdm(loader, desc="eval", disable=not progress, dynamic_ncols=True):
        out = model(batch)
        visible, ood_target = batch["visible"], batch["ood_target"]
        pred = out["logits"].argmax(-1).numpy()
        acc.add_segmentation(pred, batch["target"].numpy(), visible.numpy())
        keep = ood_target >= 0
        if not protocols:
            scores = score_batch(out, scorers, keep)
            acc.add_scores(scores, (ood_target[keep] == 1).numpy(), visible[keep].numpy())
            add_kinds(kinds, acc, batch, scores, keep)
            continue
        every = score_batch(out, scorers, torch.ones_like(keep))
        k = keep.numpy()
        scores = {n: v[k] for n, v in every.items()}
        acc.add_scores(scores, (ood_target[keep] == 1).numpy(), visible[keep].numpy())
        add_kinds(kinds, acc, batch, scores, keep)
        for p in protocols:
            p.add(batch["raw_label"], pred, every, acc.axis, visible, batch["points"], batch["batch_idx"],
                  batch["sources"][0])
    return acc


@torch.no_grad()
def evaluate(cfg: dict, ckpt_path: str | Path, out_dir: str | Path | None = None, progress: bool = True,
             report: ReportSink | None = None, split: str = "val") -> dict:
    """Run the model over ``data.<split>_sequences`` (``val`` or ``test``) and return the metrics dict.

    With ``out_dir``: also write ``metrics.json`` and ``histograms.npz``, hand metrics and histograms
    to ``report`` (e.g. :func:`segood.report.markdown.write_eval_report`: report.md and its pictures)
    and, for the val split only, store the operating point beside the checkpoint
    (``checkpoint.operating_point.json``): thresholds are chosen on val, never on the reported split.
    """
    if split not in ("val", "test"):
        raise ConfigError(f"evaluate: split must be 'val' or 'test', got '{split}'")
    if not cfg["data"][f"{split}_sequences"]:
        raise ConfigError(f"data.{split}_sequences is empty: nothing to evaluate on the {split} split")
    eval_cfg = cfg["eval"]
    label_map = build_label_map(cfg)
    check_scores(list(eval_cfg["scores"]))
    model, state = load_model(ckpt_path, None if label_map.anomaly_only else label_map, cfg)
    cfg = model_config_from_checkpoint(state, cfg, ckpt_path)  # what metrics.json records
    model_map = model_label_map(label_map, state, ckpt_path)
    skipped = unavailable_scores(eval_cfg, state["config"], model_map.num_classes)
    for name, why in skipped.items():
        print(f"[eval] {ckpt_path}: score {name} skipped: {why}", file=sys.stderr)
    names = [n for n in eval_cfg["scores"] if n not in skipped]
    scorers = load_scorers(ckpt_path, names, eval_cfg, model, fit_cfg=cfg, progress=progress)
    loader = build_loader(cfg, split, label_map, shuffle=False)
    bins = int(eval_option(eval_cfg, "hist_bins"))
    acc = EvalAccumulator(names, model_map.num_classes, score_ranges(names, eval_cfg, model_map.num_classes), bins)
    protocols = [ProtocolAccumulator(PROTOCOLS[p], label_map, model_map, names, bins)
                 for p in protocol_names(eval_cfg) if p != "segood"]
    kinds = KindHistograms(OOD_KIND_NAMES, OOD_KIND_FAMILY)
    run_pass(model, loader, scorers, acc, progress, protocols, kinds)
    metrics = assemble_metrics(cfg, ckpt_path, state, model_map, acc, len(loader.dataset), split, protocols, kinds)
    metrics["skipped_scores"] = skipped
    if out_dir is not None:
        write_outputs(Path(out_dir), metrics, acc)
        if report is not None:
            report(Path(out_dir), metrics, acc.hist, acc.binning)
        if split == "val" and metrics["operating_point"] is not None:
            write_json(operating_point_path(ckpt_path), metrics["operating_point"])
    return metrics


def assemble_metrics(cfg: dict, ckpt_path: str | Path, state: Mapping[str, Any], label_map: LabelMap,
                     acc: EvalAccumulator, num_scans: int, split: str = "val",
                     protocols: list[ProtocolAccumulator] = (), kinds: KindHistograms | None = None) -> dict:
    """The metrics.json structure (``ood[score][fov|all]``, ``miou[fov|all]``: protocol ``segood``;
    ``protocols[name]``: each reference protocol's own block; ``ood_kinds`` / ``ood_families`` when the
    data has per-point OOD kinds (:func:`~segood.metrics.kinds.kind_metrics`); ``monitor``: the run's
    shortcut-monitor records; conventions, provenance)."""
    fit = load_fit(ckpt_path) if any(is_fitted(n) for n in acc.names) else None
    bounds = acc.error_bounds()
    sequences = list(cfg["data"][f"{split}_sequences"])
    synthesis = state["config"]["synthesis"]["method"]
    return {
        "checkpoint": str(ckpt_path),
        "checkpoint_sha256": checkpoint_sha(ckpt_path),
        "config": cfg.get("_source", ""),
        "train_config": state["config"].get("_source", ""),
        "synthesis": synthesis,
        "num_scans": num_scans,
        "split": {"name": split, "sequences": sequences},
        "conventions": {k: v.format(ood=list(label_map.ood_learning_ids)) for k, v in CONVENTIONS.items()},
        "ood_classes": label_map.ood_names,
        "miou": {k: acc.conf[k].to_dict(label_map.class_names) for k in SUBSETS},
        "ood": acc.ood(),
        **kind_metrics(kinds, acc),
        "protocol": "segood",
        "protocols": {p.protocol.name: p.metrics() for p in protocols},
        "scores": {n: {"params": score_params(n, cfg["eval"]),
                       "binning": acc.binning[n].to_dict() if n in acc.binning else None,
                       "bin_error_bound": bounds.get(n)} for n in acc.names},
        "fit": None if fit is None else {"path": str(scores_path(ckpt_path)), "points": int(len(fit["bank"]["labels"])),
                                         "per_class": fit["per_class"], "sequences": fit["sequences"]},
        "operating_point": operating_point(acc, cfg["eval"], sequences, ckpt_path, split, synthesis),
        "monitor": load_monitor(ckpt_path, state.get("step")),
        "resolved_config": cfg,
    }


def write_outputs(out_dir: Path, metrics: dict, acc: EvalAccumulator) -> None:
    """metrics.json and histograms.npz (for plots and comparisons)."""
    write_json(out_dir / "metrics.json", metrics)
    arrays = acc.histograms()

    def save(path: Path) -> None:
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez_compressed(f, **arrays)

    atomic_write(out_dir / "histograms.npz", save)
