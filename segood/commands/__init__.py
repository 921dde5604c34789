"""Subcommands of ``segood``: each module has ``add_parser(subparsers)``, which sets ``func``."""
