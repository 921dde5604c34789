"""Evaluation protocols against the reference formulas, written here independently with sklearn / numpy:
REAL's np_ioueval (PR-curve trapezoid, FPR at the first TPR > 0.95, iouEval mIoU), STU's
compute_point_level_ood.py, and ``segood eval --protocol real`` end to end on a SemanticKITTI root."""
from __future__ import annotations


import numpy as np
import pytest
import yaml
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from segood.data.labels import LABEL_DIR, load_label_map
from segood.metrics.ood import ScoreHistogram
from segood.metrics.protocols import (PROTOCOLS, ProtocolAccumulator, bin_error_bounds, histogram_metrics,
                                      reference_ood_metrics)


def real_reference(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """np_ioueval.get_unknown_indices, written out: sklearn PR curve + auc, roc_curve + auc, fpr[tpr > 0.95][0]."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"aupr": auc(recall, precision), "auroc": auc(fpr, tpr), "fpr95": fpr[tpr > 0.95][0]}


def stu_reference(frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """STU's PointOODMetricsCalculator, written out: (points, scores, raw semantic label) per frame."""
    all_s, all_y = [], []
    for points, scores, target in frames:
        d = np.linalg.norm(points, axis=1)
        y = np.where(target == 2, 1, np.where(target != 0, 0, -1))
        y = np.where((d > 50) | (d < 2.5), -1, y)
        keep = y != -1
        if y[keep].sum() < 5:
            continue
        all_s.append(scores[keep])
        all_y.append(y[keep])
    s, y = np.concatenate(all_s), np.concatenate(all_y)
    fpr, tpr, _ = roc_curve(y, s)
    return {"aupr": average_precision_score(y, s), "auroc": auc(fpr, tpr),
            "fpr95": next(f for t, f in zip(tpr, fpr) if t > 0.95)}


@pytest.mark.parametrize("ties", [False, True])
def test_real_formulas_equal_sklearn(ties):
    rng = np.random.default_rng(0)
    y = rng.random(5000) < 0.1
    s = rng.normal(size=5000) + 1.2 * y
    if ties:
        s = np.round(s, 1)  # many tied scores: one group per distinct value
    ref = real_reference(s, y)
    ours = reference_ood_metrics(s, y, "real")
    for k in ("aupr", "auroc", "fpr95"):
        assert ours[k] == pytest.approx(ref[k], abs=1e-12), k
    # the variants differ from segood's own: AP is not the PR trapezoid
    assert abs(reference_ood_metrics(s, y, "segood")["aupr"] - ours["aupr"]) > 1e-4
    assert reference_ood_metrics(s, y, "stu")["aupr"] == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_fpr95_rules_differ_when_tpr_lands_on_095():
    # 20 anomalies, the 19th enters at TPR exactly 0.95: segood (>=) stops there, REAL / STU (>) one step later
    s = np.r_[np.arange(40, 20, -1), np.arange(20, 0, -1)].astype(float)
    y = np.r_[np.ones(19, bool), np.zeros(2, bool), np.ones(1, bool), np.zeros(18, bool)]
    fpr, tpr, _ = roc_curve(y, s)
    assert reference_ood_metrics(s, y, "real")["fpr95"] == fpr[tpr > 0.95][0] == 2 / 20
    assert reference_ood_metrics(s, y, "segood")["fpr95"] == 0.0


def test_histograms_give_the_reference_numbers_and_bound_the_error():
    rng = np.random.default_rng(1)
    y = rng.random(20000) < 0.05
    for p in ("real", "stu", "segood"):
        # scores on the bin grid: the histogram loses nothing, the numbers are the reference's to the last digit
        s = (np.minimum(rng.integers(0, 1000, 20000) + 300 * y, 999) + 0.5) / 1000  # one value per bin
        h = ScoreHistogram(0.0, 1.0, 1000).update(s, y)
        exact = reference_ood_metrics(s, y, p)
        binned = histogram_metrics(h, PROTOCOLS[p])
        for k in ("aupr", "auroc", "fpr95"):
            assert binned[k] == pytest.approx(exact[k], abs=1e-12), (p, k)
        # continuous scores: |binned - exact| within the bound computed from the counts
        s = rng.random(20000) * 0.7 + 0.3 * y
        h = ScoreHistogram(0.0, 1.0, 256).update(s, y)
        exact, binned = reference_ood_metrics(s, y, p), histogram_metrics(h, PROTOCOLS[p])
        bound = bin_error_bounds(h.counts, PROTOCOLS[p])
        for k in ("aupr", "auroc", "fpr95"):
            assert abs(binned[k] - exact[k]) <= bound[k] + 1e-12, (p, k, binned[k], exact[k], bound[k])
        assert bound["aupr"] > 0 and bound["auroc"] > 0


def test_real_label_map_is_upstream_3884497():
    real, ours = (yaml.safe_load((LABEL_DIR / f"{n}.yaml").read_text()) for n in ("semantickitti_real", "semantickitti"))
    assert real["learning_map"][99] == 5 and ours["learning_map"][99] == 0
    assert {k: v for k, v in real["learning_map"].items() if k != 99} == \
           {k: v for k, v in ours["learning_map"].items() if k != 99}
    assert load_label_map("semantickitti_real").train_learning_ids == load_label_map("semantickitti").train_learning_ids


def iou_eval_reference(pred: np.ndarray, gt: np.ndarray, ignore: list[int], n: int = 20) -> float:
    """np_ioueval.iouEval: conf[pred, gt] by np.add.at, ignored columns zeroed, mean over the included classes."""
    conf = np.zeros((n, n), np.int64)
    np.add.at(conf, (pred, gt), 1)
    conf[:, ignore] = 0
    tp = np.diag(conf)
    union = tp + (conf.sum(1) - tp) + (conf.sum(0) - tp) + 1e-15
    include = [c for c in range(n) if c not in ignore]
    return float((tp[include] / union[include]).mean())


def test_protocol_accumulator_real_on_fixed_data():
    """REAL's evaluate_semantics.py on raw labels (raw 0 dropped, remap through its YAML, raw 99 -> 5)."""
    sk = load_label_map("semantickitti")
    rng = np.random.default_rng(2)
    raw_ids = np.array(sorted(sk.learning_map))
    raw = rng.choice(raw_ids, 6000)
    raw[:300] = 99
    pred_train = rng.integers(0, sk.num_classes, 6000)
    scores = rng.normal(size=6000) + (np.isin(raw, [13, 16, 20, 99, 256, 257, 259]))
    visible = rng.random(6000) < 0.4
    xyz = rng.normal(size=(6000, 3)) * 10
    acc = ProtocolAccumulator(PROTOCOLS["real"], sk, sk, ["s"], bins=1 << 20)
    for part in np.array_split(np.arange(6000), 3):  # three batches
        acc.add(raw[part], pred_train[part], {"s": scores[part]}, lambda n, x: _Identity(), visible[part], xyz[part],
                np.zeros(len(part), np.int64))
    m = acc.metrics()
    lut = {int(k): int(v) for k, v in yaml.safe_load((LABEL_DIR / "semantickitti_real.yaml").read_text())
           ["learning_map"].items()}
    for sub, sel in (("all", np.ones(6000, bool)), ("fov", visible)):
        valid = sel & (raw != 0)
        gt = np.array([lut[r] for r in raw[valid]])
        pred = np.array(sk.train_learning_ids)[pred_train[valid]]
        assert m["miou"][sub]["miou"] == pytest.approx(iou_eval_reference(pred, gt, [0]), abs=1e-12)
        assert m["miou"][sub]["miou_id"] == pytest.approx(iou_eval_reference(pred, gt, [0, 5]), abs=1e-12)
        keep = gt != 0
        ref = real_reference(scores[valid][keep], gt[keep] == 5)
        for k in ref:
            assert m["ood"]["s"][sub][k] == pytest.approx(ref[k], abs=1e-6), (sub, k)
    assert m["ood"]["s"]["all"]["num_ood"] == int(np.isin(raw, [13, 16, 20, 99, 256, 257, 259]).sum())


class _Identity:
    """A histogram axis for tests: raw scores clamped into [-8, 8]."""

    def forward(self, s):
        return np.clip(s, -8, 8)

    def histogram(self, bins):
        return ScoreHistogram(-8.0, 8.0, bins)


def test_stu_rules_by_hand():
    """Three frames, numbers by hand. Frame 0: 5 anomalies and 4 inliers in range and labelled (one anomaly
    at 1 m, one at 60 m and one label-0 point dropped); frame 1 has 2 anomalies, frame 2 has 4: both skipped."""
    stu = load_label_map("stu")
    x = lambda *d: np.c_[np.array(d, float), np.zeros((len(d), 2))]  # noqa: E731
    f0 = (x(10, 10, 10, 10, 10, 10, 10, 1, 60, 10, 30, 30),
          np.array([.9, .8, .7, .3, .2, .6, .1, .95, .99, .5, .75, .15]), np.array([2, 2, 2, 1, 1, 1, 1, 2, 2, 0, 2, 2]))
    f1 = (x(20, 20, 20, 20), np.array([.85, .4, .05, .65]), np.array([2, 2, 1, 1]))
    f2 = (x(5, 5, 5, 5, 5), np.array([.9, .9, .9, .9, .1]), np.array([2, 2, 2, 2, 1]))
    frames = [f0, f1, f2]
    ref = stu_reference(frames)
    # by hand on frame 0: scores desc .9A .8A .75A .7A .6I .3I .2I .15A .1I (5 A, 4 I)
    # AP = (1 + 1 + 1 + 1 + 5/8) / 5 ; AUROC: pairs (A > I): .9,.8,.75,.7 beat 4 each = 16, .15 beats .1 = 1 -> 17/20
    # FPR95: TPR > .95 needs all 5 anomalies: at .15, 3 of 4 inliers above -> 3/4
    hand = {"aupr": (4 + 5 / 8) / 5, "auroc": 17 / 20, "fpr95": 3 / 4}
    for k in hand:
        assert ref[k] == pytest.approx(hand[k], abs=1e-12), k
    acc = ProtocolAccumulator(PROTOCOLS["stu"], stu, load_label_map("semantickitti"), ["s"], bins=1 << 16)
    pts = np.concatenate([f[0] for f in frames])
    acc.add(np.concatenate([f[2] for f in frames]), np.zeros(len(pts), np.int64),
            {"s": np.concatenate([f[1] for f in frames])}, lambda n, s: _Identity(), np.ones(len(pts), bool), pts,
            np.repeat([0, 1, 2], [len(f[0]) for f in frames]))
    m = acc.metrics()
    assert m["miou"] is None
    for k in hand:
        assert m["ood"]["s"]["all"][k] == pytest.approx(hand[k], abs=1e-12), k
    assert (m["ood"]["s"]["all"]["num_ood"], m["ood"]["s"]["all"]["num_id"]) == (5, 4)


def test_rba_is_refused_on_logits_no_outlier_loss_gave_a_level():
    import torch

    from segood.ood.scores import SCORES, ModelFacts

    rba = SCORES["rba"]
    for trained in ("rba", "energy_margin", None):  # None: unknown model (a benchmark's fake one)
        assert rba.unavailable(ModelFacts(18, trained)) is None
    assert "trained without outliers" in rba.unavailable(ModelFacts(18, "none"))
    why = rba.unavailable(ModelFacts(18, "k_plus_one"))
    assert why.startswith("needs a model trained with loss.outlier rba or energy_margin") and "k_plus_one" in why
    # why: adding a constant to every logit leaves softmax (and so cross-entropy) unchanged, but not rba
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, 4.0, -1.0]])
    assert torch.allclose(torch.softmax(logits + 3.0, 1), torch.softmax(logits, 1))
    assert not torch.allclose(rba({"logits": logits + 3.0}), rba({"logits": logits}))
    assert "extra logits" in SCORES["relative_energy"].unavailable(ModelFacts(18), num_id_logits=None)


