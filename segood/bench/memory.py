"""``segood bench memory``: peak memory and step time of one training step against points per scan.

Each size runs in a fresh subprocess, so the peak resident set size (``ru_maxrss``) belongs to that
size alone. Scans come from the synthetic generator with more LiDAR columns for more points; the
step is the real one (FOV crop off, so every point goes through the network), with the config's
``data.max_points`` / ``data.max_voxels`` caps applied as in training.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

def measure_step(points: int, config: str, overrides: list[str], repeats: int) -> dict:
    """One size, in this process: a synthetic scan of ``points`` points, then ``repeats`` timed
    training steps (:func:`segood.engine.step.train_step`) after one warm-up; peak RSS of the process."""
    import resource
    import time

    import numpy as np
    import torch

    from segood.config import load_config
    from segood.data.batching import collate, crop_nearest, scan_to_sample
    from segood.data.labels import load_label_map
    from segood.data.projection import assign_cameras
    from segood.data.scan import Scan
    from segood.engine.builders import build_grid, build_synthesizer
    from segood.engine.step import train_step
    from segood.models import build_model
    from segood.synthetic import SyntheticConfig, generate_scene, lidar_to_image, render_scan

    cfg = load_config(config, overrides)
    label_map = load_label_map(cfg["data"]["label_map"])
    columns = max(64, int(np.ceil(points / 64 / 0.85)))  # ~85% of rays hit something
    syn = SyntheticConfig(azimuth_columns=columns, seed=0)
    pts, labels, image = render_scan(generate_scene(np.random.default_rng(0), syn), syn)
    rng = np.random.default_rng(0)
    while len(pts) < points:  # top up with jittered copies for sizes beyond one sweep
        extra = min(len(pts), points - len(pts))
        pts = np.concatenate([pts, pts[:extra] + rng.normal(0, 0.05, (extra, 4)).astype(np.float32)])
        labels = np.concatenate([labels, labels[: len(pts) - len(labels)]])
    pts, labels = pts[:points], labels[:points]
    m = lidar_to_image(syn)
    uv, cam = assign_cameras(pts[:, :3], [m], [(image.shape[1], image.shape[0])])
    scan = Scan(points=pts, raw_labels=labels & 0xFFFF, learning_labels=label_map.to_learning(labels & 0xFFFF),
                images=[image], lidar_to_image=[m], pixel_uv=uv, camera_id=cam)
    sample = scan_to_sample(scan, label_map)
    if cfg["data"]["max_points"]:
        sample = crop_nearest(sample, int(cfg["data"]["max_points"]), rng)
    batch = collate([sample], build_grid(cfg), cfg["data"]["max_voxels"], rng)
    model = build_model(cfg["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    synth = build_synthesizer(cfg)
    times = []
    for step in range(repeats + 1):
        t = time.perf_counter()
        train_step(model, [batch], opt, cfg["loss"], float(cfg["train"]["grad_clip"]),
                   synthesize=(lambda fi, fl, b: synth(fi, fl, b, step)) if synth else None)
        times.append(time.perf_counter() - t)
    return {"points": points, "points_in_batch": int(batch["points"].shape[0]),
            "voxels": int(batch["voxel_coords"].shape[0]), "visible": int(batch["visible"].sum()),
            "step_ms_median": 1000 * float(np.median(times[1:])),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_memory_bench(points: list[int], config: str, overrides: list[str], repeats: int = 3) -> list[dict]:
    rows = []
    for n in points:
        res = subprocess.run([sys.executable, "-m", "segood.bench.memory", str(n), config, json.dumps(overrides),
                              str(repeats)], capture_output=True, text=True)
        if res.returncode != 0:
            rows.append({"points": n, "error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"})
        else:
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(format_row(rows[-1]), flush=True)
    return rows


def format_row(r: dict) -> str:
    if "error" in r:
        return f"{r['points']:>9d}  error: {r['error']}"
    return (f"{r['points']:>9d} {r['points_in_batch']:>9d} {r['voxels']:>8d} {r['visible']:>8d} "
            f"{r['step_ms_median']:>10.0f} {r['peak_rss_mib']:>10.0f}")


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from segood.config import CONFIG_DIR, add_overrides

    p.add_argument("--points", type=int, nargs="+", default=[30_000, 60_000, 120_000, 240_000])
    p.add_argument("--config", default=str(CONFIG_DIR / "synthetic_feature_mixing.yaml"))
    add_overrides(p, example="data.max_points=100000")
    p.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.set_defaults(func=run)
    return p


def add_parser(subparsers) -> None:
    configure_parser(subparsers.add_parser(
        "memory", help="peak memory and step time of one training step vs points per scan"))


def run(args) -> int:
    print(f"{'points':>9s} {'in batch':>9s} {'voxels':>8s} {'visible':>8s} {'step ms':>10s} {'peak MiB':>10s}")
    rows = run_memory_bench(args.points, args.config, args.set, args.repeats)
    if args.out:
        from segood.atomic import write_json

        write_json(Path(args.out), {"config": args.config, "overrides": args.set, "rows": rows})
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":  # one size in a fresh process (see run_memory_bench)
    print(json.dumps(measure_step(int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]))))
