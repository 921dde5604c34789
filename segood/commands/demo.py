"""``segood demo``: the main job (see :mod:`segood.demo`)."""
from __future__ import annotations

import argparse

from segood.commands.common import add_overrides


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="the main job: synthetic data, baseline vs Feature Mixing, report")
    p.add_argument("--out", default="runs/demo", help="demo folder (data, runs, report)")
    p.add_argument("--data", default=None, help="use/generate the synthetic data here (default OUT/data)")
    p.add_argument("--steps", type=int, default=400, help="training steps per model (same budget for both)")
    p.add_argument("--train-scans", type=int, default=24)
    p.add_argument("--val-scans", type=int, default=8)
    p.add_argument("--azimuth-columns", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    add_overrides(p)  # applied to both runs
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from segood.demo import run_demo

    run_demo(args)
    return 0
