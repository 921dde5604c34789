"""``segood bench replay``: frames per second of ``segood replay`` on this CPU, every inference switch
side by side in one process, the stage timer, and the torch profiler's top operators.

Model: the ``model:`` section of configs/base.yaml (or ``--config``), randomly initialised, its
BatchNorm statistics and affines drawn at random so that folding them is not a no-op (timing
only). Clouds: synthetic streets (:mod:`segood.synthetic`), a KITTI-size 64-beam sweep (2048
columns, ~120k points) and optionally a nuScenes-size 32-beam one (~35k points), with a 1242x375
camera, written to an MCAP bag with the camera as JPEG.

Part 1, the switches: one predictor per row on the same scans, rows cumulative from the plain path
(the model as trained: every switch off) to bf16, rounds interleaved, median ms per frame of the
predictor alone (voxelise + model + heads + score), LiDAR-only and with the camera, in wall time and
in process CPU time (at ``--threads 1`` the time one idle core would take, whatever else the
machine runs); ``max |d|`` is the largest score difference from the plain path on those frames.

Part 2, the bag: ``segood replay`` end to end (decode, predictor, encode, bag write) of a bag of
``--bag-frames`` clouds (the synthetic frames repeated), one row per path, cumulative: the plain
path, the fast path with everything one after the other (``parallel_branches``,
``prefetch_decode``, ``background_write`` off), then those three switched on one by one; each with
a predictor that has run one frame already (the steady state of a long replay), rounds interleaved,
median over ``--repeats``: ms per frame (the main thread's time, :class:`segood.ros.replay._Stats`)
and frames per second, the shares of decode + encode and of the bag write in the main thread's
time (what the frame pays) and in CPU time (whichever thread ran them), CPU ms per frame (the whole
replay call: opening the bag and copying its other messages included) and the stage timer.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from segood.config import add_overrides

__all__ = ["SIZES", "ROWS", "make_bag", "random_bn_checkpoint", "run_replay_bench", "add_parser", "run"]

SIZES = {  # name -> synthetic LiDAR geometry
    "kitti_120k": dict(azimuth_columns=2048),
    "nuscenes_35k": dict(beams=32, fov_up_deg=10.0, fov_down_deg=-30.0, azimuth_columns=1220),
}
# cumulative rows: (name, InferenceOptions fields set from the plain path on), exact
ROWS = (
    ("plain", {}, True),
    ("+ keep_freed_memory", {"keep_freed_memory": True}, True),
    ("+ lean_heads", {"lean_heads": True}, True),
    ("+ fold_bn", {"fold_bn": True}, False),
    ("+ channels_last", {"channels_last": True}, False),
    ("+ threads=2", {"threads": 2}, True),
    ("+ parallel_branches", {"parallel_branches": True}, False),
    ("+ amp=bf16", {"amp": "bf16"}, False),
)
# part 2, cumulative: (name, InferenceOptions fields changed from the row before; the first fast row
# from configs/base.yaml's inference: section); "plain" is InferenceOptions.plain()
_SERIAL = {"parallel_branches": False, "prefetch_decode": False, "background_write": False}
BAG_ROWS = (
    ("plain", None),
    ("fast, one after the other", _SERIAL),
    ("+ parallel_branches", {"parallel_branches": True}),
    ("+ prefetch_decode", {"prefetch_decode": True}),
    ("+ background_write", {"background_write": True}),
)


def make_frames(size: str, frames: int) -> tuple[list, "object"]:
    """(``frames`` x (points (N, 4) float32, image (375, 1242, 3) uint8), lidar_to_image (3, 4))."""
    import numpy as np

    from segood.synthetic import SyntheticConfig, generate_scene, lidar_to_image, render_scan

    cfg = SyntheticConfig(image_width=1242, image_height=375, **SIZES[size])
    out = []
    for k in range(frames):
        pts, _, image = render_scan(generate_scene(np.random.default_rng(k), cfg), cfg)
        out.append((pts.astype(np.float32), image))
    return out, lidar_to_image(cfg)


def make_bag(path: Path, frames: list, with_image: bool = True, count: int | None = None) -> int:
    """Write ``count`` clouds (default: one per frame; ``frames`` repeated) as an MCAP bag (10 Hz,
    camera as JPEG); returns the mean points per cloud."""
    import numpy as np

    from segood.ros.export import SensorFrame, write_sensor_bag
    from segood.ros.pointcloud2 import xyzi_records

    count = count or len(frames)
    records = [(xyzi_records(pts), image if with_image else None) for pts, image in frames]
    out = [SensorFrame(10**9 + k * 10**8, records[k % len(records)][0], image=records[k % len(records)][1],
                       projection=None) for k in range(count)]
    write_sensor_bag(path, out)
    return int(np.mean([len(f.records) for f in out]))


def random_bn_checkpoint(path: Path, config: str, overrides: list[str], seed: int = 0) -> Path:
    """A randomly initialised checkpoint of ``config``'s model whose BatchNorms have random
    statistics and affines (so folding them changes the weights)."""
    import torch

    from segood.engine.families import load_config
    from segood.data.labels import load_label_map
    from segood.engine.checkpoint import save_checkpoint
    from segood.models import build_model

    cfg = load_config(config, overrides)
    torch.manual_seed(seed)
    model = build_model(cfg["model"])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0.0, 0.2)
    return save_checkpoint(path, {"model": model.state_dict(), "config": cfg, "step": 0,
                                  "label_map": load_label_map(cfg["data"]["label_map"]).checksum()})


def _scans(frames: list, matrix, camera: bool) -> list:
    from segood.data.projection import assign_cameras
    from segood.data.scan import Scan

    scans = []
    for pts, image in frames:
        if not camera:
            scans.append(Scan(points=pts))
            continue
        uv, cam = assign_cameras(pts[:, :3], [matrix], [(image.shape[1], image.shape[0])])
        scans.append(Scan(points=pts, images=[image], lidar_to_image=[matrix], pixel_uv=uv, camera_id=cam))
    return scans


def _predictors(ckpt: Path, rows=ROWS) -> list[tuple[str, bool, object]]:
    from dataclasses import replace

    from segood.config import ConfigError
    from segood.engine.inference import InferenceOptions, Predictor

    opts, out = InferenceOptions.plain(), []
    for name, change, exact in rows:
        try:
            predictor = Predictor(ckpt, options=replace(opts, **change))
        except ConfigError as e:  # bf16 on a CPU without it
            print(f"[bench] {name} left out: {e}")
            continue
        opts = replace(opts, **change)
        out.append((name, exact, predictor))
    return out


def switch_table(ckpt: Path, scans: list, repeats: int, warmup: int) -> list[dict]:
    """Part 1: per row, median ms per frame of the predictor and the largest score difference
    from the plain path, rounds interleaved."""
    import numpy as np

    preds = _predictors(ckpt)
    times: dict[str, list[float]] = {name: [] for name, _, _ in preds}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in preds}
    diff: dict[str, float] = {name: 0.0 for name, _, _ in preds}
    stages: dict[str, dict] = {}
    for r in range(warmup + repeats):
        scan = scans[r % len(scans)]
        ref = None
        for name, _, p in preds:
            t0, c0 = time.perf_counter(), time.process_time()
            res = p(scan)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            score = res.scores[p.op.score]
            ref = score if ref is None else ref
            diff[name] = max(diff[name], float(np.max(np.abs(score - ref))))
            if r >= warmup:
                times[name].append(dt)
                cpu[name].append(dc)
                stages[name] = dict(p.timer.last)
    rows, prev = [], None
    base, base_cpu, prev_cpu = statistics.median(times[preds[0][0]]), statistics.median(cpu[preds[0][0]]), None
    for name, exact, _ in preds:
        ms, cpu_s = statistics.median(times[name]), statistics.median(cpu[name])
        rows.append({"row": name, "ms": 1e3 * ms, "old_ms": None if prev is None else 1e3 * prev,
                     "vs_previous": 1.0 if prev is None else prev / ms, "vs_plain": base / ms,
                     "cpu_ms": 1e3 * cpu_s, "cpu_vs_previous": 1.0 if prev_cpu is None else prev_cpu / cpu_s,
                     "cpu_vs_plain": base_cpu / cpu_s,
                     "frames_per_s": 1.0 / ms, "exact": exact, "max_abs_score_diff": diff[name],
                     "stages_ms": {k: 1e3 * v for k, v in stages[name].items()}})
        prev, prev_cpu = ms, cpu_s
    return rows


def profile_table(ckpt: Path, scan, top: int) -> str:
    """The profiler's ``top`` operators (self CPU) over one frame of the default fast path."""
    from torch.profiler import ProfilerActivity, profile

    from segood.engine.inference import Predictor

    p = Predictor(ckpt)
    p(scan)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        p(scan)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48)


