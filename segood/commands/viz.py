"""``segood viz``: look at one scan's ground truth, prediction and anomaly scores.

Registered by :mod:`segood.cli` through :func:`add_parser` and :func:`run`. Command-line glue: it
joins :mod:`segood.viz` (frames, colours, renderers) and :mod:`segood.ros` (bag frames).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

from segood.commands.common import add_overrides

EPILOG = """\
INPUT is one of
  a config YAML          a data-set scan: --sequence SS [--frame NNNNNN] (ground truth shown when labelled)
  a run folder           its config.yaml and checkpoint.pt (what `segood train --out RUN` wrote): --sequence SS
  a .bin / .pcd / .ply / .npy   a point file (a PLY written by `segood predict` shows its 'anomaly' field);
                         --image IMG --calib FILE add a camera (for --overlay and the model);
                         FILE: KITTI calib.txt (P2 and Tr, or P2, R0_rect, Tr_velo_to_cam), or YAML/JSON
  a bag (.bag/.db3/.mcap or ROS 2 folder)   --index K picks the K-th cloud of --topic; a bag written by
                         `segood replay` shows its 'anomaly' field without a model
predictions: --ckpt CKPT runs the model (and allows moving between frames), or --pred FILE.npz with
'anomaly' (N,) and optionally 'label' (N,) train ids, in the scan's point order.
operating point (score >= T is anomalous): --threshold T, else the one `segood eval` stored beside the
checkpoint (checkpoint.operating_point.json: the model's headline score on the validation split, at 95%
OOD recall on all points), else the top 5% of the scan. A warning is printed (and drawn) when a scan has
more than --warn-share of its points flagged.
views: gt (ground truth), pred (prediction), heat (anomaly heatmap), hot (above the operating point).
colours: heat runs from blue (low score) to red (high), normalised per scan over its 1st-99th percentile;
every PNG and the window's legend panel say so, with the file, frame, score, threshold and its source.
outputs: without --png/--overlay/--ply an interactive window opens (needs an X display); keys:
  1-4 views, V next view, N/P or right/left next/previous frame (unreadable frames are skipped),
  R segood's view, H keys, Q quit; Ctrl-C in the terminal closes it.

