"""Issue 19's done-when: a synthesizer WITH an option and a score that reads ``logits_image`` are each
this one module and one registry line (monkeypatched), and both run through config loading,
`segood config --show`, a training run, `segood eval` and `segood bench synthesis`, with no other
file touched (base.yaml does not name them)."""
from __future__ import annotations

import json

import pytest
import torch

from segood.cli import main
from segood.config import BASE_CONFIG, CONFIG_DIR, ConfigError
from segood.ood.feature_mixing.anchors import anchor_points
from segood.options import Opt

CALLS: list[dict] = []  # what the new members saw, for the assertions


class ScaledCopy:
    """Outliers = the anchors' features times ``scale`` (both modalities)."""

    OPTIONS = {"scale": Opt(0.5, float, "multiplies the anchors' features", min=0.0)}

    def __init__(self, scale: float, max_points: int | None) -> None:
        self.scale, self.max_points = scale, max_points

    def __call__(self, feat_image, feat_lidar, batch, step):
        index = anchor_points(batch)[: self.max_points].to(feat_image.device)
        CALLS.append({"synth": self.scale, "outliers": int(index.numel())})
        return index, feat_image[index] * self.scale, feat_lidar[index] * self.scale


def build_scaled_copy(cfg_synthesis, ctx) -> ScaledCopy:
    """``scaled_copy``: copies of the anchors, scaled."""
    return ScaledCopy(ctx.options["scale"], ctx.max_points)


def image_maxlogit(out):
    """Negative maximum logit of the image head alone."""
    CALLS.append({"score": sorted(out)})
    return -out["logits_image"].max(dim=1).values


@pytest.fixture
def registered(monkeypatch):
    from segood.ood.scores import SCORES, Score
    from segood.ood.synthesis import SYNTHESIZERS, Synthesizer

    monkeypatch.setitem(SYNTHESIZERS, "scaled_copy", Synthesizer(build_scaled_copy, ScaledCopy.OPTIONS))
    monkeypatch.setitem(SCORES, "image_maxlogit", Score("image_maxlogit", image_maxlogit, reads=("logits_image",)))
    CALLS.clear()


SMALL = ["model.lidar.channels=[8, 16, 16]", "model.lidar.out_channels=16", "model.image.out_channels=16",
         "model.image.width_scale=0.25", "model.fusion.hidden=16", "train.batch_size=1", "train.warmup_steps=1",
         "data.num_workers=0", "synthesis.max_points=64", "eval.hist_bins=256"]


