"""The arguments every config-driven subcommand shares: ``--set KEY=VALUE`` (defined once, in
:func:`segood.config.add_overrides`) and ``--no-progress``."""
from __future__ import annotations

import argparse

from segood.config import add_overrides

__all__ = ["add_overrides", "add_common"]


def add_common(p: argparse.ArgumentParser, example: str = "train.steps=200") -> None:
    """``--set`` plus ``--no-progress`` (logs only, no progress bars)."""
    add_overrides(p, example)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
