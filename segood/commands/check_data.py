"""``segood check-data CONFIG``: config -> readers -> :mod:`segood.data.check` (wired into segood.cli).

Each entry of ``data.<split>_sequences`` (a sequence, a nuScenes split or scene name) gets its own
reader, so a missing sequence is reported and the others are still checked.
"""
from __future__ import annotations

import argparse
import sys

from segood.commands.common import add_overrides


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("check-data", help="validate a data-set root before training (reports every problem)")
    p.add_argument("config", help="experiment config naming the data set, e.g. configs/nuscenes_baseline.yaml")
    p.add_argument("--splits", nargs="+", default=["train", "val"], help="config splits to check (default: train val)")
    p.add_argument("--max-scans", type=int, default=None, help="check at most N scans per sequence/split entry")
    p.add_argument("--quick", action="store_true", help="read image headers only (skip full decoding)")
    add_overrides(p, example="data.root=/data/kitti")
    p.set_defaults(run=run)
    return p


def make_reader_factory(cfg: dict, label_map):
    """``(split, entry) -> reader`` for :func:`segood.data.check.check_dataset`; readers of one root
    share what their class loads once (e.g. nuScenes' devkit tables)."""
    from segood.data.readers import open_reader, reader_class

    reader_class(cfg["data"]["dataset"])  # an unknown dataset fails before any entry is tried
    cache: dict = {}
    return lambda split, entry: open_reader(cfg["data"], [entry], label_map, with_labels=True, cache=cache)


def run(args) -> int:
    from segood.config import load_config
    from segood.data.check import check_dataset, format_report
    from segood.data.labels import load_label_map

    cfg = load_config(args.config, args.set)
    label_map = load_label_map(cfg["data"]["label_map"])
    splits = {}
    for s in args.splits:
        key = f"{s}_sequences"
        if key not in cfg["data"]:
            print(f"segood check-data: error: the config has no data.{key}", file=sys.stderr)
            return 2
        entries = cfg["data"][key]
        splits[s] = [entries] if isinstance(entries, str) else [str(e) for e in entries]
    report = check_dataset(make_reader_factory(cfg, label_map), splits, label_map,
                           max_scans=args.max_scans, decode_images=not args.quick)
    print(f"data set: {cfg['data']['dataset']} at {cfg['data']['root']} (label map {label_map.source})")
    print(format_report(report, label_map))
    return 0 if report.ok else 1
