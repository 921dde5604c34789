"""The ``segood`` command line: make-synthetic, train, eval, fit-scores, demo."""
from __future__ import annotations

import argparse
import sys

from segood.config import ConfigError


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=200 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segood",
        description="LiDAR-camera out-of-distribution segmentation with Feature Mixing.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-synthetic", help="write synthetic LiDAR+camera scenes in the SemanticKITTI layout")
    p.add_argument("--out", required=True, help="output root (gets sequences/00 train and sequences/08 val)")
    p.add_argument("--train-scans", type=int, default=24)
    p.add_argument("--val-scans", type=int, default=8)
    p.add_argument("--azimuth-columns", type=int, default=1024, help="LiDAR columns over 360 deg (64 beams)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="experiment config, e.g. configs/synthetic_feature_mixing.yaml")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, train.log, history.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _add_common(p)

    from segood.engine.report import add_eval_arguments, add_fit_arguments

    add_eval_arguments(sub.add_parser(
        "eval", help="evaluate a checkpoint (metrics.json, report.md, pictures) or compare runs"))
    add_fit_arguments(sub.add_parser("fit-scores", help="fit the feature-based OOD scores on the train split"))
    from segood import check_cli
    from segood.ros import cli as ros_cli
    from segood.viz import cli as viz_cli

    check_cli.add_parser(sub)
    viz_cli.add_parser(sub)
    ros_cli.add_parser(sub)
    from segood.commands import doctor as doctor_command

    doctor_command.add_parser(sub)
    from segood.bench import memory as bench_memory
    from segood.bench import synthesis as bench_synthesis

    benches = sub.add_parser("bench", help="benchmarks (print figures and ratios measured in one run)")
    bench_sub = benches.add_subparsers(dest="bench", required=True)
    bench_synthesis.add_parser(bench_sub)
    bench_memory.add_parser(bench_sub)

    p = sub.add_parser("demo", help="the main job: synthetic data, baseline vs Feature Mixing, report")
    p.add_argument("--out", default="runs/demo", help="demo folder (data, runs, report)")
    p.add_argument("--data", default=None, help="use/generate the synthetic data here (default OUT/data)")
    p.add_argument("--steps", type=int, default=400, help="training steps per model (same budget for both)")
    p.add_argument("--train-scans", type=int, default=24)
    p.add_argument("--val-scans", type=int, default=8)
    p.add_argument("--azimuth-columns", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to both runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as e:
        from segood.messages import user_message

        print(f"segood {args.command}: error: {user_message(e)}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    if getattr(args, "func", None):
        return args.func(args)
    if args.command == "make-synthetic":
        from segood.data.synthetic import SyntheticConfig, write_dataset

        cfg = SyntheticConfig(num_train=args.train_scans, num_val=args.val_scans,
                              azimuth_columns=args.azimuth_columns, seed=args.seed)
        summary = write_dataset(args.out, cfg)
        print(f"wrote {args.out}: {summary.get('counts', summary)}")
        return 0
    if args.command == "demo":
        from segood.demo import run_demo

        run_demo(args)
        return 0
    if args.command in ("check-data", "viz", "replay"):
        from segood import check_cli
        from segood.ros import cli as ros_cli
        from segood.viz import cli as viz_cli

        return {"check-data": check_cli, "viz": viz_cli, "replay": ros_cli}[args.command].run(args)
    if args.command in ("eval", "fit-scores"):
        from segood.engine.report import run_eval, run_fit

        return run_eval(args) if args.command == "eval" else run_fit(args)
    from segood.config import load_config

    cfg = load_config(args.config, args.set)
    if args.command == "train":
        from segood.engine.train import train

        ckpt = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
        print(f"checkpoint: {ckpt}")
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