def _bag_predictors(ckpt: Path) -> list[tuple[str, object]]:
    """One predictor per row of ``BAG_ROWS``."""
    from dataclasses import replace

    from segood.engine.inference import InferenceOptions, Predictor

    out, opts = [], InferenceOptions.from_config()
    for name, change in BAG_ROWS:
        if change is None:
            out.append((name, Predictor(ckpt, options=InferenceOptions.plain())))
            continue
        opts = replace(opts, **change)
        out.append((name, Predictor(ckpt, options=opts)))
    return out


def bag_replay(predictor, bag: Path, out: Path, calib: Path | None) -> dict:
    """``segood replay`` of ``bag`` (camera when ``calib``) with ``predictor`` (which should have
    run one frame: the steady state of a long replay, without the first frame's one-off set-up)."""
    from segood.ros.replay import ReplayOptions, replay

    opts = ReplayOptions(bag, out, Path(predictor.source), progress=False, overwrite=True,
                         image_topic="/camera/image/compressed" if calib else None, calib=calib)
    c0 = time.process_time()
    s = replay(opts, predictor)
    frames = max(s["frames"]["processed"], 1)
    return {"ms": 1e3 / s["frames_per_s"], "frames_per_s": s["frames_per_s"],
            "latency_ms_p50": s["latency_ms"]["p50"], "share_decode_encode": s["share_decode"] + s["share_encode"],
            "share_write": s["share_write"], "cpu_share_decode_encode": s["cpu_share_decode"] + s["cpu_share_encode"],
            "cpu_share_write": s["cpu_share_write"], "cpu_ms_per_frame": 1e3 * (time.process_time() - c0) / frames,
            "stages_ms_p50": {k: v["p50"] for k, v in s["stages_ms"].items()}}


