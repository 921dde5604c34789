"""``segood fit-scores CONFIG --ckpt CKPT``: fit the feature-based scores, save them beside the checkpoint."""
from __future__ import annotations

import argparse

from segood.commands.common import add_common


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("fit-scores", help="fit the feature-based OOD scores on the train split")
    p.add_argument("config")
    p.add_argument("--ckpt", required=True)
    add_common(p, example="eval.fit_points=40000")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Fit the feature-based scores of one checkpoint on its config's train split."""
    from segood.config import load_config
    from segood.engine.fit import fit_scores

    path = fit_scores(load_config(args.config, args.set), args.ckpt, progress=not args.no_progress)
    print(f"fitted scores: {path}")
    return 0
