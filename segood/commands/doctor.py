"""``segood doctor``: check this environment (see :mod:`segood.doctor`) and print the fix for each
problem; exit 1 when something asked for cannot work."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``doctor`` on the ``segood`` subparsers."""
    from segood.doctor import COMPONENTS

    p = subparsers.add_parser(
        "doctor", help="check Python, torch/CUDA, spconv, the kernel, open3d, rosbags, nuscenes-devkit",
        description="Check the environment and print the fix for each problem. Exit code 1 when something "
                    "asked for cannot work: the core (torch, spconv, the Feature Mixing extension) always, "
                    "viz / ros / nuscenes when installed or named with --need, the GPU only with --need gpu.")
    p.add_argument("--need", nargs="+", choices=COMPONENTS, default=[],
                   help="components that must work even if not installed (e.g. --need viz gpu)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    """Run every check, print the report, return the exit code."""
    from segood.doctor import environment_note, format_report, problems, run_checks

    checks = run_checks()
    bad = problems(checks, set(args.need))
    if args.json:
        print(json.dumps({"checks": [asdict(c) for c in checks], "problems": [c.name for c in bad]}, indent=1))
    else:
        print(environment_note())
        print(format_report(checks, bad))
    sys.stdout.flush()
    return 1 if bad else 0
