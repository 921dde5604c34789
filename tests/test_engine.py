"""End to end on generated scenes: train (loss goes down), Feature Mixing terms, resume, evaluate, CLI errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from builders import small_config

from segood.cli import main
from segood.config import CONFIG_DIR
from segood.engine.checkpoint import load_checkpoint
from segood.engine.evaluate import evaluate
from segood.engine.train import train


@pytest.fixture(scope="module")
def data_root(synthetic_root):
    return synthetic_root


def small_cfg(data_root, name: str, *extra: str) -> dict:
    return small_config(name, f"data.root={data_root}", *extra)


def history(run) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_short_training_lowers_the_loss(data_root, tmp_path):
    cfg = small_cfg(data_root, "synthetic_baseline.yaml", "train.steps=30", "train.lr=0.003",
                    "data.augment.rotate_z_deg=0", "data.augment.scale=[1.0, 1.0]")
    train(cfg, tmp_path / "run", progress=False)
    h = history(tmp_path / "run")
    first = np.mean([r["seg"] for r in h[:4]])
    last = np.mean([r["seg"] for r in h[-4:]])
    assert last < 0.7 * first, (first, last)
    assert "entropy" not in h[-1] and "anomaly" not in h[-1]


def assert_auroc_matches_histograms(metrics: dict, npz: Path) -> None:
    """Every score's AUROC and counts, recomputed from the written histograms with the pairwise
    formula (P(OOD score > ID score) + half the ties, a bin being a tie), not with segood's code."""
    hists = np.load(npz)
    for score, per in metrics["ood"].items():
        for pts, o in per.items():
            id_, ood = hists[f"{score}/{pts}"].astype(np.float64)
            if "error" in o:  # undefined: only when a subset lacks ID or OOD points
                assert min(id_.sum(), ood.sum()) == 0, (score, pts)
                continue
            below = np.cumsum(id_) - id_
            want = float((ood * (below + 0.5 * id_)).sum() / (id_.sum() * ood.sum()))
            assert (o["num_id"], o["num_ood"]) == (int(id_.sum()), int(ood.sum())), (score, pts)
            assert o["auroc"] == pytest.approx(want, abs=1e-9), (score, pts)


def test_feature_mixing_run_trains_the_outlier_terms_and_evaluates(data_root, tmp_path):
    cfg = small_cfg(data_root, "synthetic_feature_mixing.yaml", "train.steps=4")
    ckpt = train(cfg, tmp_path / "fm", progress=False)
    h = history(tmp_path / "fm")
    assert all("entropy" in r and "anomaly" in r for r in h)
    m = evaluate(cfg, ckpt, tmp_path / "eval", progress=False)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["ood"].keys() == set(cfg["eval"]["scores"])
    for score in cfg["eval"]["scores"]:
        for pts in ("fov", "all"):
            o = m["ood"][score][pts]
            assert 0.0 <= o["auroc"] <= 1.0 and 0.0 <= o["fpr95"] <= 1.0 and o["num_ood"] > 0
    assert m["ood"]["maxlogit"]["all"]["num_id"] > m["ood"]["maxlogit"]["fov"]["num_id"]
    assert_auroc_matches_histograms(m, tmp_path / "eval" / "histograms.npz")
    assert "anomaly" in saved["conventions"] and 0.0 <= m["miou"]["fov"]["miou"] <= 1.0


def test_resume_continues_a_run(data_root, tmp_path):
    cfg = small_cfg(data_root, "synthetic_feature_mixing.yaml", "train.steps=3", "train.ckpt_every=1")
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, tmp_path / "run", progress=False)
    cfg["train"]["steps"] = 5
    train(cfg, tmp_path / "run", resume=True, progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 5
    assert [r["step"] for r in history(tmp_path / "run")] == [1, 2, 3, 4, 5]


def test_evaluating_with_another_label_map_is_refused(data_root, tmp_path):
    cfg = small_cfg(data_root, "synthetic_baseline.yaml", "train.steps=1")
    ckpt = train(cfg, tmp_path / "run", progress=False)
    other = tmp_path / "other.yaml"
    text = (CONFIG_DIR.parent / "segood" / "labels" / "semantickitti.yaml").read_text()
    other.write_text(text.replace("ood_learning_ids: [5]", "ood_learning_ids: [5, 4]"))
    cfg["data"]["label_map"] = str(other)
    cfg["model"]["num_classes"] = 17
    with pytest.raises(ValueError, match="label map checksum.*other.yaml"):
        evaluate(cfg, ckpt, None, progress=False)


def test_cli_reports_bad_config_key(capsys, tmp_path):
    rc = main(["train", str(CONFIG_DIR / "synthetic_baseline.yaml"), "--out", str(tmp_path), "--set", "train.stepz=3"])
    assert rc == 2
    assert "unknown config key 'train.stepz'; did you mean 'train.steps'" in capsys.readouterr().err


def test_cli_unknown_score_lists_valid_ones(capsys, data_root, tmp_path):
    cfg_args = ["--set", f"data.root={data_root}", "--set", "eval.scores=[maxlogit, nope]"]
    rc = main(["eval", str(CONFIG_DIR / "synthetic_baseline.yaml"), "--ckpt", str(tmp_path / "x.pt"),
               "--out", str(tmp_path), *cfg_args])
    err = capsys.readouterr().err
    assert rc == 2 and "nope" in err and "maxlogit" in err and "energy" in err


@pytest.mark.parametrize("method,extra,expect", [
    ("npmix", ["loss.discrepancy=0.5", "loss.modality_entropy=0.5"], {"entropy", "anomaly", "discrepancy", "modality_entropy"}),
    ("feature_mixing", ["loss.a2d=0.5"], {"entropy", "anomaly", "a2d"}),
    ("feature_mixing_shared", [], {"entropy", "anomaly"}),
    ("vos", [], {"entropy", "anomaly"}),
    ("mixup", [], {"entropy", "anomaly"}),
])
def test_every_synthesis_method_is_selectable_from_the_config(data_root, tmp_path, method, extra, expect):
    cfg = small_cfg(data_root, "synthetic_baseline.yaml", "train.steps=2", f"synthesis.method={method}", *extra)
    train(cfg, tmp_path / method, progress=False)
    last = history(tmp_path / method)[-1]
    assert expect <= set(last), (method, last)
    assert last["anomaly"] > 0 and all(np.isfinite(last[k]) for k in expect), (method, last)  # computed, not stubbed
    assert all(np.isfinite(v) for k, v in last.items())
