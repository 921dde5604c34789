"""``segood predict`` closes the loop through the evaluators' own reading code: its files, read back the
way semantic-kitti-api / REAL, STU and nuscenes-devkit read them, give the numbers of ``segood eval`` with
the matching protocol; loose point files (an open3d .pcd with no data set around it) are scored into
.npz and a PLY the viewer opens; unreadable scans are named and counted; runs resume."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from builders import write_nuscenes_sample, write_stu_root
from segood.cli import main
from segood.config import CONFIG_DIR, load_config
from segood.data.errors import DataError
from segood.data.labels import LABEL_DIR, load_label_map
from segood.data.readers.loose import cloud_to_scan, read_loose
from segood.engine.checkpoint import save_checkpoint
from segood.engine.inference import Predictor
from segood.models import build_model
from test_protocols import iou_eval_reference, real_reference, stu_reference
from test_protocols_e2e import EVAL, ckpt, stu_frames  # noqa: F401  (ckpt: the small trained model)

SYN = CONFIG_DIR / "synthetic_baseline.yaml"


def sets(args: list[str]) -> list[str]:
    return sum((["--set", a] for a in args), [])


def run_cli(argv: list[str]) -> int:
    return main([str(a) for a in argv])


# --------------------------------------------------------------------------- SemanticKITTI / REAL


def test_real_format_read_back_by_reals_evaluator_equals_eval_protocol_real(synthetic_root, ckpt, tmp_path):
    root = tmp_path / "kitti"
    shutil.copytree(synthetic_root, root)
    labels = sorted((root / "sequences" / "08" / "labels").glob("*.label"))
    for k, path in enumerate(labels):  # raw 99 other-object: OOD for REAL
        lab = np.fromfile(path, np.uint32)
        lab[k::40] = (lab[k::40] & 0xFFFF0000) | 99
        lab.tofile(path)
    args = [f"data.root={root}", *EVAL]
    assert run_cli(["eval", SYN, "--ckpt", ckpt, "--out", tmp_path / "e", "--protocol", "real", "--no-progress",
                    *sets(args)]) == 0
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())["protocols"]["real"]
    out = tmp_path / "pred"
    # the score: the operating point eval stored beside the checkpoint (energy)
    assert run_cli(["predict", SYN, "--ckpt", ckpt, "--split", "val", "--format", "real,semantickitti", "--out", out,
                    "--no-progress", *sets(args)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["score"]["name"] == "energy" and manifest["counts"]["written"] == 2

    # REAL's evaluate_semantics.py, as it reads files: labels & 0xFFFF, remap_lut, valid = label != 0
    doc = yaml.safe_load((LABEL_DIR / "semantickitti_real.yaml").read_text())
    lut = np.zeros(max(doc["learning_map"]) + 100, np.int32)
    lut[list(doc["learning_map"])] = list(doc["learning_map"].values())
    seq = out / "sequences" / "08"
    gts, preds, scores = [], [], []
    for label_file in labels:
        label = np.fromfile(label_file, np.int32) & 0xFFFF
        valid = label != 0
        pred = np.fromfile(seq / "predictions_naive" / label_file.name, np.int32) & 0xFFFF
        np.testing.assert_array_equal(pred, np.fromfile(seq / "predictions" / label_file.name, np.uint32))
        score = np.fromfile(seq / "scores_softmax_naive" / label_file.name, np.float32)
        assert len(pred) == len(score) == len(label)
        gts.append(lut[label][valid])
        preds.append(lut[pred][valid])
        scores.append(score[valid])
    gt, pred, s = np.concatenate(gts), np.concatenate(preds), np.concatenate(scores).astype(np.float64)
    assert (gt == 5).sum() > 100
    assert m["miou"]["all"]["miou"] == pytest.approx(iou_eval_reference(pred, gt, [0]), abs=1e-6)
    keep = gt != 0  # get_unknown_indices drops learning id 0
    ref = real_reference(s[keep], gt[keep] == 5)
    for k in ("auroc", "aupr", "fpr95"):
        assert m["ood"]["energy"]["all"][k] == pytest.approx(ref[k], abs=1e-6), k


# --------------------------------------------------------------------------- STU


def test_stu_format_read_back_by_stus_calculator_equals_eval_protocol_stu(ckpt, tmp_path):
    rng = np.random.default_rng(5)
    root = write_stu_root(tmp_path / "stu", {"125": [stu_frames(rng, 60), stu_frames(rng, 3), stu_frames(rng, 40)]})
    args = [f"data.root={root}", "data.val_sequences=['125']", *EVAL]
    cfg = CONFIG_DIR / "stu_eval.yaml"
    assert run_cli(["eval", cfg, "--ckpt", ckpt, "--out", tmp_path / "e", "--no-progress", *sets(args)]) == 0
    got = json.loads((tmp_path / "e" / "metrics.json").read_text())["protocols"]["stu"]["ood"]["energy"]["all"]
    out = tmp_path / "pred"
    assert run_cli(["predict", cfg, "--ckpt", ckpt, "--score", "energy", "--format", "stu", "--out", out,
                    "--no-progress", *sets(args)]) == 0

    # compute_point_level_ood.main: sequences 1[0-9][0-9], sorted velodyne files, PRED_DIR/<seq>/<stem>.txt
    frames = []
    for seq in sorted(root.glob("1[0-9][0-9]")):
        for pcd in sorted((seq / "velodyne").glob("*.bin")):
            points = np.fromfile(pcd, np.float32).reshape(-1, 4)[:, :3]
            sem = np.fromfile(seq / "labels" / f"{pcd.stem}.label", np.uint32).astype(np.int32) & 0xFFFF
            scores = np.loadtxt(out / seq.name / f"{pcd.stem}.txt").astype(np.float32)
            assert len(scores) == len(points)
            frames.append((points, scores, sem))
    assert len(frames) == 3
    ref = stu_reference(frames)
    # predict runs the fast inference path (BatchNorm folded, NHWC image branch: scores within 1e-4 of the
    # plain path, tests/test_speed.py), eval the plain one: the metrics agree to that precision, not bit for bit
    for k in ("auroc", "aupr", "fpr95"):
        assert got[k] == pytest.approx(ref[k], abs=1e-4), (k, got[k], ref[k])


# --------------------------------------------------------------------------- nuScenes


@pytest.fixture(scope="module")
def nuscenes_root(tmp_path_factory):
    """mini_val's two scenes (what the devkit's eval set 'mini_val' lists), one keyframe each."""
    from test_nuscenes import fixture_keyframe

    return write_nuscenes_sample(tmp_path_factory.mktemp("nus"), {"scene-0103": [fixture_keyframe(0, 0)],
                                                                 "scene-0916": [fixture_keyframe(500000, 1)]})


NUS_SMALL = ["model.lidar.channels=[8, 16]", "model.image.width_scale=0.25", "model.image.out_channels=16",
             "model.lidar.out_channels=16", "model.fusion.hidden=16"]


def test_nuscenes_submission_passes_the_devkit_and_its_miou_equals_eval(nuscenes_root, tmp_path):
    from nuscenes import NuScenes
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval
    from nuscenes.eval.lidarseg.validate_submission import validate_submission

    cfg_path = CONFIG_DIR / "nuscenes_baseline.yaml"
    model_cfg = load_config(cfg_path, NUS_SMALL)
    ckpt = save_checkpoint(tmp_path / "nus.pt", {"model": build_model(model_cfg["model"]).state_dict(),
                                                 "config": model_cfg, "label_map": load_label_map("nuscenes").checksum(),
                                                 "step": 0})
    args = [f"data.root={nuscenes_root}", "data.val_sequences=[mini_val]", "data.num_workers=0",
            "eval.scores=[maxlogit]", "eval.batch_size=1"]
    assert run_cli(["eval", cfg_path, "--ckpt", ckpt, "--out", tmp_path / "e", "--protocol", "nuscenes_devkit",
                    "--no-progress", *sets(args)]) == 0
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())["protocols"]["nuscenes_devkit"]
    out = tmp_path / "pred"
    assert run_cli(["predict", cfg_path, "--ckpt", ckpt, "--format", "nuscenes", "--out", out, "--no-progress",
                    *sets(args)]) == 0
    meta = json.loads((out / "mini_val" / "submission.json").read_text())["meta"]
    assert meta == {"use_camera": True, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}

    nusc = NuScenes(version="v1.0-mini", dataroot=str(nuscenes_root), verbose=False)
    validate_submission(nusc, str(out), "mini_val")  # asserts on any problem
    devkit = LidarSegEval(nusc, str(out), "mini_val").evaluate()
    assert devkit["miou"] == pytest.approx(m["miou"]["all"]["miou"], abs=1e-6)
    bad = out / "lidarseg" / "mini_val"
    first = sorted(bad.glob("*_lidarseg.bin"))[0]
    np.zeros(3, np.uint8).tofile(first)  # the validator is not a rubber stamp
    with pytest.raises(AssertionError):
        validate_submission(nusc, str(out), "mini_val")


# --------------------------------------------------------------------------- loose files


def write_pcd(path: Path, xyz: np.ndarray, intensity: np.ndarray | None) -> Path:
    import open3d as o3d

    path.parent.mkdir(parents=True, exist_ok=True)
    pcd = o3d.t.geometry.PointCloud()
    pcd.point["positions"] = o3d.core.Tensor(xyz.astype(np.float32))
    if intensity is not None:
        pcd.point["intensity"] = o3d.core.Tensor(intensity.astype(np.float32).reshape(-1, 1))
    assert o3d.t.io.write_point_cloud(str(path), pcd)
    return path


@pytest.fixture(scope="module")
def kitti_points():
    return np.fromfile(Path(__file__).parent / "fixtures" / "kitti_000008" / "000008.bin", np.float32).reshape(-1, 4)


def test_open3d_pcd_without_a_data_set_is_scored_to_npz_and_a_ply_the_viewer_opens(ckpt, kitti_points, tmp_path,
                                                                                   capsys):
    import open3d as o3d

    pts = kitti_points[::4].copy()
    pts[7, :3] = np.nan  # an organised cloud's missing return: kept, with no prediction
    pcd = write_pcd(tmp_path / "in" / "drive.pcd", pts[:, :3], pts[:, 3])
    out = tmp_path / "out"
    assert run_cli(["predict", pcd, "--ckpt", ckpt, "--score", "energy", "--format", "npz", "--format", "ply",
                    "--out", out, "--no-progress"]) == 0
    assert f"drive.pcd: 1 of {len(pts)} points have non-finite coordinates" in capsys.readouterr().err
    z = np.load(out / "drive.npz")
    assert len(z["label"]) == len(z["anomaly"]) == len(pts) and str(z["score"]) == "energy"
    assert z["label"][7] == -1 and np.isnan(z["anomaly"][7]) and z["raw_label"][7] == 0
    # the same numbers as the model on the file's finite points, in the file's order
    finite = np.isfinite(pts[:, :3]).all(1)
    expect = Predictor(ckpt, "energy")(cloud_to_scan(read_loose(pcd)))
    np.testing.assert_array_equal(z["label"][finite], expect.label)
    np.testing.assert_array_equal(z["anomaly"][finite], expect.scores["energy"])
    np.testing.assert_array_equal(z["raw_label"][finite], load_label_map("semantickitti").train_to_raw(expect.label))
    ply = o3d.t.io.read_point_cloud(str(out / "drive.ply"))
    assert {"anomaly", "label", "intensity", "colors"} <= set(ply.point)
    np.testing.assert_array_equal(ply.point["anomaly"].numpy().ravel()[finite], expect.scores["energy"])
    assert run_cli(["viz", out / "drive.ply", "--png", tmp_path / "v.png", "--size", "160x120"]) == 0
    assert "anomaly" in capsys.readouterr().out and (tmp_path / "v.png").stat().st_size > 0


def test_missing_intensity_is_said_or_refused(ckpt, kitti_points, tmp_path, capsys):
    pcd = write_pcd(tmp_path / "noint.pcd", kitti_points[::8, :3], None)
    assert run_cli(["predict", pcd, "--ckpt", ckpt, "--out", tmp_path / "a", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "noint.pcd: no intensity column" in err and "--intensity zero" in err
    assert run_cli(["predict", pcd, "--ckpt", ckpt, "--out", tmp_path / "b", "--no-progress",
                    "--intensity", "zero"]) == 0
    err = capsys.readouterr().err
    assert err.count("noint.pcd: no intensity column") == 1 and "intensity set to 0" in err
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["counts"]["warnings"]


def test_unreadable_scans_are_named_counted_and_the_run_resumes(ckpt, kitti_points, tmp_path, capsys):
    src = tmp_path / "scans"
    (src / "sub").mkdir(parents=True)
    far = kitti_points[:3000].copy()
    far[5, :3] = (900.0, -700.0, 40.0)  # far outside data.point_range: clamped into a border voxel, never dropped
    far.tofile(src / "a.bin")
    np.save(src / "sub" / "b.npy", kitti_points[3000:6000, :4])
    (src / "broken.bin").write_bytes(b"\0" * 18)  # not a multiple of 16 bytes
    out = tmp_path / "out"
    base = ["predict", src, "--ckpt", ckpt, "--score", "energy", "--threshold", "0", "--flag", "--out", out,
            "--no-progress"]
    assert run_cli(base) == 1
    err = capsys.readouterr().err
    assert "broken.bin" in err and "multiple of 16" in err
    m = json.loads((out / "manifest.json").read_text())
    assert (m["counts"]["written"], m["counts"]["failed"]) == (2, 1)
    assert m["counts"]["failures"][0]["source"].endswith("broken.bin") and m["threshold"]["value"] == 0.0
    z = np.load(out / "sub" / "b.npz")
    np.testing.assert_array_equal(z["flag"], (z["anomaly"] >= 0).astype(np.uint8))
    a = np.load(out / "a.npz")
    assert len(a["label"]) == 3000 and (a["label"] >= 0).all() and np.isfinite(a["anomaly"]).all()
    stamp = (out / "a.npz").stat().st_mtime_ns
    assert run_cli(base) == 1  # resumed: the two written scans are skipped, the broken one fails again
    m = json.loads((out / "manifest.json").read_text())
    assert (m["counts"]["written"], m["counts"]["skipped_existing"], m["counts"]["failed"]) == (0, 2, 1)
    assert (out / "a.npz").stat().st_mtime_ns == stamp
    # another score into the same folder would mix two predictions: refused unless --overwrite
    other = ["predict", src / "a.bin", "--ckpt", ckpt, "--score", "maxlogit", "--out", out, "--no-progress"]
    assert run_cli(other) == 2 and "score 'energy'" in capsys.readouterr().err
    assert run_cli(other + ["--overwrite"]) == 0 and (out / "a.npz").stat().st_mtime_ns != stamp
    assert str(np.load(out / "a.npz")["score"]) == "maxlogit"


def test_dataset_formats_need_a_data_root(ckpt, kitti_points, tmp_path, capsys):
    kitti_points[:100].tofile(tmp_path / "a.bin")
    assert run_cli(["predict", tmp_path / "a.bin", "--ckpt", ckpt, "--format", "real", "--out", tmp_path / "o"]) == 2
    assert "need a data root" in capsys.readouterr().err
    assert run_cli(["predict", tmp_path / "a.bin", "--ckpt", ckpt, "--format", "csv", "--out", tmp_path / "o"]) == 2
    assert "unknown format" in capsys.readouterr().err
    assert run_cli(["predict", SYN, "--ckpt", ckpt, "--set", "model.fusion.hidden=8", "--out", tmp_path / "o"]) == 2
    assert "model.fusion.hidden: 8 in " in capsys.readouterr().err  # only a disagreeing key is refused, named


def test_loose_reader_formats_and_errors(kitti_points, tmp_path):
    xyz = kitti_points[:50, :3]
    np.save(tmp_path / "three.npy", xyz)
    c = read_loose(tmp_path / "three.npy")
    assert c.intensity is None and np.array_equal(c.xyz, xyz)
    np.save(tmp_path / "four.npy", kitti_points[:50].astype(np.float64))
    np.testing.assert_array_equal(read_loose(tmp_path / "four.npy").intensity, kitti_points[:50, 3])
    np.save(tmp_path / "five.npy", np.zeros((4, 5)))
    with pytest.raises(DataError, match=r"five.npy: array of shape \(4, 5\)"):
        read_loose(tmp_path / "five.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy: not a plain numeric"):
        read_loose(tmp_path / "obj.npy")
    # an ASCII PCD written by hand, fields in another order
    lines = ["VERSION 0.7", "FIELDS intensity x y z", "SIZE 4 4 4 4", "TYPE F F F F", "COUNT 1 1 1 1", "WIDTH 3",
             "HEIGHT 1", "VIEWPOINT 0 0 0 1 0 0 0", "POINTS 3", "DATA ascii", "0.5 1 2 3", "0.25 4 5 6", "0 7 8 9"]
    (tmp_path / "hand.pcd").write_text("\n".join(lines) + "\n")
    c = read_loose(tmp_path / "hand.pcd")
    np.testing.assert_array_equal(c.xyz, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    np.testing.assert_array_equal(c.intensity, [0.5, 0.25, 0])
    with pytest.raises(DataError, match="unknown point file type"):
        read_loose(tmp_path / "x.las")


def test_data_root_scan_that_cannot_be_read_is_named_and_the_rest_written(synthetic_root, ckpt, tmp_path, capsys):
    root = tmp_path / "kitti"
    shutil.copytree(synthetic_root, root)
    broken = root / "sequences" / "08" / "velodyne" / "000000.bin"
    broken.write_bytes(broken.read_bytes()[:-5])
    out = tmp_path / "pred"
    # a model key that agrees with the checkpoint (builders.SMALL: fusion.hidden 32) is accepted, as by eval
    assert run_cli(["predict", SYN, "--ckpt", ckpt, "--format", "semantickitti", "--out", out, "--no-progress",
                    "--set", f"data.root={root}", "--set", "data.num_workers=1", "--set", "model.fusion.hidden=32"]) == 1
    assert "000000.bin: file size" in capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())
    assert (m["counts"]["written"], m["counts"]["failed"], m["counts"]["status"]) == (1, 1, "done")
    written = out / "sequences" / "08" / "predictions" / "000001.label"
    assert len(np.fromfile(written, np.uint32)) * 16 == (root / "sequences" / "08" / "velodyne" / "000001.bin").stat().st_size
    assert not (out / "sequences" / "08" / "predictions" / "000000.label").exists()


def test_point_file_with_a_camera_uses_it(ckpt, kitti_points, tmp_path):
    fix = Path(__file__).parent / "fixtures" / "kitti_000008"
    calib = json.loads((fix / "calib_000008.json").read_text())
    p2l = np.array(calib["P2_cam2img_4x4"]) @ np.array(calib["lidar2cam_4x4 (=R0_rect @ Tr_velo_to_cam)"])
    (tmp_path / "calib.yaml").write_text(yaml.safe_dump({"lidar_to_image": p2l[:3].tolist()}))
    kitti_points.tofile(tmp_path / "000008.bin")
    base = ["predict", tmp_path / "000008.bin", "--ckpt", ckpt, "--score", "energy", "--no-progress"]
    assert run_cli(base + ["--out", tmp_path / "cam", "--image", fix / "000008.png", "--calib",
                           tmp_path / "calib.yaml"]) == 0
    assert run_cli(base + ["--out", tmp_path / "lidar"]) == 0
    with_cam, lidar_only = np.load(tmp_path / "cam" / "000008.npz"), np.load(tmp_path / "lidar" / "000008.npz")
    from segood.data.io import read_image
    from segood.ros.camera import load_calib, projection_matrix

    scan = cloud_to_scan(read_loose(tmp_path / "000008.bin"), image=read_image(fix / "000008.png"),
                         lidar_to_image=projection_matrix(load_calib(tmp_path / "calib.yaml"), None, "calib"))
    assert scan.visible.sum() > 1000
    np.testing.assert_array_equal(with_cam["anomaly"], Predictor(ckpt, "energy")(scan).scores["energy"])
    visible = scan.visible
    assert not np.array_equal(with_cam["anomaly"][visible], lidar_only["anomaly"][visible])