def test_relative_energy_needs_extra_logits():
    import torch

    from segood.ood.scores import get_score, score_options

    logits = torch.tensor([[2.0, 1.0, 0.5, 3.0], [0.0, 4.0, -1.0, -2.0]])
    rel = get_score("relative_energy", num_id_logits=3)({"logits": logits})
    expect = torch.logsumexp(logits, 1) - torch.logsumexp(logits[:, :3], 1)
    assert torch.allclose(rel, expect) and rel[0] > rel[1] > 0  # mass on the extra logit = anomalous
    assert score_options({}, "relative_energy") == {"num_id_logits": None}
    for bad in (None, 4):
        with pytest.raises(ValueError, match="eval.score_options.relative_energy.num_id_logits"):
            get_score("relative_energy", num_id_logits=bad)({"logits": logits})


def test_stu_projection_equals_cv2_and_reads_the_release_formats(tmp_path):
    cv2 = pytest.importorskip("cv2")  # installed with nuscenes-devkit
    from builders import write_stu_root
    from segood.data.readers.stu import StuReader, project_distorted

    rng = np.random.default_rng(4)
    pts = np.c_[rng.uniform(1, 40, 3000), rng.uniform(-30, 30, 3000), rng.uniform(-2, 2, 3000), rng.random(3000)]
    sem = rng.choice([0, 1, 2, 9], 3000)
    root = write_stu_root(tmp_path, {"125": [{"points": pts, "semantic": sem, "instance": rng.integers(0, 9, 3000)}]})
    reader = StuReader(root, ["125"], load_label_map("stu"))
    scan = reader[0]
    c = reader.calibration()
    cam = (pts[:, :3] - c["t"]) @ c["R"]
    front = cam[:, 2] > 0
    uv_cv, _ = cv2.projectPoints(cam[front].reshape(-1, 1, 3), np.zeros(3), np.zeros(3), c["K"], c["D"])
    uv_cv = uv_cv.reshape(-1, 2)
    inside = (uv_cv.astype(int)[:, 0] >= 0) & (uv_cv.astype(int)[:, 0] < 1920) & (uv_cv.astype(int)[:, 1] >= 0) \
        & (uv_cv.astype(int)[:, 1] < 1208)
    assert scan.visible.sum() == inside.sum() > 100
    np.testing.assert_allclose(scan.pixel_uv[front][inside], uv_cv[inside], atol=1e-3)
    assert np.array_equal(scan.raw_labels, np.where(sem == 9, 1, sem))  # other values read as inlier; instance dropped
    uv, seen = project_distorted(pts[:, :3], c["t"], c["R"], c["K"], c["D"], 1920, 1208)
    assert np.array_equal(seen, scan.visible)