def bag_table(ckpt: Path, bag: Path, tmp: Path, calib: Path | None, warm_scan, repeats: int) -> list[dict]:
    """Part 2 for one bag: per row of ``BAG_ROWS`` the median over ``repeats`` interleaved rounds
    (stage timer and shares of the median round); each replay after one frame of its predictor
    (``warm_scan``)."""
    preds = _bag_predictors(ckpt)
    runs: dict[str, list[dict]] = {name: [] for name, _ in preds}
    for r in range(repeats):
        for k, (name, p) in enumerate(preds):
            p(warm_scan)  # this row's memory settings in place (the plain row's give freed memory back)
            runs[name].append(bag_replay(p, bag, tmp / f"out_{k}.mcap", calib))
    rows, prev = [], None
    for name, _ in preds:
        ordered = sorted(runs[name], key=lambda x: x["ms"])
        row = {"row": name, **ordered[len(ordered) // 2], "camera": calib is not None,
               "old_ms": None if prev is None else prev}
        row["vs_previous"] = 1.0 if prev is None else prev / row["ms"]
        row["vs_plain"] = rows[0]["ms"] / row["ms"] if rows else 1.0
        rows.append(row)
        prev = row["ms"]
    return rows


def run_replay_bench(sizes=("kitti_120k",), frames: int = 4, repeats: int = 5, warmup: int = 1,
                     config: str | None = None, overrides: list[str] | None = None, threads: int | None = None,
                     top: int = 15, out_dir: Path | None = None, say=print, bag_frames: int = 8) -> dict:
    """Both parts for each size (module docstring); returns the results (and writes them to
    ``out_dir``/bench_replay.json)."""
    import torch

    from segood.config import CONFIG_DIR
    from segood.models.concurrency import set_numpy_blas_threads

    if threads:
        torch.set_num_threads(threads)
        set_numpy_blas_threads(threads)  # the projection's matmul too: CPU time at one thread is one core's
    result = {"meta": {"torch_threads": torch.get_num_threads(), "loadavg_before": os.getloadavg(),
                       "config": config or "configs/base.yaml", "overrides": overrides or [], "frames": frames,
                       "repeats": repeats}, "sizes": {}}
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="segood_bench_replay_") as tmp:
        tmp = Path(tmp)
        ckpt = random_bn_checkpoint(tmp / "bench.pt", config or str(CONFIG_DIR / "base.yaml"), overrides or [])
        for size in sizes:
            data, matrix = make_frames(size, frames)
            (tmp / "calib.json").write_text(json.dumps({"lidar_to_image": matrix.tolist()}))
            n = make_bag(tmp / f"{size}.mcap", data, count=bag_frames)
            entry = {"points": n, "bag_frames": bag_frames, "switches": {}, "bag": {}}
            for camera in (False, True):
                mode = "camera" if camera else "lidar_only"
                scans = _scans(data, matrix, camera)
                entry["switches"][mode] = switch_table(ckpt, scans, repeats, warmup)
                if not camera:
                    entry["profile"] = profile_table(ckpt, scans[0], top)
                entry["bag"][mode] = bag_table(ckpt, tmp / f"{size}.mcap", tmp, tmp / "calib.json" if camera else None,
                                               scans[-1], repeats)
            result["sizes"][size] = entry
            say(format_size(size, entry))
    result["meta"].update(loadavg_after=os.getloadavg(), seconds=round(time.time() - t_start, 1))
    say(f"[bench] load average before {result['meta']['loadavg_before']}, after {result['meta']['loadavg_after']}; "
        f"{result['meta']['seconds']} s")
    if out_dir is not None:
        from segood.atomic import write_json

        say(f"[bench] wrote {write_json(Path(out_dir) / 'bench_replay.json', result)}")
    return result


