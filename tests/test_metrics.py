"""OOD metrics against scikit-learn and hand-computed values; confusion-matrix IoU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from segood.metrics.iou import ConfusionMatrix
from segood.metrics.ood import ScoreHistogram, aupr, auroc, fpr_at_tpr, ood_metrics


def _random_case(seed: int, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scores that separate OOD from ID only partly; rounding creates many ties."""
    rng = np.random.default_rng(seed)
    is_ood = rng.random(n) < 0.2
    scores = rng.normal(size=n) + 1.2 * is_ood
    return (np.round(scores, 1) if ties else scores), is_ood


def _brute_fpr(scores: np.ndarray, is_ood: np.ndarray, tpr: float = 0.95) -> float:
    """FPR at the first sklearn ROC threshold whose TPR >= tpr (no points dropped)."""
    fpr_curve, tpr_curve, _ = roc_curve(is_ood, scores, drop_intermediate=False)
    return float(fpr_curve[np.argmax(tpr_curve >= tpr)])


# ------------------------------------------------------------------ exact metrics vs sklearn


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_metrics_match_sklearn(seed: int, ties: bool) -> None:
    scores, is_ood = _random_case(seed, 5000, ties)
    assert auroc(scores, is_ood) == pytest.approx(roc_auc_score(is_ood, scores), abs=1e-9)
    assert aupr(scores, is_ood) == pytest.approx(average_precision_score(is_ood, scores), abs=1e-9)
    for tpr in (0.95, 0.5, 1.0):
        assert fpr_at_tpr(scores, is_ood, tpr) == pytest.approx(_brute_fpr(scores, is_ood, tpr), abs=1e-9)


def test_crafted_case_by_hand() -> None:
    # OOD at 0.9, 0.7, 0.4; ID at 0.8, 0.6, 0.5.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    is_ood = np.array([1, 0, 1, 0, 0, 1], dtype=bool)
    # OOD>ID pairs: 0.9 beats 3, 0.7 beats 2, 0.4 beats 0 -> 5 of 9.
    assert auroc(scores, is_ood) == pytest.approx(5 / 9)
    # Recall steps of 1/3 at precisions 1, 2/3, 1/2.
    assert aupr(scores, is_ood) == pytest.approx(1 / 3 * (1 + 2 / 3 + 1 / 2))
    assert fpr_at_tpr(scores, is_ood) == pytest.approx(1.0)  # TPR 1 only at the last score
    assert fpr_at_tpr(scores, is_ood, tpr=0.6) == pytest.approx(1 / 3)  # TPR 2/3 at 0.7


def test_ties_enter_as_one_group() -> None:
    scores = np.array([3.0, 2.0, 2.0, 2.0, 1.0])
    is_ood = np.array([1, 1, 0, 0, 0], dtype=bool)
    # The second OOD point ties with two ID points: all three enter together -> FPR 2/3.
    assert fpr_at_tpr(scores, is_ood) == pytest.approx(2 / 3)
    assert auroc(scores, is_ood) == pytest.approx(5 / 6)  # 3 wins + (0.5 + 0.5 + 1)
    assert aupr(scores, is_ood) == pytest.approx(0.5 * 1 + 0.5 * 0.5)


def test_ood_metrics_drops_ignored_points() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 100.0, -100.0])
    target = np.array([1, 0, 1, 0, 0, 1, -1, -1])
    out = ood_metrics(torch.as_tensor(scores), torch.as_tensor(target))
    assert out["num_id"] == 3 and out["num_ood"] == 3
    assert out["auroc"] == pytest.approx(5 / 9)
    assert out["fpr95"] == pytest.approx(1.0)
    assert set(out) == {"auroc", "aupr", "fpr95", "num_id", "num_ood"}


