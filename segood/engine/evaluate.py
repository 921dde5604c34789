"""Evaluation on a labelled split in one streaming pass: ID mIoU and OOD metrics for every requested
score, each for the camera-visible points (FOV, paper-comparable) and for the full scan.

The network runs once per batch; every score is computed from that one output dict. Nothing
per-point is kept: confusion matrices and fixed-bin score histograms (:class:`ScoreHistogram`) are
the whole state (:class:`EvalAccumulator`), so memory does not grow with the data set and the state
could be summed across processes.

Histogram axis per score (:class:`Binning`): scores with a known range (anomaly head, MSP, entropy,
GEN, kNN; see :func:`segood.ood.scores.score_range`) are binned linearly on it; unbounded ones
through the monotone squash ``u = z / (1 + |z|)``, ``z = (s - centre) / scale`` onto (-1, 1), with
centre = median and scale = half the 10-90% quantile spread of the first batch. The squash never
clips (tails just get coarser bins), and it is monotone, so AUROC / AUPR / FPR95 are those of the
binned raw scores. Binning error is bounded from the counts themselves (:func:`bin_error_bounds`)
and reported beside every number. (Multi-process: broadcast rank 0's squash before merging.)

Feature-based scores (Mahalanobis, kNN, ViM, ReAct, ASH) are fitted on a class-balanced subsample
of ID training points (:func:`fit_scores`); the fit is saved beside the checkpoint
(``checkpoint.scores.pt``) and refitted automatically when missing or stale.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm import tqdm

from segood.config import ConfigError
from segood.data.labels import LabelMap
from segood.engine.allocator import bound_allocator
from segood.engine.builders import build_label_map, build_loader
from segood.atomic import atomic_write, write_json
from segood.engine.checkpoint import file_sha256, load_checkpoint, load_torch, save_torch
from segood.engine.monitor import load_monitor
from segood.engine.operating_point import choose_operating_point, threshold_at_tpr  # noqa: F401  (re-exported)
from segood.data.ood_kinds import OOD_KIND_FAMILY, OOD_KIND_NAMES
from segood.metrics.iou import ConfusionMatrix
from segood.metrics.kinds import KindHistograms
from segood.metrics.ood import ScoreHistogram
from segood.metrics.protocols import PROTOCOLS, ProtocolAccumulator, protocol_names
from segood.models import build_model
from segood.ood.scores import (FITTED_SCORES, check_score_names, get_score, is_fitted, score_options,
                               score_range)
from segood.ood.scores.fitted import FEATURE_KEY, ClassBalancedSampler, FitBank, FittedScore

SUBSETS = ("fov", "all")
SCORES_FORMAT = "segood-scores-v1"

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


@functools.lru_cache(maxsize=16)
def _sha_cached(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(path)


def checkpoint_sha(path: str | Path) -> str:
    """file_sha256 of a checkpoint, hashed once per (path, mtime, size)."""
    st = Path(path).stat()
    return _sha_cached(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


def eval_option(cfg: Mapping[str, Any], key: str) -> Any:
    """``cfg['eval'][key]`` (every key and its default are in configs/base.yaml)."""
    try:
        return cfg["eval"][key]
    except KeyError:
        raise ConfigError(f"eval.{key}: missing from the config (load it with segood.config.load_config, "
                          "which merges configs/base.yaml)") from None


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
    model = build_model(state["config"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def final_layer(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (C, D) and bias (C,) of the final linear classifier, whose input is ``out[FEATURE_KEY]``."""
    head = model.seg_head
    return head.weight.detach().float().clone(), head.bias.detach().float().clone()


def check_scores(names: list[str]) -> None:
    """Refuse unknown score names before any work is done, listing the valid ones."""
    try:
        check_score_names(names)
    except KeyError as e:
        raise ConfigError(f"eval.scores: {e.args[0]}") from None


# --------------------------------------------------------------------------- fitted scores