def _head(width: int) -> str:
    return f"{'row':{width}s} {'old ms':>7} {'new ms':>7} {'ratio':>6} {'vs plain':>8} {'frames/s':>8}"


def _cells(r: dict, width: int, digits: int, stages: dict) -> tuple[str, str]:
    """The columns every table shares (row, old and new ms, ratio to the row before and to plain,
    frames/s) and the stage timer, as text."""
    old = "" if r["old_ms"] is None else f"{r['old_ms']:7.{digits}f}"
    lead = (f"{r['row']:{width}s} {old:>7} {r['ms']:7.{digits}f} {r['vs_previous']:6.2f} {r['vs_plain']:8.2f} "
            f"{r['frames_per_s']:8.2f}")
    return lead, " ".join(f"{k} {v:.{digits}f}" for k, v in stages.items())


def format_size(size: str, entry: dict) -> str:
    lines = [f"== torch profiler, one {size} frame, default fast path, LiDAR-only", entry["profile"]]
    for mode, rows in entry["switches"].items():
        lines.append(f"== {size} ({entry['points']} points), {mode}: predictor ms per frame (median, rows cumulative)")
        lines.append(f"{_head(22)} {'CPU ms':>7} {'CPU ratio':>9} {'CPU vs plain':>12} {'exact':5s} {'max |d| score':>13}"
                     "  stages ms")
        for r in rows:
            lead, st = _cells(r, 22, 0, r["stages_ms"])
            lines.append(f"{lead} {r['cpu_ms']:7.0f} {r['cpu_vs_previous']:9.2f} {r['cpu_vs_plain']:12.2f} "
                         f"{'yes' if r['exact'] else 'no':5s} {r['max_abs_score_diff']:13.2e}  {st}")
    for mode, rows in entry["bag"].items():
        lines.append(f"== {size}, {mode}: segood replay of a {entry['bag_frames']}-cloud bag, end to end, ms per frame "
                     "(median, rows cumulative); shares of a frame: main thread's time (wall) and CPU time")
        lines.append(f"{_head(26)} {'dec+enc wall':>12} {'write wall':>10} {'dec+enc CPU':>11} {'write CPU':>9} "
                     f"{'CPU ms':>7}  stages p50 ms")
        for b in rows:
            lead, st = _cells(b, 26, 1, b["stages_ms_p50"])
            lines.append(f"{lead} {100 * b['share_decode_encode']:11.1f}% {100 * b['share_write']:9.1f}% "
                         f"{100 * b['cpu_share_decode_encode']:10.1f}% {100 * b['cpu_share_write']:8.1f}% "
                         f"{b['cpu_ms_per_frame']:7.0f}  {st}")
    return "\n".join(lines)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``replay`` (``segood bench replay``)."""
    p = subparsers.add_parser("replay", help="replay frames/s with every inference switch side by side",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=4, help="synthetic frames per bag (default 4)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds of the switch table (default 5)")
    p.add_argument("--config", default=None, help="model config (default configs/base.yaml)")
    add_overrides(p, "model.lidar.backend=torch")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads and numpy BLAS threads (default: torch's); 1 makes CPU time one core's")
    p.add_argument("--bag-frames", type=int, default=8, help="clouds in the bag of part 2 (default 8, the frames repeated)")
    p.add_argument("--top", type=int, default=15, help="profiler rows")
    p.add_argument("--full", action="store_true", help="both sizes (120k and 35k points), 10 frames, 9 rounds")
    p.add_argument("--out", type=Path, default=None, help="folder for bench_replay.json")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    sizes = tuple(SIZES) if args.full else ("kitti_120k",)
    run_replay_bench(sizes, 10 if args.full else args.frames, 9 if args.full else args.repeats, 1, args.config,
                     args.set, args.threads, args.top, args.out, bag_frames=args.bag_frames)
    return 0
