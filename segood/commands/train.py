"""``segood train CONFIG --out RUN [--resume]``."""
from __future__ import annotations

import argparse
import shlex
import sys

from segood.commands.common import add_common


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="experiment config, e.g. configs/synthetic_feature_mixing.yaml")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, train.log, history.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_common(p)
    p.set_defaults(run=run)
    return p


def resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run."""
    words = ["segood", "train", args.config, "--out", args.out, "--resume"]
    words += [w for kv in args.set for w in ("--set", kv)] + (["--no-progress"] if args.no_progress else [])
    return shlex.join(str(w) for w in words)


def run(args: argparse.Namespace) -> int:
    from segood.engine.families import load_config
    from segood.engine.interrupt import Interrupted
    from segood.engine.train import train

    try:
        ckpt = train(load_config(args.config, args.set), args.out, resume=args.resume, progress=not args.no_progress)
    except Interrupted as stop:
        print(f"segood train: {stop.signal_name}: {stop}\nresume with: {resume_command(args)}", file=sys.stderr)
        return stop.exit_code
    print(f"checkpoint: {ckpt}")
    return 0
