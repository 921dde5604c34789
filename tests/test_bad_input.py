"""Bad input ends in a clear message naming the file and what was expected, never a traceback:
a nuScenes scene with an incomplete sample chain (reader and check-data), a nuScenes root
without lidarseg labels (still checked: geometry, calibration, images), splits that cannot give
OOD metrics (warned), and `segood eval` on a broken scan read by a DataLoader worker."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segood.commands.check_data import run as check_data
from segood.data.errors import DataError
from segood.data.labels import load_label_map
from segood.data.readers.nuscenes import NuScenesReader
from test_check_data import kitti_sequence, write_config
from test_nuscenes import build_mini


def check_args(config: Path, **kw) -> argparse.Namespace:
    return argparse.Namespace(config=str(config), splits=["train", "val"], max_scans=None, quick=True, set=[],
                              no_labels=kw.get("no_labels", False))


def nuscenes_config(tmp_path: Path, root: Path) -> Path:
    return write_config(tmp_path, f"data:\n  dataset: nuscenes\n  label_map: nuscenes\n  camera: all\n  root: {root}\n"
                                  "  train_sequences: [mini_train]\n  val_sequences: [mini_val]\n")


@pytest.fixture
def mini(tmp_path):
    return build_mini(tmp_path / "nus")


def test_incomplete_sample_chain_is_named_by_reader_and_check_data(mini, tmp_path, capsys):
    table = mini / "v1.0-mini" / "sample.json"
    samples = json.loads(table.read_text())
    first = next(s for s in samples if s["prev"] == "" and s["next"])
    first["next"] = "f" * 32  # a token that is not in sample.json
    table.write_text(json.dumps(samples))
    with pytest.raises(DataError, match=r"(?s)v1.0-mini/sample.json: incomplete sample chain.*scene-0061: sample f{32} "
                                        r"\(the 'next' of sample \w+\) is not in sample.json; expected 2 linked "
                                        r"samples, found 1"):
        NuScenesReader(mini, ["mini_train"], load_label_map("nuscenes"))
    assert check_data(check_args(nuscenes_config(tmp_path, mini))) == 1
    out = capsys.readouterr().out
    assert "[train mini_train]" in out and "is not in sample.json" in out
    assert "split val: 1 scans (1 checked), 0 problem(s)" in out  # the other split is still checked


def test_nuscenes_root_without_lidarseg_is_checked_without_labels(mini, tmp_path, capsys):
    (mini / "v1.0-mini" / "lidarseg.json").unlink()
    cfg = nuscenes_config(tmp_path, mini)
    assert check_data(check_args(cfg)) == 1  # training needs the labels: one problem, saying so
    out = capsys.readouterr().out
    assert "lidarseg.json: no lidarseg labels" in out and "== 1 problem(s)" in out
    assert "split train: 2 scans (2 checked)" in out and "CAM_FRONT " in out  # geometry + calibration checked
    assert check_data(check_args(cfg, no_labels=True)) == 0
    next((mini / "samples" / "CAM_BACK").glob("*.jpg")).unlink()
    assert check_data(check_args(cfg, no_labels=True)) == 1
    assert "CAM_BACK__" in capsys.readouterr().out.split("problem(s):")[-1]


@pytest.mark.parametrize("raw, expect", [
    (40, "split val: 0 OOD points (expected some of: other-vehicle)"),
    (0, "split val: 100% of its 34476 labelled points are ignored"),
])
def test_split_without_ood_metrics_is_warned(tmp_path, capsys, raw, expect):
    root = kitti_sequence(tmp_path / "sk", "00")
    kitti_sequence(root, "08")
    for f in (root / "sequences" / "08" / "labels").glob("*.label"):
        np.full(f.stat().st_size // 4, raw, np.uint32).tofile(f)
    cfg = write_config(tmp_path, f"data:\n  root: {root}\n  train_sequences: ['00']\n  val_sequences: ['08']\n")
    assert check_data(check_args(cfg)) == 0  # the files are fine
    out = capsys.readouterr().out
    assert "== 1 warning(s):" in out and expect in out, out
    assert "data set OK for training, but see the warning(s) above" in out


def test_eval_on_a_broken_scan_prints_one_clear_line(tmp_path, tiny_run):
    import shutil

    from builders import SMALL

    from segood.config import CONFIG_DIR
    from segood.synthetic import SyntheticConfig, write_dataset

    root = tmp_path / "data"
    write_dataset(root, SyntheticConfig(num_train=1, num_val=1, azimuth_columns=128, image_width=160,
                                        image_height=48, seed=3), progress=False)
    sets = SMALL + [f"data.root={root}"]
    ckpt = Path(shutil.copy(tiny_run.ckpt, tmp_path / "checkpoint.pt"))  # eval fits scores beside it
    scan = next((root / "sequences" / "08" / "velodyne").glob("*.bin"))
    scan.write_bytes(scan.read_bytes()[:-6])
    argv = ["eval", str(CONFIG_DIR / "synthetic_baseline.yaml"), "--ckpt", str(ckpt), "--out", str(tmp_path / "ev"),
            "--no-progress"] + [a for s in sets + ["data.num_workers=1"] for a in ("--set", s)]
    res = subprocess.run([sys.executable, "-m", "segood", *argv], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    err = res.stderr.strip()
    assert res.returncode == 2, err
    assert "Traceback" not in err and 'File "' not in err, err
    last = err.splitlines()[-1]
    assert last.startswith(f"segood eval: error: {scan}: file size ") and "(in DataLoader worker process 0)" in last
