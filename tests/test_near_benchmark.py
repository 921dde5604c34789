"""The near-OOD benchmark (held-out buses / trams) and the per-scan OOD kind files, on tiny scans.

Also pins today's standard benchmark: the scans at fixed seeds must not change (the study's numbers
and the README tables are comparable only while they do not)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segood.metrics.ood import auroc
from segood.synthetic import OOD_RAW_ID, SyntheticConfig, ensure_dataset, generate_scene, scan_rng, write_dataset
from segood.synthetic.config import NEAR_KINDS, OOD_KINDS
from segood.synthetic.builder import CAR_COLORS, GLASS, POLE_COLORS, RUBBER

# The standard benchmark's scans at this config, digested before the near benchmark and the kind files
# existed (labels exactly, points rounded to 1 mm, decoded image pixels; robust to zlib versions).
PINNED = dict(num_train=2, num_val=1, num_test=1, azimuth_columns=256, image_width=160, image_height=48, seed=11)
PINNED_DIGESTS = {("00", 0): "2d60dc0626709755", ("00", 1): "8ec85457dc662e0f", ("08", 0): "3df3f09d2818a0df",
                  ("11", 0): "07bbd6e89ec957ab"}
NEAR = dict(num_train=3, num_val=3, num_test=1, azimuth_columns=384, image_width=160, image_height=48, seed=2,
            benchmark="near")


def read(root: Path, seq: str, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    d, name = root / "sequences" / seq, f"{i:06d}"
    points = np.fromfile(d / "velodyne" / f"{name}.bin", np.float32).reshape(-1, 4)
    labels = np.fromfile(d / "labels" / f"{name}.label", np.uint32)
    image = np.asarray(Image.open(d / "image_2" / f"{name}.png"))
    kinds = json.loads((d / "ood_kinds" / f"{name}.json").read_text())["instances"]
    return points, labels, image, kinds


def digest(points: np.ndarray, labels: np.ndarray, image: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (labels, np.round(points.astype(np.float64) * 1000).astype(np.int64), image):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def standard(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("standard")
    write_dataset(root, SyntheticConfig(**PINNED), progress=False)
    return root


@pytest.fixture(scope="module")
def near(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("near")
    write_dataset(root, SyntheticConfig(**NEAR), progress=False)
    return root


def test_standard_benchmark_scans_unchanged(standard):
    for (seq, i), want in PINNED_DIGESTS.items():
        assert digest(*read(standard, seq, i)[:3]) == want, f"standard benchmark scan {seq}/{i} changed"


def test_kind_files_name_every_ood_instance(standard):
    """Every OOD point's instance has a kind; kinds are the standard ones; a scene's objects are the file."""
    seen = set()
    for seq, i in PINNED_DIGESTS:
        _, labels, _, kinds = read(standard, seq, i)
        ood_inst = set(np.unique(labels[(labels & 0xFFFF) == OOD_RAW_ID] >> 16).tolist())
        assert ood_inst <= {int(k) for k in kinds}
        assert set(kinds.values()) <= set(OOD_KINDS)
        scene = generate_scene(scan_rng(PINNED["seed"], seq, i), SyntheticConfig(**PINNED))
        assert kinds == {str(o["instance"]): o["kind"] for o in scene.objects if o["label"] == OOD_RAW_ID}
        seen |= ood_inst
    assert seen


def test_near_labels_held_out_in_train_ood_in_val_test(near):
    for seq, n in (("00", 3), ("08", 3), ("11", 1)):
        ood_points = held_out = 0
        for i in range(n):
            _, labels, _, kinds = read(near, seq, i)
            raw, inst = labels & 0xFFFF, labels >> 16
            assert kinds and set(kinds.values()) <= set(NEAR_KINDS)
            on_vehicle = np.isin(inst, [int(k) for k in kinds])
            ood_points += int((raw == OOD_RAW_ID).sum())
            if seq == "00":
                assert not (raw == OOD_RAW_ID).any()  # nothing labelled OOD in training
                assert (raw[on_vehicle] == 0).all()  # the held-out vehicles are unlabelled (ignored)
                held_out += int(on_vehicle.sum())
            else:
                assert (raw[on_vehicle] == OOD_RAW_ID).all() and (on_vehicle == (raw == OOD_RAW_ID)).all()
        assert (held_out if seq == "00" else ood_points) > 30, seq
    summary = json.loads((near / "synthetic.json").read_text())
    assert summary["benchmark"] == "near" and summary["ood_kind_family"]["bus"] == "near"
    assert set(summary["ood_objects"]) <= set(NEAR_KINDS)


def test_near_vehicles_use_id_materials_and_intensities(near):
    """Palette colours and reflectivities of ID vehicles; rendered intensities inside the ID vehicles' range,
    and intensity alone tells a bus from a car or truck barely better than chance."""
    cfg = SyntheticConfig(**NEAR)
    palette = np.vstack([CAR_COLORS, GLASS, RUBBER, POLE_COLORS])
    for i in range(3):
        scene = generate_scene(scan_rng(cfg.seed, "08", i), cfg)
        mats = {p.tag.material for p in scene.prims if p.tag.label == OOD_RAW_ID}
        for m in (scene.materials[k] for k in mats):
            assert 0.06 <= m.intensity <= 0.55
            # the generator's colour jitter (+-12 %, sigma 6 %) and hue shift keep it near a palette entry
            assert np.abs(palette - m.color).max(axis=1).min() < 0.25, m.color
    ood, vehicle = [], []
    for i in range(3):
        points, labels, *_ = read(near, "08", i)
        raw = labels & 0xFFFF
        ood.append(points[raw == OOD_RAW_ID, 3])
        vehicle.append(points[np.isin(raw, [10, 18]), 3])
    ood, vehicle = np.concatenate(ood), np.concatenate(vehicle)
    lo, hi = np.quantile(vehicle, [0.01, 0.99])
    assert ((ood < lo - 0.02) | (ood > hi + 0.02)).mean() < 0.02
    hist = np.histogram(vehicle, bins=50, range=(0.0, 1.0))[0] / len(vehicle)
    rarity = -hist[np.minimum((np.r_[ood, vehicle] * 50).astype(int), 49)]
    assert auroc(rarity, np.r_[np.ones(len(ood)), np.zeros(len(vehicle))]) < 0.7


def test_ensure_dataset_backfills_kind_files_of_an_older_output(tmp_path):
    """An output written before the kind files existed (no files, no new config keys) is reused, not regenerated."""
    cfg = SyntheticConfig(**{**PINNED, "num_train": 1, "num_val": 1, "num_test": 0, "azimuth_columns": 64})
    write_dataset(tmp_path, cfg, progress=False)
    want = {p: p.read_bytes() for p in tmp_path.rglob("ood_kinds/*.json")}
    for p in want:
        p.unlink()
    summary = json.loads((tmp_path / "synthetic.json").read_text())
    for key in ("benchmark", "near_min", "near_max"):
        del summary["config"][key]
    (tmp_path / "synthetic.json").write_text(json.dumps(summary))
    bin_mtime = (tmp_path / "sequences/00/velodyne/000000.bin").stat().st_mtime_ns
    assert ensure_dataset(tmp_path, cfg, progress=False) is False
    assert {p: p.read_bytes() for p in tmp_path.rglob("ood_kinds/*.json")} == want
    assert (tmp_path / "sequences/00/velodyne/000000.bin").stat().st_mtime_ns == bin_mtime
    assert ensure_dataset(tmp_path, SyntheticConfig(**{**vars(cfg), "benchmark": "near"}), progress=False) is True


def test_unknown_benchmark_is_refused():
    with pytest.raises(ValueError, match="benchmark 'far'.*standard.*near"):
        SyntheticConfig(benchmark="far")
