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
    p.add_argument("--no-labels", action="store_true",
                   help="check geometry, calibration and images only (e.g. a nuScenes root without lidarseg)")
    add_overrides(p, example="data.root=/data/kitti")
    p.set_defaults(run=run)
    return p


def make_reader_factory(cfg: dict, label_map, labels: bool = True, notes: list[str] | None = None):
    """``(split, entry) -> reader`` for :func:`segood.data.check.check_dataset`; readers of one root
    share what their class loads once (e.g. nuScenes' devkit tables). ``labels=False`` checks
    without label files; a root whose reader says its labels are missing (``missing_labels``, e.g.
    nuScenes without lidarseg) is checked that way too, with one problem appended to ``notes``
    (training needs the labels)."""
    from segood.config import resolve_path
    from segood.data.readers import open_reader, reader_class

    data = cfg["data"]
    cls = reader_class(data["dataset"])  # an unknown dataset fails before any entry is tried
    cache: dict = {}
    told: set[str] = set()

    def make(split: str, entry: str):
        with_labels = labels
        missing = getattr(cls, "missing_labels", None)
        reason = missing(resolve_path(data["root"]), [entry], dict(data.get("reader_options") or {})) \
            if (labels and missing) else None
        if reason:
            with_labels = False
            if notes is not None and reason not in told:
                told.add(reason)
                notes.append(reason)
        return open_reader(data, [entry], label_map, with_labels=with_labels, cache=cache)

    return make


def run(args) -> int:
    from segood.engine.families import load_config
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
    notes: list[str] = []
    factory = make_reader_factory(cfg, label_map, labels=not getattr(args, "no_labels", False), notes=notes)
    report = check_dataset(factory, splits, label_map, max_scans=args.max_scans, decode_images=not args.quick)
    report.dataset_problems += notes
    print(f"data set: {cfg['data']['dataset']} at {cfg['data']['root']} (label map {label_map.source})")
    print(format_report(report, label_map))
    return 0 if report.ok else 1
