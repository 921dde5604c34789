"""Synthetic street scenes in the SemanticKITTI layout: files, labels, camera/LiDAR agreement, determinism."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from segood.synthetic import (
    CameraRays,
    LidarRays,
    OOD_KINDS_MIXED,
    OOD_KINDS_NOVEL,
    OOD_RAW_ID,
    SyntheticConfig,
    calibration,
    cast,
    generate_scene,
    render_scan,
    scan_rng,
    write_dataset,
)

SMALL = dict(num_train=2, num_val=1, azimuth_columns=256, image_width=240, image_height=80, seed=3)
TINY = dict(num_train=2, num_val=1, azimuth_columns=64, image_width=48, image_height=16, seed=5)
EXPECTED_RAW = {0, 1, 10, 11, 18, 20, 30, 40, 44, 48, 50, 51, 70, 71, 72, 80, 81}
ID_RAW = EXPECTED_RAW - {0, 1, OOD_RAW_ID}


def parse_calib(path: Path) -> dict[str, np.ndarray]:
    """KITTI odometry calib.txt -> {name: (3, 4)}; parsed here so the test does not trust the reader."""
    out = {}
    for line in path.read_text().splitlines():
        key, values = line.split(":", 1)
        out[key] = np.array(values.split(), dtype=np.float64).reshape(3, 4)
    return out


def project(points: np.ndarray, calib: dict[str, np.ndarray], width: int, height: int):
    """Pixel (col, row) and visibility of LiDAR points through P2 @ [Tr; 0 0 0 1]."""
    tr4 = np.vstack([calib["Tr"], [0.0, 0.0, 0.0, 1.0]])
    xyz1 = np.c_[points[:, :3].astype(np.float64), np.ones(len(points))]
    cam = xyz1 @ (calib["P2"] @ tr4).T
    z = cam[:, 2]
    u, v = cam[:, 0] / z, cam[:, 1] / z
    visible = (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    col = np.clip(np.round(u).astype(np.int64), 0, width - 1)
    row = np.clip(np.round(v).astype(np.int64), 0, height - 1)
    return col, row, visible


def read_scan(root: Path, seq: str, index: int):
    from PIL import Image

    seq_dir = root / "sequences" / seq
    name = f"{index:06d}"
    points = np.fromfile(seq_dir / "velodyne" / f"{name}.bin", dtype=np.float32).reshape(-1, 4)
    labels = np.fromfile(seq_dir / "labels" / f"{name}.label", dtype=np.uint32)
    image = np.asarray(Image.open(seq_dir / "image_2" / f"{name}.png"))
    return points, labels, image


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_cfg() -> SyntheticConfig:
    return SyntheticConfig(**SMALL)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, small_cfg) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    return out, write_dataset(out, small_cfg, progress=False)


def test_layout_and_file_formats(dataset, small_cfg):
    root, summary = dataset
    for seq, n in (("00", 2), ("08", 1)):
        seq_dir = root / "sequences" / seq
        calib = parse_calib(seq_dir / "calib.txt")
        assert sorted(calib) == ["P0", "P1", "P2", "P3", "Tr"]
        poses = np.loadtxt(seq_dir / "poses.txt", ndmin=2)
        assert poses.shape == (n, 12)
        assert np.loadtxt(seq_dir / "times.txt", ndmin=1).shape == (n,)
        for i in range(n):
            name = f"{i:06d}"
            assert (seq_dir / "velodyne" / f"{name}.bin").stat().st_size % 16 == 0
            points, labels, image = read_scan(root, seq, i)
            assert len(points) > 1000
            assert labels.shape == (len(points),)
            assert image.shape == (small_cfg.image_height, small_cfg.image_width, 3) and image.dtype == np.uint8
            assert np.isfinite(points).all()
            assert points[:, 3].min() >= 0.0 and points[:, 3].max() <= 1.0
            assert np.linalg.norm(points[:, :3], axis=1).max() <= small_cfg.max_range + 1e-3
        assert sorted(p.name for p in (seq_dir / "velodyne").iterdir()) == [f"{i:06d}.bin" for i in range(n)]
    on_disk = json.loads((root / "synthetic.json").read_text())
    assert on_disk == summary
    assert summary["counts"] == {"00": 2, "08": 1, "11": 0}  # no test split asked for
    assert summary["config"]["seed"] == small_cfg.seed and summary["config"]["azimuth_columns"] == 256


def test_raw_ids_expected_and_ood_present(dataset):
    root, summary = dataset
    for seq, i in (("00", 0), ("00", 1), ("08", 0)):
        _, labels, _ = read_scan(root, seq, i)
        raw = set(np.unique(labels & 0xFFFF).tolist())
        assert raw <= EXPECTED_RAW, raw - EXPECTED_RAW
        assert len(raw & ID_RAW) >= 6, raw
        assert {40, 50}.issubset(raw)
    assert summary["scans_with_ood"] >= 2
    assert summary["points_per_class"]["other-vehicle"] > 0


def test_ood_in_most_scans_and_both_kinds_of_novelty():
    cfg = SyntheticConfig(**{**TINY, "azimuth_columns": 128})
    with_ood, kinds = 0, set()
    for i in range(8):
        scene = generate_scene(scan_rng(11, "00", i), cfg)
        kinds |= {o["kind"] for o in scene.objects if o["label"] == OOD_RAW_ID}
        _, labels, _ = render_scan(scene, cfg)
        with_ood += bool(((labels & 0xFFFF) == OOD_RAW_ID).any())
    assert with_ood >= 6  # thin or distant objects can fall between the sparse test beams
    assert kinds & set(OOD_KINDS_NOVEL) and kinds & set(OOD_KINDS_MIXED)


def test_files_equal_direct_render(dataset, small_cfg):
    """Scan i of a sequence depends only on (seed, sequence, i): re-rendering it gives the file."""
    root, _ = dataset
    points, labels, image = read_scan(root, "00", 1)
    p2, l2, i2 = render_scan(generate_scene(scan_rng(small_cfg.seed, "00", 1), small_cfg), small_cfg)
    assert np.array_equal(points, p2) and np.array_equal(labels, l2) and np.array_equal(image, i2)


@pytest.mark.parametrize("seq,index", [("00", 0), ("00", 1), ("08", 0)])
def test_camera_and_lidar_labels_agree(dataset, small_cfg, seq, index):
    """Projected with calib.txt, >= 90% of camera-visible points land on a pixel of their own class."""
    root, _ = dataset
    calib = parse_calib(root / "sequences" / seq / "calib.txt")
    points, labels, _ = read_scan(root, seq, index)
    scene = generate_scene(scan_rng(small_cfg.seed, seq, index), small_cfg)
    *_, label_image = render_scan(scene, small_cfg, return_label_image=True)
    col, row, visible = project(points, calib, small_cfg.image_width, small_cfg.image_height)
    raw = labels & 0xFFFF
    agree = (label_image[row[visible], col[visible]] == raw[visible]).mean()
    assert agree >= 0.9, agree
    assert 0.10 <= visible.mean() <= 0.50, visible.mean()


def test_default_camera_is_kitti_like():
    cfg = SyntheticConfig()
    p2, tr = calibration(cfg)
    fx = p2[0, 0]
    hfov = np.degrees(2 * np.arctan(cfg.image_width / 2 / fx))
    assert 80.0 <= hfov <= 90.0
    assert np.isclose(p2[0, 3], fx * 0.06)
    assert abs(p2[0, 2] - cfg.image_width / 2) < 0.05 * cfg.image_width
    rot = tr[:, :3]
    assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(rot), 1.0)
    centre = -rot.T @ tr[:, 3]  # camera-0 centre in the LiDAR frame
    assert np.allclose(centre, [0.27, 0.0, -0.08], atol=0.02)
    assert np.allclose(rot @ [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], atol=0.05)  # LiDAR forward = camera z


def test_same_seed_identical_bytes_other_seed_differs(dataset, tmp_path, small_cfg):
    root, _ = dataset
    again = tmp_path / "again"
    write_dataset(again, small_cfg, progress=False)
    assert tree_digest(root) == tree_digest(again)
    other = tmp_path / "other"
    write_dataset(other, SyntheticConfig(**{**SMALL, "seed": SMALL["seed"] + 1, "num_train": 1, "num_val": 0}),
                  progress=False)
    a, b = tree_digest(root), tree_digest(other)
    assert a["sequences/00/velodyne/000000.bin"] != b["sequences/00/velodyne/000000.bin"]
    assert a["sequences/00/image_2/000000.png"] != b["sequences/00/image_2/000000.png"]


def test_refuses_foreign_folder_and_overwrites_own_output(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=str(foreign)):
        write_dataset(foreign, SyntheticConfig(**TINY), progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"

    out = tmp_path / "own"
    write_dataset(out, SyntheticConfig(**TINY), progress=False)
    summary = write_dataset(out, SyntheticConfig(**{**TINY, "num_train": 1}), progress=False)
    seq_dir = out / "sequences" / "00"
    assert summary["counts"]["00"] == 1
    assert sorted(p.name for p in (seq_dir / "velodyne").iterdir()) == ["000000.bin"]
    assert sorted(p.name for p in (seq_dir / "labels").iterdir()) == ["000000.label"]
    assert np.loadtxt(seq_dir / "poses.txt", ndmin=2).shape == (1, 12)
    assert not list(out.rglob(".*.tmp"))
    write_dataset(out, SyntheticConfig(**{**TINY, "num_train": 1, "num_val": 0}), progress=False)
    assert not (out / "sequences" / "08").exists()


@pytest.mark.parametrize("sensor", [LidarRays, CameraRays])
def test_ray_culling_is_exact(sensor):
    """Casting only the rays inside each primitive's window gives the same hits as casting all rays."""
    cfg = SyntheticConfig(**{**TINY, "azimuth_columns": 90, "image_width": 90, "image_height": 30})
    scene = generate_scene(scan_rng(2, "00", 0), cfg)
    rays = sensor.build(cfg)
    brute = dataclasses.replace(rays)
    everything = np.arange(len(rays.dirs))
    brute.window = lambda aabb: everything
    t, pid = cast(scene, rays, 100.0)
    t_all, pid_all = cast(scene, brute, 100.0)
    assert np.array_equal(pid, pid_all)
    assert np.allclose(t, t_all)
    assert (pid >= 0).mean() > 0.05  # the scene's objects are actually hit
