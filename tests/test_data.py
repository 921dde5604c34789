"""Scan reading on real fixtures, label maps, projection, batching and bad-input errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import pytest

from segood.data.batching import VoxelGrid, collate, scan_to_sample
from segood.data.errors import DataError
from segood.data.labels import load_label_map
from segood.data.io import read_bin, read_label
from segood.data.readers.semantickitti import SemanticKittiReader, read_calib

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def label_map():
    return load_label_map("semantickitti")


def make_sequence(root: Path, points: np.ndarray, labels: np.ndarray | None, image: Path | None,
                  p2: np.ndarray, tr: np.ndarray, seq: str = "00") -> Path:
    """Write one scan in the SemanticKITTI odometry layout."""
    sdir = root / "sequences" / seq
    (sdir / "velodyne").mkdir(parents=True)
    points.astype(np.float32).tofile(sdir / "velodyne" / "000000.bin")
    if labels is not None:
        (sdir / "labels").mkdir()
        labels.astype(np.uint32).tofile(sdir / "labels" / "000000.label")
    if image is not None:
        (sdir / "image_2").mkdir()
        shutil.copy(image, sdir / "image_2" / "000000.png")
    fmt = lambda m: " ".join(f"{v:.12e}" for v in np.asarray(m)[:3].reshape(-1))  # noqa: E731
    (sdir / "calib.txt").write_text(f"P0: {fmt(p2)}\nP1: {fmt(p2)}\nP2: {fmt(p2)}\nP3: {fmt(p2)}\nTr: {fmt(tr)}\n")
    (sdir / "poses.txt").write_text(" ".join(["1", "0", "0", "0", "0", "1", "0", "0", "0", "0", "1", "0"]) + "\n")
    return root


@pytest.fixture
def kitti_root(tmp_path):
    calib = json.loads((FIX / "kitti_000008" / "calib_000008.json").read_text())
    p2 = np.array(calib["P2_cam2img_4x4"])
    tr = np.array(calib["lidar2cam_4x4 (=R0_rect @ Tr_velo_to_cam)"])
    pts = read_bin(FIX / "kitti_000008" / "000008.bin")
    return make_sequence(tmp_path / "kitti", pts, None, FIX / "kitti_000008" / "000008.png", p2, tr)


def test_label_map_of_real_50_point_scan(label_map):
    raw = read_label(FIX / "semantickitti_50pts" / "000000.label", 50)
    learning = label_map.to_learning(raw)
    expected = {0: 0, 50: 13, 52: 0, 70: 15, 71: 16, 80: 18}
    assert learning.tolist() == [expected[int(r)] for r in raw]
    assert (learning == 0).sum() == 3  # two 'unlabeled' + one 'other-structure'
    train = label_map.to_train(learning)
    assert set(train[learning == 0].tolist()) == {-1}
    assert label_map.class_names[train[raw == 50][0]] == "building"
    assert label_map.num_classes == 18 and "other-vehicle" not in label_map.class_names


def test_ood_protocol_other_vehicle(label_map):
    raw = np.array([20, 13, 16, 257, 259, 10, 252, 0, 1, 52, 99])
    ood = label_map.to_ood_target(label_map.to_learning(raw))
    assert ood.tolist() == [1, 1, 1, 1, 1, 0, 0, -1, -1, -1, -1]
    assert (label_map.to_train(label_map.to_learning(raw))[:5] == -1).all()
    assert label_map.train_to_raw(label_map.to_train(label_map.to_learning(np.array([10, 40, 81])))).tolist() == [10, 40, 81]


def test_reader_on_real_semantickitti_scan(tmp_path, label_map):
    pts = read_bin(FIX / "semantickitti_50pts" / "000000.bin")
    labels = np.fromfile(FIX / "semantickitti_50pts" / "000000.label", dtype=np.uint32)
    root = make_sequence(tmp_path, pts, labels, None, np.hstack([np.eye(3), np.zeros((3, 1))]), np.eye(4))
    scan = SemanticKittiReader(root, ["00"], label_map, camera=None)[0]
    assert scan.points.shape == (50, 4) and scan.points.dtype == np.float32
    assert scan.raw_labels.tolist() == (labels & 0xFFFF).tolist()
    assert scan.pose.shape == (4, 4)


def test_projection_of_kitti_000008_lands_in_image(kitti_root, label_map):
    scan = SemanticKittiReader(kitti_root, ["0"], label_map, with_labels=False)[0]
    h, w = scan.images[0].shape[:2]
    assert (w, h) == (1242, 375)
    vis = scan.visible
    # the file is cropped to the camera FOV (x >= 2.9 m): nearly all points must project inside
    assert vis.mean() > 0.99, vis.mean()
    uv = scan.pixel_uv[vis]
    assert (uv[:, 0] >= 0).all() and (uv[:, 0] < w).all() and (uv[:, 1] >= 0).all() and (uv[:, 1] < h).all()
    # independent check against the calibration's own lidar2img matrix
    calib = json.loads((FIX / "kitti_000008" / "calib_000008.json").read_text())
    m = np.array(calib["lidar2img_4x4"])
    hom = np.c_[scan.points[:, :3], np.ones(scan.num_points)] @ m.T
    ref = hom[:, :2] / hom[:, 2:3]
    np.testing.assert_allclose(scan.pixel_uv[vis], ref[vis], atol=1e-2)
    # points far to the side cannot be in the image
    side = np.array([[0.0, 20.0, 0.0, 0.0], [-10.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    from segood.data.projection import project_points

    _, inside = project_points(side[:, :3], scan.lidar_to_image[0], w, h)
    assert not inside.any()


def test_batch_keeps_every_point_and_voxel_means(kitti_root, label_map):
    scan = SemanticKittiReader(kitti_root, ["00"], label_map, with_labels=False)[0]
    grid = VoxelGrid(0.2, (-80, -80, -5, 80, 80, 5))
    batch = collate([scan_to_sample(scan, None), scan_to_sample(scan, None)], grid)
    p = scan.num_points
    assert batch["points"].shape == (2 * p, 4)
    assert batch["images"].shape == (2, 3, 375, 1242)
    v = batch["voxel_coords"]
    assert v.shape[1] == 4 and set(v[:, 0].tolist()) == {0, 1}
    # each point's voxel contains the point
    coords = grid.coords(batch["points"][:, :3].numpy())
    np.testing.assert_array_equal(v[batch["point2voxel"]][:, 1:].numpy(), coords)
    # voxel feature = mean of its points
    j = int(batch["point2voxel"][0])
    members = batch["points"][batch["point2voxel"] == j]
    np.testing.assert_allclose(batch["voxel_feats"][j, :4].numpy(), members.mean(0).numpy(), rtol=1e-5, atol=1e-5)


def test_collate_returns_exactly_the_typed_batch(kitti_root, label_map):
    from segood.data.batch import BATCH_KEYS

    scan = SemanticKittiReader(kitti_root, ["00"], label_map, with_labels=False)[0]
    batch = collate([scan_to_sample(scan, None)], VoxelGrid(0.2, (-80, -80, -5, 80, 80, 5)))
    assert set(batch) == BATCH_KEYS  # target / ood_target only with labels
    dtypes = {"points": torch.float32, "batch_idx": torch.int64, "voxel_coords": torch.int32,
              "voxel_feats": torch.float32, "point2voxel": torch.int64, "images": torch.float32,
              "image_idx": torch.int64, "pixel_uv": torch.float32, "visible": torch.bool}
    assert {k: batch[k].dtype for k in dtypes} == dtypes
    p, v = scan.num_points, batch["voxel_coords"].shape[0]
    assert batch["voxel_feats"].shape == (v, 7) and batch["pixel_uv"].shape == (p, 2)
    assert all(batch[k].shape == (p,) for k in ("batch_idx", "point2voxel", "image_idx", "visible"))


@pytest.mark.parametrize("case", ["bin_size", "label_length", "no_calib", "nan", "unknown_label", "calib_field"])
def test_bad_input_names_the_file(tmp_path, label_map, case):
    pts = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    labels = np.full(10, 40, dtype=np.uint32)
    root = make_sequence(tmp_path, pts, labels, None, np.hstack([np.eye(3), np.zeros((3, 1))]), np.eye(4))
    sdir = root / "sequences" / "00"
    bin_path, label_path = sdir / "velodyne" / "000000.bin", sdir / "labels" / "000000.label"
    if case == "bin_size":
        with open(bin_path, "ab") as f:
            f.write(b"\0" * 6)
        match = "000000.bin.*multiple of 16"
    elif case == "label_length":
        labels[:9].tofile(label_path)
        match = "000000.label.*9 labels.*10 points"
    elif case == "no_calib":
        (sdir / "calib.txt").unlink()
        match = "calib.txt.*missing"
    elif case == "nan":
        pts[3, 1] = np.nan
        pts.tofile(bin_path)
        match = "000000.bin.*NaN or inf.*index 3"
    elif case == "unknown_label":
        labels[2] = 123
        labels.tofile(label_path)
        match = r"000000.label.*\[123\].*semantickitti.yaml"
    else:
        (sdir / "calib.txt").write_text("P2: 1 2 3\n")
        match = "calib.txt:1.*'P2'.*expected 12"
    with pytest.raises(DataError, match=match):
        reader = SemanticKittiReader(root, ["00"], label_map, camera="image_2" if case in ("no_calib", "calib_field") else None)
        reader[0]


def test_singular_calibration_is_refused(tmp_path, label_map):
    pts = np.ones((5, 4), dtype=np.float32)
    p2 = np.zeros((3, 4))
    root = make_sequence(tmp_path, pts, None, FIX / "kitti_000008" / "000008.png", p2, np.eye(4))
    with pytest.raises(DataError, match="singular"):
        SemanticKittiReader(root, ["00"], label_map, with_labels=False)[0]


def test_calib_reader_parses_all_matrices(kitti_root):
    calib = read_calib(kitti_root / "sequences" / "00" / "calib.txt")
    assert set(calib) == {"P0", "P1", "P2", "P3", "Tr"} and calib["P2"].shape == (3, 4)


def test_fov_crop_and_camera_dropout_keep_labels_aligned(kitti_root, label_map):
    from segood.data.batching import Augment, crop_to_fov

    scan = SemanticKittiReader(kitti_root, ["00"], label_map, with_labels=False)[0]
    scan.points = np.concatenate([scan.points, [[0.0, 30.0, 0.0, 0.5]]]).astype(np.float32)  # one point to the side
    scan.camera_id = np.append(scan.camera_id, -1).astype(np.int8)
    scan.pixel_uv = np.concatenate([scan.pixel_uv, [[0.0, 0.0]]]).astype(np.float32)
    scan.learning_labels = np.arange(scan.num_points) % 20
    cropped = crop_to_fov(scan)
    assert cropped.num_points == int(scan.visible.sum()) and cropped.visible.all()
    np.testing.assert_array_equal(cropped.learning_labels, scan.learning_labels[scan.visible])
    np.testing.assert_array_equal(cropped.points, scan.points[scan.visible])
    aug = Augment(camera_dropout=0.3)
    sample = scan_to_sample(cropped, label_map, aug, np.random.default_rng(0))
    dropped = ~sample["visible"]
    assert 0.25 < dropped.mean() < 0.35
    assert (sample["pixel_uv"][dropped] == 0).all() and (sample["pixel_uv"][~dropped] == cropped.pixel_uv[~dropped]).all()
    np.testing.assert_array_equal(sample["target"], label_map.to_train(cropped.learning_labels))


def test_multi_camera_scans_point_to_their_own_image():
    from segood.data.scan import Scan

    def scan(n_cams: int, h: int) -> Scan:
        pts = np.zeros((6, 4), np.float32)
        cam = np.array([0, 1, -1, n_cams - 1, 0, 1], np.int8) % max(n_cams, 1)
        cam[2] = -1
        return Scan(points=pts, images=[np.full((h, 8, 3), 10 * k, np.uint8) for k in range(n_cams)],
                    lidar_to_image=[np.eye(3, 4)] * n_cams, pixel_uv=np.ones((6, 2), np.float32), camera_id=cam)

    a, b = scan(3, 4), scan(2, 5)
    batch = collate([scan_to_sample(a, None), scan_to_sample(b, None)], VoxelGrid(0.2, (-1, -1, -1, 1, 1, 1)))
    assert batch["images"].shape == (5, 3, 5, 8)  # 3 + 2 cameras, padded to the taller image
    vis = batch["visible"].numpy()
    idx = batch["image_idx"].numpy()
    expected = np.r_[a.camera_id, 3 + b.camera_id.astype(int)]
    np.testing.assert_array_equal(idx[vis], expected[vis])
    # the image a point samples is the one its camera recorded (constant value 10 * camera id)
    from segood.data.batching import IMAGENET_MEAN, IMAGENET_STD

    red = batch["images"][idx[vis], 0, 0, 0].numpy() * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    np.testing.assert_allclose(red * 255, 10 * np.r_[a.camera_id, b.camera_id][vis], atol=1e-3)
