"""``segood bench synthesis|memory|gpu-check|train-step|replay``: benchmarks that print figures and ratios measured in one run."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    from segood.bench import gpu_check, memory, replay, synthesis, train_step

    p = subparsers.add_parser("bench", help="benchmarks (print figures and ratios measured in one run)")
    sub = p.add_subparsers(dest="bench", required=True)
    synthesis.add_parser(sub)
    memory.add_parser(sub)
    gpu_check.add_parser(sub)
    train_step.add_parser(sub)
    replay.add_parser(sub)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    return args.func(args)
