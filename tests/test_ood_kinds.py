"""Per-kind OOD results: kind files -> Scan.ood_kind -> Batch -> the evaluation pass -> metrics / report."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segood.data.batching import VoxelGrid, collate, crop_to_fov, scan_to_sample
from segood.data.errors import DataError
from segood.data.labels import LabelMap, load_label_map
from segood.data.ood_kinds import OOD_KIND_FAMILY, OOD_KIND_NAMES
from segood.data.readers.semantickitti import SemanticKittiReader
from segood.engine.evaluate import run_pass
from segood.metrics.accumulator import EvalAccumulator
from segood.metrics.kinds import KindHistograms, kind_metrics
from segood.metrics.ood import ood_metrics
from segood.report.markdown import format_metrics, kind_table
from segood.synthetic import OOD_RAW_ID


@pytest.fixture(scope="module")
def label_map() -> LabelMap:
    return load_label_map("semantickitti")


def test_reader_gives_each_ood_point_its_kind(synthetic_root, label_map):
    reader = SemanticKittiReader(synthetic_root, ["00", "08"], label_map)
    seen = 0
    for i in range(len(reader)):
        scan = reader[i]
        frame = reader.frames[i]
        inst = np.fromfile(frame.path("labels", "label"), np.uint32) >> 16
        table = json.loads(frame.path("ood_kinds", "json").read_text())["instances"]
        want = np.array([OOD_KIND_NAMES.index(table[str(k)]) if str(k) in table else -1 for k in inst])
        assert scan.ood_kind.dtype == np.int16 and np.array_equal(scan.ood_kind, want)
        ood = scan.raw_labels == OOD_RAW_ID
        assert (scan.ood_kind[ood] >= 0).all() and (scan.ood_kind[~ood] == -1).all()
        seen += int(ood.sum())
        fov = crop_to_fov(scan)
        assert np.array_equal(fov.ood_kind, scan.ood_kind[scan.visible])
    assert seen > 0
    samples = [scan_to_sample(reader[i], label_map) for i in range(2)]
    batch = collate(samples, VoxelGrid(0.2, (-50, -50, -4, 50, 50, 3)))
    assert batch["ood_kind"].dtype == torch.int64
    assert np.array_equal(batch["ood_kind"].numpy(), np.concatenate([s["ood_kind"] for s in samples]))


def test_no_kind_file_means_no_kinds_and_a_bad_one_names_the_field(synthetic_root, label_map, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    path = root / "sequences" / "08" / "ood_kinds" / "000000.json"
    path.unlink()
    reader = SemanticKittiReader(root, ["08"], label_map)
    assert reader[0].ood_kind is None and reader[1].ood_kind is not None
    batch = collate([scan_to_sample(reader[i], label_map) for i in range(2)], VoxelGrid(0.2, (-50, -50, -4, 50, 50, 3)))
    assert "ood_kind" not in batch  # only when every scan of the batch has kinds
    path.write_text(json.dumps({"instances": {"3": "spaceship"}}))
    with pytest.raises(DataError, match=r"000000\.json.*instances\.3.*spaceship.*tetra"):
        reader[0]


def _exact(scores, ood_target, kind, visible, code, fov):
    """Direct computation: the kind's OOD points and every ID point (of the subset), exact formulas."""
    sel = ((ood_target == 0) | ((ood_target == 1) & (kind == code))) & (visible if fov else True)
    return ood_metrics(scores[sel], ood_target[sel])


def test_per_kind_metrics_equal_a_direct_computation():
    """A hand-made pass: scores on distinct bins of a known [0, 1] range, so binned == exact."""
    rng = np.random.default_rng(0)
    n = 3000
    kinds = ("veg_car", "tetra", "bus")
    codes = [OOD_KIND_NAMES.index(k) for k in kinds]
    ood_target = rng.choice([-1, 0, 1], n, p=[0.1, 0.6, 0.3])
    kind = np.where(ood_target == 1, rng.choice(codes, n), -1)
    visible = rng.random(n) < 0.4
    shift = {codes[0]: 0.1, codes[1]: 0.3, codes[2]: 0.0}  # kinds of different difficulty
    base = rng.random(n) * 0.7 + np.array([shift.get(int(k), 0.0) for k in kind])
    scores = (np.floor(base * 4096) + 0.5) / 4096  # one value per coarse bin: no ties across ID/OOD
    batches = [{"ood_target": torch.from_numpy(ood_target[s]), "visible": torch.from_numpy(visible[s]),
                "ood_kind": torch.from_numpy(kind[s]), "target": torch.zeros(len(ood_target[s]), dtype=torch.long),
                "score": torch.from_numpy(scores[s])} for s in (slice(0, 1000), slice(1000, n))]
    model = lambda b: {"logits": torch.zeros(len(b["score"]), 2), "anomaly_logit": b["score"]}  # noqa: E731
    acc = EvalAccumulator(["anomaly_head"], 2, {"anomaly_head": (0.0, 1.0)}, bins=65536)
    hists = KindHistograms(OOD_KIND_NAMES, OOD_KIND_FAMILY)
    run_pass(model, batches, {"anomaly_head": lambda out: out["anomaly_logit"]}, acc, progress=False, kinds=hists)
    m = kind_metrics(hists, acc)
    assert m["ood_kind_bins"] == 4096 and set(m["ood_kinds"]["anomaly_head"]) == set(kinds)
    assert m["ood_kind_family"] == {"bus": "near", "tetra": "novel", "veg_car": "mixed"}
    for k, code in zip(kinds, codes):
        for subset in ("fov", "all"):
            got, want = m["ood_kinds"]["anomaly_head"][k][subset], _exact(scores, ood_target, kind, visible, code, subset == "fov")
            for key in ("auroc", "aupr", "fpr95", "num_id", "num_ood"):
                assert got[key] == pytest.approx(want[key], abs=1e-12), (k, subset, key)
    fam = m["ood_families"]["anomaly_head"]["novel"]["all"]
    assert fam == {**m["ood_kinds"]["anomaly_head"]["tetra"]["all"], "bin_error_bound": fam["bin_error_bound"]}
    aurocs = {k: m["ood_kinds"]["anomaly_head"][k]["all"]["auroc"] for k in kinds}
    assert aurocs["tetra"] > aurocs["veg_car"] > aurocs["bus"]


def test_kind_rows_in_report_and_console():
    per = {"fov": {"auroc": 0.9, "fpr95": 0.4, "num_ood": 7, "num_id": 9},
           "all": {"auroc": 0.8, "fpr95": 0.5, "num_ood": 11, "num_id": 20}}
    m = {"ood_kinds": {"energy": {"bus": per}}, "ood_families": {"energy": {"near": per}},
         "ood_kind_family": {"bus": "near"}, "ood_kind_bins": 4096,
         "miou": {"fov": {"miou": 0.5}, "all": {"miou": 0.4}},
         "ood": {"energy": {s: {"auroc": 0.7, "aupr": 0.2, "fpr95": 0.6, "num_id": 9, "num_ood": 3} for s in ("fov", "all")}},
         "operating_point": {"score": "energy"}}
    assert "| energy | bus | near | 90.0 | 40.0 | 7 | 80.0 | 50.0 | 11 |" in kind_table(m)
    text = format_metrics(m)
    assert "per kind of OOD object, score energy" in text
    assert any(line.split()[:7] == ["bus", "near", "90.0", "40.0", "80.0", "50.0", "11"] for line in text.splitlines())
    assert kind_table({"ood": {}}) == ""
