"""The shortcut monitor: AUROC pairs (synthetic outliers vs real val OOD), the console flag, the run's
monitor.jsonl through evaluation into report.md, on hand-made numbers and a two-step tiny run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from segood.config import CONFIG_DIR, load_config
from segood.engine.monitor import MONITOR_FILE, Monitor, compute_record, read_monitor, shortcut_warning

TINY = ["model.lidar.channels=[8, 16, 16]", "model.lidar.out_channels=16", "model.image.out_channels=16",
        "model.image.width_scale=0.25", "model.fusion.hidden=32", "train.batch_size=1", "train.warmup_steps=1",
        "data.num_workers=0", "synthesis.max_points=256", "synthesis.n_swap=4", "train.ckpt_every=0",
        "eval.scores=[anomaly_head, energy, msp]"]


def pairwise_auroc(pos, neg) -> float:
    """P(score of a positive > score of a negative) + half the ties, over every pair (no sorting, no sklearn)."""
    pos, neg = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def test_record_aurocs_equal_a_pairwise_count():
    rng = np.random.default_rng(1)
    n_syn, n_id = 40, 60
    syn_scores = {"energy": np.r_[rng.normal(1.0, 1.0, n_syn), rng.normal(0.0, 1.0, n_id)],
                  "msp": np.round(np.r_[rng.random(n_syn), rng.random(n_id)], 1)}  # ties
    syn_ood = np.r_[np.ones(n_syn, bool), np.zeros(n_id, bool)]
    real_scores = {"energy": rng.normal(0.0, 1.0, 200), "msp": np.round(rng.random(200), 1)}
    real_ood = rng.random(200) < 0.3
    vis = rng.random(200) < 0.5
    real_scores["energy"][real_ood] += 0.7
    rec = compute_record(7, 0.42, (syn_scores, syn_ood, np.ones(100, bool)), (real_scores, real_ood, vis))
    for n in ("energy", "msp"):
        assert rec["scores"][n]["synthetic"] == pytest.approx(pairwise_auroc(syn_scores[n][syn_ood], syn_scores[n][~syn_ood]))
        assert rec["scores"][n]["real_all"] == pytest.approx(pairwise_auroc(real_scores[n][real_ood], real_scores[n][~real_ood]))
        fov_pos, fov_neg = real_scores[n][real_ood & vis], real_scores[n][~real_ood & vis]
        assert rec["scores"][n]["real_fov"] == pytest.approx(pairwise_auroc(fov_pos, fov_neg))
    assert rec["points"] == {"synthetic_outliers": 40, "train_id": 60, "val_ood_fov": int((real_ood & vis).sum()),
                             "val_id_fov": int((~real_ood & vis).sum()), "val_ood_all": int(real_ood.sum()),
                             "val_id_all": int((~real_ood).sum())}
    none = compute_record(8, 0.4, ({"energy": np.zeros(0)}, np.zeros(0, bool), np.zeros(0, bool)),
                          ({"energy": real_scores["energy"]}, real_ood, vis))
    assert none["scores"]["energy"]["synthetic"] is None and none["scores"]["energy"]["real_all"] is not None


def _rec(step: int, **scores) -> dict:
    return {"step": step, "scores": {n: {"synthetic": s, "real_fov": r, "real_all": r} for n, (s, r) in scores.items()}}


def test_shortcut_flag_needs_saturation_and_a_falling_real_auroc():
    before = _rec(100, anomaly_head=(0.995, 0.90), energy=(0.999, 0.85), msp=(0.97, 0.8))
    after = _rec(200, anomaly_head=(0.997, 0.88), energy=(0.999, 0.86), msp=(0.98, 0.7))
    line = shortcut_warning(before, after)
    assert line.startswith("[monitor] step 200: shortcut?") and "\n" not in line
    assert "anomaly_head synthetic 0.997, val FOV 0.900 -> 0.880" in line
    assert "energy" not in line and "msp" not in line  # real rose / synthetic not saturated
    assert shortcut_warning(None, after) is None
    assert shortcut_warning(before, _rec(200, anomaly_head=(None, 0.5))) is None  # no synthesis: real only


def test_monitor_prints_one_warning_line(tmp_path, capsys):
    cfg = load_config(CONFIG_DIR / "synthetic_feature_mixing.yaml", ["eval.scores=[anomaly_head, energy]"])
    mon = Monitor(cfg, tmp_path)
    real_ood = np.r_[np.ones(10, bool), np.zeros(30, bool)]
    syn_ood = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    for step, shift in ((10, 3.0), (20, 1.0)):  # real separation falls, synthetic stays perfect
        mon.synthetic.add({"anomaly_head": syn_ood * 1.0, "energy": syn_ood * 1.0}, syn_ood, np.ones(40, bool))
        real = np.linspace(0, 1, 40) + shift * real_ood * np.linspace(0, 1, 40)
        mon.real.add({"anomaly_head": real, "energy": -real}, real_ood, np.ones(40, bool))
        mon.record(step, 0.5)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("[monitor] step 20: shortcut?") and "anomaly_head" in out[0]
    assert [r["step"] for r in read_monitor(tmp_path / MONITOR_FILE)] == [10, 20]
    assert Monitor(cfg, tmp_path).previous["step"] == 20  # a resumed run compares with the last record


def test_monitor_leaves_out_the_scores_the_evaluation_skips():
    from segood.engine.monitor import monitor_scorers

    scores = ["eval.scores=[anomaly_head, energy, rba, knn]"]
    assert set(monitor_scorers(load_config(CONFIG_DIR / "synthetic_feature_mixing.yaml", scores))) == {
        "anomaly_head", "energy"}  # rba: loss.outlier entropy leaves the logits' level free; knn: fitted
    assert set(monitor_scorers(load_config(CONFIG_DIR / "synthetic_fm_rba.yaml", scores))) == {
        "anomaly_head", "energy", "rba"}


@pytest.mark.parametrize("config,synthetic", [("synthetic_feature_mixing.yaml", True), ("synthetic_baseline.yaml", False)])
def test_training_writes_monitor_records_that_reach_the_report(study_root, tmp_path, config, synthetic):
    from segood.engine.evaluate import evaluate
    from segood.engine.train import train
    from segood.report.markdown import write_eval_report

    cfg = load_config(CONFIG_DIR / config, TINY + [f"data.root={study_root}", "train.steps=3", "train.val_every=2",
                                                   "synthesis.start_fraction=0"])
    train(cfg, tmp_path / "run", progress=False)
    records = read_monitor(tmp_path / "run" / MONITOR_FILE)
    assert [r["step"] for r in records] == [2, 3]  # every validation step and the last step
    for rec in records:
        assert set(rec["scores"]) == {"anomaly_head", "energy", "msp"}
        for v in rec["scores"].values():
            assert 0.0 <= v["real_fov"] <= 1.0 and 0.0 <= v["real_all"] <= 1.0
            assert (v["synthetic"] is not None and 0.0 <= v["synthetic"] <= 1.0) == synthetic
        assert (rec["points"]["synthetic_outliers"] > 0) == synthetic and rec["points"]["val_ood_all"] > 0
    metrics = evaluate(cfg, tmp_path / "run" / "checkpoint.pt", tmp_path / "eval", progress=False, split="val",
                       report=write_eval_report)
    assert metrics["monitor"]["records"] == records
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["monitor"]["records"][-1]["step"] == 3
    assert "## Shortcut monitor (training)" in (tmp_path / "eval" / "report.md").read_text()
    assert (tmp_path / "eval" / "monitor.png").stat().st_size > 1000
