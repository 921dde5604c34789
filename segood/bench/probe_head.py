"""``segood bench probe-head``: what does a Feature Mixing model's anomaly head key on?

Prints, for camera-visible points of the first batches of a split: per-modality feature statistics
(exact zeros, spread of the per-dim means), how often a value swapped from one modality lands
outside the 1st-99th percentile range of the receiving dim (2 % by chance), and the anomaly head's
logits and AUROC on ID points, real OOD points and freshly mixed ID points. A head that separates
mixed points far better than real OOD points has learned a cue of the mixing itself.

    segood bench probe-head RUN/checkpoint.pt [--data ROOT] [--split val] [--batches 4] [--n-swap 16]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from segood.config import add_overrides, apply_overrides
from segood.engine.artifacts import load_model
from segood.engine.builders import build_label_map, build_loader
from segood.ood.feature_mixing import anchor_mask, feature_mixing


def out_of_range_share(src: torch.Tensor, dst: torch.Tensor, draws: int = 20000, seed: int = 0) -> float:
    """Share of random values of ``src`` (any dim) outside the 1-99 % range of a random ``dst`` dim."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = dst.quantile(0.01, 0), dst.quantile(0.99, 0)
    rows = torch.randint(0, src.shape[0], (draws,), generator=g)
    i = torch.randint(0, src.shape[1], (draws,), generator=g)
    j = torch.randint(0, dst.shape[1], (draws,), generator=g)
    v = src[rows, i]
    return float(((v < lo[j]) | (v > hi[j])).float().mean())


@torch.no_grad()
def probe(ckpt: str, data_root: str | None, split: str, batches: int, n_swap: int,
          overrides: list[str] = ()) -> dict[str, float]:
    """Print the statistics (module docstring) and return the anomaly head's AUROCs vs ID points."""
    from sklearn.metrics import roc_auc_score

    model, state = load_model(ckpt)
    cfg = apply_overrides(state["config"], [*([f"data.root={data_root}"] if data_root else []), *overrides])
    loader = build_loader(cfg, split, build_label_map(cfg), shuffle=False)
    g = torch.Generator().manual_seed(0)
    feats = {"image": [], "lidar": []}
    head = {"ID": [], "real OOD": [], "mixed ID": []}
    for k, batch in enumerate(loader):
        if k >= batches:
            break
        out = model(batch)
        vis, ood = batch["visible"], batch["ood_target"]
        head["ID"].append(out["anomaly_logit"][vis & (ood == 0)])
        head["real OOD"].append(out["anomaly_logit"][vis & (ood == 1)])
        sel = torch.nonzero(anchor_mask(batch)).squeeze(1)[:4000]
        fi, fl = out["feat_image"][sel], out["feat_lidar"][sel]
        feats["image"].append(fi)
        feats["lidar"].append(fl)
        mixed = model.score_outliers(sel, *feature_mixing(fi, fl, n_swap, g))
        head["mixed ID"].append(mixed["outlier_anomaly_logit"])
    fi, fl = torch.cat(feats["image"]), torch.cat(feats["lidar"])
    for name, f in (("image", fi), ("lidar", fl)):
        print(f"{name:5s} features: exact zeros {100 * float((f == 0).float().mean()):.1f} %, per-dim mean "
              f"{float(f.mean(0).mean()):.3f} (spread {float(f.mean(0).std()):.3f}), per-dim std {float(f.std(0).mean()):.3f}")
    print(f"swapped value outside the receiving dim's 1-99 % range: lidar -> image "
          f"{100 * out_of_range_share(fl, fi):.1f} %, image -> lidar {100 * out_of_range_share(fi, fl):.1f} % (2 % by chance)")
    logits = {k: torch.cat(v).numpy() for k, v in head.items()}
    for k, v in logits.items():
        if v.size:
            print(f"anomaly logit {k:9s} n={v.size:6d}  q10 {np.quantile(v, .1):7.2f}  median {np.median(v):7.2f}  "
                  f"q90 {np.quantile(v, .9):7.2f}")
    aurocs = {}
    for k in ("mixed ID", "real OOD"):
        pos, neg = logits[k], logits["ID"]
        if pos.size and neg.size:
            aurocs[k] = auc = float(roc_auc_score(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg]))
            print(f"anomaly head AUROC, {k} vs ID (FOV): {auc:.3f}")
    return aurocs


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``probe-head`` on the ``segood bench`` sub-parsers."""
    p = subparsers.add_parser("probe-head", help="what a Feature Mixing model's anomaly head keys on",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt")
    p.add_argument("--data", default=None, help="data root (default: the checkpoint's)")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--n-swap", type=int, default=16)
    add_overrides(p, "eval.batch_size=1")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Probe the checkpoint; returns the exit code."""
    probe(args.ckpt, args.data, args.split, args.batches, args.n_swap, args.set)
    return 0
