"""``segood bench NAME``: benchmarks that print figures and ratios measured in one run. Each lives in
a module of :mod:`segood.bench` with ``add_parser(subparsers)`` registering its ``run(args)``."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    from segood.bench import eval_memory, gpu_check, memory, probe_head, replay, sparse_backends, synthesis

    p = subparsers.add_parser("bench", help="benchmarks (print figures and ratios measured in one run)")
    sub = p.add_subparsers(dest="bench", required=True)
    for module in (synthesis, memory, eval_memory, replay, sparse_backends, probe_head, gpu_check):
        module.add_parser(sub)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    return args.func(args)
