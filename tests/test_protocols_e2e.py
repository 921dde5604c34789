"""End to end: ``segood eval --protocol real`` on a SemanticKITTI root and ``--protocol stu`` on an
STU-layout root give the numbers of the reference formulas (written out in tests/test_protocols.py),
computed here from the model's own per-point scores; ``check-data`` accepts the STU layout."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from builders import write_stu_root
from segood.cli import main
from segood.config import CONFIG_DIR, load_config
from segood.data.labels import LABEL_DIR, load_label_map
from segood.engine.builders import build_loader
from segood.engine.artifacts import load_model
from segood.engine.train import train
from segood.ood.scores import get_score
from test_protocols import iou_eval_reference, real_reference, stu_reference

SMALL = ["model.lidar.channels=[8, 16, 16]", "model.lidar.out_channels=16", "model.image.out_channels=16",
         "model.image.width_scale=0.25", "model.fusion.hidden=32", "train.batch_size=1", "train.warmup_steps=1",
         "data.num_workers=0", "train.steps=2", "train.log_every=1"]
EVAL = ["eval.scores=[energy]", "eval.operating_score=energy", "eval.hist_bins=1048576", "eval.batch_size=1", "data.num_workers=0"]


@pytest.fixture(scope="module")
def ckpt(synthetic_root, tmp_path_factory):
    cfg = load_config(CONFIG_DIR / "synthetic_baseline.yaml", SMALL + [f"data.root={synthetic_root}"])
    return train(cfg, tmp_path_factory.mktemp("run") / "run", progress=False)


@torch.no_grad()
def infer(model, batch) -> dict:
    return model(batch)


def per_frame_energy(cfg: dict, ckpt, label_map) -> list[tuple[np.ndarray, np.ndarray]]:
    """(xyz, energy) per val scan from the model (batch size 1)."""
    model, _ = load_model(ckpt, None)
    energy = get_score("energy")
    out = []
    for batch in build_loader(cfg, "val", label_map):
        o = infer(model, batch)
        out.append((batch["points"][:, :3].numpy(), energy(o).float().numpy().astype(np.float64)))
    return out


def test_eval_protocol_real_equals_the_reference(synthetic_root, ckpt, tmp_path, capsys):
    root = tmp_path / "kitti"
    shutil.copytree(synthetic_root, root)
    labels = sorted((root / "sequences" / "08" / "labels").glob("*.label"))
    for k, path in enumerate(labels):  # some points become raw 99 other-object (OOD for REAL, ignored by segood)
        lab = np.fromfile(path, np.uint32)
        lab[k::40] = (lab[k::40] & 0xFFFF0000) | 99
        lab.tofile(path)
    args = [f"data.root={root}", *EVAL]
    assert main(["eval", str(CONFIG_DIR / "synthetic_baseline.yaml"), "--ckpt", str(ckpt), "--out", str(tmp_path / "e"),
                 "--protocol", "real", "--no-progress", *sum((["--set", a] for a in args), [])]) == 0
    printed = capsys.readouterr().out
    assert "energy           all    real" in printed and "as shipped" in printed
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())["protocols"]["real"]

    # the reference, independently: raw labels from the files, REAL's YAML map, iouEval, sklearn curves
    cfg = load_config(CONFIG_DIR / "synthetic_baseline.yaml", args)
    sk = load_label_map("semantickitti")
    lut = {int(a): int(b) for a, b in yaml.safe_load((LABEL_DIR / "semantickitti_real.yaml").read_text())
           ["learning_map"].items()}
    model, _ = load_model(ckpt, sk)
    gts, preds, scores = [], [], []
    for path, batch in zip(labels, build_loader(cfg, "val", sk)):
        raw = np.fromfile(path, np.int32) & 0xFFFF
        o = infer(model, batch)
        valid = raw != 0
        gts.append(np.array([lut[r] for r in raw[valid]]))
        preds.append(np.array(sk.train_learning_ids)[o["logits"].argmax(-1).numpy()][valid])
        scores.append(get_score("energy")(o).float().numpy().astype(np.float64)[valid])
    gt, pred, s = np.concatenate(gts), np.concatenate(preds), np.concatenate(scores)
    assert (gt == 5).sum() > 100
    assert m["miou"]["all"]["miou"] == pytest.approx(iou_eval_reference(pred, gt, [0]), abs=1e-9)
    assert m["miou"]["all"]["miou_id"] == pytest.approx(iou_eval_reference(pred, gt, [0, 5]), abs=1e-9)
    keep = gt != 0
    ref = real_reference(s[keep], gt[keep] == 5)
    got = m["ood"]["energy"]["all"]
    for k in ("auroc", "aupr", "fpr95"):
        assert abs(got[k] - ref[k]) <= got["bin_error_bound"][k] + 1e-12, k
        assert got[k] == pytest.approx(ref[k], abs=1e-6), (k, got[k], ref[k], got["bin_error_bound"][k])


def stu_frames(rng: np.random.Generator, n_anomalies: int) -> dict:
    """A frame in front of the car: ground and walls as inliers, a box of anomaly points at 8-12 m."""
    n = 800
    pts = np.c_[rng.uniform(1, 60, n), rng.uniform(-12, 12, n), rng.uniform(-1.7, 1.0, n), rng.random(n)]
    sem = np.ones(n, np.uint32)
    sem[rng.random(n) < 0.05] = 0
    box = np.c_[rng.uniform(8, 12, n_anomalies), rng.uniform(-1.5, 1.5, n_anomalies), rng.uniform(-1.5, 0.5, n_anomalies),
                rng.random(n_anomalies)]
    return {"points": np.r_[pts, box].astype(np.float32), "semantic": np.r_[sem, np.full(n_anomalies, 2)],
            "instance": np.r_[np.zeros(n, np.uint32), np.full(n_anomalies, 7, np.uint32)]}


def test_stu_fixture_check_data_eval_and_the_stu_rules(ckpt, tmp_path, capsys):
    rng = np.random.default_rng(5)
    root = write_stu_root(tmp_path / "stu", {"125": [stu_frames(rng, 60), stu_frames(rng, 3), stu_frames(rng, 40)]})
    args = [f"data.root={root}", "data.val_sequences=['125']", *EVAL]
    sets = sum((["--set", a] for a in args), [])
    assert main(["check-data", str(CONFIG_DIR / "stu_eval.yaml"), "--splits", "val", *sets]) == 0
    out = capsys.readouterr().out
    assert "3 scans" in out and "port_a_camera_0" in out and "anomaly" in out
    assert main(["eval", str(CONFIG_DIR / "stu_eval.yaml"), "--ckpt", str(ckpt), "--out", str(tmp_path / "e"),
                 "--no-progress", *sets]) == 0
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    got = m["protocols"]["stu"]["ood"]["energy"]["all"]

    cfg = load_config(CONFIG_DIR / "stu_eval.yaml", args)
    frames = []
    for k, (xyz, s) in enumerate(per_frame_energy(cfg, ckpt, load_label_map("stu"))):
        sem = np.fromfile(root / "125" / "labels" / f"{k:06d}.label", np.uint32) & 0xFFFF
        pts = np.fromfile(root / "125" / "velodyne" / f"{k:06d}.bin", np.float32).reshape(-1, 4)[:, :3]
        np.testing.assert_array_equal(xyz, pts)
        frames.append((pts, s, sem))
    ref = stu_reference(frames)
    for k in ("auroc", "aupr", "fpr95"):
        assert got[k] == pytest.approx(ref[k], abs=1e-6), (k, got[k], ref[k])
    in_range = [np.linalg.norm(p, axis=1) for p, _, _ in frames]
    n_ood = sum(int(((t == 2) & (d >= 2.5) & (d <= 50)).sum()) for (_, _, t), d in zip(frames, in_range) if
                ((t == 2) & (d >= 2.5) & (d <= 50)).sum() >= 5)
    assert got["num_ood"] == n_ood == 100  # frame 1 (3 anomalies) is skipped
    assert m["miou"]["all"]["miou"] != m["miou"]["all"]["miou"]  # NaN: STU has no segmentation classes
    assert m["ood"]["energy"]["all"]["num_ood"] == 103  # segood's own numbers: every labelled point
