"""Inputs a stranger gives, each answered with one line naming the file (issue 21): an empty scan in
every command, a PointCloud2 without intensity (``--intensity error|zero``), ground truth that cannot
be read in ``viz --sequence``, a text file named checkpoint.pt, and an output location that cannot be
written (refused before any work)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segood.cli import main as segood
from segood.config import CONFIG_DIR
from segood.data.batching import collate
from segood.data.errors import DataError
from segood.engine.checkpoint import load_checkpoint
from segood.ros.bagio import BagWriter, typestore_for
from segood.ros.export import make_header
from segood.ros.pointcloud2 import from_records
from builders import SMALL, checkpoint_variant
from test_ros import kitti_points

CONFIG = str(CONFIG_DIR / "synthetic_feature_mixing.yaml")  # the session's tiny run's


@pytest.fixture(scope="module")
def ckpt(tiny_run, tmp_path_factory) -> Path:
    """A copy of the session's tiny checkpoint (commands may write fitted scores beside it)."""
    return checkpoint_variant(tiny_run.ckpt, tmp_path_factory.mktemp("inputs") / "tiny.pt")


@pytest.fixture
def data(synthetic_root, tmp_path) -> Path:
    return Path(shutil.copytree(synthetic_root, tmp_path / "data"))


def sets(root: Path, *extra: str) -> list[str]:
    return [a for kv in [*SMALL, f"data.root={root}", "data.num_workers=0", *extra] for a in ("--set", kv)]


def last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_an_empty_scan_is_named_by_every_command(data, ckpt, tmp_path, capsys):
    val = sorted((data / "sequences" / "08" / "velodyne").glob("*.bin"))[0]
    val.write_bytes(b"")
    for scan in (data / "sequences" / "00" / "velodyne").glob("*.bin"):
        scan.write_bytes(b"")
    named = "file size 0 bytes is not a positive multiple of 16"

    assert segood(["check-data", CONFIG, "--quick", *sets(data)]) == 1
    assert f"{val}: {named}" in capsys.readouterr().out
    assert segood(["eval", CONFIG, "--ckpt", str(ckpt), "--out", str(tmp_path / "ev"), "--no-progress",
                   *sets(data)]) == 2
    assert last_error(capsys) == f"segood eval: error: {val}: {named} (expected float32 records x, y, z, " \
                                 "intensity; an empty scan cannot be segmented)"
    assert segood(["viz", CONFIG, "--sequence", "08", "--index", "0", "--ckpt", str(ckpt), "--ply",
                   str(tmp_path / "v.ply"), *sets(data)]) == 2
    assert last_error(capsys).startswith(f"segood viz: error: {val}: {named}")
    assert segood(["train", CONFIG, "--out", str(tmp_path / "run"), "--no-progress",
                   *sets(data, "train.steps=1", "train.val_every=0")]) == 2
    err = last_error(capsys)
    assert err.startswith(f"segood train: error: {data / 'sequences' / '00' / 'velodyne'}") and named in err


def test_a_scan_with_no_points_left_is_named_at_the_batch():
    empty = {"points": np.zeros((0, 4), np.float32), "visible": np.zeros(0, bool),
             "pixel_uv": np.zeros((0, 2), np.float32), "source": "/bags/x.bag:/points#4"}
    with pytest.raises(DataError, match=r"^/bags/x.bag:/points#4: no points reach the network"):
        collate([empty], grid=None)  # refused before voxelisation


