"""The ``segood`` command line. It only assembles the subcommands of :mod:`segood.commands`: each
module there has ``add_parser(subparsers)``, which registers its ``run(args) -> exit code``."""
from __future__ import annotations

import argparse
import sys

from segood.commands import (bench, check_data, demo, doctor, fit_scores, make_synthetic, predict, replay, study, train,
                             viz)
from segood.commands import config as config_cmd
from segood.commands import eval as eval_cmd
from segood.config import ConfigError
from segood.engine.interrupt import Interrupted

# In the order `segood --help` lists them.
COMMANDS = (make_synthetic, train, eval_cmd, fit_scores, predict, check_data, viz, replay, bench, study, demo, config_cmd,
            doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segood",
        description="LiDAR-camera out-of-distribution segmentation with Feature Mixing.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as e:
        from segood.messages import user_message

        print(f"segood {args.command}: error: {user_message(e)}", file=sys.stderr)
        return 2
    except Interrupted as stop:  # a training inside another command (demo, bench) stopped cleanly
        print(f"segood {args.command}: {stop.signal_name}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside a training step (which stops cleanly, see engine/interrupt.py)
        print(f"segood {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
