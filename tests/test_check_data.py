"""segood check-data: every problem of a data-set root in one run (not the first), per-class
histogram with the ID/OOD split, non-zero exit code; on SemanticKITTI, nuScenes and CARLA-OOD."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segood.commands.check_data import run
from segood.data.check import check_dataset, format_report
from segood.data.labels import load_label_map

FIX = Path(__file__).parent / "fixtures"
BASE = Path(__file__).resolve().parent.parent / "configs" / "base.yaml"


def kitti_sequence(root: Path, seq: str, frames: int = 2) -> Path:
    """KITTI 000008 (FOV-cropped, real calibration) as a SemanticKITTI sequence with random labels."""
    calib = json.loads((FIX / "kitti_000008" / "calib_000008.json").read_text())
    p2, tr = np.array(calib["P2_cam2img_4x4"]), np.array(calib["lidar2cam_4x4 (=R0_rect @ Tr_velo_to_cam)"])
    pts = np.fromfile(FIX / "kitti_000008" / "000008.bin", dtype=np.float32)
    n = len(pts) // 4
    sdir = root / "sequences" / seq
    for sub in ("velodyne", "labels", "image_2"):
        (sdir / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(seq))
    for i in range(frames):
        pts.tofile(sdir / "velodyne" / f"{i:06d}.bin")
        rng.choice([0, 10, 20, 40, 50, 70, 252], n).astype(np.uint32).tofile(sdir / "labels" / f"{i:06d}.label")
        shutil.copy(FIX / "kitti_000008" / "000008.png", sdir / "image_2" / f"{i:06d}.png")
    fmt = lambda m: " ".join(f"{v:.12e}" for v in np.asarray(m)[:3].reshape(-1))  # noqa: E731
    (sdir / "calib.txt").write_text(f"P2: {fmt(p2)}\nTr: {fmt(tr)}\n")
    return root


def args_for(config: Path, **kw) -> argparse.Namespace:
    return argparse.Namespace(config=str(config), splits=kw.get("splits", ["train", "val"]),
                              max_scans=None, quick=False, set=kw.get("set", []))


def write_config(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"inherit: {BASE}\n" + text)
    return cfg


def test_semantickitti_clean_and_broken(tmp_path, capsys):
    root = tmp_path / "sk"
    kitti_sequence(root, "00")
    kitti_sequence(root, "01")
    cfg = write_config(tmp_path, f"data:\n  root: {root}\n  train_sequences: ['00', '01']\n  val_sequences: ['00']\n")
    assert run(args_for(cfg)) == 0
    out = capsys.readouterr().out
    assert "split train: 4 scans" in out and "0 problem(s) - data set OK" in out
    assert "image_2 68952" in out  # KITTI 000008: every FOV-cropped point (17,238 x 4 scans) lands in the image
    assert "other-vehicle" in out and "OOD" in out and "total ID" in out

    s01 = root / "sequences" / "01"
    (s01 / "labels" / "000000.label").write_bytes(b"\0" * 40)                       # wrong length
    (s01 / "image_2" / "000000.png").unlink()                                       # missing image
    vel = s01 / "velodyne" / "000001.bin"
    vel.write_bytes(vel.read_bytes()[:-6])                                          # truncated points
    png = root / "sequences" / "00" / "image_2" / "000001.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])                    # truncated image
    cfg = write_config(tmp_path, f"data:\n  root: {root}\n  train_sequences: ['00', '01', '02']\n"
                                 "  val_sequences: ['08']\n")
    assert run(args_for(cfg)) == 1
    out = capsys.readouterr().out
    for expected in ("01/labels/000000.label: 10 labels but the scan has 17238 points",
                     "01/image_2/000000.png: camera image is missing",
                     "01/velodyne/000001.bin: file size",
                     "00/image_2/000001.png: not a readable image",
                     "sequences/02/velodyne: folder is missing",
                     "sequences/08/velodyne: folder is missing"):
        assert expected in out, expected
    assert "== 6 problem(s)" in out


def test_semantickitti_calibration_outside_image(tmp_path, capsys):
    root = kitti_sequence(tmp_path / "sk", "00", frames=1)
    calib = root / "sequences" / "00" / "calib.txt"
    lines = calib.read_text().splitlines()
    tr = np.array([float(v) for v in lines[1].split()[1:]]).reshape(3, 4)
    tr[:, :3] = -tr[:, :3]  # camera looks backwards: no point in front of it
    calib.write_text(lines[0] + "\nTr: " + " ".join(f"{v:.12e}" for v in tr.ravel()) + "\n")
    cfg = write_config(tmp_path, f"data:\n  root: {root}\n  train_sequences: ['00']\n  val_sequences: ['00']\n")
    assert run(args_for(cfg, splits=["train"])) == 1
    assert "puts none of the 17238 points into this 1242x375 image" in capsys.readouterr().out


def test_nuscenes_reports_every_problem(tmp_path):
    from test_nuscenes import build_mini

    from segood.data.readers.nuscenes import NuScenesReader, load_nuscenes

    root = build_mini(tmp_path / "nus")
    tables = root / "v1.0-mini"
    seg = json.loads((tables / "lidarseg.json").read_text())
    np.zeros(5, np.uint8).tofile(root / seg[0]["filename"])                          # wrong-length lidarseg
    next((root / "samples" / "CAM_FRONT_LEFT").glob("*.jpg")).unlink()              # a missing camera image
    next((root / "sweeps" / "LIDAR_TOP").glob("*.pcd.bin")).unlink()                # a missing sweep
    cs = json.loads((tables / "calibrated_sensor.json").read_text())
    ego = json.loads((tables / "ego_pose.json").read_text())
    sd = json.loads((tables / "sample_data.json").read_text())
    back = next(r for r in sd if "CAM_BACK__" in r["filename"] and "scene-0103" in r["filename"])
    next(e for e in ego if e["token"] == back["ego_pose_token"])["rotation"] = [float("nan")] * 4  # NaN pose
    next(c for c in cs if c["camera_intrinsic"] and c["token"] == next(
        r for r in sd if "CAM_FRONT__" in r["filename"] and "scene-0103" in r["filename"])["calibrated_sensor_token"]
    )["camera_intrinsic"] = [[0, 0, 0], [0, 0, 0], [0, 0, 1]]                         # singular intrinsics
    (tables / "calibrated_sensor.json").write_text(json.dumps(cs))
    (tables / "ego_pose.json").write_text(json.dumps(ego))

    lm = load_label_map("nuscenes")
    nusc = load_nuscenes(root, "v1.0-mini")
    report = check_dataset(lambda split, entry: NuScenesReader(root, [entry], lm, nusc=nusc),
                           {"train": ["mini_train"], "val": ["mini_val"]}, lm)
    text = format_report(report, lm)
    problems = report.problems
    assert not report.ok
    assert any("_lidarseg.bin: 5 labels but the sweep has 8672 points" in p for p in problems)
    assert any("CAM_FRONT_LEFT__" in p and "camera image is missing" in p for p in problems)
    assert any("LiDAR sweep file(s) listed in sample_data.json are missing" in p for p in problems)
    assert any("ego_pose.json" in p and "NaN" in p for p in problems)
    assert any("camera_intrinsic is singular" in p for p in problems)
    assert len(problems) == 5, problems
    assert "split train: 2 scans" in text and "barrier" in text and "OOD" in text


def test_nuscenes_missing_tables_in_one_message(tmp_path):
    from test_nuscenes import fixture_keyframe

    from builders import write_nuscenes_sample
    from segood.data.readers.nuscenes import NuScenesReader

    root = write_nuscenes_sample(tmp_path / "nus", {"scene-0103": [fixture_keyframe()]})
    for t in ("sample_data", "lidarseg"):
        (root / "v1.0-mini" / f"{t}.json").unlink()
    lm = load_label_map("nuscenes")
    report = check_dataset(lambda s, e: NuScenesReader(root, [e], lm), {"val": ["mini_val"]}, lm)
    (msg,) = report.problems
    assert "sample_data.json: table is missing" in msg and "lidarseg.json: table is missing" in msg


def test_carla_ood_check(tmp_path):
    from builders import write_carla_ood_sample
    from segood.data.readers.carla_ood import CarlaOodReader

    root = write_carla_ood_sample(tmp_path / "carla", {"train_00": 2})
    lm = load_label_map("carla_ood")
    make = lambda s, e: CarlaOodReader(root, [e], lm)  # noqa: E731
    ok = check_dataset(make, {"train": ["train_00"]}, lm)
    assert ok.ok and ok.splits[0].class_points[16] > 0  # OOD points counted
    assert "anomaly" in format_report(ok, lm)
    seq = root / "sequences" / "train_00"
    (seq / "labels" / "000001.label").write_bytes(b"\0" * 8)
    (seq / "rgb" / "000000.png").unlink()
    bad = check_dataset(make, {"train": ["train_00", "val_00"]}, lm)
    assert len(bad.problems) == 3, bad.problems
    assert any("no scans found for sequence 'val_00'" in p for p in bad.problems)
