"""Scale-out and fault tolerance: torchrun DDP (gloo, 2 CPU processes), SIGKILL + exact resume,
interrupted checkpoint writes, refused checkpoint files, memory caps."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from segood.config import CONFIG_DIR, load_config
from segood.data.batching import VoxelGrid, collate, crop_nearest
from segood.synthetic import SyntheticConfig, write_dataset
from segood.engine import checkpoint as ckpt_mod
from segood.engine.builders import build_label_map
from segood.engine.distributed import init_distributed
from segood.engine.artifacts import load_model
from segood.engine.train import validate_miou

SMALL = [
    "model.lidar.channels=[8, 16]", "model.lidar.out_channels=16", "model.image.out_channels=16",
    "model.image.width_scale=0.25", "model.fusion.hidden=32", "train.batch_size=1", "train.warmup_steps=2",
    "train.log_every=1", "data.num_workers=0", "synthesis.max_points=128", "synthesis.n_swap=4",
    "deterministic=true",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_dist")
    write_dataset(root, SyntheticConfig(num_train=4, num_val=2, azimuth_columns=96, image_width=128,
                                        image_height=40, seed=5), progress=False)
    return root


def cli(data_root, out, *extra: str) -> list[str]:
    sets = [a for kv in SMALL + [f"data.root={data_root}", *extra] for a in ("--set", kv)]
    return ["-m", "segood", "train", str(CONFIG_DIR / "synthetic_feature_mixing.yaml"), "--out", str(out),
            "--no-progress", *sets]


def run_env() -> dict:
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    return env


def state_of(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_torchrun_two_ranks_identical_weights_and_reduced_metrics(data_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           *cli(data_root, out, "train.steps=3", "train.val_every=3")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=run_env())
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 3
    sums = summary["weights_checksum_per_rank"]
    assert len(sums) == 2 and sums[0] == sums[1]
    # the all-reduced validation mIoU equals a single-process evaluation of the saved model
    cfg = load_config(CONFIG_DIR / "synthetic_feature_mixing.yaml", SMALL + [f"data.root={data_root}"])
    label_map = build_label_map(cfg)
    model, _ = load_model(out / "checkpoint.pt", label_map)
    single = validate_miou(model, cfg, label_map, init_distributed())
    assert summary["best_val_miou_fov"] == pytest.approx(single, abs=1e-9)


def test_sigkill_then_resume_gives_identical_weights(data_root, tmp_path):
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, *cli(data_root, straight, "train.steps=6")], check=True,
                   capture_output=True, timeout=600, env=run_env())
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *cli(data_root, killed, "train.steps=6", "train.ckpt_every=1")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=run_env())
    third = killed / "checkpoint_step0000003.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if third.exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = torch.load(killed / "checkpoint.pt", weights_only=True)["step"]
    assert 3 <= step_at_kill < 6
    subprocess.run([sys.executable, *cli(data_root, killed, "train.steps=6", "train.ckpt_every=1"), "--resume"],
                   check=True, capture_output=True, timeout=600, env=run_env())
    a, b = state_of(straight / "checkpoint.pt"), state_of(killed / "checkpoint.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(list(killed.glob("checkpoint_step*.pt"))) == 2  # keep_last


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt_mod.save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(3)}})

    def dying_save(obj, f):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt_mod.save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert ckpt_mod.load_checkpoint(path)["step"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_truncated_or_foreign_checkpoint_is_refused(tmp_path):
    good = tmp_path / "good.pt"
    ckpt_mod.save_checkpoint(good, {"step": 1, "model": {"w": torch.ones(1000)}})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.pt: not a readable checkpoint"):
        ckpt_mod.load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="foreign.pt: not a segood checkpoint"):
        ckpt_mod.load_checkpoint(foreign)


def test_point_and_voxel_caps_keep_labels_aligned():
    rng = np.random.default_rng(0)
    n = 5000
    pts = np.c_[rng.uniform(-40, 40, (n, 2)), rng.uniform(-2, 2, (n, 1)), rng.uniform(0, 1, (n, 1))].astype(np.float32)
    target = (np.arange(n) % 7).astype(np.int64)
    sample = {"points": pts, "visible": np.ones(n, bool), "pixel_uv": np.c_[np.arange(n), np.arange(n)].astype(np.float32),
              "target": target, "ood_target": np.zeros(n, np.int64), "source": "gen"}
    cropped = crop_nearest(sample, 1000, rng)
    idx = cropped["pixel_uv"][:, 0].astype(int)  # pixel_uv carries the original index here
    assert len(idx) == 1000 and (cropped["target"] == target[idx]).all() and (cropped["points"] == pts[idx]).all()
    grid = VoxelGrid(0.5, (-80, -80, -5, 80, 80, 5))
    full = collate([sample, sample], grid)
    capped = collate([sample, sample], grid, max_voxels=len(full["voxel_coords"]) // 3, rng=rng)
    assert len(capped["voxel_coords"]) <= len(full["voxel_coords"]) // 3
    idx = capped["pixel_uv"][:, 0].long().numpy()
    assert (capped["target"].numpy() == target[idx]).all()
