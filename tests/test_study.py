"""The study path: per-epoch augmentation, test split, paired statistics, val-chosen scores, the
`segood study` command end to end (train, skip finished runs, report)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from builders import SMALL, set_args

from segood.cli import main
from segood.config import CONFIG_DIR, ConfigError, load_config
from segood.engine import train as train_mod
from segood.report.study import choose_scores, study_markdown, summarize_study
from segood.metrics.stats import paired_difference, summarize

STUDY = [*SMALL, "eval.fit_points=400", "synthesis.feature_mixing_block={n_min: 2, n_max: 6}"]


@pytest.fixture(scope="module")
def data_root(study_root):
    return study_root


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
                      STUDY + [f"data.root={data_root}", "train.steps=4", f"data.num_workers={workers}",
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
                          STUDY + [f"data.root={data_root}", f"train.steps={steps}", "train.ckpt_every=1"])
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


def test_each_configuration_is_paired_with_the_reference_on_the_seeds_both_ran():
    run = {"val": _metrics({"energy": 0.8}), "test": _metrics({"energy": 0.7})}
    ref = {"val": _metrics({"energy": 0.6}), "test": _metrics({"energy": 0.6})}
    results = {"ref": {0: ref, 1: ref, 2: ref}, "fm": {0: run, 1: run, 2: run}, "one": {0: run}}
    diffs = summarize_study(results, "ref")["diffs"]
    assert diffs["fm"]["fov"]["auroc"]["n"] == 3 and diffs["one"]["fov"]["auroc"]["n"] == 1  # a 1-seed screen arm
    # does not cut the other configurations' pairs down to its seed


def test_per_kind_rows_use_the_headline_score_and_pair_by_seed():
    def with_kinds(m: dict, bus: float, tetra: float) -> dict:
        per = lambda v: {p: {"auroc": v, "fpr95": 1 - v} for p in ("fov", "all")}  # noqa: E731
        return {**m, "ood_kinds": {"energy": {"bus": per(bus), "tetra": per(tetra)}, "anomaly_head": {"bus": per(0.1)}},
                "ood_families": {"energy": {"near": per(bus)}}, "ood_kind_family": {"bus": "near", "tetra": "novel"}}

    ref = {"val": _metrics({"anomaly_head": 0.5, "energy": 0.6})}
    fm = {"val": _metrics({"anomaly_head": 0.5, "energy": 0.8})}
    results = {"ref": {s: {**ref, "test": with_kinds(_metrics({"energy": 0.6}), 0.6, 0.9)} for s in (0, 1)},
               "fm": {s: {**fm, "test": with_kinds(_metrics({"energy": 0.6}), 0.7 + 0.1 * s, 0.9)} for s in (0, 1)}}
    summary = summarize_study(results, "ref")
    kinds = summary["kinds"]["fm"]
    assert list(kinds) == ["bus", "tetra", "all near"] and kinds["bus"]["family"] == "near"
    assert kinds["bus"]["values"]["fov"]["auroc"] == pytest.approx([70.0, 80.0])
    assert kinds["bus"]["diff"]["fov"]["auroc"]["mean"] == pytest.approx(15.0)
    assert kinds["bus"]["diff"]["all"]["fpr95"]["wins"] == 2 and "diff" not in summary["kinds"]["ref"]["bus"]
    md = study_markdown(summary, {})
    assert "| fm (energy) | bus | near | 75.0 ± 7.1 |" in md and "| ref (energy) | all near | near | 60.0 ± 0.0 |" in md
    assert summarize_study({"ref": {0: {**ref, "test": _metrics({"energy": 0.6})}}}, "ref")["kinds"] == {}


def test_monitor_summary_takes_the_last_record_of_the_headline_score_and_flags_seeds():
    def rec(step, syn, real):
        return {"step": step, "scores": {"energy": {"synthetic": syn, "real_fov": real, "real_all": real},
                                         "anomaly_head": {"synthetic": 1.0, "real_fov": 0.1, "real_all": 0.1}}}

    val = _metrics({"anomaly_head": 0.5, "energy": 0.8})
    runs = {0: [rec(10, 0.995, 0.9), rec(20, 0.999, 0.8)], 1: [rec(10, 0.9, 0.9), rec(20, 0.95, 0.85)]}
    results = {"fm": {s: {"val": val, "test": {**_metrics({"energy": 0.6}), "monitor": {"records": r}}}
                      for s, r in runs.items()}}
    mon = summarize_study(results, "fm")["monitor"]["fm"]
    assert mon["score"] == "energy" and mon["flagged_seeds"] == [0]  # seed 0: saturated while the real AUROC fell
    assert mon["synthetic"]["mean"] == pytest.approx(97.45) and mon["real_fov"]["mean"] == pytest.approx(82.5)
    assert "| fm | energy | 97.5 ± 3.5 | 82.5 ± 3.5 | 82.5 ± 3.5 | 2 | **SHORTCUT** (0) |" in study_markdown(
        summarize_study(results, "fm"), {})
    # the run folder's monitor.jsonl (run facts) wins over the records a metrics.json carries
    results["fm"][1]["run"] = {"monitor": [rec(20, 0.5, 0.6)]}
    mon = summarize_study(results, "fm")["monitor"]["fm"]
    assert mon["synthetic"]["mean"] == pytest.approx((99.9 + 50.0) / 2) and mon["records"] == [2, 1]


def _run_facts(config: dict, seconds: float, monitor: list | None = None) -> dict:
    return {"seconds": seconds, "step": 400, "config": config, "monitor": monitor or []}


def _train_config(synthesis: str, outlier: str = "entropy", **loss) -> dict:
    return {"seed": 0, "data": {"root": "/x"}, "synthesis": {"method": synthesis},
            "loss": {"outlier": outlier, "anomaly": 1.0, "outlier_options": {"energy_margin": {"weight": 0.1}}, **loss},
            "train": {"steps": 400, "outlier_phase": 0}, "model": {"num_classes": 18},
            "eval": {"scores": ["energy"], "score_options": {}}, "_source": "cfg.yaml"}


def test_ablation_rows_differences_time_and_headline_provenance():
    from segood.report.study_ablation import headline_provenance

    base, fm = _train_config("none"), _train_config("feature_mixing", "energy_margin")
    val_fm = _metrics({"anomaly_head": 0.7, "energy": 0.9})
    val_fm["ood"]["energy"]["fov"]["fpr95"] = 0.05  # energy beats the head on both counts: the headline
    results = {"lf": {s: {"val": _metrics({"anomaly_head": 0.5, "energy": 0.8, "rba": 0.95}),  # rba: refused
                          "test": _metrics({"energy": 0.6, "rba": 0.1}),
                          "run": _run_facts({**base, "seed": s}, 100.0 + 20 * s)} for s in (0, 1)},
               "fm": {s: {"val": {**val_fm, "synthesis": "feature_mixing"}, "test": _metrics({"energy": 0.7}),
                          "run": _run_facts({**fm, "seed": s, "data": {"root": f"/y{s}"}}, 300.0)} for s in (0, 1)}}
    arms = {"fm": {"config": "configs/fm.yaml", "chain": ["fm.yaml", "base.yaml"], "command": "segood study fm=fm.yaml"}}
    summary = summarize_study(results, "lf", arms)
    ab = summary["ablation"]
    assert ab["fm"]["differences"] == {"loss.outlier": ["energy_margin", "entropy"],
                                       "synthesis.method": ["feature_mixing", "none"]}  # seed, data.root left out
    assert ab["lf"]["differences"] == {} and ab["lf"]["train_seconds"]["mean"] == pytest.approx(110.0)
    assert ab["fm"]["seeds"] == [0, 1] and ab["fm"]["command"] == "segood study fm=fm.yaml"
    assert ab["fm"]["score"] == "energy" and ab["fm"]["provenance"]["shaped"] is True
    assert "loss.outlier energy_margin (weight 0.1)" in ab["fm"]["provenance"]["text"]
    assert ab["lf"]["provenance"] == {"shaped": False,
                                      "text": "no: post-hoc logit score of a model trained without outliers"}
    assert ab["fm"]["headline"]["fov"]["auroc"]["mean"] == pytest.approx(70.0)
    md = study_markdown(summary, {})
    assert ("| fm | fm.yaml < base.yaml | loss.outlier: energy_margin; synthesis.method: feature_mixing | 0 1 | 5.0 ± 0.0 | "
            "energy | yes: logit score") in md
    assert "| lf | cfg.yaml | (reference) | 0 1 | 1.8 ± 0.2 | energy | no: post-hoc" in md
    assert "- fm: `segood study fm=fm.yaml`" in md
    assert "| fm | energy | yes | 2 |" in md and "| lf | energy | no | 2 |" in md  # headline table's column
    assert "No monitor records for lf, fm" in md and "No per-kind metrics" in md
    # rba on a model trained without outliers: refused by its why_not even where an older eval computed it
    assert "trained without outliers" in summary["skipped_scores"]["lf"]["rba"] and "fm" not in summary["skipped_scores"]
    assert set(summary["every_score"]["lf"]) == {"energy"} and "## Scores skipped\n\n- lf: rba (needs" in md
    assert headline_provenance("anomaly_head", fm)["text"].startswith("yes: anomaly head trained on the feature_mixing")
    assert headline_provenance("anomaly_head", {**fm, "loss": {**fm["loss"], "anomaly": 0.0}})["shaped"] is False
    assert headline_provenance("knn", fm)["shaped"] is False
    phase = {**fm, "train": {"outlier_phase": 100}}
    assert "outlier phase of 100 steps" in headline_provenance("energy", phase)["text"]
    assert headline_provenance("energy", None)["shaped"] is None


def test_study_folder_belongs_to_one_benchmark(tmp_path, monkeypatch):
    import argparse

    from segood.commands import study as study_cmd

    made = []
    monkeypatch.setattr("segood.synthetic.ensure_dataset", lambda root, cfg, progress=True: made.append(cfg))
    args = argparse.Namespace(data=None, out=str(tmp_path), scans=[2, 1, 1], benchmark="near", data_seed=0,
                              azimuth_columns=96, no_progress=True)
    assert study_cmd.ensure_benchmark(args) == tmp_path / "data" and made[-1].benchmark == "near"
    assert made[-1].num_train == 2 and made[-1].azimuth_columns == 96
    with pytest.raises(ConfigError, match="made for the benchmark.*near.*standard.*another --out"):
        study_cmd.ensure_benchmark(argparse.Namespace(**{**vars(args), "benchmark": "standard"}))


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
                      STUDY + ["model.fusion.modality_norm=layernorm"])
    model = build_model(cfg["model"])
    x = torch.randn(7, 16) * 5 + 3
    y = model.norm_lidar(x)
    assert torch.allclose(y.mean(1), torch.zeros(7), atol=1e-5)
    assert torch.allclose(y.var(1, unbiased=False), torch.ones(7), atol=1e-3)
    std = build_model(load_config(CONFIG_DIR / "synthetic_feature_mixing.yaml",
                                  STUDY + ["model.fusion.modality_norm=standardize"])["model"])
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
    args += set_args(STUDY)
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["rows"]) == {"ref", "fm"}
    assert summary["rows"]["fm"]["seeds"] == [0, 1]
    assert (out / "study.png").stat().st_size > 1000
    md = (out / "summary.md").read_text()
    assert "chosen on val" in md and "| fm |" in md
    assert "## Per kind of OOD object" in md and summary["kinds"]["fm"]  # the synthetic data has kind files
    assert "## Shortcut monitor" in md and set(summary["monitor"]) == {"ref", "fm"}  # every run's last record
    assert summary["monitor"]["fm"]["records"] == [1, 1] and summary["monitor"]["fm"]["synthetic"]["n"] == 2
    ablation = summary["ablation"]
    assert ablation["fm"]["chain"] == ["synthetic_feature_mixing.yaml", "synthetic_baseline.yaml", "base.yaml"]
    assert ablation["fm"]["differences"]["synthesis.method"] == ["feature_mixing", "none"]
    assert "seed" not in ablation["fm"]["differences"] and ablation["ref"]["differences"] == {}
    assert ablation["fm"]["train_seconds"]["n"] == 2 and ablation["fm"]["train_seconds"]["mean"] > 0
    assert ablation["fm"]["command"].startswith(f"segood study fm=synthetic_feature_mixing.yaml --seeds 0 1 --out {out} "
                                                f"--data {data_root} --steps 2 --set ")
    assert ablation["ref"]["provenance"]["shaped"] is False and ablation["fm"]["provenance"]["shaped"] is not None
    assert "## Ablation" in md and "| fm | synthetic_feature_mixing.yaml < synthetic_baseline.yaml < base.yaml |" in md
    for arm in ("ref", "fm"):
        for seed in (0, 1):
            m = json.loads((out / "runs" / arm / f"seed{seed}" / "eval_test" / "metrics.json").read_text())
            assert m["split"]["name"] == "test" and m["split"]["sequences"] == ["11"]
    mtime = (out / "runs" / "fm" / "seed1" / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # everything finished: nothing retrained
    assert (out / "runs" / "fm" / "seed1" / "checkpoint.pt").stat().st_mtime_ns == mtime
