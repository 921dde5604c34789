"""One prepared check of the GPU path, in one short run (issue 15): ``tools/gpu_check.sh OUT``.

Stages, in order of priority (each in its own process, with its own time budget, so a crash or a
hang in one loses none of the others):

  env         torch / CUDA / nvcc versions, which optional packages exist
  build       the Feature Mixing extension with its CUDA kernel (torch.utils.cpp_extension)
  bitexact    CUDA == CPU == reference bit for bit: float32 / float16 / bfloat16 (and float64),
              masks, odd dims, n = 0..max, the into-variant and the backward
  bench       ``segood bench synthesis`` on the device: Feature Mixing vs a device copy, vs NP-Mix
              as MultiOOD runs it (faithful) and vs NP-Mix with cdist, at 100k and 1M points
  train_fp32  the demo model (configs/synthetic_feature_mixing.yaml) for a few hundred steps,
              ``model.lidar.backend=torch`` when the config has that key
  replay      one replay frame (collate, model, labels and score back on the host) at ~35k and
              ~120k points, on the trained checkpoint (or a fresh model)
  train_bf16  the same training with ``train.amp=bf16``
  eval        ``evaluate`` of the fp32 checkpoint on the synthetic validation scans

The parent writes ``gpu_check.json`` and ``gpu_check.md`` (atomically) into OUT after every
stage; each stage is ok / failed / skipped with its figures. At ``--time-limit`` the running
stage is killed and the rest are skipped. ``--dry-run`` runs every stage on the CPU with tiny
sizes (tests/test_gpu_check.py), so only what needs CUDA is left untested without a GPU; the stage
budgets are the GPU machine's, so a dry run is bounded by ``--time-limit`` alone (a loaded CPU may
take longer than a budget without anything being wrong).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from segood.bench.gpu_stages import run_stage

__all__ = ["STAGES", "run_check", "format_markdown", "add_parser", "main"]

STAGES = ("env", "build", "bitexact", "bench", "train_fp32", "replay", "train_bf16", "eval")
BUDGET_S = {"env": 30, "build": 240, "bitexact": 60, "bench": 150, "train_fp32": 120, "replay": 60,
            "train_bf16": 90, "eval": 60}


# ------------------------------------------------------------------ the parent: stages, limit, report


def _child_cmd(name: str, ctx: dict) -> list[str]:
    return [sys.executable, "-m", "segood.bench.gpu_check", str(ctx["out"]), "--stage", name, "--work", str(ctx["work"]),
            "--device", ctx["device"], "--backend", ctx["backend"]] + (["--dry-run"] if ctx["dry_run"] else [])


def _run_child(name: str, ctx: dict, timeout: float, log) -> dict:
    """One stage in a child process (its own session, so a kill at the limit takes nvcc and
    ninja with it); its result file, or why there is none."""
    result = ctx["work"] / f"{name}.json"
    result.unlink(missing_ok=True)
    proc = subprocess.Popen(_child_cmd(name, ctx), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        return {"status": "failed", "seconds": round(timeout, 1),
                "error": f"stopped after {timeout:.0f} s (stage budget or the run's time limit)"}
    if result.exists():
        return json.loads(result.read_text())
    return {"status": "failed", "error": f"the stage process exited with code {code} and wrote no result "
                                         f"(see gpu_check.log)"}


def _target_rows(result: dict) -> list[dict]:
    """The issue's GPU targets, each with its value and pass / fail / n/a."""
    st = result["stages"]
    fig = {k: v.get("figures", {}) for k, v in st.items()}
    bench = fig.get("bench", {}).get("targets", {})
    limit = "1.5" if result["meta"]["device"] == "cuda" else "2"

    def bench_row(name: str, key: str, need_value_only: bool = False) -> dict:
        t = bench.get(key, {})
        ok = (t.get("value") is not None) if need_value_only else t.get("holds")
        if result["meta"]["dry_run"]:  # tiny sizes: no 100k / 1M rows
            ok = None
        return {"target": name, "value": t.get("value"), "pass": ok}

    train = fig.get("train_fp32", {}).get("step_ms")
    bf16 = fig.get("train_bf16", {}).get("step_ms")
    frame = fig.get("replay", {}).get("sizes", {}).get("120k", {}).get("frame_ms")
    return [
        {"target": "CUDA == CPU == reference, bit for bit (fp32 / fp16 / bf16)",
         "value": fig.get("bitexact", {}).get("comparisons"),
         "pass": st.get("bitexact", {}).get("status") == "ok" if "bitexact" in st else None},
        bench_row(f"FM op <= {limit}x a device copy, 1M x (64+64) fp32",
                  "feature_mixing_into x copy (P=1M, d=64+64, fp32)"),
        bench_row(">= 370x faster than NP-Mix as MultiOOD runs it (100k)", "feature_mixing vs npmix faithful (P=100k, d=64)"),
        bench_row("reported against GPU NP-Mix (cdist; 100k)", "feature_mixing vs npmix_cdist (P=100k, d=64)", True),
        {"target": "demo training step timed (fp32, ms)", "value": train, "pass": None if "train_fp32" not in st
         else train is not None},
        {"target": "demo training step timed (bf16 AMP, ms)", "value": bf16, "pass": None if "train_bf16" not in st
         else bf16 is not None},
        {"target": "120k-point replay frame timed (ms)", "value": frame, "pass": None if "replay" not in st
         else frame is not None},
    ]


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _brief(stage: dict) -> str:
    """A few figures of a stage for its table row."""
    if stage["status"] != "ok":
        return stage.get("error") or stage.get("reason", "")
    f = stage["figures"]
    if "sizes" in f:
        return "; ".join(f"{k}: {v['points']} pts, {v['frame_ms']:.1f} ms/frame (model {v['model_ms']:.1f})"
                         for k, v in f["sizes"].items())
    if "scores" in f:
        return "; ".join(f"{s}: AUROC {h['auroc']:.1f} AUPR {h['aupr']:.1f}" for s, h in list(f["scores"].items())[:3])
    if "rows" in f:
        return f"{len(f['rows'])} rows (table below)"
    keep = ("gpu", "torch", "nvcc", "seconds", "cuda_kernel", "comparisons", "step_ms", "backend", "final_loss", "note")
    return ", ".join(f"{k}={_cell(f[k])}" for k in keep if f.get(k) is not None)


