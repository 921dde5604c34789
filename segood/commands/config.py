"""``segood config --show [SECTION]``: every config key with its default, type / range and doc, registry
members' options included; ``segood config --base`` prints ``configs/base.yaml`` (generated from the schema)."""
from __future__ import annotations

import argparse
from typing import Iterator, Sequence

from segood.config import ConfigError, Family
from segood.config_schema import MEMBERS, SCHEMA, describe, render_base, walk, yaml_value
from segood.options import Opt


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("config", help="list every config key (default, type, range, doc) or print base.yaml",
                              description="List every config key with its default, type / range and doc, the "
                                          "options of every score, synthesizer and reader included.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--show", nargs="?", const="", metavar="SECTION",
                      help="list the keys (all, or those under SECTION, e.g. train, synthesis, synthesis.npmix)")
    what.add_argument("--base", action="store_true",
                      help="print configs/base.yaml as the schema generates it (> configs/base.yaml after editing "
                           "segood/config_schema.py)")
    p.set_defaults(run=run)
    return p


def rows(families: Sequence[Family]) -> Iterator[tuple[str, Opt, str]]:
    """(dotted key, Opt, note) for every schema key and every family member's option."""
    by_options = {f.options: f for f in families}
    for key, opt in walk():
        family = by_options.get(key)
        if not key.endswith("." + MEMBERS):
            yield key, opt, ""
        if family is None:
            continue
        for member, options in sorted(family.members().items()):
            where = key.replace(MEMBERS, member) if family.per_member else key
            note = f"{family.name} '{member}'" if family.per_member else f"when {family.select}: {member}"
            for name, member_opt in options.items():
                yield f"{where}.{name}", member_opt, note


def listing(section: str, families: Sequence[Family]) -> list[str]:
    """The lines of ``--show SECTION`` (every key when ``section`` is empty)."""
    chosen = [r for r in rows(families) if not section or r[0] == section or r[0].startswith(section + ".")]
    if not chosen:
        raise ConfigError(f"segood config --show {section}: no such key or section (sections: "
                          f"{', '.join(k for k, v in SCHEMA.items() if isinstance(v, dict))})")
    width = max(len(k) for k, _, _ in chosen)
    return [f"{key:<{width}}  {yaml_value(opt.default):<10}  {describe(opt)}" + (f"  [{note}]" if note else "")
            for key, opt, note in chosen]


def run(args: argparse.Namespace) -> int:
    from segood.engine.families import FAMILIES

    if args.base:
        print(render_base(), end="")
    else:
        print("\n".join(listing(args.show, FAMILIES)))
    return 0