def xyz_bag(path: Path, clouds: int = 3) -> Path:
    """A ROS 1 bag whose PointCloud2 messages have x, y, z and no intensity."""
    ts = typestore_for("ros1")
    pts = kitti_points()[::40, :3]
    rec = np.zeros(len(pts), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    for i, n in enumerate("xyz"):
        rec[n] = pts[:, i]
    with BagWriter(path, "ros1") as w:
        c = w.add_connection("/points", "sensor_msgs/msg/PointCloud2")
        for k in range(clouds):
            msg = from_records(rec, ts, make_header(ts, (k + 1) * 10**9, "lidar"))
            w.write(c, (k + 1) * 10**9, w.serialize(msg, "sensor_msgs/msg/PointCloud2"))
    return path


def test_replay_without_intensity_errors_by_default_and_zero_is_said_once(tmp_path, ckpt, capsys):
    bag = xyz_bag(tmp_path / "xyz.bag")
    out = tmp_path / "out.bag"
    assert segood(["replay", str(bag), "--ckpt", str(ckpt), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"segood replay: error: {bag}: PointCloud2 topic '/points' has no "
                                               "'intensity' field (its fields: x, y, z)")
    assert "--intensity zero" in err[0] and not out.exists()

    assert segood(["replay", str(bag), "--ckpt", str(ckpt), "--out", str(out), "--no-progress",
                   "--intensity", "zero"]) == 0
    said = [ln for ln in capsys.readouterr().err.splitlines() if "no 'intensity' field" in ln]
    assert len(said) == 1 and "intensity 0 used for every point" in said[0] and str(bag) in said[0]
    summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
    assert summary["intensity"] == {"mode": "zero", "clouds_without_field": 3}
    assert summary["frames"]["processed"] == 3


def test_viz_sequence_warns_about_ground_truth_it_cannot_read(data, ckpt, tmp_path, capsys):
    labels = sorted((data / "sequences" / "08" / "labels").glob("*.label"))
    labels[0].write_bytes(labels[0].read_bytes()[:40])  # 10 labels for a scan of thousands of points
    for i in (0, 1):
        assert segood(["viz", CONFIG, "--sequence", "08", "--index", str(i), "--ckpt", str(ckpt), "--ply",
                       str(tmp_path / f"v{i}.ply"), *sets(data)]) == 0
        err = capsys.readouterr().err
        warned = [ln for ln in err.splitlines() if ln.startswith("warning: ground truth not shown")]
        points = (data / "sequences" / "08" / "velodyne" / f"{labels[0].stem}.bin").stat().st_size // 16
        assert warned == [f"warning: ground truth not shown for {labels[0].stem}: {labels[0]}: 10 labels but the "
                          f"scan has {points} points (expected one per point)"], err
    labels[0].write_bytes(np.full(points, 7777, np.uint32).tobytes())  # the right length, unknown ids only
    assert segood(["viz", CONFIG, "--sequence", "08", "--index", "0", "--ckpt", str(ckpt), "--ply",
                   str(tmp_path / "u.ply"), *sets(data)]) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: ground truth not shown")]
    assert len(warned) == 1 and str(labels[0]) in warned[0] and "7777" in warned[0], warned


def test_a_text_file_named_checkpoint_is_called_that(tmp_path):
    fake = tmp_path / "checkpoint.pt"
    fake.write_text("config: configs/synthetic_baseline.yaml\nsteps: 400\n")
    with pytest.raises(ValueError) as err:
        load_checkpoint(fake)
    assert str(err.value).startswith(f"{fake}: not a checkpoint: not a file written by torch.save (it starts with "
                                     "'config: configs/synthetic_baseline.yaml'")
    assert "upgrade" not in str(err.value) and "Python objects" not in str(err.value)


def test_an_output_that_cannot_be_written_is_refused_before_any_work(synthetic_root, ckpt, tmp_path, capsys,
                                                                    monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output was checked")

    import segood.commands.eval as eval_cmd
    import segood.engine.inference as inference
    import segood.engine.train as train_mod
    import segood.ros.replay as replay_mod

    for target in ((train_mod, "Trainer"), (eval_cmd, "evaluate_and_report"), (inference, "Predictor"),
                   (replay_mod, "Predictor")):
        monkeypatch.setattr(*target, no_work)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bag = xyz_bag(tmp_path / "in.bag", clouds=1)
    runs = {
        "train": ["train", CONFIG, "--out", str(blocker / "run"), *sets(synthetic_root)],
        "eval": ["eval", CONFIG, "--ckpt", str(ckpt), "--out", str(blocker / "ev"), *sets(synthetic_root)],
        "viz": ["viz", CONFIG, "--sequence", "08", "--ckpt", str(ckpt), "--ply", str(blocker / "v.ply"),
                *sets(synthetic_root)],
        "replay": ["replay", str(bag), "--ckpt", str(ckpt), "--out", str(blocker / "o.bag"), "--intensity", "zero"],
    }
    for name, argv in runs.items():
        assert segood(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"segood {name}: error: {blocker}") and \
            err[0].endswith(f": {blocker} is a file, not a folder"), err