@pytest.mark.parametrize("name, raw_ood, ood_name", [("semantickitti_ood", 2, "anomaly"), ("nuscenes_ood", 100, "anomaly")])
def test_inserted_object_label_maps(name, raw_ood, ood_name, tmp_path):
    """LIDO's SemanticKITTI-OoD / nuScenes-OoD: KITTI layout through the SemanticKITTI reader, the inserted
    objects' raw label is the OOD class and every benchmark class is in-distribution."""
    from segood.data.readers import READERS

    lm = load_label_map(name)
    assert lm.ood_names == [ood_name] and lm.to_ood_target(lm.to_learning([raw_ood])).tolist() == [1]
    base = load_label_map("semantickitti" if name.startswith("semantic") else "nuscenes")
    assert lm.num_classes == len(base.learning_names) - 1  # all classes but the ignored one
    seq = tmp_path / "sequences" / "00"
    (seq / "velodyne").mkdir(parents=True)
    (seq / "labels").mkdir()
    np.zeros((4, 4), np.float32).tofile(seq / "velodyne" / "000000.bin")
    np.array([raw_ood, raw_ood | (3 << 16), 0, sorted(base.learning_map)[-1]], np.uint32).tofile(seq / "labels" / "000000.label")
    scan = READERS[name](tmp_path, ["00"], lm, camera=None)[0]
    assert lm.to_ood_target(scan.learning_labels).tolist()[:3] == [1, 1, -1]
