"""``segood demo``: the main job (see :mod:`segood.demo`)."""
from __future__ import annotations

import argparse
import os

from segood.commands.common import add_overrides


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="the main job: synthetic data, late fusion vs Feature Mixing, report")
    p.add_argument("--out", default="runs/demo", help="demo folder (data, runs, report)")
    p.add_argument("--data", default=None, help="use/generate the synthetic data here (default OUT/data)")
    p.add_argument("--steps", type=int, default=300,
                   help="training steps per model (same budget for both; `segood study` uses 400)")
    p.add_argument("--train-scans", type=int, default=24)
    p.add_argument("--val-scans", type=int, default=8, help="chooses each model's score and threshold")
    p.add_argument("--test-scans", type=int, default=8, help="the reported split")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="trainings side by side")
    p.add_argument("--azimuth-columns", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    add_overrides(p)  # applied to both runs
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from segood.demo import run_demo

    run_demo(args)
    return 0
