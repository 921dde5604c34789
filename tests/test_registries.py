"""A family member is added in one place: a new score, a new reader and a new synthesizer are each
registered by one dict entry here and then used through the config, as a user's would be."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segood.config import CONFIG_DIR, ConfigError, load_config
from segood.data.labels import load_label_map
from segood.data.scan import Scan


def test_a_new_score_is_one_registry_line_and_owns_its_config_section(monkeypatch) -> None:
    from segood.engine.fit import load_scorers, score_params
    from segood.ood.scores import SCORES, Score

    def top2_margin(out, margin: float = 0.0):
        """Minus the gap between the two largest softmax probabilities (small gap = anomalous)."""
        p = torch.softmax(out["logits"], 1).topk(2, 1).values
        return margin - (p[:, 0] - p[:, 1])

    monkeypatch.setitem(SCORES, "top2_margin", Score("top2_margin", top2_margin))
    cfg = load_config(CONFIG_DIR / "synthetic_baseline.yaml",
                      ["eval.scores=[top2_margin, energy]", "eval.score_options.top2_margin.margin=0.5"])
    scorers = load_scorers("never-read.pt", cfg["eval"]["scores"], cfg["eval"])  # logit scores need no checkpoint
    logits = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    s = scorers["top2_margin"]({"logits": logits})
    assert s[1] > s[0] and s[1].item() == pytest.approx(0.5)  # a tie: gap 0, score = margin
    assert score_params("top2_margin", cfg["eval"]) == {"margin": 0.5}
    with pytest.raises(ConfigError, match="did you mean 'margin'"):
        load_scorers("never-read.pt", ["top2_margin"], {**cfg["eval"], "score_options": {
            "top2_margin": {"margn": 1.0}}})


class TinyReader:
    """A reader of in-memory LiDAR-only scans, following segood.data.readers.Reader."""

    def __init__(self, root, sequences, label_map, camera=None, with_labels=True, points: int = 300) -> None:
        self.label_map, self.with_labels, self.points = label_map, with_labels, int(points)
        self.frames = [(str(s), f"{i:06d}") for s in sequences for i in range(2)]

    def __len__(self) -> int:
        return len(self.frames)

    def frame_id(self, i: int) -> str:
        return self.frames[i][1]

    def _raw(self, i: int) -> np.ndarray:
        return np.array([40, 48, 50, 20], np.uint32)[np.arange(self.points) % 4]  # road, sidewalk, building, OOD

    def __getitem__(self, i: int) -> Scan:
        rng = np.random.default_rng(i)
        pts = np.concatenate([rng.uniform(-20, 20, (self.points, 3)), rng.uniform(0, 1, (self.points, 1))], 1)
        scan = Scan(points=pts.astype(np.float32), source=f"tiny:{self.frames[i]}")
        if self.with_labels:
            scan.raw_labels = self._raw(i)
            scan.learning_labels = self.label_map.to_learning(scan.raw_labels)
        return scan

    def check_scan(self, i: int, decode_images: bool = True):
        return [], self._raw(i), {}


def test_a_new_reader_is_one_registry_line_and_serves_loaders_check_data_and_viz(monkeypatch) -> None:
    from segood.commands.check_data import make_reader_factory
    from segood.data.check import check_dataset
    from segood.data.readers import READERS, Reader
    from segood.engine.builders import build_loader, build_reader
    from segood.viz.sources import DatasetFrames

    monkeypatch.setitem(READERS, "tiny", TinyReader)
    cfg = load_config(CONFIG_DIR / "synthetic_baseline.yaml",
                      ["data.dataset=tiny", "data.camera=null", "data.val_sequences=[a]",
                       "data.reader_options={points: 200}", "data.num_workers=0"])
    lm = load_label_map(cfg["data"]["label_map"])
    reader = build_reader(cfg, "val", lm)
    assert isinstance(reader, Reader) and len(reader) == 2 and reader[0].num_points == 200
    batch = next(iter(build_loader(cfg, "val", lm)))
    assert batch["points"].shape == (400, 4) and (batch["ood_target"] == 1).sum() == 100
    report = check_dataset(make_reader_factory(cfg, lm), {"val": ["a", "b"]}, lm)
    assert report.ok and report.splits[0].scans == 4 and report.splits[0].class_points.sum() == 800
    frames = DatasetFrames(cfg, "a", lm)
    assert frames.index_of("1") == 1 and frames[1].raw_labels is not None


def test_a_new_synthesizer_is_one_registry_line_and_is_picked_by_synthesis_method(monkeypatch) -> None:
    from segood.engine.builders import build_synthesizer
    from segood.ood.synthesis import SYNTHESIZERS
    from segood.ood.feature_mixing.anchors import anchor_points

    def build_copy(cfg_synthesis, ctx):
        """Outliers = unchanged copies of the anchors (a do-nothing synthesizer)."""
        def synth(feat_image, feat_lidar, batch, step):
            index = anchor_points(batch)[: ctx.max_points]
            return index, feat_image[index].clone(), feat_lidar[index].clone()
        return synth

    monkeypatch.setitem(SYNTHESIZERS, "copy", build_copy)
    cfg = load_config(CONFIG_DIR / "synthetic_baseline.yaml", ["synthesis.method=copy", "synthesis.max_points=3"])
    synth = build_synthesizer(cfg)
    fi, fl = torch.randn(10, 64), torch.randn(10, 64)
    batch = {"visible": torch.ones(10, dtype=torch.bool), "target": torch.tensor([0, -1] * 5)}
    index, oi, ol = synth(fi, fl, batch, 0)
    assert index.tolist() == [0, 2, 4] and torch.equal(oi, fi[index]) and torch.equal(ol, fl[index])


def test_feature_mixing_builds_the_kernel_class() -> None:
    from segood.ood.feature_mixing import KernelFeatureMixing
    from segood.ood.synthesis import build_synthesizer

    assert type(build_synthesizer("feature_mixing", {"n_swap": 4}, 3, 8, 8, 0)) is KernelFeatureMixing
