"""``segood bench replay``: ``segood replay`` on this machine: frames per second for a nuScenes-size (~35k points,
32 beams) and a KITTI-size (~120k points, 64 beams) cloud, LiDAR-only and with a 1242x375 camera,
and the share of each frame spent decoding and encoding messages.

Model: the ``model:`` section of configs/base.yaml (or --config), randomly initialised (timing only).
Clouds: synthetic streets (segood.synthetic), written to an MCAP bag with the camera as JPEG.

  segood bench replay --frames 5 [--out runs/bench_replay] [--threads 2] [--set model.lidar.backend=torch]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from segood.config import CONFIG_DIR, add_overrides

SIZES = {  # name -> synthetic LiDAR geometry
    "nuscenes_35k": dict(beams=32, fov_up_deg=10.0, fov_down_deg=-30.0, azimuth_columns=1220),
    "kitti_120k": dict(azimuth_columns=2048),
}


def make_bag(path: Path, size: str, frames: int) -> tuple[int, np.ndarray]:
    """An MCAP bag of ``frames`` synthetic scans of one size (camera as JPEG); (mean points, LiDAR-to-image)."""
    from segood.ros.export import SensorFrame, write_sensor_bag
    from segood.ros.pointcloud2 import xyzi_records
    from segood.synthetic import SyntheticConfig, generate_scene, lidar_to_image, render_scan

    cfg = SyntheticConfig(image_width=1242, image_height=375, **SIZES[size])
    out = []
    for k in range(frames):
        pts, _, image = render_scan(generate_scene(np.random.default_rng(k), cfg), cfg)
        out.append(SensorFrame(10**9 + k * 10**8, xyzi_records(pts), image=image, projection=None))
    write_sensor_bag(path, out)
    return int(np.mean([len(f.records) for f in out])), lidar_to_image(cfg)


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options."""
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--config", default=str(CONFIG_DIR / "base.yaml"))
    add_overrides(p, "model.lidar.backend=torch")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES), help="cloud sizes to time")
    p.add_argument("--out", type=Path, default=None, help="folder for bench_replay.json")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``replay`` on the ``segood bench`` sub-parsers."""
    p = subparsers.add_parser("replay", help="frames per second of `segood replay` on synthetic bags",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(p).set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Time replay of every size, LiDAR-only and with the camera; prints one line per run."""
    import torch

    from segood.atomic import write_json
    from segood.config import load_config
    from segood.data.labels import load_label_map
    from segood.engine.checkpoint import save_checkpoint
    from segood.engine.inference import Predictor
    from segood.models import build_model
    from segood.ros.replay import ReplayOptions, replay

    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"torch_threads": torch.get_num_threads(), "config": args.config, "overrides": args.set,
               "frames": args.frames, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = load_config(args.config, args.set)
        ckpt = save_checkpoint(tmp / "bench.pt", {"model": build_model(cfg["model"]).state_dict(), "config": cfg,
                                                  "label_map": load_label_map(cfg["data"]["label_map"]).checksum(),
                                                  "step": 0})
        predictor = Predictor(ckpt)
        for size in args.sizes:
            bag = tmp / f"{size}.mcap"
            n, matrix = make_bag(bag, size, args.frames)
            (tmp / "calib.json").write_text(json.dumps({"lidar_to_image": matrix.tolist()}))
            for camera in (False, True):
                opts = ReplayOptions(bag, tmp / f"out_{size}_{camera}.mcap", ckpt, progress=False,
                                     image_topic="/camera/image/compressed" if camera else None,
                                     calib=tmp / "calib.json" if camera else None)
                t = time.perf_counter()
                s = replay(opts, predictor)
                wall = time.perf_counter() - t
                row = {"size": size, "points": n, "camera": camera, "frames_per_s": s["frames_per_s"],
                       "latency_ms_p50": s["latency_ms"]["p50"], "latency_ms_p95": s["latency_ms"]["p95"],
                       "model_ms_p50": s["model_ms"]["p50"], "decode_ms_p50": s["decode_ms"]["p50"],
                       "encode_ms_p50": s["encode_ms"]["p50"], "share_decode": s["share_decode"],
                       "share_encode": s["share_encode"], "wall_s": wall}
                results["runs"].append(row)
                print(f"{size:13s} {n:7d} pts  camera={'yes' if camera else 'no ':3s}  "
                      f"{row['frames_per_s']:.2f} frames/s  latency p50 {row['latency_ms_p50']:.0f} ms "
                      f"p95 {row['latency_ms_p95']:.0f} ms  (model {row['model_ms_p50']:.0f}, decode "
                      f"{row['decode_ms_p50']:.1f}, encode {row['encode_ms_p50']:.1f} ms; decode+encode "
                      f"{100 * (row['share_decode'] + row['share_encode']):.1f}% of a frame)", flush=True)
    if args.out:
        print(f"wrote {write_json(args.out / 'bench_replay.json', results)}")
    return 0
