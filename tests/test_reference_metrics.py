"""Reference IoU evaluators: nuscenes-devkit's ConfusionMatrix (called directly) and the
semantic-kitti-api iouEval rules (re-derived by hand on crafted cases); sharded reduction."""
from __future__ import annotations

import numpy as np
import pytest

from segood.data.labels import load_label_map
from segood.metrics.iou import ConfusionMatrix
from segood.metrics.reference import NuScenesIoU, SemanticKittiIoU, reference_miou_from_train_confusion


def test_nuscenes_miou_equals_the_devkit():
    import nuscenes.eval.lidarseg.utils as devkit
    rng = np.random.default_rng(0)
    for trial in range(5):
        ref = devkit.ConfusionMatrix(17, ignore_idx=0)
        ours = NuScenesIoU(17, ignore=(0,))
        for _ in range(4):  # several scans, as the devkit's evaluator accumulates them
            n = int(rng.integers(50, 3000))
            gt = rng.integers(0, 17 if trial < 3 else 9, n)  # trials 3-4: classes absent from the GT
            pred = rng.integers(1, 17, n)  # the devkit requires predictions in 1..16
            if trial == 4:
                pred = np.minimum(pred, 12)  # and some classes never predicted
            ref.update(gt, pred)
            ours.update(pred, gt)
        np.testing.assert_array_equal(ours.matrix, ref.global_cm)
        np.testing.assert_array_equal(ours.iou(), np.asarray(ref.get_per_class_iou()))
        assert ours.miou() == ref.get_mean_iou()


def test_nuscenes_ignored_prediction_is_dropped():
    # devkit rule: row and column of class 0 zeroed, so predicting 0 on a labelled point costs nothing
    m = NuScenesIoU(3, ignore=(0,)).update(pred=[0, 1, 2, 2], gt=[1, 1, 2, 0])
    assert m.iou().tolist()[1:] == [1.0, 1.0] and np.isnan(m.iou()[0]) and m.miou() == 1.0
    # a class absent from GT but predicted counts as 0; absent from both is NaN and not averaged
    m = NuScenesIoU(4, ignore=(0,)).update(pred=[1, 1, 2], gt=[1, 1, 1])
    assert m.iou()[1] == pytest.approx(2 / 3) and m.iou()[2] == 0 and np.isnan(m.iou()[3])
    assert m.miou() == pytest.approx((2 / 3 + 0) / 2)


def test_semantickitti_rules_on_crafted_cases():
    # classes 0 (ignored), 1, 2, 3; class 3 is absent from GT and never predicted
    gt = np.array([1, 1, 1, 2, 2, 0, 0])
    pred = np.array([1, 0, 2, 2, 2, 1, 3])
    m = SemanticKittiIoU(4, ignore=(0,)).update(pred, gt)
    # plain re-derivation: GT-ignored points (last two) dropped entirely;
    # class 1: tp 1, fp 0, fn 2 (one predicted as 2, one predicted as the ignored class 0 -> still fn)
    # class 2: tp 2, fp 1, fn 0; class 3: absent -> 0 / (0 + 1e-15) = 0, included in the mean
    iou1, iou2, iou3 = 1 / 3, 2 / 3, 0.0
    assert m.iou()[1:].tolist() == pytest.approx([iou1, iou2, iou3])
    assert m.miou() == pytest.approx((iou1 + iou2 + iou3) / 3)
    # getacc: tp.sum() / (tp + fp over included classes)
    assert m.accuracy() == pytest.approx(3 / (3 + 1))
    # the same data under the devkit convention differs exactly where the conventions differ
    n = NuScenesIoU(4, ignore=(0,)).update(pred, gt)
    assert n.iou()[1] == pytest.approx(1 / 2)  # the prediction of class 0 was dropped
    assert n.miou() == pytest.approx((1 / 2 + 2 / 3) / 2)  # class 3 (no GT, no prediction) not averaged


def test_semantickitti_matches_a_literal_iouEval_transcription():
    """The API's getStats/getIoU steps written out literally (np.add.at, conf[:, ignore] = 0)."""
    rng = np.random.default_rng(3)
    gt, pred = rng.integers(0, 20, 5000), rng.integers(0, 20, 5000)
    conf = np.zeros((20, 20), np.int64)
    np.add.at(conf, (pred, gt), 1)
    ignore = np.array([0, 5])
    conf[:, ignore] = 0
    tp = np.diag(conf)
    fp, fn = conf.sum(1) - tp, conf.sum(0) - tp
    include = np.array([c for c in range(20) if c not in ignore])
    union = tp + fp + fn + 1e-15
    m = SemanticKittiIoU(20, ignore=(0, 5)).update(pred, gt)
    assert m.miou() == (tp[include] / union[include]).mean()