def test_metric_errors() -> None:
    with pytest.raises(ValueError, match="no OOD"):
        auroc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="no ID"):
        ood_metrics([0.1, 0.2, 0.3], [1, 1, -1])
    with pytest.raises(ValueError, match="NaN"):
        aupr([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="differ in size"):
        auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr([0.1, 0.2], [0, 1], tpr=0.0)


# ------------------------------------------------------------------ histogram


def test_histogram_close_to_exact_on_1e6_scores() -> None:
    scores, is_ood = _random_case(3, 1_000_000, ties=False)
    hist = ScoreHistogram(-6.0, 7.0).update(scores, is_ood)
    approx, exact = hist.metrics(), ood_metrics(scores, is_ood.astype(np.int64))
    for key in ("auroc", "aupr", "fpr95"):
        assert approx[key] == pytest.approx(exact[key], abs=1e-3), key
    assert (approx["num_id"], approx["num_ood"]) == (exact["num_id"], exact["num_ood"])


def test_histogram_merge_equals_single_update() -> None:
    scores, is_ood = _random_case(4, 20_000, ties=True)
    whole = ScoreHistogram(-5.0, 5.0, bins=1024).update(scores, is_ood)
    first = ScoreHistogram(-5.0, 5.0, bins=1024).update(scores[:7000], is_ood[:7000])
    second = ScoreHistogram(-5.0, 5.0, bins=1024).update(scores[7000:], is_ood[7000:])
    first.merge(second)
    np.testing.assert_array_equal(first.counts, whole.counts)
    assert first.metrics() == whole.metrics()
    with pytest.raises(ValueError, match="merge"):
        whole.merge(ScoreHistogram(-5.0, 5.0, bins=512))


def test_histogram_clamps_and_ignores() -> None:
    hist = ScoreHistogram(0.0, 1.0, bins=4)
    hist.update(np.array([-3.0, 0.1, 0.6, 9.0, 0.5]), np.array([0, 0, 1, 1, -1]))
    np.testing.assert_array_equal(hist.counts, [[2, 0, 0, 0], [0, 0, 1, 1]])
    assert hist.metrics()["auroc"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no OOD"):
        ScoreHistogram(0.0, 1.0).update([0.2], [0]).metrics()


# ------------------------------------------------------------------ confusion matrix / IoU


def test_confusion_matrix_crafted_case() -> None:
    cm = ConfusionMatrix(4)
    target = torch.tensor([0, 0, 1, 1, 2, -1, -1])
    pred = torch.tensor([0, 1, 1, 1, 0, 2, 3])
    cm.update(pred, target)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = expected[0, 1] = expected[2, 0] = 1
    expected[1, 1] = 2
    np.testing.assert_array_equal(cm.matrix, expected)  # ignored points never counted
    iou = cm.iou()
    # class 0: tp 1, fp 1 (gt 2), fn 1 (pred 1); class 1: tp 2, fp 1; class 2: fn 1; class 3: none.
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 0.0])
    assert np.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 0.0) / 3)
    out = cm.to_dict(["car", "road", "pole", "sign"])
    assert out["iou"]["road"] == pytest.approx(2 / 3) and out["miou"] == pytest.approx(1 / 3)
    assert out["accuracy"] == pytest.approx(3 / 5)


def test_confusion_matrix_predicted_only_class_not_averaged() -> None:
    cm = ConfusionMatrix(3).update(np.array([0, 2]), np.array([0, 0]))
    np.testing.assert_allclose(cm.iou(), [0.5, np.nan, 0.0])
    assert cm.miou() == pytest.approx(0.5)  # class 2 has no ground truth


def test_confusion_matrix_merge_and_errors() -> None:
    rng = np.random.default_rng(0)
    target, pred = rng.integers(-1, 5, 1000), rng.integers(0, 5, 1000)
    whole = ConfusionMatrix(5).update(pred, target)
    half = ConfusionMatrix(5).update(pred[:400], target[:400])
    half.merge(ConfusionMatrix(5).update(pred[400:], target[400:]))
    np.testing.assert_array_equal(half.matrix, whole.matrix)
    assert whole.matrix.sum() == (target >= 0).sum()
    with pytest.raises(ValueError, match="pred"):
        ConfusionMatrix(3).update([3], [0])
    with pytest.raises(ValueError, match="target"):
        ConfusionMatrix(3).update([0], [-2])
