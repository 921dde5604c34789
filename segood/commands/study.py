"""``segood study``: several configurations x several seeds on one benchmark, one table, one picture."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from segood.commands.common import add_overrides
from segood.config import CONFIG_DIR, ConfigError

BENCHMARK = (48, 16, 32)  # synthetic train / val / test scans: sized for a seed std of FOV AUROC <= 1.5


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "study", help="train CONFIG... for each seed, choose scores on val, report test (mean ± std, paired CI)",
        description="Train every configuration for every seed on one benchmark, evaluate on the val and test "
                    "splits, choose each configuration's headline score on val and report the test split: mean ± "
                    "std over seeds and the paired difference to the reference with a 95%% interval. Finished runs "
                    "are skipped, interrupted ones resume: re-run the same command to continue.")
    p.add_argument("configs", nargs="+", metavar="[NAME=]CONFIG",
                   help="experiment configs (a path, or a file name in configs/); NAME defaults to the file stem")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", required=True, help="study folder (data/, runs/<name>/seed<k>/, summary.md)")
    p.add_argument("--reference", default=None, help="configuration the others are compared with (default: the first)")
    p.add_argument("--data", default=None,
                   help="an existing data root with train/val/test sequences; default: generate the synthetic "
                        "benchmark in OUT/data")
    p.add_argument("--benchmark", default="standard", metavar="{standard,near}",
                   help="the generated synthetic benchmark: standard (OOD objects novel in both modalities or "
                        "cross-modal; the README tables) or near (held-out buses and trams with ID colours and "
                        "reflectivities, unlabelled in train, OOD in val/test: the REAL protocol)")
    p.add_argument("--scans", type=int, nargs=3, default=list(BENCHMARK), metavar=("TRAIN", "VAL", "TEST"),
                   help="scans per split of the generated synthetic benchmark (default %(default)s)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated benchmark (fixed across runs)")
    p.add_argument("--azimuth-columns", type=int, default=512)
    p.add_argument("--steps", type=int, default=None, help="training steps of every run (default: each config's)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs trained side by side (default: 2 on a machine with 2+ cores)")
    p.add_argument("--report-only", action="store_true", help="summarise the finished runs, train nothing")
    add_overrides(p)  # applied to every run
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)
    return p


def parse_arm(spec: str):
    from segood.engine.study import Arm

    name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    resolved = Path(path) if Path(path).is_file() else CONFIG_DIR / path
    if not resolved.is_file():
        raise ConfigError(f"study: config '{path}' not found (as a path or in {CONFIG_DIR})")
    return Arm(name or resolved.stem, str(resolved))


def ensure_benchmark(args) -> Path:
    """The data root: ``--data``, or the synthetic benchmark generated (once) in OUT/data. A study folder
    belongs to one benchmark: another --benchmark / --scans / --data-seed / --azimuth-columns is refused
    (its finished runs would be reused)."""
    from segood.atomic import write_json
    from segood.synthetic import SyntheticConfig, ensure_dataset

    data = Path(args.data) if args.data else Path(args.out) / "data"
    if args.data is None:
        train, val, test = args.scans
        spec = {"benchmark": args.benchmark, "scans": [train, val, test], "data_seed": args.data_seed,
                "azimuth_columns": args.azimuth_columns}
        marker = Path(args.out) / "benchmark.json"
        if marker.is_file() and json.loads(marker.read_text()) != spec:
            raise ConfigError(f"study: {args.out} was made for the benchmark {json.loads(marker.read_text())}, not "
                              f"{spec}; use another --out")
        ensure_dataset(data, SyntheticConfig(num_train=train, num_val=val, num_test=test, benchmark=args.benchmark,
                                             azimuth_columns=args.azimuth_columns, seed=args.data_seed),
                       progress=not args.no_progress)
        write_json(marker, spec)
    return data


def arm_facts(arms, results, args: argparse.Namespace) -> dict[str, dict]:
    """Per configuration, for the ablation table: its config file, its ``inherit`` chain and the command that
    runs (or resumes) it alone into this study folder with the seeds it has finished."""
    from segood.config import inherit_chain

    out = {}
    for arm in arms:
        seeds = sorted(results.get(arm.name, {})) or args.seeds
        config = Path(arm.config)
        shipped = config.parent.resolve() == CONFIG_DIR.resolve()
        cmd = ["segood", "study", f"{arm.name}={config.name if shipped else config}", "--seeds", *map(str, seeds),
               "--out", str(args.out)]
        if args.data:
            cmd += ["--data", str(args.data)]
        else:
            cmd += ["--benchmark", args.benchmark, "--data-seed", str(args.data_seed)]
            cmd += ["--scans", *map(str, args.scans)] if list(args.scans) != list(BENCHMARK) else []
        cmd += ["--steps", str(args.steps)] if args.steps else []
        cmd += [a for item in args.set for a in ("--set", item)]
        out[arm.name] = {"config": arm.config, "chain": inherit_chain(arm.config), "command": shlex.join(cmd)}
    return out


def run(args: argparse.Namespace) -> int:
    from segood.engine.interrupt import Interrupted
    from segood.engine.study import check_configs, load_results, plan_runs, run_study
    from segood.report.study import summarize_study, write_study_report

    arms = [parse_arm(s) for s in args.configs]
    reference = args.reference or arms[0].name
    if reference not in {a.name for a in arms}:
        raise ConfigError(f"study: --reference '{reference}' is not one of {[a.name for a in arms]}")
    t0 = time.time()
    given = [*args.set] + ([f"train.steps={args.steps}"] if args.steps else [])
    check_configs(plan_runs(arms, args.seeds, Path(args.out), given))  # before the benchmark data is made
    data = ensure_benchmark(args)
    overrides = [f"data.root={data.resolve()}", *given]
    specs = plan_runs(arms, args.seeds, Path(args.out), overrides)
    steps = int(specs[0].config()["train"]["steps"])
    try:
        statuses = [] if args.report_only else run_study(specs, steps, jobs=args.jobs, progress=not args.no_progress)
    except Interrupted as stop:
        print(f"segood study: {stop.signal_name}: {stop}\nresume with the same command (finished runs are "
              f"skipped, interrupted ones resume): {shlex.join(['segood', *sys.argv[1:]])}", file=sys.stderr)
        return stop.exit_code
    for s in statuses:
        if not s["ok"] and not s.get("interrupted"):
            print(f"[study] {s['arm']} seed {s['seed']} FAILED: {s['error']}\n{s['traceback']}")
    results = load_results(specs)
    if not results:
        raise ConfigError(f"study: no finished run under {args.out}/runs")
    context = {"command": "segood study " + " ".join(args.configs) + f" --seeds {' '.join(map(str, args.seeds))}"
                          + f" --out {args.out}" + (f" --benchmark {args.benchmark}" if args.data is None else ""),
               "data": str(data) + ("" if args.data else f" (synthetic {args.benchmark} benchmark, data seed "
                                                         f"{args.data_seed})"), "steps": steps,
               "runs finished": sum(len(v) for v in results.values()), "runs planned": len(specs),
               "wall time this call (s)": round(time.time() - t0), "jobs": args.jobs}
    text = write_study_report(Path(args.out), summarize_study(results, reference, arm_facts(arms, results, args)),
                              context)
    print(text)
    print(f"[study] report: {Path(args.out) / 'summary.md'}  picture: {Path(args.out) / 'study.png'}")
    return 0 if all(s["ok"] for s in statuses) else 1