def format_markdown(result: dict) -> str:
    """The one Markdown page: stages, targets (pass / fail columns), the synthesis bench rows."""
    m = result["meta"]
    lines = [f"# segood GPU check ({'dry run, ' if m['dry_run'] else ''}device {m['device']})", "",
             f"machine: {m.get('gpu') or 'no GPU'}; {m['cpu_cores']} CPU cores; torch {m['torch']}; "
             f"started {m['started']}; {m['seconds']:.0f} s of a {m['time_limit_s']:.0f} s limit", "",
             "| stage | status | s | figures |", "| --- | --- | ---: | --- |"]
    for name in STAGES:
        s = result["stages"].get(name)
        if s is None:
            lines.append(f"| {name} | pending | | |")
            continue
        lines.append(f"| {name} | {s['status']} | {_cell(s.get('seconds'))} | {_brief(s).replace('|', '/')} |")
    lines += ["", "| target | value | pass | fail |", "| --- | ---: | :---: | :---: |"]
    for t in result["targets"]:
        mark = {True: ("x", ""), False: ("", "x"), None: ("n/a", "n/a")}[t["pass"]]
        lines.append(f"| {t['target']} | {_cell(t['value'])} | {mark[0]} | {mark[1]} |")
    rows = result["stages"].get("bench", {}).get("figures", {}).get("rows", [])
    if rows:
        lines += ["", "| method | P | ms | x copy | vs npmix | vs npmix_cdist | note |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in rows:
            ms = ("~" if not r["measured"] else "") + _cell(r.get("ms"))
            lines.append(f"| {r['method']} | {r['points']} | {ms} | {_cell(r.get('x_copy'))} | "
                         f"{_cell(r.get('vs_npmix_faithful'))} | {_cell(r.get('vs_npmix_cdist'))} | {r.get('note') or ''} |")
    return "\n".join(lines) + "\n"


def _write(out: Path, result: dict) -> None:
    from segood.atomic import write_json, write_text

    result["targets"] = _target_rows(result)
    write_json(out / "gpu_check.json", result)
    write_text(out / "gpu_check.md", format_markdown(result))


def run_check(out: str | Path, device: str = "cuda", dry_run: bool = False, time_limit_s: float = 420.0,
              backend: str = "torch", stages: tuple[str, ...] = STAGES, clock=time.perf_counter) -> dict:
    """Run the stages in order within ``time_limit_s`` (measured with ``clock``, seconds); writes
    OUT/gpu_check.{json,md,log} after every stage and returns the JSON's content."""
    import tempfile

    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start, t0 = time.strftime("%Y-%m-%d %H:%M:%S"), clock()
    work = Path(tempfile.mkdtemp(prefix="segood_gpu_check_"))
    ctx = {"out": out, "work": work, "device": device, "dry_run": dry_run, "backend": backend}
    meta = {"device": device, "dry_run": dry_run, "time_limit_s": time_limit_s, "started": start,
            "torch": torch.__version__, "cpu_cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "budgets_s": {s: BUDGET_S[s] for s in stages}, "work": str(work), "seconds": 0.0}
    result = {"meta": meta, "stages": {}}
    try:
        with open(out / "gpu_check.log", "a") as log:
            for name in stages:
                left = time_limit_s - (clock() - t0) - 5.0
                if left < 15.0:
                    result["stages"][name] = {"status": "skipped", "reason": "time limit reached"}
                else:
                    # the stage budgets are the GPU machine's; a dry run (tiny sizes, any CPU and load) is
                    # bounded by the run's time limit only, so that a busy machine does not fail it
                    budget = left if dry_run else min(BUDGET_S[name], left)
                    print(f"[gpu_check] {name} (budget {budget:.0f} s) ...", flush=True)
                    log.write(f"\n===== stage {name} =====\n")
                    log.flush()
                    result["stages"][name] = _run_child(name, ctx, budget, log)
                s = result["stages"][name]
                print(f"[gpu_check] {name}: {s['status']} {_brief(s)[:200]}", flush=True)
                meta["seconds"] = clock() - t0
                _write(out, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


# ------------------------------------------------------------------ command line


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("out", help="folder for gpu_check.json, gpu_check.md and gpu_check.log (e.g. $OUT)")
    p.add_argument("--device", default=None, help="cuda (default when a GPU is present) or cpu")
    p.add_argument("--dry-run", action="store_true", help="every stage on the CPU with tiny sizes (< 1 min)")
    p.add_argument("--time-limit", type=float, default=420.0, help="seconds for the whole run (default 420)")
    p.add_argument("--backend", default="torch", help="model.lidar.backend for training (default torch)")
    p.add_argument("--stages", nargs="+", choices=STAGES, help="a subset, in the usual order (default: all)")
    p.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # internal: run one stage (child)
    p.add_argument("--work", help=argparse.SUPPRESS)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``gpu-check`` on ``segood bench``."""
    p = subparsers.add_parser("gpu-check", help="the prepared GPU check (tools/gpu_check.sh): build, bit-exactness, "
                                                "bench, train, replay, eval; one JSON + one Markdown table")
    configure_parser(p).set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    device = "cpu" if args.dry_run else (args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.stage:  # child: one stage, result into WORK/STAGE.json
        ctx = {"out": Path(args.out), "work": Path(args.work), "device": device, "dry_run": args.dry_run,
               "backend": args.backend}
        from segood.atomic import write_json

        write_json(ctx["work"] / f"{args.stage}.json", run_stage(args.stage, ctx))
        return 0
    stages = tuple(s for s in STAGES if s in (args.stages or STAGES))
    result = run_check(args.out, device, args.dry_run, args.time_limit, args.backend, stages)
    print(format_markdown(result))
    return 0 if all(s["status"] != "failed" for s in result["stages"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    return run(configure_parser(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
