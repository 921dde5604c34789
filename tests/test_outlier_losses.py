"""The outlier-loss family (segood/ood/outlier_losses/): each member against a hand computation, the
registry's options and config checks, and `entropy` training bit-identical to the objective before
the family existed."""
from __future__ import annotations

import math

import pytest
import torch

from segood.config import ConfigError, base_defaults
from segood.engine import objective
from segood.engine.objective import check_objective, compute_losses
from segood.engine.step import train_step
from segood.models import build_model
from segood.ood import losses as L
from segood.ood.feature_mixing import FeatureMixing
from segood.ood.outlier_losses import OUTLIER_LOSSES, outlier_options
from segood.ood.scores import get_score
from segood.options import OptionError

from test_models import SMALL_CFG, make_batch

LOSS = base_defaults()["loss"]


def _out(logits, outlier_logits, outlier_index, extra=None, outlier_extra=None) -> dict:
    out = {"logits": torch.tensor(logits), "outlier_logits": torch.tensor(outlier_logits),
           "outlier_index": torch.tensor(outlier_index)}
    if extra is not None:
        out["extra_logit"], out["outlier_extra_logit"] = torch.tensor(extra), torch.tensor(outlier_extra)
    return out


def _terms(name: str, out: dict, target: list[int], **options) -> dict:
    weights = {**LOSS, "outlier": name, "outlier_options": {name: options}}
    return OUTLIER_LOSSES[name].terms(out, {"target": torch.tensor(target)}, weights, outlier_options(weights, name))


def test_energy_margin_is_the_squared_hinge_on_minus_logsumexp():
    # ID rows: logits [0, 0] -> E = -log 2; [3, 1] -> E = -log(e^3 + e^1); the -1 row is ignored
    out = _out([[0.0, 0.0], [3.0, 1.0], [9.0, 9.0]], [[-2.0, -2.0], [5.0, 0.0]], [0, 1])
    t = _terms("energy_margin", out, [0, 1, -1], weight=0.5, m_in=-2.0, m_out=-1.0)["energy_margin"]
    e_in = [-math.log(2.0), -math.log(math.exp(3) + math.exp(1))]
    e_out = [2.0 - math.log(2.0), -math.log(math.exp(5) + 1.0)]
    hand = 0.5 * (sum(max(e + 2.0, 0) ** 2 for e in e_in) / 2 + sum(max(-1.0 - e, 0) ** 2 for e in e_out) / 2)
    assert t.item() == pytest.approx(hand, rel=1e-6) and hand > 0


def test_rba_hinge_and_score_read_minus_sum_tanh():
    out = _out([[1.0, -1.0], [2.0, 0.5]], [[-3.0, 0.0], [0.0, 0.0]], [0, 1])
    t = _terms("rba", out, [0, 1], weight=2.0, m_in=-0.2, m_out=1.0)["rba"]
    s_in = [0.0, -(math.tanh(2.0) + math.tanh(0.5))]
    s_out = [math.tanh(3.0), 0.0]
    hand = 2.0 * (sum(max(s + 0.2, 0) ** 2 for s in s_in) / 2 + sum(max(1.0 - s, 0) ** 2 for s in s_out) / 2)
    assert t.item() == pytest.approx(hand, rel=1e-6)
    score = get_score("rba")({"logits": torch.tensor([[1.0, -1.0], [-3.0, 0.0]])})
    assert score.tolist() == pytest.approx([0.0, math.tanh(3.0)], abs=1e-6)


def test_k_plus_one_soft_target_over_k_plus_one_logits():
    out = _out([[2.0, 0.0], [0.0, 1.0]], [[1.0, 1.0]], [1], extra=[-1.0, 0.5], outlier_extra=[2.0])
    t = _terms("k_plus_one", out, [0, 1], weight=0.5, lam=0.25)["k_plus_one"]

    def log_softmax(row):
        z = math.log(sum(math.exp(v) for v in row))
        return [v - z for v in row]
    ce_id = (-log_softmax([2.0, 0.0, -1.0])[0] - log_softmax([0.0, 1.0, 0.5])[1]) / 2
    ls = log_softmax([1.0, 1.0, 2.0])
    ce_out = -(0.75 * ls[1] + 0.25 * ls[2])  # the outlier's anchor is point 1 (class 1)
    assert t.item() == pytest.approx(0.5 * (ce_id + ce_out), rel=1e-6)


