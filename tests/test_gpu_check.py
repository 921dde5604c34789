"""The prepared GPU check (tools/gpu_check.sh, segood.bench.gpu_check): its CPU dry run runs every
stage's code that does not need CUDA; the time limit stops a running stage and skips the rest.
The GPU itself is not here: the CUDA comparisons and timings run only on the GPU machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from segood.bench import gpu_check, gpu_stages

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_runs_every_stage_and_writes_one_json_and_one_table(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(out), "--dry-run", "--time-limit", "900"],
                         capture_output=True, text=True, timeout=960, env={**os.environ, "PYTHON": sys.executable})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert list(result["stages"]) == list(gpu_check.STAGES)
    assert {k: v["status"] for k, v in result["stages"].items()} == dict.fromkeys(gpu_check.STAGES, "ok"), \
        {k: v.get("error") for k, v in result["stages"].items()}
    fig = {k: v["figures"] for k, v in result["stages"].items()}
    assert fig["bitexact"]["comparisons"] > 0 and fig["bitexact"]["devices"] == ["cpu", "reference"]
    methods = {r["method"] for r in fig["bench"]["rows"]}
    assert set(gpu_stages.BENCH_METHODS) <= methods and all(r["ms"] > 0 for r in fig["bench"]["rows"])
    assert fig["train_fp32"]["steps"] == gpu_stages.DRY["steps"] and fig["train_bf16"]["amp"] == "bf16"
    assert Path(fig["train_fp32"]["checkpoint"]).name == "checkpoint.pt"
    assert set(fig["replay"]["sizes"]) == {"35k", "120k"} and fig["replay"]["sizes"]["120k"]["frame_ms"] > 0
    assert fig["replay"]["model"].endswith("checkpoint.pt")  # the trained fp32 model, not a fresh one
    assert fig["eval"]["scores"]
    md = (out / "gpu_check.md").read_text()
    assert "| target | value | pass | fail |" in md and "120k-point replay frame timed" in md
    assert "| FM op <= 2x a device copy, 1M x (64+64) fp32 | - | n/a | n/a |" in md  # no 1M rows in a dry run
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]


def test_time_limit_stops_the_running_stage_and_skips_the_rest(tmp_path, monkeypatch):
    """The run's clock is the test's: the env stage gets its 1 s budget (not a dry run: a dry run has
    no stage budgets; 22 s limit, 5 s reserve), is killed at it, and 'uses' 10 s of the run's time,
    so 7 s are left: below a stage's 15 s floor."""
    now = [0.0]

    def sleeping_child(name, ctx):
        now[0] += 10.0
        return [sys.executable, "-c", "import time; time.sleep(600)"]

    monkeypatch.setattr(gpu_check, "_child_cmd", sleeping_child)
    monkeypatch.setitem(gpu_check.BUDGET_S, "env", 1)
    result = gpu_check.run_check(tmp_path, device="cpu", dry_run=False, time_limit_s=22.0, stages=("env", "build"),
                                 clock=lambda: now[0])
    env, build = result["stages"]["env"], result["stages"]["build"]
    assert env == {"status": "failed", "seconds": 1.0,
                   "error": "stopped after 1 s (stage budget or the run's time limit)"}
    assert build == {"status": "skipped", "reason": "time limit reached"}
    assert result["meta"]["seconds"] == 10.0
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["stages"] == result["stages"] and "| build | skipped |" in (tmp_path / "gpu_check.md").read_text()
