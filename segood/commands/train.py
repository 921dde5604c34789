"""``segood train CONFIG --out RUN [--resume]``."""
from __future__ import annotations

import argparse

from segood.commands.common import add_common


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="experiment config, e.g. configs/synthetic_feature_mixing.yaml")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, train.log, history.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_common(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from segood.engine.families import load_config
    from segood.engine.train import train

    ckpt = train(load_config(args.config, args.set), args.out, resume=args.resume, progress=not args.no_progress)
    print(f"checkpoint: {ckpt}")
    return 0
