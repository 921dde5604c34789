"""The arguments every config-driven subcommand shares: ``--set KEY=VALUE`` and ``--no-progress``."""
from __future__ import annotations

import argparse


def add_overrides(p: argparse.ArgumentParser | argparse._ArgumentGroup,
                  example: str = "train.steps=200") -> None:
    """``--set KEY=VALUE`` (repeatable): config overrides, applied in order by :func:`segood.config.load_config`."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, e.g. --set {example} (repeatable)")


def add_common(p: argparse.ArgumentParser, example: str = "train.steps=200") -> None:
    """``--set`` plus ``--no-progress`` (logs only, no progress bars)."""
    add_overrides(p, example)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
