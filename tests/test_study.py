"""The study path: per-epoch augmentation, test split, paired statistics, val-chosen scores, the
`segood study` command end to end (train, skip finished runs, report)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from segood.cli import main
from segood.config import CONFIG_DIR, load_config
from segood.synthetic import SyntheticConfig, write_dataset
from segood.engine import train as train_mod
from segood.report.study import choose_scores, summarize_study
from segood.metrics.stats import paired_difference, summarize

SMALL = [
    "model.lidar.channels=[8, 16, 16]", "model.lidar.out_channels=16", "model.image.out_channels=16",
    "model.image.width_scale=0.25", "model.fusion.hidden=32", "train.batch_size=1", "train.warmup_steps=1",
    "data.num_workers=0", "synthesis.max_points=256", "synthesis.n_swap=4", "eval.fit_points=400",
    "synthesis.feature_mixing_block={n_min: 2, n_max: 6}",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("study_data")
    write_dataset(root, SyntheticConfig(num_train=2, num_val=1, num_test=1, azimuth_columns=96, image_width=128,
                                        image_height=40, seed=4), progress=False)
    return root


def test_generator_writes_a_test_split(data_root):
    summary = json.loads((data_root / "synthetic.json").read_text())
    assert summary["counts"] == {"00": 2, "08": 1, "11": 1}
    assert summary["splits"]["test"] == ["11"]
    assert len(list((data_root / "sequences" / "11" / "velodyne").glob("*.bin"))) == 1


@pytest.mark.parametrize("workers", [0, 1])
def test_every_epoch_draws_new_augmentation(data_root, tmp_path, monkeypatch, workers):
    """Two scans, batch 1: steps 0-1 are epoch 0, steps 2-3 epoch 1. The same scans must come back
    with another rotation/scale in epoch 1 (on the landed code they were byte-identical)."""
    seen: list[tuple[int, str]] = []

    def record(self, batches):
        for b in batches:
            seen.append((self.step, str(np.round(b["points"][:, :3].sum(0).numpy(), 4))))
        return {"total": 0.0}

    monkeypatch.setattr(train_mod.Trainer, "_optimizer_step", record)
    cfg = load_config(CONFIG_DIR / "synthetic_baseline.yaml",
                      SMALL + [f"data.root={data_root}", "train.steps=4", f"data.num_workers={workers}",
                               "train.ckpt_every=0"])
    train_mod.train(cfg, tmp_path / "run", progress=False)
    epoch0 = {s for step, s in seen if step < 2}
    epoch1 = {s for step, s in seen if step >= 2}
    assert len(epoch0) == 2 and len(epoch1) == 2
    assert not epoch0 & epoch1, "epoch 1 replayed epoch 0's augmentation"


def test_resume_mid_run_sees_the_same_epoch_augmentation(data_root, tmp_path, monkeypatch):
    """Stopping after epoch 0 and resuming gives epoch 1 the same samples as an uninterrupted run."""
    def run(out, steps, resume=False):
        seen = []

        def record(self, batches):
            seen.extend(float(b["points"][:, :3].sum()) for b in batches)
            return {"total": 0.0}

        monkeypatch.setattr(train_mod.Trainer, "_optimizer_step", record)
        cfg = load_config(CONFIG_DIR / "synthetic_baseline.yaml",
                          SMALL + [f"data.root={data_root}", f"train.steps={steps}", "train.ckpt_every=1"])
        train_mod.train(cfg, out, resume=resume, progress=False)
        return seen

    full = run(tmp_path / "full", 4)
    run(tmp_path / "part", 2)
    rest = run(tmp_path / "part", 4, resume=True)
    assert rest == pytest.approx(full[2:])


def test_paired_difference_interval_and_wins():
    a, b = [90.0, 91.0, 89.0, 92.0, 90.0], [85.0, 86.5, 85.0, 86.0, 86.0]
    d = paired_difference(a, b)
    diffs = np.subtract(a, b)
    half = 2.7764451051977987 * diffs.std(ddof=1) / math.sqrt(5)  # t_{0.975, 4}
    assert d["mean"] == pytest.approx(diffs.mean())
    assert (d["lo"], d["hi"]) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    assert d["wins"] == 5 and d["n"] == 5
    assert paired_difference([40.0, 50.0], [45.0, 49.0], higher_is_better=False)["wins"] == 1
    assert math.isnan(paired_difference([1.0], [0.0])["lo"])
    with pytest.raises(ValueError, match="matched seeds"):
        paired_difference([1.0, 2.0], [1.0])
    assert summarize([1.0, 3.0])["std"] == pytest.approx(math.sqrt(2))


def _metrics(auroc: dict[str, float], miou: float = 0.5) -> dict:
    return {"ood": {s: {p: {"auroc": v, "aupr": v / 2, "fpr95": 1 - v} for p in ("fov", "all")}
                    for s, v in auroc.items()},
            "miou": {p: {"miou": miou} for p in ("fov", "all")}}


def test_anomaly_head_stays_the_headline_unless_beaten_on_both_counts():
    head_wins_auroc = {"val": _metrics({"anomaly_head": 0.9, "energy": 0.8}), "test": _metrics({"anomaly_head": 0.9, "energy": 0.8})}
    head_wins_auroc["val"]["ood"]["energy"]["fov"]["fpr95"] = 0.01  # energy: lower FPR95 but not higher AUROC
    for m in head_wins_auroc.values():
        m["synthesis"] = "feature_mixing"
    name, why = choose_scores({"fm": {0: head_wins_auroc}})["fm"]
    assert name == "anomaly_head" and "anomaly head" in why
    no_synthesis = {k: {**v, "synthesis": "none"} for k, v in head_wins_auroc.items()}
    assert choose_scores({"base": {0: no_synthesis}})["base"][0] == "energy"  # its head never saw a positive


def test_scores_are_chosen_on_val_and_reported_on_test():
    # energy is best on val, head best on test: the report must show energy's test numbers
    run = {"val": _metrics({"anomaly_head": 0.6, "energy": 0.8}), "test": _metrics({"anomaly_head": 0.9, "energy": 0.7})}
    ref = {"val": _metrics({"anomaly_head": 0.5, "energy": 0.6}), "test": _metrics({"anomaly_head": 0.5, "energy": 0.6})}
    results = {"ref": {0: ref, 1: ref}, "fm": {0: run, 1: run}}
    assert {arm: name for arm, (name, _) in choose_scores(results).items()} == {"ref": "energy", "fm": "energy"}
    summary = summarize_study(results, "ref")
    assert summary["rows"]["fm"]["summary"]["fov"]["auroc"]["mean"] == pytest.approx(70.0)
    assert summary["diffs"]["fm"]["fov"]["auroc"]["mean"] == pytest.approx(10.0)
    assert summary["diffs"]["fm"]["fov"]["fpr95"]["wins"] == 2


def test_block_feature_mixing_swaps_one_contiguous_block_per_call():
    from segood.ood.synthesis import BlockFeatureMixing

    p, d = 50, 12
    fi, fl = torch.randn(p, d), torch.randn(p, d) + 10.0
    batch = {"visible": torch.ones(p, dtype=torch.bool), "target": torch.zeros(p, dtype=torch.long)}
    synth = BlockFeatureMixing(2, 5, seed=1)
    index, mi, ml = synth(fi, fl, batch, step=3)
    di, dl = synth.last_dims
    n = len(di)
    assert 2 <= n <= 5 and len(dl) == n
    assert torch.equal(di, torch.arange(int(di[0]), int(di[0]) + n))
    assert torch.equal(mi[:, di], fl[index][:, dl]) and torch.equal(ml[:, dl], fi[index][:, di])
    keep = torch.ones(d, dtype=torch.bool)
    keep[di] = False
    assert torch.equal(mi[:, keep], fi[index][:, keep])
    again = BlockFeatureMixing(2, 5, seed=1)
    again(fi, fl, batch, step=3)
    assert all(torch.equal(x, y) for x, y in zip(again.last_dims, synth.last_dims))
    with pytest.raises(ValueError, match="n_min"):
        BlockFeatureMixing(4, 2)


def test_modality_norm_normalises_each_branch_before_fusion():
    from segood.models import build_model

    cfg = load_config(CONFIG_DIR / "synthetic_feature_mixing.yaml",
                      SMALL + ["model.fusion.modality_norm=layernorm"])
    model = build_model(cfg["model"])
    x = torch.randn(7, 16) * 5 + 3
    y = model.norm_lidar(x)
    assert torch.allclose(y.mean(1), torch.zeros(7), atol=1e-5)
    assert torch.allclose(y.var(1, unbiased=False), torch.ones(7), atol=1e-3)
    std = build_model(load_config(CONFIG_DIR / "synthetic_feature_mixing.yaml",
                                  SMALL + ["model.fusion.modality_norm=standardize"])["model"])
    for block in (std.lidar.out, std.image.decoder.smooth):
        assert not block[1].affine and isinstance(block[2], torch.nn.Identity)  # signed, per-dim standardized
    std.train()
    feats = std.lidar.out(torch.rand(300, std.lidar.out[0].in_features) * 4)
    assert torch.allclose(feats.mean(0), torch.zeros(feats.shape[1]), atol=1e-4)
    assert (feats < 0).any()
    with pytest.raises(ValueError, match="modality_norm"):
        build_model(load_config(CONFIG_DIR / "synthetic_feature_mixing.yaml", ["model.fusion.modality_norm=bn"])["model"])


def test_study_command_trains_skips_and_reports(data_root, tmp_path, capsys):
    out = tmp_path / "study"
    args = ["study", "ref=synthetic_baseline.yaml", "fm=synthetic_feature_mixing.yaml", "--seeds", "0", "1",
            "--out", str(out), "--data", str(data_root), "--steps", "2", "--jobs", "1", "--no-progress"]
    args += [x for s in SMALL for x in ("--set", s)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["rows"]) == {"ref", "fm"}
    assert summary["rows"]["fm"]["seeds"] == [0, 1]
    assert (out / "study.png").stat().st_size > 1000
    md = (out / "summary.md").read_text()
    assert "chosen on val" in md and "| fm |" in md
    for arm in ("ref", "fm"):
        for seed in (0, 1):
            m = json.loads((out / "runs" / arm / f"seed{seed}" / "eval_test" / "metrics.json").read_text())
            assert m["split"]["name"] == "test" and m["split"]["sequences"] == ["11"]
    mtime = (out / "runs" / "fm" / "seed1" / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # everything finished: nothing retrained
    assert (out / "runs" / "fm" / "seed1" / "checkpoint.pt").stat().st_mtime_ns == mtime
