#!/usr/bin/env python
"""Outlier-synthesis benchmark (segood.bench.synthesis): time per call of every synthesizer vs a
clone floor, speed-ups over NP-Mix, and the share of synthesis in a demo training step.

    .venv/bin/python tools/bench_synthesis.py --quick --out /tmp/bench      # ~10 s
    .venv/bin/python tools/bench_synthesis.py --out runs/bench_synthesis    # full run
"""
from __future__ import annotations

import argparse
import sys

from segood.bench.synthesis import configure_parser, run

if __name__ == "__main__":
    parser = configure_parser(argparse.ArgumentParser(description=__doc__,
                                                      formatter_class=argparse.RawDescriptionHelpFormatter))
    sys.exit(run(parser.parse_args()))