def test_options_are_checked_against_each_members_declaration():
    assert outlier_options(LOSS, "energy_margin") == {"weight": 0.1, "m_in": -25.0, "m_out": -7.0}
    for name, member in OUTLIER_LOSSES.items():  # configs/base.yaml repeats every declared default
        assert outlier_options(LOSS, name) == {k: o.default for k, o in member.options.items()}
    with pytest.raises(OptionError, match=r"loss.outlier_options.rba.margin.*known: m_in, m_out, weight"):
        outlier_options({"outlier_options": {"rba": {"margin": 1}}}, "rba")
    with pytest.raises(OptionError, match=r"loss.outlier_options.k_plus_one.lam: 2.*\[0.0, 1.0\]"):
        outlier_options({"outlier_options": {"k_plus_one": {"lam": 2.0}}}, "k_plus_one")


def _cfg(**over) -> dict:
    cfg = base_defaults()
    cfg["synthesis"]["method"] = "feature_mixing"
    for dotted, value in over.items():
        section, key = dotted.split("__")
        node = cfg["model"]["fusion"] if section == "fusion" else cfg[section]
        node[key] = value
    return cfg


@pytest.mark.parametrize("over, message", [
    ({"loss__outlier": "energy"}, r"loss.outlier: 'energy': expected one of 'entropy', 'energy_margin'"),
    ({"loss__outlier": "k_plus_one"}, r"k_plus_one trains a \(K\+1\)-th logit: set model.fusion.extra_logit: true"),
    ({"synthesis__mix_points": "all"}, r"synthesis.mix_points: all needs model.fusion.out_of_view: predicted"),
    ({"train__outlier_phase": 400}, r"train.outlier_phase: 400: expected an integer in \[0, train.steps = 400\)"),
])
def test_impossible_combinations_are_config_errors(over, message):
    check_objective(_cfg())  # the defaults pass
    with pytest.raises(ConfigError, match=message):
        check_objective(_cfg(**over))


def test_outlier_phase_needs_synthesis():
    cfg = _cfg(train__outlier_phase=10)
    cfg["synthesis"]["method"] = "none"
    with pytest.raises(ConfigError, match="train.outlier_phase trains with synthesized outliers"):
        check_objective(cfg)


def _main_objective(out: dict, batch: dict, weights: dict) -> dict:
    """The objective as main computed it before the outlier-loss family: the ID terms, the MultiOOD
    outlier terms, then entropy maximisation and the anomaly BCE written out (main's code path)."""
    id_only = {k: v for k, v in out.items() if not k.startswith("outlier_")}
    terms = compute_losses(id_only, batch, weights)
    del terms["total"]
    if len(out["outlier_index"]) > 0:
        terms.update(objective.outlier_modality_terms(out, weights))
        if weights["entropy"]:
            terms["entropy"] = weights["entropy"] * L.entropy_maximization(out["outlier_logits"])
        if weights["anomaly"]:
            id_mask = batch["target"] >= 0
            terms["anomaly"] = weights["anomaly"] * L.anomaly_bce(out["anomaly_logit"][id_mask],
                                                                  out["outlier_anomaly_logit"])
    terms["total"] = sum(terms.values())
    return terms


def _train(weights: dict, steps: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(SMALL_CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    synth = FeatureMixing(4, seed=1, max_points=300)
    for step in range(steps):
        batch = make_batch(600, seed=step)
        train_step(model, [batch], opt, weights, 10.0, synthesize=lambda fi, fl, b: synth(fi, fl, b, step))
    return model.state_dict()


def test_entropy_member_trains_bit_identically_to_mains_objective(monkeypatch):
    weights = {**LOSS, "discrepancy": 0.5, "modality_entropy": 0.5}
    new = _train(weights)
    monkeypatch.setattr("segood.engine.step.compute_losses", _main_objective)
    old = _train(weights)
    assert new.keys() == old.keys()
    for k in new:
        assert torch.equal(new[k], old[k]), k
    assert weights["outlier"] == "entropy"

