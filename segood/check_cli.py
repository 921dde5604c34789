"""``segood check-data CONFIG``: config -> readers -> :mod:`segood.data.check` (wired into segood.cli).

Each entry of ``data.<split>_sequences`` (a sequence, a nuScenes split or scene name) gets its own
reader, so a missing sequence is reported and the others are still checked.
"""
from __future__ import annotations

import argparse
import copy
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("check-data", help="validate a data-set root before training (reports every problem)")
    p.add_argument("config", help="experiment config naming the data set, e.g. configs/nuscenes_baseline.yaml")
    p.add_argument("--splits", nargs="+", default=["train", "val"], help="config splits to check (default: train val)")
    p.add_argument("--max-scans", type=int, default=None, help="check at most N scans per sequence/split entry")
    p.add_argument("--quick", action="store_true", help="read image headers only (skip full decoding)")
    p.add_argument("--no-labels", action="store_true",
                   help="check geometry, calibration and images only (e.g. a nuScenes root without lidarseg)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    return p


def _local_readers() -> dict:
    from segood.data.carla_ood import CarlaOodReader
    from segood.data.nuscenes import NuScenesReader
    from segood.data.semantickitti import SemanticKittiReader

    return {"semantickitti": SemanticKittiReader, "nuscenes": NuScenesReader, "carla_ood": CarlaOodReader}


def make_reader_factory(cfg: dict, label_map, labels: bool = True, notes: list[str] | None = None):
    """``(split, entry) -> reader`` for :func:`segood.data.check.check_dataset`. ``labels=False``
    checks without label files; a nuScenes root without lidarseg is checked that way too, with
    one problem appended to ``notes`` (training needs the labels)."""
    from segood.config import ConfigError, resolve_path
    from segood.engine import builders

    data = cfg["data"]
    readers = {**_local_readers(), **builders.READERS}
    if data["dataset"] not in readers:
        raise ConfigError(f"data.dataset: unknown dataset '{data['dataset']}', expected one of {sorted(readers)}")
    cls = readers[data["dataset"]]
    options = dict(data.get("reader_options") or {})
    shared: dict = {}

    def make(split: str, entry: str):
        if data["dataset"] == "nuscenes":  # load the devkit tables once for all entries
            from segood.data.nuscenes import infer_version, load_nuscenes

            root = resolve_path(data["root"])
            version = options.get("version") or infer_version([entry], root)
            with_labels = labels and (root / version / "lidarseg.json").is_file()
            if version not in shared:
                if labels and not with_labels and notes is not None:
                    notes.append(f"{root / version / 'lidarseg.json'}: no lidarseg labels (training needs "
                                 "nuScenes-lidarseg); checked geometry, calibration and images only")
                shared[version] = load_nuscenes(root, version, with_labels=with_labels)
            return cls(root, [entry], label_map, camera=data["camera"], nusc=shared[version],
                       with_labels=with_labels, **{k: v for k, v in options.items() if k != "version"})
        if data["dataset"] in builders.READERS and not options and labels:
            one = copy.deepcopy(cfg)
            one["data"][f"{split}_sequences"] = [entry]
            return builders.build_reader(one, split, label_map)
        return cls(resolve_path(data["root"]), [entry], label_map, camera=data["camera"],
                   **({} if labels else {"with_labels": False}), **options)

    return make


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
    notes: list[str] = []
    factory = make_reader_factory(cfg, label_map, labels=not getattr(args, "no_labels", False), notes=notes)
    report = check_dataset(factory, splits, label_map, max_scans=args.max_scans, decode_images=not args.quick)
    report.dataset_problems += notes
    print(f"data set: {cfg['data']['dataset']} at {cfg['data']['root']} (label map {label_map.source})")
    print(format_report(report, label_map))
    return 0 if report.ok else 1
