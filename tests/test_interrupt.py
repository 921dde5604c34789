"""Interrupts: SIGINT / SIGTERM in ``segood train`` and ``segood study`` finish the current step,
write a checkpoint and exit 130 / 143 with the resume command; ``--resume`` says where it continues
(or that there is nothing to resume); ``history.jsonl`` never repeats a step. The signal is sent
by the trainer itself at a given step (tests/signal_at_step/sitecustomize.py): no clock anywhere."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from segood.config import CONFIG_DIR

HOOK = Path(__file__).with_name("signal_at_step")
CONFIG = str(CONFIG_DIR / "synthetic_feature_mixing.yaml")
SMALL = [
    "model.lidar.channels=[8, 16]", "model.lidar.out_channels=16", "model.image.out_channels=16",
    "model.image.width_scale=0.25", "model.fusion.hidden=32", "train.batch_size=1", "train.warmup_steps=2",
    "train.log_every=1", "data.num_workers=0", "synthesis.max_points=128", "synthesis.n_swap=4",
    "deterministic=true", "train.val_every=0", "train.steps=6", "train.ckpt_every=2",
]


def segood(*args: str, signal_at: str | None = None) -> subprocess.CompletedProcess:
    """``python -m segood ARGS``; with ``signal_at='SIGINT:3:self'`` the trainer signals at step 3."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "SEGOOD_TEST_SIGNAL")}
    env["OMP_NUM_THREADS"] = "1"
    if signal_at:
        env["SEGOOD_TEST_SIGNAL"] = signal_at
        env["PYTHONPATH"] = os.pathsep.join([str(HOOK), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "segood", *args], capture_output=True, text=True, timeout=900,
                          env=env)


def train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", CONFIG, "--out", str(out), "--no-progress",
            *[a for kv in [*SMALL, f"data.root={root}"] for a in ("--set", kv)], *extra]


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "history.jsonl").read_text().splitlines()]


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_sigint_checkpoints_the_step_and_resume_is_exact(synthetic_root, tmp_path):
    straight = tmp_path / "straight"
    assert segood(*train_args(synthetic_root, straight)).returncode == 0

    run = tmp_path / "run"
    # 1. --resume on an empty folder says so; Ctrl-C during step 3 (between two checkpoints)
    res = segood(*train_args(synthetic_root, run, "--resume"), signal_at="SIGINT:3:self")
    assert res.returncode == 130, res.stderr[-3000:]
    assert f"nothing to resume in {run}" in res.stdout
    assert "Traceback" not in res.stderr
    assert f"stopped after step 3 of 6; checkpoint written: {run / 'checkpoint.pt'}" in res.stderr
    resume_line = next(ln for ln in res.stderr.splitlines() if ln.startswith("resume with: "))
    assert resume_line.removeprefix("resume with: ").split()[:6] == ["segood", "train", CONFIG, "--out", str(run),
                                                                      "--resume"]
    assert checkpoint(run / "checkpoint.pt")["step"] == 3 and steps_logged(run) == [1, 2, 3]
    assert not (run / "run_summary.json").exists()

    # 2. a hard kill at step 6: the last checkpoint is step 4, history holds step 5 too
    res = segood(*train_args(synthetic_root, run, "--resume"), signal_at="SIGKILL:6:self")
    assert res.returncode == -9
    assert f"resuming {run} from step 3 of 6" in res.stdout
    assert checkpoint(run / "checkpoint.pt")["step"] == 4 and steps_logged(run) == [1, 2, 3, 4, 5]

    # 3. resume from step 4: step 5 is logged once, and the weights equal an uninterrupted run's
    res = segood(*train_args(synthetic_root, run, "--resume"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming {run} from step 4 of 6" in res.stdout
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]
    a, b = checkpoint(straight / "checkpoint.pt")["model"], checkpoint(run / "checkpoint.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_to_a_study_stops_its_training_after_the_step(synthetic_root, tmp_path):
    out = tmp_path / "study"
    sets = [a for kv in [*SMALL, "train.ckpt_every=100"] for a in ("--set", kv)]
    res = segood("study", "synthetic_feature_mixing.yaml", "--seeds", "0", "--jobs", "1", "--data",
                 str(synthetic_root), "--out", str(out), "--no-progress", *sets, signal_at="SIGTERM:2:parent")
    assert res.returncode == 143, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert "resume with the same command" in res.stderr
    run = out / "runs" / "synthetic_feature_mixing" / "seed0"
    assert checkpoint(run / "checkpoint.pt")["step"] == 2 and steps_logged(run) == [1, 2]
    assert not (run / "eval_val").exists() and not (run / "run_summary.json").exists()
