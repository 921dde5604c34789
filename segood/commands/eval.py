"""``segood eval CONFIG --ckpt CKPT --out DIR`` (one run) or ``segood eval [CONFIG] --compare RUN ... --out DIR``.

The pass is :func:`segood.engine.evaluate.evaluate`; the report and the comparison are sinks in
:mod:`segood.report`; this module joins them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from segood.commands.common import add_common
from segood.report.markdown import SUBSETS


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint (metrics.json, report.md, pictures) or compare runs")
    add_eval_arguments(p)
    p.set_defaults(run=run_eval)
    return p


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """``segood eval CONFIG --ckpt CKPT --out DIR`` or ``segood eval [CONFIG] --compare RUN ... --out DIR``."""
    p.add_argument("config", nargs="?", help="experiment config (optional with --compare)")
    p.add_argument("--ckpt", help="checkpoint to evaluate")
    p.add_argument("--out", required=True, help="folder for metrics.json, report.md and pictures")
    p.add_argument("--compare", nargs="+", metavar="RUN",
                   help="compare runs: run folders (RUN/eval/metrics.json; evaluated first if only "
                        "RUN/checkpoint.pt exists and CONFIG is given) or metrics.json paths")
    p.add_argument("--protocol", action="append", metavar="NAME",
                   help="also report a reference evaluator's numbers: real | nuscenes_devkit | stu (repeatable; "
                        "= eval.protocol)")
    p.add_argument("--points", choices=SUBSETS, default="fov", help="subset shown in the comparison (default fov)")
    add_common(p, example="eval.score_options.knn.k=20")


def evaluate_and_report(cfg: dict, ckpt_path: str | Path, out_dir: str | Path, progress: bool = True) -> dict:
    """The evaluation pass with every output: metrics.json, histograms.npz, report.md and its pictures."""
    from segood.engine.evaluate import evaluate
    from segood.report.markdown import write_eval_report

    return evaluate(cfg, ckpt_path, out_dir, progress, report=write_eval_report)


def load_runs(runs: list[str], cfg: dict | None = None, progress: bool = True) -> dict[str, dict]:
    """``{label: metrics}`` for each RUN; a run folder with checkpoint.pt but no eval/metrics.json is
    evaluated first when a config is given."""
    from segood.report.compare import find_run_metrics, run_label

    out: dict[str, dict] = {}
    for run in runs:
        path = find_run_metrics(run)
        if path is None and cfg is not None and (Path(run) / "checkpoint.pt").is_file():
            evaluate_and_report(cfg, Path(run) / "checkpoint.pt", Path(run) / "eval", progress)
            path = Path(run) / "eval" / "metrics.json"
        if path is None:
            raise FileNotFoundError(f"{run}: expected a metrics.json, or a run folder with eval/metrics.json "
                                    "(or with checkpoint.pt, together with a CONFIG to evaluate it)")
        label = run_label(path)
        while label in out:
            label += "'"
        out[label] = json.loads(path.read_text())
    return out


def compare_runs(runs: list[str], out_dir: str | Path, cfg: dict | None = None, points: str = "fov",
                 progress: bool = True) -> dict[str, dict]:
    """Write comparison.png / comparison.md / comparison.json for several runs into ``out_dir``."""
    from segood.report.compare import write_comparison

    loaded = load_runs(runs, cfg, progress)
    write_comparison(loaded, out_dir, points)
    return loaded


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate one checkpoint, or compare several runs (``--compare``)."""
    from segood.atomic import check_writable
    from segood.config import ConfigError
    from segood.engine.families import load_config
    from segood.report.markdown import format_metrics

    check_writable(args.out, "--out folder")
    overrides = list(args.set or []) + ([f"eval.protocol={json.dumps(args.protocol)}"] if args.protocol else [])
    cfg = load_config(args.config, overrides) if args.config else None
    if args.compare:
        compare_runs(args.compare, args.out, cfg, args.points, not args.no_progress)
        print(f"comparison: {Path(args.out) / 'comparison.png'}  {Path(args.out) / 'comparison.md'}")
        return 0
    if cfg is None or not args.ckpt:
        raise ConfigError("give CONFIG and --ckpt CKPT, or --compare RUN ...")
    m = evaluate_and_report(cfg, args.ckpt, args.out, progress=not args.no_progress)
    print(format_metrics(m))
    print(f"metrics: {Path(args.out) / 'metrics.json'}  report: {Path(args.out) / 'report.md'}")
    return 0
