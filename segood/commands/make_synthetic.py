"""``segood make-synthetic --out DIR``: procedural scenes in the SemanticKITTI layout."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("make-synthetic", help="write synthetic LiDAR+camera scenes in the SemanticKITTI layout")
    p.add_argument("--out", required=True, help="output root (gets sequences/00 train, 08 val, 11 test)")
    p.add_argument("--train-scans", type=int, default=24)
    p.add_argument("--val-scans", type=int, default=8)
    p.add_argument("--test-scans", type=int, default=0, help="scans in sequences/11 (the reported split of a study)")
    p.add_argument("--azimuth-columns", type=int, default=1024, help="LiDAR columns over 360 deg (64 beams)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--benchmark", default="standard", metavar="{standard,near}",
                   help="standard: OOD objects novel in both modalities or cross-modal (the README tables); near: "
                        "held-out buses and trams with ID colours and reflectivities, unlabelled in train, OOD in "
                        "val/test (mirrors the REAL protocol on SemanticKITTI)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from segood.synthetic import SyntheticConfig, write_dataset

    cfg = SyntheticConfig(num_train=args.train_scans, num_val=args.val_scans, num_test=args.test_scans,
                          azimuth_columns=args.azimuth_columns, seed=args.seed, benchmark=args.benchmark)
    summary = write_dataset(args.out, cfg)
    print(f"wrote {args.out}: {summary.get('counts', summary)}")
    return 0