def test_histograms_reduce_exactly_across_processes():
    rng = np.random.default_rng(1)
    gt, pred = rng.integers(0, 17, 20000), rng.integers(1, 17, 20000)
    for cls in (NuScenesIoU, SemanticKittiIoU):
        whole = cls(17, ignore=(0, 1, 5, 8, 9)).update(pred, gt)
        shards = [cls(17, ignore=(0, 1, 5, 8, 9)).update(pred[r::3], gt[r::3]) for r in range(3)]
        summed = shards[0].merge(shards[1]).merge(shards[2])
        np.testing.assert_array_equal(summed.matrix, whole.matrix)
        assert summed.miou() == whole.miou()


def test_train_confusion_gives_the_reference_numbers():
    """segood's train-id matrix (OOD + ignored dropped) -> either reference's ID-only mIoU, equal to
    the reference evaluators in learning ids with ignore = {0} + OOD ids; segood's own mIoU
    (mean over GT-present classes) is bounded against them and equal when every class occurs."""
    lm = load_label_map("nuscenes")
    rng = np.random.default_rng(2)
    learning = rng.integers(0, 17, 40000)
    learning[learning == 3] = 4  # class 'bus' absent from the GT
    pred_train = rng.integers(0, lm.num_classes, len(learning))
    pred_train[pred_train == lm.train_learning_ids.index(6)] = 0  # 'motorcycle' never predicted
    target = lm.to_train(learning)
    cm = ConfusionMatrix(lm.num_classes).update(pred_train, target)
    pred_learning = np.array(lm.train_learning_ids)[pred_train]
    ignore = lm.ignore_learning_ids + lm.ood_learning_ids
    sk = SemanticKittiIoU(17, ignore=ignore).update(pred_learning, learning)
    nu = NuScenesIoU(17, ignore=ignore).update(pred_learning, learning)
    assert reference_miou_from_train_confusion(cm.matrix, "semantickitti")[0] == pytest.approx(sk.miou(), abs=1e-12)
    assert reference_miou_from_train_confusion(cm.matrix, "nuscenes")[0] == pytest.approx(nu.miou(), abs=1e-7)
    # bound: present classes P of C, absent-but-predicted A: |ours - ref| <= max IoU * (C - P) / C
    c, present = lm.num_classes, int((cm.matrix.sum(1) > 0).sum())
    assert abs(cm.miou() - sk.miou()) <= (c - present) / c + 1e-12
    full = ConfusionMatrix(lm.num_classes).update(pred_train[learning != 3], target[learning != 3])
    full.matrix += np.diag(np.ones(lm.num_classes, np.int64))  # every class occurs and is predicted
    assert full.miou() == pytest.approx(reference_miou_from_train_confusion(full.matrix, "semantickitti")[0], abs=1e-12)
    assert full.miou() == pytest.approx(reference_miou_from_train_confusion(full.matrix, "nuscenes")[0], abs=1e-6)


def test_semantickitti_submission_layout(tmp_path):
    from segood.data.scan import Scan
    from segood.engine.predict import ScanKey, scan_prediction
    from segood.report.prediction_writers import SemanticKittiWriter

    lm = load_label_map("semantickitti")
    pred = np.arange(lm.num_classes).repeat(3)
    scan = Scan(points=np.zeros((len(pred), 4), np.float32))
    writer = SemanticKittiWriter(tmp_path, lm, "energy")
    key = ScanKey("11", "42", "x.bin")
    writer.write(scan_prediction(key, scan, pred, np.zeros(len(pred), np.float32), None))
    path, = writer.paths(key)
    assert path == tmp_path / "sequences" / "11" / "predictions" / "000042.label"
    raw = np.fromfile(path, dtype=np.uint32)
    assert raw.tolist() == [lm.learning_map_inv[lm.train_learning_ids[t]] for t in pred]
    np.testing.assert_array_equal(lm.to_train(lm.to_learning(raw)), pred)  # round trip
    assert 20 not in raw  # never the OOD class's raw id
    with pytest.raises(ValueError, match="one prediction per point"):
        scan_prediction(key, scan, pred[1:], np.zeros(len(pred) - 1, np.float32), None)
