#!/usr/bin/env python
"""Peak memory of the streaming evaluation: fake batches (random logits, anomaly logits, fused
features; no network) go through every requested score and the evaluation accumulators
(:class:`segood.engine.evaluate.EvalAccumulator`) for 10^7 points; peak RSS (getrusage) is printed
at 10^6 and 10^7 points, and their ratio. Flat = within 10 %: the accumulators do not grow with
the data, and the allocator does not fragment (see segood/engine/allocator.py).

    .venv/bin/python tools/bench_eval_memory.py [--points 10000000] [--batch 100000]
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from segood.engine.evaluate import EvalAccumulator
from segood.ood.scores import FITTED_SCORES, SCORES, get_score, is_fitted, score_range
from segood.ood.scores.fitted import FitBank

NUM_CLASSES, DIM = 18, 64


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fake_output(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """A model output dict for n points: post-ReLU features and the logits of a fixed head."""
    fused = torch.relu(torch.randn(n, DIM, generator=g))
    return {"fused": fused, "logits": torch.randn(n, NUM_CLASSES, generator=g) * 3,
            "anomaly_logit": torch.randn(n, generator=g) * 2}


def build_scorers(names: list[str], fit_points: int, g: torch.Generator) -> dict:
    """Logit scores as they are; fitted scores fitted on a random bank."""
    features = torch.relu(torch.randn(fit_points, DIM, generator=g))
    labels = torch.randint(0, NUM_CLASSES, (fit_points,), generator=g)
    bank = FitBank(features, labels, torch.randn(NUM_CLASSES, DIM, generator=g), torch.randn(NUM_CLASSES, generator=g))
    return {n: get_score(n, fit=FITTED_SCORES[n]().fit(bank)) if is_fitted(n) else get_score(n) for n in names}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=10_000_000)
    p.add_argument("--batch", type=int, default=100_000, help="points per fake batch (about one scan)")
    p.add_argument("--fit-points", type=int, default=1000, help="fitted-score bank size (kNN cost grows with it)")
    p.add_argument("--scores", nargs="+", default=sorted(SCORES))
    p.add_argument("--bins", type=int, default=65536)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    scorers = build_scorers(args.scores, args.fit_points, g)
    acc = EvalAccumulator(args.scores, NUM_CLASSES, {n: score_range(n, NUM_CLASSES) for n in args.scores}, args.bins)
    print(f"{len(args.scores)} scores, {args.bins} bins, batches of {args.batch}; after setup: peak RSS "
          f"{peak_rss_mib():.0f} MiB")
    marks = [m for m in (10**6, 10**7) if m <= args.points] or [args.points]
    peaks: dict[int, float] = {}
    done, t0 = 0, time.time()
    with torch.no_grad():
        while done < args.points:
            n = min(args.batch, args.points - done)
            out = fake_output(n, g)
            is_ood, visible = rng.random(n) < 0.05, rng.random(n) < 0.3
            acc.add_segmentation(out["logits"].argmax(1).numpy(), rng.integers(-1, NUM_CLASSES, n), visible)
            acc.add_scores({k: f(out).numpy() for k, f in scorers.items()}, is_ood, visible)
            done += n
            if marks and done >= marks[0]:
                rss = peaks[done] = peak_rss_mib()
                print(f"{done:>12,d} points: peak RSS {rss:7.0f} MiB  ({time.time() - t0:.0f} s)", flush=True)
                marks.pop(0)
    if len(peaks) == 2:
        (n0, p0), (n1, p1) = sorted(peaks.items())
        print(f"peak RSS at {n1:.0e} / at {n0:.0e} points: {p1:.0f} / {p0:.0f} MiB = {p1 / p0:.3f} "
              f"(flat: <= 1.10; {'flat' if p1 <= 1.1 * p0 else 'GROWS'})")
    state = sum(h.counts.nbytes for per in acc.hist.values() for h in per.values())
    print(f"accumulator state: {state / 2**20:.1f} MiB of histogram counts; "
          f"a per-point float32 gather would hold {done * len(args.scores) * 4 / 2**20:.0f} MiB of scores")
    print("AUROC (all points, random data ~ 0.5):", {k: round(v["all"]["auroc"], 3) for k, v in acc.ood().items()})


if __name__ == "__main__":
    main()
