"""Outlier-synthesis benchmark: time per call of every synthesizer against a memory-copy floor,
and the share of synthesis in one training step of the demo model.

Inputs, per (P points, d dims, dtype): ``feat_image``, ``feat_lidar`` ~ N(0, 1) of shape (P, d)
(d_c = d_l = d), ``visible`` all True (``visible_fraction=1.0``: training crops scans to the
camera FOV, so every point is visible before camera dropout; this is also the largest outlier
count), ``target`` uniform over ``classes`` (19), no ignored points. Every synthesizer runs with
``max_points=None``: every eligible point becomes an outlier (Feature Mixing's natural setting),
except VOS, which keeps ``select`` (1) outlier per present class by design. The methods are every
synthesizer of :data:`segood.ood.synthesis.SYNTHESIZERS` with base.yaml's options, the option
variants and the probes of :mod:`segood.bench.synthesis_methods` (``--methods`` picks some). Features do not
require grad (forward only). A method's time is the median over ``repeats`` calls after
``warmup`` calls (``torch.cuda.synchronize`` around each call on CUDA); a call stops the repeats
early once ``budget_s`` is spent (the number actually taken is recorded). Bank-based methods keep
their synthesizer across calls, so after warm-up their banks are full (steady state).

What one call is, per method: :func:`segood.bench.synthesis_methods.describe` (also in the JSON).

Bytes moved (all methods) = the clone's read + write of both tensors, ``2 * P * (d_c + d_l) *
itemsize``; a method's GB/s is those bytes / its time (effective bandwidth, comparable across
methods). ``x_clone`` = t / t_clone; ``vs_npmix_faithful`` = t_npmix_faithful / t; ``vs_npmix_cdist`` =
t_npmix_cdist / t.
Faithful NP-Mix above ``faithful_max_points`` is not run: its time is the straight line through
the two largest measured P of the same (d, dtype) (its cost is a constant plus a per-point
enqueue), marked ``measured: false``; ratios that use it are marked ``~`` in the table.

``copy`` (``copy_`` into outputs allocated once) shows the bandwidth alone: above 32 MB every
fresh output is a new ``mmap`` whose page faults a clone and every method pay (measured: 2 x 256
MB, clone 187 ms, copy 35 ms). Ratios stay against ``clone``, which allocates like the methods.

torch is imported inside the functions, so ``segood --help`` does not pay for it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from pathlib import Path
from typing import Sequence

from segood.bench.synthesis_methods import (PROBES, all_methods, base_synthesis_cfg, check_methods, describe,
                                            make_inputs, method_call)
from segood.bench.synthesis_report import SLOW, derive, extrapolate, format_table, machine, plot_chart, targets
from segood.bench.synthesis_train import train_step_share
from segood.bench.timing import supported_dtypes, time_calls

__all__ = ["run_synthesis_bench", "train_step_share", "format_table", "plot_chart", "configure_parser", "add_parser",
           "run", "all_methods"]

QUICK = {"points": (2000,), "dims": (32,), "dtypes": ("float32",), "repeats": 1, "warmup": 1}


# ------------------------------------------------------------------ entry points


def run_synthesis_bench(points: Sequence[int] = (10_000, 100_000, 1_000_000), dims: Sequence[int] = (64, 128),
                        dtypes: Sequence[str] = ("float32", "bfloat16", "float16"), classes: int = 19,
                        repeats: int = 5, warmup: int = 1, device: str = "cpu", out_dir: str | Path = "runs/bench_synthesis",
                        methods: Sequence[str] | None = None, visible_fraction: float = 1.0,
                        faithful_max_points: int = 100_000, budget_s: float = 20.0, train_step: bool = True,
                        train_kwargs: dict | None = None, threads: int | None = None, seed: int = 0,
                        verbose: bool = True) -> dict:
    """Run the benchmark (see the module docstring); writes ``bench_synthesis.json`` and
    ``bench_synthesis.png`` into ``out_dir`` and returns the JSON's content. Dtypes the device
    cannot handle are dropped; a method that fails records its error and the run goes on.
    ``threads``: torch intra-op threads for the run (None: unchanged); on a machine shared with
    other jobs, 1 thread avoids parallel regions waiting on a descheduled worker. ``methods``: default
    every probe, registry synthesizer and variant (:func:`segood.bench.synthesis_methods.all_methods`)."""
    import torch

    methods = all_methods() if methods is None else list(methods)
    check_methods(methods)

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(points, dims, dtypes, classes, repeats, warmup, device, Path(out_dir), methods, visible_fraction,
                    faithful_max_points, budget_s, train_step, train_kwargs, seed, verbose)
    finally:
        torch.set_num_threads(previous)


def _run(points, dims, dtypes, classes, repeats, warmup, device, out_dir, methods, visible_fraction,
         faithful_max_points, budget_s, train_step, train_kwargs, seed, verbose) -> dict:
    from segood.ood.feature_mixing import anchor_mask

    out_dir.mkdir(parents=True, exist_ok=True)
    methods = list(dict.fromkeys(["clone", *methods]))       # the floor is always measured
    dtypes = supported_dtypes(dtypes, device)
    cfg = base_synthesis_cfg(max_points=None)
    load_before = os.getloadavg()
    say = print if verbose else (lambda *a, **k: None)
    rows: list[dict] = []
    t_start = time.time()
    for dim in dims:
        for dtype in dtypes:
            for p in sorted(points):
                fi, fl, batch = make_inputs(p, dim, dtype, classes, visible_fraction, device, seed)
                nbytes = 2 * p * (fi.shape[1] + fl.shape[1]) * fi.element_size()
                for m in methods:
                    row = {"method": m, "points": p, "dim": dim, "dtype": dtype, "bytes": nbytes, "measured": True}
                    rows.append(row)
                    if m == SLOW and p > faithful_max_points:
                        row.update(measured=False, outliers=int(anchor_mask(batch).sum()))
                        continue
                    info: dict = {}
                    try:
                        samples = time_calls(method_call(m, fi, fl, batch, cfg, classes, seed, info),
                                             repeats, warmup, budget_s, device)
                        row.update(ms=statistics.median(samples) * 1e3, repeats=len(samples),
                                   samples_ms=[s * 1e3 for s in samples], outliers=info.get("outliers", 0))
                    except Exception as exc:  # noqa: BLE001 - record and go on (e.g. a dtype a method lacks)
                        row["note"] = f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
                    say(f"[bench] {m:22s} P={p:<8d} d={dim:<4d} {dtype:9s} "
                        f"{row.get('ms', float('nan')):10.3f} ms {row.get('note', '')}", flush=True)
                del fi, fl, batch
                gc.collect()
    extrapolate(rows)
    derive(rows)
    train = None
    if train_step:
        say("[bench] training-step share ...", flush=True)
        train = train_step_share(methods=[m for m in methods if m not in PROBES], device=device, seed=seed,
                                 **(train_kwargs or {}))
    result = {
        "meta": {**machine(), "device": device, "classes": classes, "n_swap": int(cfg["n_swap"]),
                 "visible_fraction": visible_fraction, "target": f"uniform over {classes} classes, none ignored",
                 "max_points": None, "repeats": repeats, "warmup": warmup, "budget_s": budget_s,
                 "faithful_max_points": faithful_max_points, "loadavg_before": load_before,
                 "loadavg_after": os.getloadavg(), "seconds": round(time.time() - t_start, 1),
                 "bytes": "2 * P * (d_c + d_l) * itemsize (read + write of both tensors, = clone)",
                 "timed": {m: describe(m) for m in methods}},
        "results": rows, "train_step": train, "targets": targets(rows, train, device),
    }
    (out_dir / "bench_synthesis.json").write_text(json.dumps(result, indent=1) + "\n")
    chart = (100_000, 64, "float32")
    if not any((r["points"], r["dim"], r["dtype"]) == chart for r in rows):
        chart = (max(points), dims[0], dtypes[0])
    plot_chart(rows, out_dir / "bench_synthesis.png", *chart)
    say(format_table(result))
    say(f"[bench] wrote {out_dir / 'bench_synthesis.json'} and {out_dir / 'bench_synthesis.png'}; "
        f"load average before {load_before}, after {result['meta']['loadavg_after']}")
    return result


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options (``segood bench synthesis``)."""
    p.add_argument("--points", type=int, nargs="+", help="P values (default 10000 100000 1000000)")
    p.add_argument("--dims", type=int, nargs="+", help="d per modality (default 64 128)")
    p.add_argument("--dtypes", nargs="+", help="default float32 bfloat16 float16 (unsupported ones are skipped)")
    p.add_argument("--methods", nargs="+", help="probes, registry synthesizers and variants (default: all; an unknown "
                                                "name lists the valid ones)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default="runs/bench_synthesis", help="folder for bench_synthesis.json/.png")
    p.add_argument("--repeats", type=int, help="timed calls per method (median; default 5)")
    p.add_argument("--warmup", type=int, help="untimed calls first (default 1)")
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timed calls per method before stopping")
    p.add_argument("--faithful-max-points", type=int, default=100_000,
                   help="above this P the faithful NP-Mix is extrapolated, not run")
    p.add_argument("--visible-fraction", type=float, default=1.0)
    p.add_argument("--threads", type=int, help="torch threads during the run (default: unchanged)")
    p.add_argument("--no-train-step", action="store_true", help="skip the training-step share")
    p.add_argument("--quick", action="store_true",
                   help="small run: P=2000, d=32, float32, 1 repeat, tiny training step (options given win)")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``synthesis`` on an argparse sub-parsers object (``segood bench synthesis``)."""
    p = subparsers.add_parser("synthesis", help="time the outlier synthesizers against a clone floor")
    configure_parser(p).set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run from parsed options; returns the exit code."""
    quick = QUICK if args.quick else {}
    pick = lambda name, default: getattr(args, name) or quick.get(name, default)  # noqa: E731
    train_kwargs = {"repeats": 1, "warmup": 1, "azimuth_columns": 128, "image_size": (160, 48)} if args.quick else {}
    run_synthesis_bench(points=pick("points", (10_000, 100_000, 1_000_000)), dims=pick("dims", (64, 128)),
                        dtypes=pick("dtypes", ("float32", "bfloat16", "float16")),
                        repeats=pick("repeats", 5), warmup=quick.get("warmup", 1) if args.warmup is None else args.warmup,
                        device=args.device, out_dir=args.out, methods=args.methods,
                        visible_fraction=args.visible_fraction, faithful_max_points=args.faithful_max_points,
                        budget_s=args.budget, train_step=not args.no_train_step, train_kwargs=train_kwargs,
                        threads=args.threads)
    return 0
