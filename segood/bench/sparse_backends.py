"""``segood bench sparse-backends``: training-step time of the demo model with each sparse backend,
measured side by side.

One process, one fixed set of training batches (the config's data pipeline), one model whose
weights are copied into every variant. Variants run interleaved step by step (A B C A B C ...),
so a load change on a shared machine hits them alike; the table gives medians and the ratio of
each to the first variant.

Variants (``--variants``): ``spconv`` (sparse part single-threaded by its guard, the rest on
``--threads``), ``torch`` (``--threads``), ``spconv1`` / ``torch1`` (1 thread in total).

  segood bench sparse-backends --data /tmp/sparse_syn --steps 10 [--threads 2] [--out DIR] [--set KEY=VALUE]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

from segood.config import CONFIG_DIR, add_overrides

VARIANTS = {"spconv": ("spconv", None), "torch": ("torch", None), "spconv1": ("spconv", 1), "torch1": ("torch", 1)}


def batches(cfg: dict, n: int) -> list[dict]:
    """``n`` training batches (augmented, FOV-cropped as in training), fixed for every variant."""
    import numpy as np

    from segood.data.batching import collate
    from segood.engine.builders import build_dataset, build_grid, build_label_map

    label_map = build_label_map(cfg)
    dataset = build_dataset(cfg, "train", label_map, training=True)
    bs, grid = int(cfg["train"]["batch_size"]), build_grid(cfg)
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        idx = [(k * bs + j) % len(dataset) for j in range(bs)]
        out.append(collate([dataset[i] for i in idx], grid, cfg["data"]["max_voxels"], rng))
    return out


def make_step(cfg: dict, backend: str, state: dict):
    """A closure running one full training step (forward, losses, backward, AdamW) on a batch."""
    import torch

    from segood.engine.builders import build_synthesizer
    from segood.engine.objective import compute_losses
    from segood.models import build_model

    model_cfg = copy.deepcopy(cfg["model"])
    model_cfg["lidar"]["backend"] = backend
    model = build_model(model_cfg)
    model.load_state_dict(state)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["train"]["lr"]))
    synth = build_synthesizer(cfg)

    def step(batch: dict, k: int) -> float:
        t = time.perf_counter()
        out = model(batch, synthesize=(lambda fi, fl, b: synth(fi, fl, b, k)) if synth else None)
        loss = compute_losses(out, batch, cfg["loss"])["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    return step


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options."""
    p.add_argument("--config", default=str(CONFIG_DIR / "synthetic_feature_mixing.yaml"))
    p.add_argument("--data", default=None, help="data.root (e.g. from `segood make-synthetic`)")
    add_overrides(p, "model.lidar.channels=[8,16]")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path, default=None, help="folder for bench_sparse_backends.json")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``sparse-backends`` on the ``segood bench`` sub-parsers."""
    p = subparsers.add_parser("sparse-backends", help="training-step time with each sparse backend, interleaved",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(p).set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Time every variant, interleaved; prints the table (and writes JSON with ``--out``)."""
    import numpy as np
    import torch

    from segood.atomic import write_json
    from segood.config import load_config
    from segood.models import build_model

    cfg = load_config(args.config, ([f"data.root={args.data}"] if args.data else []) + args.set)
    torch.manual_seed(0)
    state = build_model(cfg["model"] | {"lidar": cfg["model"]["lidar"] | {"backend": "torch"}}).state_dict()
    data = batches(cfg, 4)
    steps = {name: make_step(cfg, VARIANTS[name][0], state) for name in args.variants}
    times: dict[str, list[float]] = {name: [] for name in args.variants}
    for k in range(args.steps + 2):
        for name in args.variants:
            torch.set_num_threads(VARIANTS[name][1] or args.threads)
            dt = steps[name](data[k % len(data)], k)
            if k >= 2:
                times[name].append(dt)
    torch.set_num_threads(args.threads)
    first = args.variants[0]
    base = statistics.median(times[first])
    voxels = int(np.mean([len(b["voxel_coords"]) for b in data]))
    points = int(np.mean([len(b["points"]) for b in data]))
    print(f"demo model, batches of {cfg['train']['batch_size']} scans: ~{points} points, ~{voxels} voxels; "
          f"{args.steps} timed steps each, interleaved")
    rows = []
    for name in args.variants:
        med = statistics.median(times[name])
        threads = VARIANTS[name][1] or args.threads
        rows.append({"variant": name, "backend": VARIANTS[name][0], "threads": threads, "step_ms_median": 1e3 * med,
                     "step_ms_min": 1e3 * min(times[name]), "speedup_vs_" + first: base / med})
        print(f"{name:8s} threads={threads}  median {1e3 * med:7.1f} ms  min {1e3 * min(times[name]):7.1f} ms  "
              f"{base / med:5.2f}x vs {first}")
    if args.out:
        print(f"wrote {write_json(args.out / 'bench_sparse_backends.json', {'points': points, 'voxels': voxels, 'rows': rows})}")
    return 0
