"""``segood bench eval-memory``: peak memory of the streaming evaluation. Fake batches (random
logits, anomaly logits, fused features; no network) go through every requested score and the
evaluation accumulators (:class:`segood.metrics.accumulator.EvalAccumulator`) for 10^7 points; peak
RSS (getrusage) is printed at 10^6 and 10^7 points, and their ratio. Flat = within 10 %: the
accumulators do not grow with the data, and the allocator does not fragment (see
segood/engine/allocator.py). Scores that declare they cannot run on this fake model
(``Score.why_not``, e.g. relative_energy without extra logits) are skipped, each with its reason.

    segood bench eval-memory [--points 10000000] [--batch 100000] [--scores ...]
"""
from __future__ import annotations

import argparse
import resource
import time

NUM_CLASSES, DIM = 18, 64


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fake_output(n: int, g, reads: tuple[str, ...]) -> dict:
    """A model output dict for n points with the keys ``reads``: post-ReLU fused features, logits of
    the fused head and of each modality, the anomaly logit."""
    import torch

    makers = {"fused": lambda: torch.relu(torch.randn(n, DIM, generator=g)),
              "anomaly_logit": lambda: torch.randn(n, generator=g) * 2}
    return {k: makers[k]() if k in makers else torch.randn(n, NUM_CLASSES, generator=g) * 3 for k in reads}


def runnable(names: list[str], num_classes: int) -> tuple[list[str], dict[str, str]]:
    """(scores that can run on a model with ``num_classes`` logits, {skipped score: why}), default options."""
    from segood.ood.scores import SCORES, ModelFacts, score_options

    model = ModelFacts(num_classes)
    skipped = {n: why for n in names if (why := SCORES[n].unavailable(model, **score_options({}, n)))}
    return [n for n in names if n not in skipped], skipped


def build_scorers(names: list[str], fit_points: int, g) -> dict:
    """Logit scores as they are; fitted scores fitted on a random bank."""
    import torch

    from segood.ood.scores import FITTED_SCORES, get_score, is_fitted
    from segood.ood.scores.fitted import FitBank

    features = torch.relu(torch.randn(fit_points, DIM, generator=g))
    labels = torch.randint(0, NUM_CLASSES, (fit_points,), generator=g)
    bank = FitBank(features, labels, torch.randn(NUM_CLASSES, DIM, generator=g), torch.randn(NUM_CLASSES, generator=g))
    return {n: get_score(n, fit=FITTED_SCORES[n]().fit(bank)) if is_fitted(n) else get_score(n) for n in names}


def run_eval_memory(points: int, batch: int, names: list[str], fit_points: int = 1000, bins: int = 65536,
                    say=print) -> dict:
    """Stream ``points`` fake points through the scores and the accumulator; returns the peaks, the
    skipped scores and the AUROCs (random data: about 0.5)."""
    import numpy as np
    import torch

    from segood.engine.allocator import bound_allocator
    from segood.metrics.accumulator import EvalAccumulator
    from segood.ood.scores import score_range, score_reads

    bound_allocator()
    names, skipped = runnable(names, NUM_CLASSES)
    for n, why in skipped.items():
        say(f"skipped {n}: {why}")
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    scorers = build_scorers(names, fit_points, g)
    acc = EvalAccumulator(names, NUM_CLASSES, {n: score_range(n, NUM_CLASSES) for n in names}, bins)
    reads = tuple(dict.fromkeys(("logits", *score_reads(names))))
    say(f"{len(names)} scores, {bins} bins, batches of {batch}; after setup: peak RSS {peak_rss_mib():.0f} MiB")
    marks = [m for m in (10**6, 10**7) if m <= points] or [points]
    peaks: dict[int, float] = {}
    done, t0 = 0, time.time()
    with torch.no_grad():
        while done < points:
            n = min(batch, points - done)
            out = fake_output(n, g, reads)
            is_ood, visible = rng.random(n) < 0.05, rng.random(n) < 0.3
            acc.add_segmentation(out["logits"].argmax(1).numpy(), rng.integers(-1, NUM_CLASSES, n), visible)
            acc.add_scores({k: f(out).numpy() for k, f in scorers.items()}, is_ood, visible)
            done += n
            if marks and done >= marks[0]:
                rss = peaks[done] = peak_rss_mib()
                say(f"{done:>12,d} points: peak RSS {rss:7.0f} MiB  ({time.time() - t0:.0f} s)")
                marks.pop(0)
    state = sum(h.counts.nbytes for per in acc.hist.values() for h in per.values())
    return {"peaks_mib": peaks, "skipped": skipped, "scores": names, "state_mib": state / 2**20, "points": done,
            "auroc": {k: v["all"].get("auroc") for k, v in acc.ood().items()}}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``eval-memory`` on the ``segood bench`` sub-parsers."""
    from segood.ood.scores import SCORES

    p = subparsers.add_parser("eval-memory", help="peak memory of the streaming evaluation (fake batches)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=10_000_000)
    p.add_argument("--batch", type=int, default=100_000, help="points per fake batch (about one scan)")
    p.add_argument("--fit-points", type=int, default=1000, help="fitted-score bank size (kNN cost grows with it)")
    p.add_argument("--scores", nargs="+", default=sorted(SCORES), choices=sorted(SCORES))
    p.add_argument("--bins", type=int, default=65536)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run and print the peaks, their ratio and the accumulator's size; returns the exit code."""
    res = run_eval_memory(args.points, args.batch, args.scores, args.fit_points, args.bins)
    peaks = res["peaks_mib"]
    if len(peaks) == 2:
        (n0, p0), (n1, p1) = sorted(peaks.items())
        print(f"peak RSS at {n1:.0e} / at {n0:.0e} points: {p1:.0f} / {p0:.0f} MiB = {p1 / p0:.3f} "
              f"(flat: <= 1.10; {'flat' if p1 <= 1.1 * p0 else 'GROWS'})")
    print(f"accumulator state: {res['state_mib']:.1f} MiB of histogram counts; a per-point float32 gather would "
          f"hold {res['points'] * len(res['scores']) * 4 / 2**20:.0f} MiB of scores")
    print("AUROC (all points, random data ~ 0.5):", {k: round(v, 3) for k, v in res["auroc"].items()})
    return 0