examples:
  segood viz runs/fm --sequence 08 --frame 3
  segood viz configs/synthetic_feature_mixing.yaml --sequence 08 --frame 3 --ckpt runs/fm/checkpoint.pt
  segood viz scan.bin --pred scan_pred.npz --threshold 0.5 --png scan.png --ply scan.ply
  segood viz 000008.bin --image 000008.png --calib calib.txt --ckpt runs/fm/checkpoint.pt --overlay o.png
  segood viz scored.db3 --index 10 --png frame10.png
  segood viz drive.bag --topic /points --index 10 --ckpt ckpt.pt --image-topic /cam/compressed \\
      --calib lidar_cam.yaml --overlay frame10.png
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "viz", help="view a scan's prediction and anomaly scores (open3d window or headless PNG/PLY)", epilog=EPILOG,
        description="Show a scan's ground truth, prediction and anomaly scores: open3d window, or headless "
                    "PNG / camera overlay / PLY.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="config YAML, run folder, point file (.bin/.pcd/.ply/.npy) or bag")
    src = p.add_argument_group("data-set scans")
    src.add_argument("--sequence", default=None, help="sequence of the config's data set, e.g. 08")
    src.add_argument("--frame", default=None, help="frame in the sequence, e.g. 000003 or 3 (default: the first)")
    add_overrides(src, example="data.camera=image_3")
    cam = p.add_argument_group("camera (point files and bags)")
    cam.add_argument("--image", default=None, help="camera image for a point file")
    cam.add_argument("--intensity", choices=("error", "zero"), default="error",
                     help="a point file without an intensity column, run through --ckpt: error (default) or zero "
                          "(filled with 0, said); without a model it is shown with 0 and said")
    cam.add_argument("--calib", type=Path, default=None,
                     help="KITTI calib.txt, or YAML/JSON with lidar_to_image (3x4), or lidar_to_camera (4x4) "
                          "with --info-topic")
    bag = p.add_argument_group("bags")
    bag.add_argument("--topic", default=None, help="PointCloud2 topic (default: the first)")
    bag.add_argument("--index", type=int, default=0, help="cloud number on the topic (default 0)")
    bag.add_argument("--image-topic", default=None)
    bag.add_argument("--info-topic", default=None)
    bag.add_argument("--max-dt", type=float, default=0.05, help="cloud-image pairing window in s")
    bag.add_argument("--intensity-scale", type=float, default=1.0)
    pred = p.add_argument_group("predictions")
    pred.add_argument("--ckpt", default=None, help="segood checkpoint (runs the model)")
    pred.add_argument("--pred", default=None, help="saved predictions .npz: anomaly (N,) [, label (N,) train ids]")
    pred.add_argument("--score", default=None,
                      help="score to show (default: the score of the operating point stored by `segood eval`; "
                           "without one, anomaly_head, or maxlogit for a model trained without synthesis)")
    pred.add_argument("--threshold", type=float, default=None, help="operating point (score >= T is anomalous)")
    pred.add_argument("--warn-share", type=float, default=0.25,
                      help="warn when more than this share of a scan's points is flagged (default 0.25)")
    pred.add_argument("--label-map", default="semantickitti",
                      help="label map for --pred / point files / bags without --ckpt (default semantickitti)")
    out = p.add_argument_group("output")
    out.add_argument("--view", choices=("gt", "pred", "heat", "hot"), default=None,
                     help="view for --png / --overlay / --ply colours and the window's first view (default heat)")
    out.add_argument("--png", default=None, help="render the view headless (open3d OffscreenRenderer) to this PNG")
    out.add_argument("--overlay", default=None, help="draw the points on the camera image to this PNG")
    out.add_argument("--ply", default=None, help="write points with anomaly / label fields to this PLY")
    out.add_argument("--camera", choices=("chase", "bev"), default="chase", help="render camera (default chase)")
    out.add_argument("--size", default="1280x720", help="render size WxH (default 1280x720)")
    out.add_argument("--point-size", type=float, default=2.0, help="point size in pixels")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Build the frame(s), then write the headless outputs or open the window. Errors return 2, Ctrl-C 130."""
    from segood.config import ConfigError
    from segood.data.errors import DataError
    from segood.ros.bagio import BagError
    from segood.ros.camera import CameraError

    try:
        with contextlib.ExitStack() as stack:
            return _run(args, stack)
    except (ConfigError, DataError, BagError, CameraError, ValueError, FileNotFoundError, FileExistsError,
            RuntimeError) as e:
        print(f"segood viz: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segood viz: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    from segood.atomic import check_writable
    from segood.data.labels import load_label_map
    from segood.engine.inference import Predictor, resolve_operating_point
    from segood.viz.frame import VizFrame
    from segood.viz.sources import run_folder_input

    for option in ("png", "ply", "overlay"):
        if getattr(args, option, None):
            check_writable(Path(getattr(args, option)).resolve().parent, f"folder of --{option}")
    run_input = run_folder_input(args.input)
    if run_input is not None:
        args.input = str(run_input[0])
        if args.ckpt is None and args.pred is None and run_input[1] is not None:
            args.ckpt = str(run_input[1])
            print(f"checkpoint: {args.ckpt} (the run's)")
    if args.ckpt and args.pred:
        raise ValueError("give either --ckpt or --pred, not both")
    predictor = Predictor(args.ckpt, args.score, args.threshold, args.warn_share) if args.ckpt else None
    frames, start, label_map, scored_op = _frames(args, stack, predictor)
    pred = _load_pred(args.pred) if args.pred else None
    if predictor:
        op = predictor.op
    elif pred or scored_op:
        op = scored_op or resolve_operating_point(None, "anomaly", args.threshold, warn_share=args.warn_share)
    else:
        op = None
    label_map = predictor.label_map if predictor else (label_map or load_label_map(args.label_map))

    def load(i: int) -> VizFrame:
        scan = frames[i]
        title = _title(scan, i, len(frames))
        if predictor is not None:
            p = predictor(scan)
            return VizFrame(scan, label_map, p.label, p.scores[op.score], op, title)
        if "anomaly" in scan.meta:  # a cloud scored by `segood replay`
            return VizFrame(scan, label_map, None, scan.meta["anomaly"].astype(np.float32), op, title)
        shown = _finite_rows(pred, scan) if pred else None
        return VizFrame(scan, label_map, shown.get("label") if shown else None, shown["anomaly"] if shown else None,
                        op, title)

    frame = load(start)
    if not frame.views:
        raise ValueError(f"{frame.scan.source}: nothing to show (no ground truth): give --ckpt or --pred, or a bag "
                         "written by `segood replay`")
    view = args.view or ("heat" if "heat" in frame.views else frame.views[0])
    if op is not None:
        _print_operating_point(op, frame)
    if not (args.png or args.overlay or args.ply):
        from segood.viz.window import run_window

        n = len(frames) if predictor is not None or pred is None else 1
        return run_window(load if n > 1 else (lambda _i: frame), n, view, start if n > 1 else 0, args.point_size)
    colors = frame.colors(view)
    if args.png:
        from segood.viz.legend import with_legend
        from segood.viz.open3d_view import RenderCamera, render_image, write_png

        w, h = _size(args.size)
        cam = RenderCamera.preset(args.camera, w, h)
        hot = frame.above() if view in ("heat", "hot") else np.zeros(frame.scan.num_points, bool)
        xyz = frame.scan.points[:, :3]  # flagged points are drawn again on top, twice as large
        img = render_image(xyz, colors, cam, args.point_size, overlay=(xyz[hot], colors[hot]))
        print(f"wrote {write_png(args.png, with_legend(img, frame, view))}")
    if args.overlay:
        from segood.viz.overlay import write_overlay

        print(f"wrote {write_overlay(args.overlay, frame, view)}")
    if args.ply:
        print(f"wrote {write_frame_ply(args.ply, frame, colors)}")
    return 0


def _print_operating_point(op, frame) -> None:
    """The operating point, what it flags in this scan, and a warning when that is too much."""
    print(f"operating point: {op.describe()}")
    if op.chosen_by:
        print(f"  score chosen by: {op.chosen_by}")
    share = frame.flagged_share()
    line = f"this scan: threshold {frame.threshold:.4g}, {100 * share:.2f}% of {frame.scan.num_points} points flagged"
    id_share = frame.id_flagged_share()
    if id_share is not None:
        line += f"; {100 * id_share:.2f}% of its ID points (ground truth)"
    print(line)
    warning = op.warning(share)
    if warning:
        print(warning, file=sys.stderr)


def write_frame_ply(path: str | Path, frame, colors: np.ndarray) -> Path:
    """PLY with x, y, z, intensity, [anomaly, above], [label, gt_label] (raw dataset ids), red, green, blue."""
    from segood.viz.colors import to_uint8
    from segood.viz.ply import write_ply

    pts = frame.scan.points
    cols: dict[str, np.ndarray] = {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2], "intensity": pts[:, 3]}
    if frame.score is not None:
        cols["anomaly"] = frame.score.astype(np.float32)
        if frame.op is not None:
            cols["above"] = frame.above().astype(np.uint8)
    if frame.pred_label is not None:
        ok = frame.pred_label >= 0
        raw = np.zeros(len(pts), dtype=np.int32)
        raw[ok] = frame.label_map.train_to_raw(frame.pred_label[ok])
        cols["label"] = raw
    if frame.scan.raw_labels is not None:
        cols["gt_label"] = frame.scan.raw_labels.astype(np.int32)
    rgb = to_uint8(colors)
    cols.update(red=rgb[:, 0], green=rgb[:, 1], blue=rgb[:, 2])
    return write_ply(path, cols)


def _frames(args, stack: contextlib.ExitStack, predictor):
    """(list-like of Scans, index of the requested frame, label map of the data set or None,
    operating point of a bag scored by replay or None)."""
    from segood.ros.bagio import open_bag
    from segood.ros.camera import CameraStream, load_calib, projection_matrix
    from segood.ros.frames import BagFrames, scored_topic
    from segood.ros.replay import scored_operating_point
    from segood.viz.sources import POINT_SUFFIXES, DatasetFrames, file_scan

    src = Path(args.input)
    if src.suffix in (".yaml", ".yml"):
        from segood.engine.families import load_config
        from segood.engine.builders import build_label_map
        from segood.engine.model_config import model_config_from_checkpoint

        if args.sequence is None:
            raise ValueError(f"{src}: a config input needs --sequence (and optionally --frame)")
        cfg = load_config(src, args.set)
        if predictor is not None:  # the model is the checkpoint's: a config stating another one is refused
            model_config_from_checkpoint({"config": predictor.config}, cfg, predictor.source)
        lm = build_label_map(cfg)
        frames = DatasetFrames(cfg["data"], args.sequence, lm)
        return frames, (frames.index_of(args.frame) if args.frame is not None else 0), lm, None
    calib = load_calib(args.calib) if args.calib else None
    if src.suffix.lower() in POINT_SUFFIXES:
        matrix = projection_matrix(calib, None, str(args.calib)) if calib else None
        # the model reads intensity (--intensity decides when the file has none); a view alone fills 0 and says so
        policy = args.intensity if predictor is not None else "zero"
        scan = file_scan(src, args.image, matrix, policy, lambda m: print(f"warning: {m}", file=sys.stderr))
        scored_op = None
        if "anomaly" in scan.meta and predictor is None and args.pred is None:  # a PLY written by `segood predict`
            from segood.engine.inference import resolve_operating_point

            scored_op = resolve_operating_point(None, "anomaly", args.threshold, warn_share=args.warn_share)
        return [scan], 0, None, scored_op
    reader = stack.enter_context(open_bag(src))
    camera = CameraStream(reader, args.image_topic, args.info_topic, calib, args.max_dt) if args.image_topic else None
    unscored = predictor is None and args.pred is None
    topic = args.topic or (scored_topic(reader) if unscored else None)
    frames = BagFrames(reader, topic, camera, args.intensity_scale)
    if not 0 <= args.index < len(frames):
        raise ValueError(f"{src}: --index {args.index} out of range: topic '{frames.topic}' has {len(frames)} clouds")
    scored_op = None
    if unscored:  # the operating point replay used, unless --threshold overrides it
        from segood.engine.inference import resolve_operating_point

        scored_op = ((scored_operating_point(src) if args.threshold is None else None)
                     or resolve_operating_point(None, "anomaly", args.threshold, warn_share=args.warn_share))
    return frames, args.index, None, scored_op


def _load_pred(path: str) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: predictions file not found")
    with np.load(p) as z:
        if "anomaly" not in z:
            raise ValueError(f"{p}: no 'anomaly' array (found {sorted(z.files)}); expected anomaly (N,) [, label (N,)]")
        out = {"anomaly": np.asarray(z["anomaly"], dtype=np.float32).reshape(-1)}
        if "label" in z:
            out["label"] = np.asarray(z["label"], dtype=np.int64).reshape(-1)
    return out


def _finite_rows(pred: dict[str, np.ndarray], scan) -> dict[str, np.ndarray]:
    """``pred`` restricted to the rows the viewer shows: a point file's finite points, when ``pred`` has one
    entry per row of the file (as `segood predict` writes it) and the file has non-finite rows."""
    finite = scan.meta.get("finite")
    if finite is None or len(pred["anomaly"]) != len(finite) or len(finite) == scan.num_points:
        return pred
    return {k: v[finite] for k, v in pred.items()}


def _title(scan, i: int, n: int) -> str:
    head, sep, tail = scan.source.partition(":/")  # bag frames: '<bag>:/<topic>#<k>'
    return f"{Path(head).name}{sep}{tail} [{i + 1}/{n}]"


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: expected WxH, e.g. 1280x720") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"--size {text!r}: width and height must be positive")
    return w, h