def scores_path(ckpt_path: str | Path) -> Path:
    """``RUN/checkpoint.scores.pt`` beside ``RUN/checkpoint.pt``."""
    return Path(ckpt_path).with_suffix(".scores.pt")


def operating_point_path(ckpt_path: str | Path) -> Path:
    """``RUN/checkpoint.operating_point.json`` beside ``RUN/checkpoint.pt``."""
    return Path(ckpt_path).with_suffix(".operating_point.json")


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


def _fit_meta(cfg: Mapping[str, Any], ckpt_path: str | Path) -> dict[str, Any]:
    """What a saved fit must match to be reused."""
    return {"checkpoint_sha256": checkpoint_sha(ckpt_path), "fit_points": int(eval_option(cfg, "fit_points")),
            "seed": int(cfg["seed"]), "sequences": list(cfg["data"]["train_sequences"])}


def make_fitted(name: str, cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None) -> FittedScore:
    """A fitted score object with its options from ``eval.score_options.<name>``."""
    return FITTED_SCORES[name](state, **score_options(cfg, name))


@torch.no_grad()
def fit_scores(cfg: dict, ckpt_path: str | Path, model: torch.nn.Module | None = None,
               names: list[str] | None = None, progress: bool = True) -> Path:
    """Fit the feature-based scores on the train split (no augmentation) and save them atomically
    beside the checkpoint: the feature bank, the final layer and each score's fitted state."""
    label_map = build_label_map(cfg)
    if model is None:
        model, _ = load_model(ckpt_path, label_map)
    loader = build_loader(cfg, "train", label_map, shuffle=False)
    meta = _fit_meta(cfg, ckpt_path)
    bank = collect_fit_bank(model, loader, label_map.num_classes, meta["fit_points"], meta["seed"], progress)
    names = list(FITTED_SCORES) if names is None else [n for n in names if is_fitted(n)]
    states = {}
    for n in names:
        score = make_fitted(n, cfg).fit(bank)
        states[n] = {"params": score.params(), "state": score.state}
    blob = {"format": SCORES_FORMAT, **meta, "split": "train", "per_class": np.bincount(
        bank.labels.numpy(), minlength=label_map.num_classes).tolist(), "bank": bank.to_dict(), "states": states}
    return save_torch(scores_path(ckpt_path), blob)


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


def fitted_from_blob(name: str, cfg: Mapping[str, Any], blob: Mapping[str, Any] | None,
                     model: torch.nn.Module | None) -> FittedScore:
    """A ready fitted score: the saved state if its parameters match, else refit from the saved bank
    (cheap: statistics of at most fit_points rows). ASH needs only the final layer of ``model``."""
    score = make_fitted(name, cfg)
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


def load_scorers(ckpt_path: str | Path, names: list[str], cfg: dict, model: torch.nn.Module | None = None,
                 auto_fit: bool = False, progress: bool = True) -> dict[str, Callable[[Mapping], torch.Tensor]]:
    """Score callables ``out -> (N,)`` for ``names`` (used by evaluation, replay and the viewer).

    Fitted scores come from ``checkpoint.scores.pt``. When it is missing or stale: with ``auto_fit``
    the scores are fitted on the train split and saved; otherwise FileNotFoundError says what to run.
    Replay (``auto_fit=False``) only requires the fit to belong to this exact checkpoint.
    """
    check_scores(names)
    blob = None
    if any(is_fitted(n) and FITTED_SCORES[n].needs_data for n in names):
        expect = _fit_meta(cfg, ckpt_path) if auto_fit else {"checkpoint_sha256": checkpoint_sha(ckpt_path)}
        blob = load_fit(ckpt_path, expect)
        if blob is None and not auto_fit:
            raise FileNotFoundError(f"{scores_path(ckpt_path)}: no fit for this checkpoint; run "
                                    f"`segood fit-scores CONFIG --ckpt {ckpt_path}` (or `segood eval`, which fits)")
        if blob is None:
            fit_scores(cfg, ckpt_path, model, names, progress)
            blob = load_fit(ckpt_path)
    scorers = {}
    for n in names:
        if is_fitted(n):
            scorers[n] = get_score(n, fit=fitted_from_blob(n, cfg, blob, model))
        else:
            scorers[n] = get_score(n, **score_options(cfg, n))
    return scorers


