"""The operating point rule: which score (the headline score on val, all points) and which threshold
(first to reach the OOD recall); the synthetic configs no longer force MaxLogit on Feature Mixing."""
from __future__ import annotations

import numpy as np
import pytest

from segood.config import CONFIG_DIR, load_config
from segood.engine.operating_point import choose_operating_point, threshold_at_tpr
from segood.metrics.accumulator import Binning
from segood.metrics.headline import default_score, headline_score
from segood.metrics.ood import ScoreHistogram


def _ood(**metrics) -> dict:
    """``name=(auroc, fpr95)`` or ``name=None`` (undefined) -> ood[name]['all']."""
    return {n: {"all": ({"auroc": m[0], "fpr95": m[1]} if m is not None else {"error": "no OOD point"}),
                "fov": {"auroc": 0.5, "fpr95": 0.9}} for n, m in metrics.items()}


def test_feature_mixing_keeps_its_anomaly_head_unless_another_score_is_better_on_both_counts():
    assert headline_score(_ood(anomaly_head=(0.80, 0.5), energy=(0.80, 0.4)), "feature_mixing")[0] == "anomaly_head"
    # a higher AUROC alone is not enough: at the operating point energy flags more ID points
    name, why = headline_score(_ood(anomaly_head=(0.735, 0.599), energy=(0.737, 0.677)), "feature_mixing")
    assert name == "anomaly_head" and "no score has both a higher AUROC and a lower FPR95" in why
    name, why = headline_score(_ood(anomaly_head=(0.80, 0.5), energy=(0.85, 0.4), gen=(0.83, 0.3)), "feature_mixing")
    assert name == "energy" and "energy has both a higher AUROC and a lower FPR95" in why and "energy 85.0 / 40.0" in why


def test_no_synthesis_model_never_uses_its_untrained_anomaly_head():
    name, why = headline_score(_ood(anomaly_head=(0.99, 0.01), maxlogit=(0.6, 0.8), gen=(0.7, 0.9), knn=None), "none")
    assert name == "gen" and "untrained" in why and "knn" not in why
    with pytest.raises(ValueError, match="no score has a defined auroc"):
        headline_score(_ood(anomaly_head=(0.9, 0.1), knn=None), "none")
    assert default_score("none") == "maxlogit" and default_score("feature_mixing") == "anomaly_head"


def test_threshold_reaches_the_recall_and_states_the_id_share_it_flags():
    rng = np.random.default_rng(0)
    s_id, s_ood = rng.normal(0, 1, 20000), rng.normal(2, 1, 2000)
    binning = Binning.calibrate(np.r_[s_id, s_ood])
    h = ScoreHistogram(-1, 1, 65536)
    h.update(binning.forward(np.r_[s_id, s_ood]), np.r_[np.zeros(len(s_id), bool), np.ones(len(s_ood), bool)])
    found = threshold_at_tpr(h, binning, 0.95)
    t = found["threshold"]
    assert (s_ood >= t).mean() >= 0.95 and (s_ood >= t).mean() == pytest.approx(found["achieved_tpr"], abs=1e-3)
    assert (s_id >= t).mean() == pytest.approx(found["fpr"], abs=2e-3)  # the stated share of ID points flagged
    assert (s_id >= t).mean() == pytest.approx(0.361, abs=0.02)  # N(0,1) vs N(2,1) at 95% recall: 1 - Phi(0.355)


def test_choose_uses_the_config_score_when_given_and_the_headline_otherwise():
    rng = np.random.default_rng(1)
    hist, binning = {}, {}
    for n, gap in (("anomaly_head", 3.0), ("maxlogit", 1.0)):
        s = np.r_[rng.normal(0, 1, 5000), rng.normal(gap, 1, 500)]
        y = np.r_[np.zeros(5000, bool), np.ones(500, bool)]
        binning[n] = Binning.calibrate(s)
        hist[n] = {"all": ScoreHistogram(-1, 1, 4096).update(binning[n].forward(s), y)}
    ood = {n: {"all": hist[n]["all"].metrics()} for n in hist}
    assert ood["anomaly_head"]["all"]["auroc"] > ood["maxlogit"]["all"]["auroc"]
    op = choose_operating_point(hist, binning, ood, "feature_mixing")
    assert op["score"] == "anomaly_head" and op["points"] == "all" and op["fpr"] < 0.2
    op = choose_operating_point(hist, binning, ood, "feature_mixing", forced="maxlogit")
    assert op["score"] == "maxlogit" and op["chosen_by"] == "eval.operating_score in the config" and op["fpr"] > 0.5
    with pytest.raises(KeyError, match="'energy' is not among the evaluated scores"):
        choose_operating_point(hist, binning, ood, "none", forced="energy")


@pytest.mark.parametrize("name", ["synthetic_feature_mixing.yaml", "synthetic_baseline.yaml",
                                  "semantickitti_feature_mixing.yaml", "nuscenes_feature_mixing.yaml"])
def test_configs_leave_the_operating_score_to_the_evaluation(name):
    assert load_config(CONFIG_DIR / name)["eval"]["operating_score"] is None
