"""``segood replay``: run a checkpoint over a bag's PointCloud2 topic and write the scores back into a bag.

Registered by :mod:`segood.cli` through :func:`add_parser` and :func:`run`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
input/output formats: ROS 1 .bag -> .bag; ROS 2 (folder, .db3 or .mcap) -> a ROS 2 folder with the
input's storage, or a bare .db3 / .mcap file when OUT ends so. Every original message is copied
unchanged; each processed cloud gets a PointCloud2 on <topic>/segood with the original fields plus
'anomaly' (float32) and 'label' (uint16). A summary is written to OUT.summary.json.

camera: --image-topic (sensor_msgs/Image or CompressedImage, rectified) with either --calib holding
'lidar_to_image' (3x4), or --calib holding 'lidar_to_camera' (4x4) plus --info-topic (CameraInfo P).
Without --image-topic the model runs LiDAR-only.

examples:
  segood replay drive.bag --ckpt runs/fm/checkpoint.pt --out drive_segood.bag
  segood replay drive_ros2/ --ckpt ckpt.pt --out out/ --topic /velodyne_points \\
      --image-topic /camera/image_rect/compressed --info-topic /camera/camera_info --calib lidar_cam.yaml
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "replay", help="score every cloud of a ROS bag (.bag, .db3, .mcap) into a new bag", epilog=EPILOG,
        description="Run a checkpoint over the PointCloud2 clouds of a ROS bag and write the bag back "
                    "with per-point anomaly scores and labels.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", help="input bag: .bag, .db3, .mcap or a ROS 2 bag folder")
    p.add_argument("--ckpt", required=True, help="segood checkpoint")
    p.add_argument("--out", required=True, help="output bag (see below)")
    p.add_argument("--topic", default=None, help="PointCloud2 topic (default: the first one in the bag)")
    p.add_argument("--image-topic", default=None, help="camera topic (Image or CompressedImage); none = LiDAR-only")
    p.add_argument("--info-topic", default=None, help="CameraInfo topic (its P is used with lidar_to_camera)")
    p.add_argument("--calib", type=Path, default=None,
                   help="YAML/JSON with lidar_to_image (3x4) or lidar_to_camera (4x4)")
    p.add_argument("--max-dt", type=float, default=0.05, help="max |cloud stamp - image stamp| in s (default 0.05)")
    p.add_argument("--every", type=int, default=1, help="process every N-th cloud (default 1)")
    p.add_argument("--start", type=float, default=0.0, help="skip the first SEC seconds of the bag")
    p.add_argument("--duration", type=float, default=None, help="process SEC seconds from --start")
    p.add_argument("--score", default=None, help="anomaly score (default: the checkpoint's operating point, "
                                                 "else anomaly_head)")
    p.add_argument("--threshold", type=float, default=None,
                   help="operating point, score >= T is anomalous (default: the one stored with the checkpoint by "
                        "`segood eval`, else the top 5%% of each scan)")
    p.add_argument("--label-ids", choices=("raw", "train"), default="raw",
                   help="ids written to the 'label' field: raw dataset ids (default) or train ids")
    p.add_argument("--intensity-scale", type=float, default=1.0,
                   help="multiply intensity by this (e.g. 1/255 for drivers publishing 0..255)")
    p.add_argument("--intensity", choices=("error", "zero"), default="error",
                   help="clouds without an 'intensity' field: stop with an error (default: segood models are "
                        "trained with intensity), or use 0 for every point (said once per bag)")
    p.add_argument("--plain", action="store_true",
                   help="the model as trained: no BatchNorm folding, all heads, fp32 (the inference: section "
                        "of configs/base.yaml sets the fast path)")
    p.add_argument("--amp", choices=("none", "bf16"), default=None,
                   help="bf16 autocast on a CPU with native bf16 (default: inference.amp)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the replay; errors (bad bag, missing topic, existing output) print one line and return 2."""
    from segood.data.errors import DataError
    from segood.ros.bagio import BagError
    from segood.ros.camera import CameraError
    from segood.ros.replay import ReplayOptions, replay, report_lines, summary_path

    opts = ReplayOptions(
        bag=Path(args.bag), out=Path(args.out), ckpt=Path(args.ckpt), topic=args.topic,
        image_topic=args.image_topic, info_topic=args.info_topic, calib=args.calib, max_dt=args.max_dt,
        every=args.every, start=args.start, duration=args.duration, score=args.score, threshold=args.threshold,
        label_ids=args.label_ids, intensity_scale=args.intensity_scale, intensity=args.intensity,
        overwrite=args.overwrite, progress=not args.no_progress, plain=args.plain, amp=args.amp,
    )
    try:
        s = replay(opts)
    except (BagError, CameraError, DataError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"segood replay: error: {e}", file=sys.stderr)
        return 2
    f, lat = s["frames"], s["latency_ms"]
    print(f"operating point: {s['operating_point']['description']}")
    print(f"{s['topic']} -> {s['output_topic']}: {f['processed']} processed, {f['dropped']} dropped, "
          f"{f['lidar_only']} LiDAR-only")
    for line in report_lines(s):
        print(line)
    if f["processed"]:
        print(f"latency per frame: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms "
              f"(decode {100 * s['share_decode']:.1f}%, encode {100 * s['share_encode']:.1f}%, "
              f"bag write {100 * s['share_write']:.1f}% of the frame's time; by CPU time "
              f"{100 * s['cpu_share_decode']:.1f}%, {100 * s['cpu_share_encode']:.1f}%, "
              f"{100 * s['cpu_share_write']:.1f}%); "
              f"points flagged by the operating point: {100 * s['points']['fraction_above']:.2f}%")
        print("stages, p50 ms: " + ", ".join(f"{k} {v['p50']:.1f}" for k, v in s["stages_ms"].items()))
    if s["operating_point"]["warning"]:
        print(s["operating_point"]["warning"], file=sys.stderr)
    print(f"wrote {s['output']} and {summary_path(Path(s['output']))}")
    return 0
