"""Per-point OOD scores: hand-computed values on crafted logits / features, textbook formulas on
random inputs, fitted-score behaviour and bad names."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segood.ood.scores.fitted import ASH, KNN, ClassBalancedSampler, FitBank, Mahalanobis, ReAct, ViM
from segood.ood.scores import SCORES, get_score, score_range
from segood.ood.scores.logit import anomaly_head, energy, entropy, gen, maxlogit, msp

D64 = torch.float64


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def bank(features, labels, weight, bias=None) -> FitBank:
    w = torch.as_tensor(weight, dtype=torch.float32)
    b = torch.zeros(w.shape[0]) if bias is None else torch.as_tensor(bias, dtype=torch.float32)
    return FitBank(torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(labels), w, b)


# ------------------------------------------------------------------ logit scores by hand

# Row 0: uniform over 3 classes. Row 1: exp(logits) = 1, 2, 5 -> softmax 1/8, 2/8, 5/8.
LOGITS = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(2.0), math.log(5.0)]], dtype=D64)


def test_logit_scores_by_hand() -> None:
    out = {"logits": LOGITS}
    torch.testing.assert_close(msp(out), torch.tensor([-1 / 3, -5 / 8], dtype=D64))
    torch.testing.assert_close(maxlogit(out), torch.tensor([0.0, -math.log(5.0)], dtype=D64))
    torch.testing.assert_close(energy(out), torch.tensor([-math.log(3.0), -math.log(8.0)], dtype=D64))
    # T = 2: exp(logits / 2) = 1, sqrt 2, sqrt 5.
    assert get_score("energy", temperature=2.0)(out)[1].item() == pytest.approx(-2 * math.log(1 + 2**0.5 + 5**0.5))
    h1 = (1 / 8) * math.log(8) + (2 / 8) * math.log(4) + (5 / 8) * math.log(8 / 5)
    torch.testing.assert_close(entropy(out), torch.tensor([math.log(3.0), h1], dtype=D64))
    head = anomaly_head({"anomaly_logit": torch.tensor([[0.0], [math.log(3.0)]])})
    torch.testing.assert_close(head, torch.tensor([0.5, 0.75]))


def test_gen_by_hand() -> None:
    out = {"logits": LOGITS}
    # gamma 1/2: sum sqrt(p (1 - p)); uniform row: 3 sqrt(2/9) = sqrt 2.
    full = (7**0.5 + 12**0.5 + 15**0.5) / 8
    torch.testing.assert_close(gen(out, gamma=0.5), torch.tensor([2**0.5, full], dtype=D64))
    top2 = (12**0.5 + 15**0.5) / 8  # top-2 probabilities 5/8, 2/8
    assert gen(out, gamma=0.5, top_m=2)[1].item() == pytest.approx(top2)
    assert get_score("gen", gamma=0.5, top_m=2)(out)[1].item() == pytest.approx(top2)


def test_logit_scores_match_textbook_formulas_on_random_inputs() -> None:
    logits = torch.randn(200, 7, generator=torch.Generator().manual_seed(0), dtype=D64) * 3
    out = {"logits": logits}
    p = torch.softmax(logits, 1).numpy()
    torch.testing.assert_close(energy(out), -torch.logsumexp(logits, 1))
    torch.testing.assert_close(msp(out), -torch.softmax(logits, 1).max(1).values)
    torch.testing.assert_close(maxlogit(out), -logits.max(1).values)
    np.testing.assert_allclose(entropy(out).numpy(), -(p * np.log(p)).sum(1), rtol=1e-10)
    # GEN reference code (Liu et al.): sort, keep the top M, sum p^g (1-p)^g; the paper's ID score is its negative.
    top = np.sort(p, axis=1)[:, -5:]
    np.testing.assert_allclose(gen(out, gamma=0.1, top_m=5).numpy(), (top**0.1 * (1 - top) ** 0.1).sum(1), rtol=1e-10)
    for name in ("msp", "maxlogit", "energy", "entropy", "gen"):
        assert SCORES[name](out).shape == (200,)


def test_bounded_scores_stay_in_their_ranges() -> None:
    logits = torch.randn(500, 18, generator=torch.Generator().manual_seed(1)) * 10
    out = {"logits": logits, "anomaly_logit": logits[:, 0]}
    for name in ("anomaly_head", "msp", "entropy", "gen"):
        lo, hi = score_range(name, 18)
        s = get_score(name)(out)
        assert lo - 1e-6 <= s.min() and s.max() <= hi + 1e-6, name
    assert score_range("energy", 18) is None and score_range("mahalanobis", 18) is None


# ------------------------------------------------------------------ fitted scores by hand


def test_mahalanobis_by_hand() -> None:
    # Class 0 around (0, 0), class 1 around (4, 1); within-class offsets (+-1, 0), (0, +-1):
    # tied covariance 0.5 I, precision 2 I.
    feats = [[1, 0], [-1, 0], [0, 1], [0, -1], [5, 1], [3, 1], [4, 2], [4, 0]]
    score = Mahalanobis().fit(bank(feats, [0, 0, 0, 0, 1, 1, 1, 1], [[1, 0], [0, 1]]))
    torch.testing.assert_close(score.state["means"], t([0, 0], [4, 1]))
    whiten = score.state["whiten"]
    torch.testing.assert_close(whiten @ whiten.T, 2 * torch.eye(2))  # the precision
    # (2, 0): d^2 = 2 * 4 = 8 to class 0, 2 * (4 + 1) = 10 to class 1. (4, 3): 50 vs 2 * 4 = 8. (0, 0): 0.
    s = score({"fused": t([2, 0], [4, 3], [0, 0])})
    torch.testing.assert_close(s, torch.tensor([8**0.5, 8**0.5, 0.0]))


def test_knn_by_hand() -> None:
    # The bank is L2-normalised: (1, 0), (0, 1), (-1, 0). Query direction (1, 1)/sqrt 2.
    b = bank([[3, 0], [0, 0.5], [-2, 0]], [0, 1, 2], [[1, 0]])
    q = {"fused": t([5, 5], [0.2, 0])}
    near, far = (2 - 2 ** 0.5) ** 0.5, (2 + 2 ** 0.5) ** 0.5
    torch.testing.assert_close(KNN(k=2).fit(b)(q), torch.tensor([near, 2**0.5]))
    torch.testing.assert_close(KNN(k=3).fit(b)(q), torch.tensor([far, 2.0]))
    torch.testing.assert_close(KNN(k=1, chunk=1).fit(b)(q), torch.tensor([near, 0.0]), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="k=4 exceeds"):
        KNN(k=4).fit(b)(q)
    assert len(KNN(bank_size=2).fit(b).state["bank"]) == 2


def test_vim_by_hand() -> None:
    # W picks x and y, b = 0 -> origin u = 0. Covariance diag(8/6, 8/6, 2/6): principal space (dim 2) = x, y;
    # residual = |z|. Fit residuals 0,0,0,0,1,1 -> mean 1/3; max logits 2,0,2,0,0,0 -> mean 2/3; alpha = 2.
    feats = [[2, 0, 0], [-2, 0, 0], [0, 2, 0], [0, -2, 0], [0, 0, 1], [0, 0, -1]]
    score = ViM(dim=2).fit(bank(feats, [0, 0, 1, 1, 0, 1], [[1, 0, 0], [0, 1, 0]]))
    assert score.state["alpha"].item() == pytest.approx(2.0)
    out = {"fused": t([1, 0, 3], [0, 0, 0]), "logits": t([1, 0], [0, 0])}
    expected = torch.tensor([2 * 3 - math.log(1 + math.e), -math.log(2.0)])
    torch.testing.assert_close(score(out), expected)
    assert ViM.default_dim(64) == 32 and ViM.default_dim(1024) == 512 and ViM.default_dim(2048) == 1000


def test_react_by_hand() -> None:
    # Fit activations 0, 1, 2, 3 -> 50th percentile (linear interpolation) = 1.5.
    score = ReAct(percentile=50).fit(bank([[0, 1], [2, 3]], [0, 1], [[1, 0], [0, 1]]))
    assert score.state["clip"].item() == pytest.approx(1.5)
    s = score({"fused": t([3, 0.5], [1, 1])})
    torch.testing.assert_close(s, torch.tensor([-math.log(math.exp(1.5) + math.exp(0.5)), -math.log(2 * math.e)]))


def test_ash_by_hand() -> None:
    # x = (4, 1, 3, 2), p = 50: keep 4 - round(2) = 2 values -> (4, 0, 3, 0); W sums pairs -> logits (4, 3).
    w = [[1, 1, 0, 0], [0, 0, 1, 1]]
    x = {"fused": t([4, 1, 3, 2])}
    ash_p = ASH(percentile=50, variant="p").fit(bank(np.zeros((0, 4)), [], w))
    assert ash_p(x).item() == pytest.approx(-math.log(math.exp(4) + math.exp(3)))
    # ASH-S: scale by exp(sum before / sum after) = exp(10 / 7).
    c = math.exp(10 / 7)
    ash_s = ASH(percentile=50, variant="s").fit(bank(np.zeros((0, 4)), [], w))
    assert ash_s(x).item() == pytest.approx(-math.log(math.exp(4 * c) + math.exp(3 * c)), rel=1e-5)
    assert not ASH.needs_data and ASH.fit_params == ()


def test_fitted_scores_are_finite_on_random_features() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.relu(torch.randn(400, 16, generator=g))
    labels = torch.randint(0, 5, (400,), generator=g)
    b = FitBank(feats, labels, torch.randn(5, 16, generator=g), torch.randn(5, generator=g))
    x = torch.relu(torch.randn(50, 16, generator=g))
    out = {"fused": x, "logits": x @ b.weight.T + b.bias}
    for score in (Mahalanobis(), KNN(k=10), ViM(), ReAct(), ASH(), ASH(variant="p")):
        s = score.fit(b)(out)
        assert s.shape == (50,) and torch.isfinite(s).all(), score.name
    # Mahalanobis equals the textbook min_c sqrt((x - m_c)^T pinv(cov) (x - m_c)) in float64.
    x64, f64, y = x.double(), feats.double(), labels
    means = torch.stack([f64[y == c].mean(0) for c in range(5)])
    cov = sum(((f64[y == c] - means[c]).T @ (f64[y == c] - means[c]) for c in range(5))) / len(f64)
    diff = x64[:, None, :] - means[None]
    ref = torch.einsum("ncd,de,nce->nc", diff, torch.linalg.pinv(cov), diff).min(1).values.sqrt()
    torch.testing.assert_close(Mahalanobis().fit(b)(out).double(), ref, rtol=1e-5, atol=1e-5)
    # ReAct with the 100th percentile clips nothing: plain energy of the logits.
    torch.testing.assert_close(ReAct(percentile=100).fit(b)(out), energy(out))


# ------------------------------------------------------------------ sampler, registry, bad input


def test_class_balanced_sampler_is_balanced_uniform_and_batch_independent() -> None:
    labels = np.r_[np.zeros(5000, int), np.ones(300, int), np.full(20, 2), -np.ones(100, int)]
    feats = np.arange(len(labels), dtype=np.float32)[:, None]
    whole = ClassBalancedSampler(3, 300, seed=7)
    whole.update(feats, labels)
    assert whole.per_class(3) == [100, 100, 20]
    split = ClassBalancedSampler(3, 300, seed=7)
    for part in np.array_split(np.arange(len(labels)), 9):
        split.update(feats[part], labels[part])
    assert split.per_class(3) == [100, 100, 20] and (split.labels >= 0).all()
    # Uniform within a class: the kept class-0 indices are spread over all 5000 (not the first ones).
    kept0 = whole.features[whole.labels == 0, 0]
    assert kept0.max() > 4000 and kept0.min() < 1000


def test_unknown_score_lists_valid_names() -> None:
    with pytest.raises(KeyError) as err:
        get_score("mahalanobis_typo")
    for name in ("anomaly_head", "msp", "maxlogit", "energy", "entropy", "gen", "mahalanobis", "knn", "vim",
                 "react", "ash"):
        assert name in SCORES and name in str(err.value)


def test_fitted_score_without_a_fit_says_so() -> None:
    with pytest.raises(ValueError, match="fitted on ID training features"):
        get_score("knn")
    with pytest.raises(RuntimeError, match="not fitted"):
        KNN()({"fused": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="variant"):
        ASH(variant="b")


def test_the_pass_gives_each_score_exactly_the_outputs_it_declares(monkeypatch):
    from segood.engine.evaluate import score_batch
    from segood.ood.scores import SCORES, Score, get_score

    seen = {}

    def image_maxlogit(out):
        seen["keys"] = sorted(out)
        return -out["logits_image"].max(1).values

    monkeypatch.setitem(SCORES, "image_maxlogit", Score("image_maxlogit", image_maxlogit, reads=("logits_image",)))
    out = {"logits": torch.randn(5, 3), "logits_image": torch.randn(5, 3), "fused": torch.randn(5, 4)}
    rows = torch.tensor([True, False, True, True, False])
    scores = score_batch(out, {"image_maxlogit": get_score("image_maxlogit")}, rows)
    assert seen["keys"] == ["logits_image"]
    assert np.allclose(scores["image_maxlogit"], -out["logits_image"][rows].max(1).values.numpy())
    with pytest.raises(KeyError, match="reads model outputs \\['logits_image'\\]"):
        score_batch({"logits": out["logits"]}, {"image_maxlogit": get_score("image_maxlogit")}, rows)
    assert SCORES["vim"].inputs() == ("fused", "logits") and SCORES["anomaly_head"].inputs() == ("anomaly_logit",)