def _sets(*items: str) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def test_the_new_members_options_are_checked_and_listed_without_editing_base_yaml(registered, capsys):
    from segood.engine.families import load_config

    cfg = load_config(CONFIG_DIR / "synthetic_baseline.yaml",
                      ["synthesis.method=scaled_copy", "synthesis.scaled_copy.scale=1", "eval.scores=[image_maxlogit]"])
    assert cfg["synthesis"]["scaled_copy"] == {"scale": 1}
    with pytest.raises(ConfigError, match=r"^synthesis.scaled_copy.scale: -1 in --set: expected a number >= 0.0$"):
        load_config(CONFIG_DIR / "synthetic_baseline.yaml", ["synthesis.scaled_copy.scale=-1"])
    with pytest.raises(ConfigError, match=r"synthesis.scaled_copy.sclae in --set: unknown option; did you mean "
                                          r"'scale'\? \(known: scale\)"):
        load_config(CONFIG_DIR / "synthetic_baseline.yaml", ["synthesis.scaled_copy.sclae=1"])
    with pytest.raises(ConfigError, match=r"synthesis.method: 'scaled_copi' in --set: expected a synthesizer: one of "
                                          r".*scaled_copy"):
        load_config(CONFIG_DIR / "synthetic_baseline.yaml", ["synthesis.method=scaled_copi"])
    with pytest.raises(ConfigError, match=r"eval.scores: 'image_maxlogits' in --set: expected a score"):
        load_config(CONFIG_DIR / "synthetic_baseline.yaml", ["eval.scores=[image_maxlogits]"])
    assert main(["config", "--show", "synthesis.scaled_copy"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split()[:2] == ["synthesis.scaled_copy.scale", "0.5"] and "multiplies the anchors' features" in line
    assert "scaled_copy" not in BASE_CONFIG.read_text() and "image_maxlogit" not in BASE_CONFIG.read_text()


def test_the_new_members_train_evaluate_and_are_benchmarked(registered, synthetic_root, tmp_path, capsys):
    run, cfg = tmp_path / "run", str(CONFIG_DIR / "synthetic_feature_mixing.yaml")
    common = _sets(*SMALL, f"data.root={synthetic_root}")
    assert main(["train", cfg, "--out", str(run), "--no-progress", *common, *_sets(
        "train.steps=2", "synthesis.method=scaled_copy", "synthesis.scaled_copy.scale=0.25")]) == 0, \
        capsys.readouterr().err
    synth = [c for c in CALLS if "synth" in c]
    assert len(synth) == 2 and all(c["synth"] == 0.25 and 0 < c["outliers"] <= 64 for c in synth)

    CALLS.clear()
    assert main(["eval", cfg, "--ckpt", str(run / "checkpoint.pt"), "--out", str(tmp_path / "eval"), "--no-progress",
                 *common, *_sets("eval.scores=[image_maxlogit, maxlogit]")]) == 0, capsys.readouterr().err
    assert {tuple(c["score"]) for c in CALLS} == {("logits_image",)}  # handed exactly what it declared
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    image, fused = metrics["ood"]["image_maxlogit"]["all"], metrics["ood"]["maxlogit"]["all"]
    assert 0.0 < image["auroc"] < 1.0 and image["auroc"] != fused["auroc"]

    CALLS.clear()
    out = tmp_path / "bench"
    assert main(["bench", "synthesis", "--quick", "--no-train-step", "--threads", "1", "--out", str(out),
                 "--methods", "clone", "npmix_cdist", "npmix_faithful", "scaled_copy"]) == 0, capsys.readouterr().err
    rows = {r["method"]: r for r in json.loads((out / "bench_synthesis.json").read_text())["results"]}
    assert rows["scaled_copy"]["measured"] and rows["scaled_copy"]["outliers"] > 0
    assert {c["synth"] for c in CALLS if "synth" in c} == {0.5}  # the declared default, from the registry entry


def test_a_score_reading_logits_image_sees_the_image_head(registered):
    from segood.engine.fit import load_scorers

    logits_image = torch.tensor([[3.0, 0.0], [0.5, 0.4]])
    s = load_scorers("never-read.pt", ["image_maxlogit"], {"score_options": {}})["image_maxlogit"]
    assert torch.equal(s({"logits_image": logits_image, "logits": -logits_image}), torch.tensor([-3.0, -0.5]))


def test_every_family_checks_its_members_options_at_load():
    from segood.engine.families import load_config

    base = CONFIG_DIR / "synthetic_baseline.yaml"
    cases = {
        ("data.dataset=nuscenes", "data.reader_options.visibility=pmf"):
            "data.reader_options.visibility: 'pmf' in --set: expected one of 'devkit', 'segood'",
        ("data.dataset=nuscenes", "data.reader_options={versoin: v1.0-mini}"):
            "data.reader_options.versoin in --set: unknown option; did you mean 'version'? (known: intensity_scale, "
            "version, visibility)",
        ("eval.score_options.knn.k=0",): "eval.score_options.knn.k: 0 in --set: expected an integer >= 1",
        ("synthesis.npmix.faithful=maybe",): "synthesis.npmix.faithful: 'maybe' in --set: expected a boolean",
        ("synthesis.vos.select=0",): "synthesis.vos.select: 0 in --set: expected an integer >= 1 or null",
    }
    for sets, message in cases.items():
        with pytest.raises(ConfigError) as e:
            load_config(base, list(sets))
        assert str(e.value) == message
    cfg = load_config(base, ["data.dataset=nuscenes", "data.reader_options.visibility=segood"])
    assert cfg["data"]["reader_options"] == {"visibility": "segood"}


def test_operating_score_must_name_a_known_score(tmp_path):
    from segood.engine.families import load_config
    from segood.ood.scores import SCORES

    base = CONFIG_DIR / "synthetic_baseline.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(base, ["eval.operating_score=enrgy"])
    assert str(e.value) == (f"eval.operating_score: 'enrgy' in --set is not a known score; did you mean 'energy'? "
                            f"(expected null or one of {sorted(SCORES)})")
    file = tmp_path / "op.yaml"
    file.write_text(f"inherit: {base}\neval:\n  operating_score: head\n")
    with pytest.raises(ConfigError, match=f"eval.operating_score: 'head' in {file} is not a known score"):
        load_config(file)
    assert load_config(base, ["eval.operating_score=energy"])["eval"]["operating_score"] == "energy"
    assert load_config(base)["eval"]["operating_score"] is None