def score_params(name: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """All parameters of one score, for metrics.json."""
    if not is_fitted(name):
        return score_options(cfg, name)
    s = make_fitted(name, cfg)
    return {k: v for k, v in vars(s).items() if k not in ("state", "chunk")}


# --------------------------------------------------------------------------- streaming accumulators


@dataclass(frozen=True)
class Binning:
    """Monotone map of raw scores onto a histogram axis.

    ``linear``: raw scores binned on [lo, hi]. ``squash``: ``u = z / (1 + |z|)`` with
    ``z = (s - centre) / scale``, binned on [-1, 1]; order-preserving, so the metrics are unchanged
    up to binning, and unbounded scores never fall off the axis.
    """

    kind: str
    lo: float = -1.0
    hi: float = 1.0
    centre: float = 0.0
    scale: float = 1.0

    @staticmethod
    def calibrate(scores: np.ndarray) -> "Binning":
        """Squash centred on the median with scale = half the 10-90% spread (1 if degenerate)."""
        q10, q50, q90 = np.quantile(np.asarray(scores, np.float64), [0.1, 0.5, 0.9])
        spread = (q90 - q10) / 2.0
        return Binning("squash", centre=float(q50), scale=float(spread) if spread > 0 else 1.0)

    def forward(self, s: np.ndarray) -> np.ndarray:
        s = np.asarray(s, np.float64)
        if self.kind == "linear":
            return s
        z = np.clip((s - self.centre) / self.scale, -1e300, 1e300)
        return z / (1.0 + np.abs(z))

    def inverse(self, u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, np.float64)
        if self.kind == "linear":
            return u
        with np.errstate(divide="ignore"):
            return self.centre + self.scale * u / (1.0 - np.abs(u))

    def histogram(self, bins: int) -> ScoreHistogram:
        return ScoreHistogram(self.lo, self.hi, bins)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bin_error_bounds(counts: np.ndarray, tpr: float = 0.95) -> dict[str, float]:
    """Upper bounds on |binned - exact| from the counts alone.

    AUROC: binned counts every ID/OOD pair inside one bin as half, exact as 0, 1/2 or 1, and pairs in
    different bins are ordered correctly, so the error is at most half the share of same-bin pairs.
    FPR95: the exact first threshold with TPR >= ``tpr`` lies in the bin where the binned cumulative
    TPR first reaches it, so the error is at most that bin's share of ID points.
    """
    idc, oodc = counts[0].astype(np.float64), counts[1].astype(np.float64)
    n_id, n_ood = idc.sum(), oodc.sum()
    if n_id == 0 or n_ood == 0:
        return {"auroc": float("nan"), "fpr95": float("nan")}
    first = int(np.argmax(np.cumsum(oodc[::-1]) / n_ood >= tpr))
    return {"auroc": float(0.5 * (idc * oodc).sum() / (n_id * n_ood)),
            "fpr95": float(idc[::-1][first] / n_id)}


class EvalAccumulator:
    """All state of one evaluation: a confusion matrix and, per score, one ScoreHistogram per
    subset (FOV, all). Fixed size whatever the number of points; :meth:`merge` sums two of them."""

    def __init__(self, names: list[str], num_classes: int, ranges: Mapping[str, tuple[float, float] | None],
                 bins: int = 65536) -> None:
        bound_allocator()  # per-batch arrays must not fragment the heap (segood.engine.allocator)
        self.names, self.bins = list(names), int(bins)
        self.conf = {s: ConfusionMatrix(num_classes) for s in SUBSETS}
        self.binning: dict[str, Binning] = {}
        self.hist: dict[str, dict[str, ScoreHistogram]] = {}
        for n in self.names:
            if ranges.get(n) is not None:
                self._set_binning(n, Binning("linear", *map(float, ranges[n])))

    def _set_binning(self, name: str, binning: Binning) -> None:
        self.binning[name] = binning
        self.hist[name] = {s: binning.histogram(self.bins) for s in SUBSETS}

    def axis(self, name: str, sample: np.ndarray) -> Binning:
        """The histogram axis of a score (calibrated on ``sample`` when it has none yet)."""
        if name not in self.binning:
            self._set_binning(name, Binning.calibrate(sample))
        return self.binning[name]

    def add_segmentation(self, pred: Any, target: Any, visible: Any) -> None:
        """Predicted vs target train ids (-1 ignored) for all points and for the camera-visible ones."""
        pred, target, visible = (np.asarray(a) for a in (pred, target, visible))
        self.conf["all"].update(pred, target)
        self.conf["fov"].update(pred[visible], target[visible])

    def add_scores(self, scores: Mapping[str, Any], is_ood: Any, visible: Any) -> None:
        """Scores of labelled points only (ID or OOD; drop ignored points first)."""
        y, v = np.asarray(is_ood, bool), np.asarray(visible, bool)
        if y.size == 0:
            return
        for n in self.names:
            s = np.asarray(scores[n], np.float64)
            u = self.axis(n, s).forward(s)
            self.hist[n]["all"].update(u, y)
            self.hist[n]["fov"].update(u[v], y[v])

    def merge(self, other: "EvalAccumulator") -> "EvalAccumulator":
        """Add another accumulator's counts (same scores, bins and binning required)."""
        for s in SUBSETS:
            self.conf[s].merge(other.conf[s])
        for n in other.hist:
            if n not in self.hist:
                self._set_binning(n, other.binning[n])
            elif self.binning[n] != other.binning[n]:
                raise ValueError(f"cannot merge '{n}': binnings differ ({self.binning[n]} vs {other.binning[n]})")
            for s in SUBSETS:
                self.hist[n][s].merge(other.hist[n][s])
        return self

    def ood(self) -> dict[str, dict[str, dict]]:
        """``{score: {subset: {auroc, aupr, fpr95, num_id, num_ood}}}``, or an error entry when undefined."""
        return {n: {s: _safe_metrics(self.hist[n][s]) if n in self.hist else _undefined(0, 0) for s in SUBSETS}
                for n in self.names}

    def error_bounds(self) -> dict[str, dict[str, dict[str, float]]]:
        return {n: {s: bin_error_bounds(self.hist[n][s].counts) for s in SUBSETS} for n in self.hist}

    def histograms(self) -> dict[str, np.ndarray]:
        """Flat arrays for ``histograms.npz``: ``{score}/{subset}`` counts (2, bins), ``{score}/binning``."""
        arrays = {}
        for n, per in self.hist.items():
            for s, h in per.items():
                arrays[f"{n}/{s}"] = h.counts
            arrays[f"{n}/binning"] = np.array(json.dumps(self.binning[n].to_dict()))
        return arrays


def _undefined(num_id: int, num_ood: int) -> dict:
    return {"error": "no ID or no OOD point in this subset: metrics undefined", "num_id": num_id, "num_ood": num_ood}


def _safe_metrics(hist: ScoreHistogram) -> dict:
    """Histogram metrics, or a dict saying why they are undefined (e.g. no OOD point in the split)."""
    try:
        return hist.metrics()
    except ValueError as e:
        return {"error": str(e), "num_id": int(hist.counts[0].sum()), "num_ood": int(hist.counts[1].sum())}


# --------------------------------------------------------------------------- operating point


def operating_point(acc: EvalAccumulator, cfg: Mapping[str, Any], ckpt_path: str | Path, split: str,
                    synthesis: str = "none") -> dict | None:
    """The operating point on all points (:mod:`segood.engine.operating_point`): ``eval.operating_score``
    if set, else the model's headline score on this split."""
    try:
        op = choose_operating_point(acc.hist, acc.binning, acc.ood(), synthesis,
                                    eval_option(cfg, "operating_score"), float(eval_option(cfg, "operating_tpr")))
    except KeyError as e:
        raise ConfigError(f"eval.operating_score: {e.args[0]}") from None
    if op is None:
        return None
    return {**op, "split": split, "sequences": list(cfg["data"][f"{split}_sequences"]),
            "checkpoint_sha256": checkpoint_sha(ckpt_path)}


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


# --------------------------------------------------------------------------- evaluation


def score_ranges(names: list[str], cfg: Mapping[str, Any], num_classes: int) -> dict[str, tuple[float, float] | None]:
    """Known [lo, hi] of each score (None = unbounded, squash-binned)."""
    return {n: score_range(n, num_classes, **score_options(cfg, n)) for n in names}


def _labelled_output(out: Mapping[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output keys scores read, restricted to labelled points (saves scoring ignored ones)."""
    return {k: out[k][keep] for k in ("logits", "anomaly_logit", FEATURE_KEY) if k in out}


def _add_kinds(kinds: KindHistograms | None, acc: EvalAccumulator, batch: Mapping, scores: Mapping[str, np.ndarray],
               keep: torch.Tensor) -> None:
    """Per-kind OOD counts of the labelled points ``keep`` (only data with per-point kinds has them)."""
    if kinds is None or "ood_kind" not in batch:
        return
    is_ood = (batch["ood_target"][keep] == 1).numpy()
    visible, kind = batch["visible"][keep].numpy(), batch["ood_kind"][keep].numpy()
    for n, s in scores.items():
        if n in acc.hist:
            kinds.add(n, acc.hist[n]["all"], acc.binning[n].forward(s), is_ood, visible, kind)


def kind_metrics(kinds: KindHistograms | None, acc: EvalAccumulator) -> dict[str, Any]:
    """metrics.json's per-kind blocks (``ood_kinds[score][kind][subset]``, ``ood_families[score][family][subset]``:
    that kind's OOD points against every ID point), or nothing when the data has no kinds."""
    if kinds is None or not kinds.counts:
        return {}
    per_kind, per_family = kinds.histograms(acc.hist)

    def block(tree: Mapping[str, Mapping[str, Mapping[str, ScoreHistogram]]]) -> dict:
        return {n: {k: {s: {**_safe_metrics(h), "bin_error_bound": bin_error_bounds(h.counts)} for s, h in per.items()}
                    for k, per in by.items()} for n, by in tree.items()}

    seen = sorted({k for by in per_kind.values() for k in by})
    return {"ood_kinds": block(per_kind), "ood_families": block(per_family),
            "ood_kind_family": {k: kinds.families.get(k, "other") for k in seen},
            "ood_kind_bins": next(h for by in per_kind.values() for per in by.values() for h in per.values()).bins}


@torch.no_grad()
def run_pass(model: torch.nn.Module, loader, scorers: Mapping[str, Callable], acc: EvalAccumulator,
             progress: bool = True, protocols: list[ProtocolAccumulator] = (),
             kinds: KindHistograms | None = None) -> EvalAccumulator:
    """One network pass per batch; every score from that output; only accumulators are kept. With
    ``protocols`` every point is scored (a protocol's label map may label points segood ignores); with
    ``kinds`` the OOD points of each kind are counted too (data with ``Batch["ood_kind"]``)."""
    for batch in tqdm(loader, desc="eval", disable=not progress, dynamic_ncols=True):
        out = model(batch)
        visible, ood_target = batch["visible"], batch["ood_target"]
        pred = out["logits"].argmax(-1).numpy()
        acc.add_segmentation(pred, batch["target"].numpy(), visible.numpy())
        keep = ood_target >= 0
        if not protocols:
            scores = {n: f(_labelled_output(out, keep)).float().numpy() for n, f in scorers.items()}
            acc.add_scores(scores, (ood_target[keep] == 1).numpy(), visible[keep].numpy())
            _add_kinds(kinds, acc, batch, scores, keep)
            continue
        every = {n: f(_labelled_output(out, torch.ones_like(keep))).float().numpy() for n, f in scorers.items()}
        k = keep.numpy()
        scores = {n: v[k] for n, v in every.items()}
        acc.add_scores(scores, (ood_target[keep] == 1).numpy(), visible[keep].numpy())
        _add_kinds(kinds, acc, batch, scores, keep)
        for p in protocols:
            p.add(batch["raw_label"], pred, every, acc.axis, visible, batch["points"], batch["batch_idx"],
                  batch["sources"][0])
    return acc


def model_label_map(label_map: LabelMap, state: Mapping[str, Any], ckpt_path: str | Path) -> LabelMap:
    """The label map of the model's classes: the data's, or for an ``anomaly_only`` data map (STU) the one
    the checkpoint was trained with (its checksum checked)."""
    if not label_map.anomaly_only:
        return label_map
    trained = build_label_map(state["config"])
    check_label_map(state, trained, ckpt_path)
    return trained


# report(out_dir, metrics, histograms {score: {subset: ScoreHistogram}}, binnings {score: Binning})
ReportSink = Callable[[Path, dict, Mapping[str, Mapping[str, ScoreHistogram]], Mapping[str, "Binning"]], Any]


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
    label_map = build_label_map(cfg)
    names = list(cfg["eval"]["scores"])
    check_scores(names)
    model, state = load_model(ckpt_path, None if label_map.anomaly_only else label_map)
    model_map = model_label_map(label_map, state, ckpt_path)
    scorers = load_scorers(ckpt_path, names, cfg, model, auto_fit=True, progress=progress)
    loader = build_loader(cfg, split, label_map, shuffle=False)
    bins = int(eval_option(cfg, "hist_bins"))
    acc = EvalAccumulator(names, model_map.num_classes, score_ranges(names, cfg, model_map.num_classes), bins)
    protocols = [ProtocolAccumulator(PROTOCOLS[p], label_map, model_map, names, bins)
                 for p in protocol_names(cfg) if p != "segood"]
    kinds = KindHistograms(OOD_KIND_NAMES, OOD_KIND_FAMILY)
    run_pass(model, loader, scorers, acc, progress, protocols, kinds)
    metrics = assemble_metrics(cfg, ckpt_path, state, model_map, acc, len(loader.dataset), split, protocols, kinds)
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
    data has per-point OOD kinds (:func:`kind_metrics`); conventions, provenance)."""
    fit = load_fit(ckpt_path) if any(is_fitted(n) for n in acc.names) else None
    bounds = acc.error_bounds()
    return {
        "checkpoint": str(ckpt_path),
        "checkpoint_sha256": checkpoint_sha(ckpt_path),
        "config": cfg.get("_source", ""),
        "train_config": state["config"].get("_source", ""),
        "synthesis": state["config"]["synthesis"]["method"],
        "num_scans": num_scans,
        "split": {"name": split, "sequences": list(cfg["data"][f"{split}_sequences"])},
        "conventions": {k: v.format(ood=list(label_map.ood_learning_ids)) for k, v in CONVENTIONS.items()},
        "ood_classes": label_map.ood_names,
        "miou": {k: acc.conf[k].to_dict(label_map.class_names) for k in SUBSETS},
        "ood": acc.ood(),
        **kind_metrics(kinds, acc),
        "protocol": "segood",
        "protocols": {p.protocol.name: p.metrics() for p in protocols},
        "scores": {n: {"params": score_params(n, cfg),
                       "binning": acc.binning[n].to_dict() if n in acc.binning else None,
                       "bin_error_bound": bounds.get(n)} for n in acc.names},
        "fit": None if fit is None else {"path": str(scores_path(ckpt_path)), "points": int(len(fit["bank"]["labels"])),
                                         "per_class": fit["per_class"], "sequences": fit["sequences"]},
        "operating_point": operating_point(acc, cfg, ckpt_path, split, state["config"]["synthesis"]["method"]),
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
