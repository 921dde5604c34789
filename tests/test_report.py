"""Streaming evaluation: histogram metrics vs exact ones, error bounds, operating point, fitted-score
files, reports and run comparison, bad input."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from segood.config import CONFIG_DIR, ConfigError, load_config
from segood.data.labels import load_label_map
from segood.synthetic import SyntheticConfig, write_dataset
from segood.engine import artifacts, evaluate, fit
from segood.engine.operating_point import threshold_at_tpr
from segood.metrics.accumulator import EvalAccumulator
from segood.engine.checkpoint import save_checkpoint
from segood.report.markdown import write_eval_report
from segood.commands.eval import add_eval_arguments, compare_runs, evaluate_and_report, run_eval
from segood.engine.train import train
from segood.metrics.ood import ood_metrics

BINS = 65536


def _sklearn_fpr95(scores: np.ndarray, is_ood: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(is_ood, scores, drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= 0.95)])


def _accumulate(scores: np.ndarray, is_ood: np.ndarray, rng=None, batches: int = 10) -> EvalAccumulator:
    acc = EvalAccumulator(["s"], 2, {"s": rng}, BINS)
    for part in np.array_split(np.arange(len(scores)), batches):
        acc.add_scores({"s": scores[part]}, is_ood[part], np.ones(len(part), bool))
    return acc


# ------------------------------------------------------------------ histogram metrics vs exact


@pytest.mark.parametrize("kind", ["squash", "linear"])
def test_histogram_metrics_within_1e3_of_sklearn_on_1e6_scores(kind: str) -> None:
    rng = np.random.default_rng(0)
    is_ood = rng.random(1_000_000) < 0.1
    raw = rng.normal(size=is_ood.size) * 3.0 - 20.0 + 2.5 * is_ood  # an energy-like, unbounded score
    scores = 1 / (1 + np.exp(-(raw + 20) / 3)) if kind == "linear" else raw  # bounded in [0, 1]
    acc = _accumulate(scores, is_ood, (0.0, 1.0) if kind == "linear" else None)
    assert acc.binning["s"].kind == kind
    got, bound = acc.ood()["s"]["all"], acc.error_bounds()["s"]["all"]
    exact = {"auroc": roc_auc_score(is_ood, scores), "aupr": average_precision_score(is_ood, scores),
             "fpr95": _sklearn_fpr95(scores, is_ood)}
    for key, value in exact.items():
        assert got[key] == pytest.approx(value, abs=1e-3), key
    for key in ("auroc", "fpr95"):  # the reported bounds hold
        assert abs(got[key] - exact[key]) <= bound[key] + 1e-12, key
    assert bound["auroc"] < 1e-3 and (got["num_id"], got["num_ood"]) == (int((~is_ood).sum()), int(is_ood.sum()))


def test_histogram_metrics_exact_on_ties_free_crafted_case() -> None:
    # OOD at 1..20, ID at 20.5, 2.5, 1.5, 0.5. TPR >= 0.95 needs 19 OOD points: threshold 2 -> ID 20.5, 2.5 -> FPR 1/2.
    # AUROC: OOD beat ID 2.5 18 times, 1.5 19 times, 0.5 20 times, 20.5 never -> 57/80.
    scores = np.r_[np.arange(1.0, 21.0), [20.5, 2.5, 1.5, 0.5]]
    is_ood = np.r_[np.ones(20, bool), np.zeros(4, bool)]
    acc = _accumulate(scores, is_ood, batches=3)
    got = acc.ood()["s"]["all"]
    assert got["fpr95"] == 0.5 and got["auroc"] == pytest.approx(57 / 80, abs=1e-12)
    exact = ood_metrics(scores, is_ood.astype(int))
    assert got == pytest.approx(exact, abs=1e-12)
    assert acc.error_bounds()["s"]["all"] == {"auroc": 0.0, "fpr95": 0.0}
    # The ID point that tops the TPR-0.95 group sets the threshold.
    op = threshold_at_tpr(acc.hist["s"]["all"], acc.binning["s"], 0.95)
    assert 1.5 < op["threshold"] <= 2.0 and op["achieved_tpr"] == 0.95 and op["fpr"] == 0.5


def test_operating_point_reaches_the_target_recall() -> None:
    rng = np.random.default_rng(1)
    is_ood = rng.random(200_000) < 0.05
    scores = rng.normal(size=is_ood.size) + 2.0 * is_ood
    acc = _accumulate(scores, is_ood)
    op = threshold_at_tpr(acc.hist["s"]["all"], acc.binning["s"], 0.95)
    flagged = scores >= op["threshold"]
    recall, fpr = flagged[is_ood].mean(), flagged[~is_ood].mean()
    assert 0.95 <= recall < 0.9505 and recall == pytest.approx(op["achieved_tpr"], abs=1e-9)
    assert fpr == pytest.approx(op["fpr"], abs=1e-9) and fpr == pytest.approx(_sklearn_fpr95(scores, is_ood), abs=1e-3)


def test_accumulators_merge_and_refuse_other_binnings() -> None:
    rng = np.random.default_rng(2)
    is_ood = rng.random(10_000) < 0.3
    scores = rng.normal(size=is_ood.size) + is_ood
    whole = _accumulate(scores, is_ood, (-8.0, 8.0), batches=1)
    a = _accumulate(scores[:4000], is_ood[:4000], (-8.0, 8.0))
    a.merge(_accumulate(scores[4000:], is_ood[4000:], (-8.0, 8.0)))
    assert a.ood() == whole.ood()
    with pytest.raises(ValueError, match="binnings differ"):
        a.merge(_accumulate(scores, is_ood))


def test_subsets_and_undefined_metrics() -> None:
    acc = EvalAccumulator(["s"], 3, {"s": (0.0, 1.0)}, 64)
    acc.add_scores({"s": np.array([0.1, 0.9, 0.2])}, np.array([0, 1, 0], bool), np.array([True, False, True]))
    acc.add_segmentation(np.array([0, 1, 2]), np.array([0, 1, -1]), np.array([True, False, True]))
    ood = acc.ood()["s"]
    assert ood["all"]["auroc"] == 1.0 and "error" in ood["fov"] and ood["fov"]["num_id"] == 2
    assert acc.conf["all"].matrix.sum() == 2 and acc.conf["fov"].matrix.sum() == 1


# ------------------------------------------------------------------ reports and comparison


def _fake_metrics(acc: EvalAccumulator, name: str, shift: float) -> dict:
    iou = {"road": 0.5 + shift, "car": 0.25}
    return {
        "checkpoint": f"/runs/{name}/checkpoint.pt", "checkpoint_sha256": "0" * 16, "config": "x.yaml",
        "synthesis": name, "num_scans": 3, "split": {"name": "val", "sequences": ["08"]},
        "conventions": {"anomaly": "positive"}, "ood_classes": ["other-vehicle"],
        "miou": {s: {"miou": 0.4 + shift, "accuracy": 0.9, "iou": iou} for s in ("fov", "all")},
        "ood": acc.ood(), "scores": {n: {"bin_error_bound": b} for n, b in acc.error_bounds().items()},
        "fit": None, "operating_point": None,
    }


def test_report_and_comparison_pictures(tmp_path) -> None:
    rng = np.random.default_rng(3)
    is_ood = rng.random(50_000) < 0.1
    acc = EvalAccumulator(["anomaly_head", "energy"], 2, {"anomaly_head": (0.0, 1.0), "energy": None}, 4096)
    acc.add_scores({"anomaly_head": rng.random(is_ood.size) ** (2 - is_ood),
                    "energy": rng.normal(size=is_ood.size) - 10 + is_ood}, is_ood, rng.random(is_ood.size) < 0.5)
    runs = {}
    for name, shift in (("baseline", 0.0), ("feature_mixing", 0.1)):
        m = _fake_metrics(acc, name, shift)
        (tmp_path / name / "eval").mkdir(parents=True)
        (tmp_path / name / "eval" / "metrics.json").write_text(json.dumps(m))
        write_eval_report(tmp_path / name / "eval", m, acc.hist, acc.binning)
        runs[name] = tmp_path / name
    report = (tmp_path / "baseline" / "eval" / "report.md").read_text()
    for png in ("roc_fov.png", "roc_all.png", "score_histograms_fov.png", "iou.png"):
        assert (tmp_path / "baseline" / "eval" / png).stat().st_size > 5000 and f"({png})" in report
    assert "| energy | fov |" in report and "FPR95" in report
    (tmp_path / "npmix.json").write_text(json.dumps(_fake_metrics(acc, "npmix", 0.05)))
    args = argparse.ArgumentParser()
    add_eval_arguments(args)
    parsed = args.parse_args(["--compare", str(runs["baseline"]), str(runs["feature_mixing"]),
                              str(tmp_path / "npmix.json"), "--out", str(tmp_path / "cmp")])
    assert run_eval(parsed) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| feature_mixing | energy |" in table and "| baseline | anomaly_head |" in table
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 10000
    with pytest.raises(FileNotFoundError, match="expected a metrics.json"):
        compare_runs([str(tmp_path / "nowhere")], tmp_path / "cmp2")


# ------------------------------------------------------------------ bad input


def test_label_map_mismatch_names_both_maps(tmp_path) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, {"label_map": "0123456789abcdef", "config": {"data": {"label_map": "nuscenes-ish.yaml"}}})
    other = load_label_map("semantickitti")
    with pytest.raises(ValueError, match=r"trained with label map 'nuscenes-ish.yaml'.*data set uses '.*semantickitti"):
        artifacts.load_model(ckpt, other)


def test_unknown_score_refused_before_any_work(tmp_path) -> None:
    cfg = load_config(CONFIG_DIR / "synthetic_baseline.yaml", ["eval.scores=[msp, mahalanobi]"])
    with pytest.raises(ValueError, match="unknown score 'mahalanobi'.*mahalanobis.*msp"):
        evaluate.evaluate(cfg, tmp_path / "missing.pt")


# ------------------------------------------------------------------ end to end on a tiny model

SMALL = [
    "model.lidar.channels=[8, 16, 16]", "model.lidar.out_channels=16", "model.image.out_channels=16",
    "model.image.width_scale=0.25", "model.fusion.hidden=32", "train.batch_size=1", "train.warmup_steps=1",
    "data.num_workers=0", "synthesis.max_points=256", "synthesis.n_swap=4", "train.steps=2",
    "eval.scores=[anomaly_head, maxlogit, energy, msp, entropy, gen, mahalanobis, knn, vim, react, ash]",
    "eval.fit_points=360", "eval.hist_bins=4096",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root / "data", SyntheticConfig(num_train=2, num_val=2, azimuth_columns=128, image_width=160,
                                                 image_height=48, seed=5), progress=False)
    try:
        cfg = load_config(CONFIG_DIR / "synthetic_feature_mixing.yaml", SMALL + [f"data.root={root / 'data'}"])
    except ConfigError:  # base.yaml may not list the eval.* keys yet: they have code defaults
        cfg = load_config(CONFIG_DIR / "synthetic_feature_mixing.yaml", SMALL[:-2] + [f"data.root={root / 'data'}"])
        cfg["eval"].update(fit_points=360, hist_bins=4096)
    ckpt = train(cfg, root / "run", progress=False)
    return cfg, ckpt, root


def test_evaluate_fits_saves_and_reuses_scores(tiny_run, monkeypatch) -> None:
    cfg, ckpt, root = tiny_run
    m = evaluate_and_report(cfg, ckpt, root / "run" / "eval", progress=False)
    assert set(m["ood"]) == set(cfg["eval"]["scores"])
    for name, per in m["ood"].items():
        for pts in ("fov", "all"):
            assert 0.0 <= per[pts]["auroc"] <= 1.0 and per[pts]["num_ood"] > 0, (name, pts)
    blob = artifacts.load_fit(ckpt)
    assert blob["checkpoint_sha256"] == m["checkpoint_sha256"] and len(blob["bank"]["labels"]) <= 360
    assert set(blob["states"]) == {"mahalanobis", "knn", "vim", "react", "ash"}
    assert m["fit"]["points"] == len(blob["bank"]["labels"])
    for f in ("metrics.json", "histograms.npz", "report.md", "roc_all.png", "score_histograms_fov.png", "iou.png"):
        assert (root / "run" / "eval" / f).is_file(), f
    saved = json.loads((root / "run" / "eval" / "metrics.json").read_text())
    assert saved["resolved_config"]["eval"]["scores"] == cfg["eval"]["scores"]
    # Operating point stored with the model.
    op = artifacts.load_operating_point(ckpt)
    from segood.metrics.headline import headline_score

    assert op["score"] == (cfg["eval"]["operating_score"] or headline_score(m["ood"], m["synthesis"])[0])
    assert op["tpr"] == 0.95 and op["achieved_tpr"] >= 0.95 and op["points"] == "all"
    # A second evaluation reuses the saved fit (no pass over the training data) and gives the same numbers.
    monkeypatch.setattr(fit, "collect_fit_bank", lambda *a, **k: pytest.fail("refitted although a fit was saved"))
    assert evaluate.evaluate(cfg, ckpt, None, progress=False)["ood"] == m["ood"]


def test_replay_scorers_refuse_a_stale_fit(tiny_run, tmp_path) -> None:
    cfg, ckpt, _ = tiny_run
    model, state = artifacts.load_model(ckpt)
    other = tmp_path / "checkpoint.pt"
    save_checkpoint(other, {**state, "step": state["step"] + 1})
    with pytest.raises(FileNotFoundError, match="fit-scores"):
        fit.load_scorers(other, ["knn"], cfg["eval"], model)
    (tmp_path / "checkpoint.scores.pt").write_bytes(artifacts.scores_path(ckpt).read_bytes())
    with pytest.raises(FileNotFoundError, match="no fit for this checkpoint"):
        fit.load_scorers(other, ["knn"], cfg["eval"], model)
    with pytest.raises(FileNotFoundError, match="no operating point"):
        artifacts.load_operating_point(other)
    # ASH and the logit scores need no fit; a changed score parameter is refitted from the saved bank.
    assert set(fit.load_scorers(other, ["ash", "energy"], cfg["eval"], model)) == {"ash", "energy"}
    cfg2 = {**cfg, "eval": {**cfg["eval"], "score_options": {"react": {"percentile": 50.0}}}}
    react = fit.load_scorers(ckpt, ["react"], cfg2["eval"], model)["react"]
    out = model_output(model, cfg)
    assert torch.isfinite(react(out)).all()


def model_output(model, cfg) -> dict:
    from segood.engine.builders import build_label_map, build_loader

    loader = build_loader(cfg, "val", build_label_map(cfg), shuffle=False)
    with torch.no_grad():
        return model(next(iter(loader)))
