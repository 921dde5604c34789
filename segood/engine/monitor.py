"""The shortcut monitor: does the outlier training learn anomalies or a cue of its own synthetic outliers?

At every validation step (``train.val_every``) and at the end of training, for each cheap score
(the logit scores of ``eval.scores`` and the anomaly head; no fitted score), two AUROCs side by side:

* **synthetic**: the latest training step's synthetic outliers (the synthesizer's outliers through
  the model's fusion and heads, exactly as that step's loss saw them) against that step's labelled ID
  points;
* **real**: the val split's real OOD points against its ID points, on camera-visible points (FOV,
  the subset that chooses scores) and on all points.

A model that separates its own outliers perfectly (synthetic >= :data:`SATURATED`) while the real
AUROC falls from one validation to the next is learning the mixing, not anomalies: the trainer logs
one warning line. Runs without synthesis record the real AUROC only.

Records go to ``RUN/monitor.jsonl`` (one JSON object per monitor step); the evaluation attaches them
to metrics.json (``monitor``), the run report draws them and ``segood study`` summarises the last one.
AUROC is exact (:func:`segood.metrics.ood.auroc`, ties as half).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from segood.engine.fit import unavailable_scores
from segood.metrics.ood import auroc
from segood.ood.scores import SCORES, get_score, score_options

__all__ = ["MONITOR_FILE", "SATURATED", "Monitor", "monitor_scorers", "load_monitor", "read_monitor",
           "shortcut_warning"]

MONITOR_FILE = "monitor.jsonl"
SATURATED = 0.99
LOG = logging.getLogger("segood.train")


HEAD_OUTPUTS = frozenset({"logits", "anomaly_logit"})  # what the heads give an outlier too


def monitor_scorers(cfg: Mapping[str, Any]) -> dict[str, Callable[[Mapping], torch.Tensor]]:
    """The cheap scores of ``eval.scores``: those reading only the heads' outputs (no fitted one: they need
    features and a fit on training points) that the evaluation does not skip for this model (``why_not``)."""
    skipped = unavailable_scores(cfg["eval"], cfg, int(cfg["model"]["num_classes"]))
    return {n: get_score(n, **score_options(cfg["eval"], n)) for n in cfg["eval"]["scores"]
            if set(SCORES[n].inputs()) <= HEAD_OUTPUTS and n not in skipped}


def _score_all(scorers: Mapping[str, Callable], logits: torch.Tensor, anomaly_logit: torch.Tensor) -> dict[str, np.ndarray]:
    """Every monitored score of points given by their fused logits and anomaly logit."""
    out = {"logits": logits.detach().float(), "anomaly_logit": anomaly_logit.detach().float()}
    return {n: f({k: out[k] for k in SCORES[n].inputs()}).cpu().numpy().astype(np.float64) for n, f in scorers.items()}


def _safe_auroc(scores: np.ndarray, is_ood: np.ndarray) -> float | None:
    """Exact AUROC, None when one side is empty."""
    return auroc(scores, is_ood) if 0 < int(is_ood.sum()) < len(is_ood) else None


class _Scores:
    """Per-score score arrays of positives and negatives, appended batch by batch (kept on the CPU)."""

    def __init__(self, names) -> None:
        self.parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        self.labels: list[np.ndarray] = []
        self.visible: list[np.ndarray] = []

    def add(self, scores: Mapping[str, np.ndarray], is_ood: np.ndarray, visible: np.ndarray) -> None:
        for n, s in scores.items():
            self.parts[n].append(s)
        self.labels.append(np.asarray(is_ood, bool))
        self.visible.append(np.asarray(visible, bool))

    def arrays(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)  # noqa: E731
        return ({n: cat(p, np.float64) for n, p in self.parts.items()}, cat(self.labels, bool), cat(self.visible, bool))


class Monitor:
    """Collects a monitor step's two sides and writes its record (rank 0 of a distributed run writes)."""

    def __init__(self, cfg: Mapping[str, Any], run_dir: Path) -> None:
        self.scorers = monitor_scorers(cfg)
        self.path = Path(run_dir) / MONITOR_FILE
        self.previous = _last_record(self.path)  # a resumed run compares with the record before the interruption
        self.reset()

    def reset(self) -> None:
        self.synthetic = _Scores(self.scorers)
        self.real = _Scores(self.scorers)

    def observe_train(self, out: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> None:
        """A training forward of the monitored step: its outliers (positives) and its labelled ID points."""
        if "outlier_logits" not in out:
            return
        with torch.no_grad():
            is_id = (batch["ood_target"] == 0).to(out["logits"].device)
            neg = _score_all(self.scorers, out["logits"][is_id], out["anomaly_logit"][is_id])
            pos = _score_all(self.scorers, out["outlier_logits"], out["outlier_anomaly_logit"])
        m, k = int(out["outlier_logits"].shape[0]), int(is_id.sum())
        self.synthetic.add({n: np.concatenate([pos[n], neg[n]]) for n in self.scorers},
                           np.r_[np.ones(m, bool), np.zeros(k, bool)], np.ones(m + k, bool))

    def observe_val(self, out: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> None:
        """A validation forward: the labelled points' scores, OOD flags and visibility."""
        keep = batch["ood_target"] >= 0
        scores = _score_all(self.scorers, out["logits"][keep], out["anomaly_logit"][keep])
        self.real.add(scores, (batch["ood_target"][keep] == 1).cpu().numpy(), batch["visible"][keep].cpu().numpy())

    def record(self, step: int, miou_fov: float, parts: list[tuple[_Scores, _Scores]] | None = None) -> dict:
        """The record of this monitor step from the collected sides (``parts``: every rank's, gathered);
        appended to ``monitor.jsonl``; a shortcut warning is logged once when the run shows one."""
        parts = parts if parts is not None else [(self.synthetic, self.real)]
        syn = _merge([p[0] for p in parts])
        real = _merge([p[1] for p in parts])
        rec = compute_record(step, miou_fov, syn, real)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        warning = shortcut_warning(self.previous, rec)
        if warning:
            LOG.warning(warning)
            print(warning, flush=True)
        self.previous = rec
        self.reset()
        return rec


def _merge(sides: list[_Scores]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    arrays = [s.arrays() for s in sides]
    names = list(arrays[0][0])
    return ({n: np.concatenate([a[0][n] for a in arrays]) for n in names},
            np.concatenate([a[1] for a in arrays]), np.concatenate([a[2] for a in arrays]))


def compute_record(step: int, miou_fov: float, synthetic: tuple, real: tuple) -> dict:
    """``{"step", "val_miou_fov", "scores": {name: {"synthetic", "real_fov", "real_all"}}, "points": {...}}``;
    an AUROC is None where a side has no point (no synthesis, no OOD point in the val split)."""
    s_scores, s_ood, _ = synthetic
    r_scores, r_ood, r_vis = real
    scores = {}
    for n in r_scores:
        scores[n] = {"synthetic": _safe_auroc(s_scores[n], s_ood) if len(s_ood) else None,
                     "real_fov": _safe_auroc(r_scores[n][r_vis], r_ood[r_vis]),
                     "real_all": _safe_auroc(r_scores[n], r_ood)}
    points = {"synthetic_outliers": int(s_ood.sum()), "train_id": int((~s_ood).sum()),
              "val_ood_fov": int((r_ood & r_vis).sum()), "val_id_fov": int((~r_ood & r_vis).sum()),
              "val_ood_all": int(r_ood.sum()), "val_id_all": int((~r_ood).sum())}
    return {"step": int(step), "val_miou_fov": None if math.isnan(miou_fov) else float(miou_fov), "scores": scores,
            "points": points}


def shortcut_warning(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> str | None:
    """One line naming every score whose synthetic AUROC is saturated while its real FOV AUROC fell since
    the previous record; None when no score does."""
    if not previous:
        return None
    hits = []
    for n, now in current["scores"].items():
        before = previous.get("scores", {}).get(n, {})
        syn, real, real_before = now.get("synthetic"), now.get("real_fov"), before.get("real_fov")
        if syn is not None and real is not None and real_before is not None and syn >= SATURATED and real < real_before:
            hits.append(f"{n} synthetic {syn:.3f}, val FOV {real_before:.3f} -> {real:.3f}")
    if not hits:
        return None
    return (f"[monitor] step {current['step']}: shortcut? the synthetic outliers are separated (AUROC >= "
            f"{SATURATED}) while the real val AUROC fell: " + "; ".join(hits))


def _last_record(path: Path) -> dict | None:
    records = read_monitor(path)
    return records[-1] if records else None


def read_monitor(path: Path) -> list[dict]:
    """The records of a ``monitor.jsonl``, one per step (a resumed run's repeated steps: the last one wins)."""
    path = Path(path)
    if not path.is_file():
        return []
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line being written when the run was killed
                continue
            by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def load_monitor(ckpt_path: str | Path, step: int | None = None) -> dict | None:
    """The monitor records of the run a checkpoint belongs to (its folder's monitor.jsonl), up to the
    checkpoint's ``step`` when given, for metrics.json; None when the run has none."""
    records = [r for r in read_monitor(Path(ckpt_path).parent / MONITOR_FILE) if step is None or r["step"] <= step]
    return {"path": str(Path(ckpt_path).parent / MONITOR_FILE), "saturated": SATURATED,
            "records": records} if records else None
