"""Offline replay: run a checkpoint over every PointCloud2 of a bag and write the bag back with the scores.

The output holds every original message unchanged (raw bytes, same receive time) plus, for each
processed cloud, a PointCloud2 on ``<topic>/segood``: same header, size and point order, the original
fields and two more, ``anomaly`` (float32, the operating point's score) and ``label`` (uint16; raw
dataset ids through the label map's ``train_to_raw`` by default, or train ids). Points that are not
finite in the input get ``anomaly = NaN`` and label 0 (raw) / 65535 (train ids).

A cloud that cannot be used (truncated buffer, no x/y/z, no finite point) is dropped with its reason
and the replay goes on; a summary JSON (``OUT.summary.json``) lists frames, drops, latency and the
share of points above the operating point.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segood.atomic import check_writable, write_json
from segood.ros.bagio import (
    POINTCLOUD2,
    BagWriter,
    connections_of,
    detect_format,
    messages,
    open_bag,
    output_format,
    resolve_topic,
)
from segood.ros.camera import CameraStream, load_calib
from segood.data.errors import DataError
from segood.ros.frames import OUTPUT_SUFFIX, CloudDecoder, first_cloud_fields, missing_intensity
from segood.ros.pointcloud2 import CloudError, with_scores
from segood.engine.inference import InferenceOptions, OperatingPoint, Predictor

NO_CAMERA = "no camera topic given (--image-topic)"
INVALID_TRAIN_ID = 65535


@dataclass
class ReplayOptions:
    bag: Path
    out: Path
    ckpt: Path
    topic: str | None = None  # None: the first PointCloud2 topic
    image_topic: str | None = None
    info_topic: str | None = None
    calib: Path | None = None
    max_dt: float = 0.05  # s, cloud-image pairing window
    every: int = 1  # process every N-th cloud of the window
    start: float = 0.0  # s after the bag's first message
    duration: float | None = None  # s; None = to the end
    score: str | None = None
    threshold: float | None = None
    label_ids: str = "raw"  # raw | train
    intensity_scale: float = 1.0
    intensity: str = "error"  # a cloud without an intensity field: error | zero (see ros.frames)
    overwrite: bool = False
    progress: bool = True
    plain: bool = False  # the model as trained (InferenceOptions.plain), not the fast path
    amp: str | None = None  # none | bf16; None: inference.amp of configs/base.yaml


def summary_path(out: Path) -> Path:
    return out.with_name(out.name + ".summary.json")


def scored_operating_point(bag: Path) -> OperatingPoint | None:
    """The operating point a replay used for the scores in ``bag`` (from ``bag.summary.json``), so
    the viewer can show a scored bag without the model; None without a summary."""
    path = summary_path(Path(bag))
    if not path.is_file():
        return None
    op = json.loads(path.read_text()).get("operating_point") or {}
    if op.get("threshold") is None:
        return None
    return OperatingPoint(op["score"], float(op["threshold"]), f"{path.name}: {op['source']}", fpr=op.get("fpr"),
                          chosen_by=op.get("chosen_by", ""))


def inference_options(opts: ReplayOptions) -> InferenceOptions:
    """The predictor's switches: plain, or configs/base.yaml's ``inference:`` with ``opts.amp``."""
    if opts.plain:
        return InferenceOptions.plain()
    return InferenceOptions.from_config({} if opts.amp is None else {"amp": opts.amp})


def replay(opts: ReplayOptions, predictor: Predictor | None = None) -> dict:
    """Replay ``opts.bag`` into ``opts.out``; returns (and writes) the summary dict."""
    bag, out = Path(opts.bag), Path(opts.out)
    if out.resolve() == bag.resolve():
        raise ValueError(f"{out}: the output must differ from the input bag")
    check_writable(out.parent, f"folder of the output bag {out.name}")
    if opts.every < 1:
        raise ValueError(f"--every must be >= 1, got {opts.every}")
    if opts.label_ids not in ("raw", "train"):
        raise ValueError(f"label ids must be 'raw' or 'train', got {opts.label_ids!r}")
    in_fmt = detect_format(bag)
    out_fmt, bare = output_format(in_fmt, out)
    for p in (out, summary_path(out)):
        if p.exists() and not opts.overwrite:
            raise FileExistsError(f"{p}: output exists; pass --overwrite to replace it")
    calib = load_calib(opts.calib) if opts.calib else None
    predictor = predictor or Predictor(opts.ckpt, opts.score, opts.threshold, options=inference_options(opts))
    op, lm = predictor.op, predictor.label_map
    with open_bag(bag) as reader:
        topic = resolve_topic(reader, opts.topic, (POINTCLOUD2,), "PointCloud2")
        lo = reader.start_time + int(round(opts.start * 1e9))
        hi = None if opts.duration is None else lo + int(round(opts.duration * 1e9))
        camera = None
        if opts.image_topic:
            camera = CameraStream(reader, opts.image_topic, opts.info_topic, calib, opts.max_dt, lo, hi)
        fields = first_cloud_fields(reader, topic)
        if opts.intensity == "error" and fields is not None and "intensity" not in fields:
            raise DataError(f"{missing_intensity(bag, topic, fields)}: pass --intensity zero to replay with "
                            "intensity 0 (some points may change flag), or record the field")
        decode = CloudDecoder(reader, camera, opts.intensity_scale, opts.intensity,
                              note=lambda text: tqdm.write(text, file=sys.stderr))
        n_clouds = sum(c.msgcount for c in connections_of(reader, topic))
        stats = _Stats()
        t_start = time.perf_counter()
        with BagWriter(out, out_fmt, bare, opts.overwrite) as writer:
            out_conns = {c.id: writer.copy_connection(c, reader.typestore) for c in reader.connections}
            seg_conn = writer.add_connection(topic + OUTPUT_SUFFIX, POINTCLOUD2)
            bar = tqdm(total=n_clouds, desc="replay", unit="cloud", disable=not opts.progress, dynamic_ncols=True)
            index = in_window = 0
            for conn, t, raw in messages(reader):
                writer.write(out_conns[conn.id], t, raw)
                if conn.topic != topic:
                    continue
                i, index = index, index + 1
                bar.update(1)
                if t < lo or (hi is not None and t >= hi):
                    stats.skipped_window += 1
                    continue
                in_window += 1
                if (in_window - 1) % opts.every:
                    stats.skipped_every += 1
                    continue
                try:
                    d = decode(conn, raw, i)
                except CloudError as e:
                    stats.drop(i, t - reader.start_time, str(e))
                    continue
                t1 = time.perf_counter()
                pred = predictor(d.scan)
                t2 = time.perf_counter()
                score = pred.scores[op.score]
                anomaly = np.full(len(d.valid), np.nan, dtype=np.float32)
                anomaly[d.valid] = score
                ids = lm.train_to_raw(pred.label) if opts.label_ids == "raw" else pred.label
                label = np.full(len(d.valid), 0 if opts.label_ids == "raw" else INVALID_TRAIN_ID, dtype=np.uint16)
                label[d.valid] = ids
                data = writer.serialize(with_scores(d.msg, anomaly, label, writer.typestore), POINTCLOUD2)
                t3 = time.perf_counter()
                writer.write(seg_conn, t, data)
                t4 = time.perf_counter()
                stats.frame(d.decode_s, t2 - t1, t3 - t2, t4 - t3, len(d.valid), int(d.valid.sum()),
                            int(op.above(score).sum()), d.camera_note if camera else NO_CAMERA,
                            getattr(predictor, "timer", None) and predictor.timer.last)
                bar.set_postfix(fps=f"{1.0 / max(np.mean(stats.total[-10:]), 1e-9):.2f}", dropped=len(stats.dropped))
            bar.close()
        summary = stats.summary(wall=time.perf_counter() - t_start)
    summary = {
        "input": str(bag), "input_format": in_fmt, "output": str(out), "output_format": out_fmt,
        "checkpoint": predictor.source, "model": predictor.config["model"], "topic": topic, "output_topic": topic + OUTPUT_SUFFIX,
        "image_topic": camera.topic if camera else None,
        "fields": {"anomaly": f"float32, score '{op.score}' (higher = more anomalous); NaN for non-finite input points",
                   "label": ("uint16 raw dataset ids (" + lm.name + " label map, train_to_raw); 0 for non-finite points"
                             if opts.label_ids == "raw" else
                             f"uint16 train ids 0..{lm.num_classes - 1}; {INVALID_TRAIN_ID} for non-finite points")},
        "operating_point": {"score": op.score, "threshold": op.threshold, "source": op.source, "fpr": op.fpr,
                            "chosen_by": op.chosen_by, "description": op.describe(),
                            "warning": op.warning(summary["points"]["fraction_above"] or 0.0)},
        "window": {"start_s": opts.start, "duration_s": opts.duration, "every": opts.every},
        "intensity": {"mode": opts.intensity, "clouds_without_field": decode.without_intensity},
        "times": "time_s = receive time in seconds from the bag's first message (the clock of --start / --duration)",
        "clouds_in_topic": n_clouds, **summary,
    }
    write_json(summary_path(out), summary)
    return summary


MAX_LISTED_DROPS = 20


def report_lines(summary: dict) -> list[str]:
    """Console lines under the counts: why frames ran LiDAR-only, and each dropped message with its
    index on the topic and its time from the bag's start (the first ``MAX_LISTED_DROPS``)."""
    lines = [f"  LiDAR-only {n}: {reason}" for reason, n in summary["lidar_only_reasons"].items()]
    drops = summary["dropped_frames"]
    for d in drops[:MAX_LISTED_DROPS]:
        lines.append(f"  dropped message {d['index']} (t = {d['time_s']:.3f} s): {d['reason']}")
    if len(drops) > MAX_LISTED_DROPS:
        lines.append(f"  ... and {len(drops) - MAX_LISTED_DROPS} more dropped (all in the summary JSON)")
    return lines


class _Stats:
    """Per-frame timings and counts of one replay."""

    def __init__(self) -> None:
        self.decode: list[float] = []
        self.model: list[float] = []
        self.encode: list[float] = []
        self.write: list[float] = []
        self.total: list[float] = []
        self.points = self.valid = self.above = 0
        self.skipped_window = self.skipped_every = 0
        self.dropped: list[dict] = []
        self.lidar_only: dict[str, int] = {}
        self.stages: dict[str, list[float]] = {}  # decode, the predictor's stages, encode, write

    def drop(self, index: int, t: int, reason: str) -> None:
        """A dropped cloud: its message index on the topic, its receive time ``t`` in ns from the bag's start."""
        self.dropped.append({"index": index, "time_s": t / 1e9, "reason": reason})

    def frame(self, decode: float, model: float, encode: float, write: float, points: int, valid: int, above: int,
              camera_note: str, stages: dict[str, float] | None = None) -> None:
        """One processed frame: seconds of decoding (message, image, projection), the predictor,
        encoding (the output message's bytes) and writing them to the bag."""
        for name, seconds in {"decode": decode, **(stages or {}), "encode": encode, "write": write}.items():
            self.stages.setdefault(name, []).append(seconds)
        self.decode.append(decode)
        self.model.append(model)
        self.encode.append(encode)
        self.write.append(write)
        self.total.append(decode + model + encode + write)
        self.points += points
        self.valid += valid
        self.above += above
        if camera_note:
            key = camera_note.split(" (")[0]
            self.lidar_only[key] = self.lidar_only.get(key, 0) + 1

    def summary(self, wall: float) -> dict:
        def ms(x: list[float]) -> dict:
            if not x:
                return {"p50": None, "p95": None, "mean": None}
            a = 1000 * np.asarray(x)
            return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "mean": float(a.mean())}

        total = float(np.sum(self.total)) if self.total else 0.0
        reasons: dict[str, int] = {}
        for d in self.dropped:
            key = d["reason"].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        return {
            "frames": {"processed": len(self.total), "dropped": len(self.dropped),
                       "skipped_outside_window": self.skipped_window, "skipped_every": self.skipped_every,
                       "lidar_only": sum(self.lidar_only.values())},
            "dropped_frames": self.dropped,
            "dropped_reasons": reasons,
            "lidar_only_reasons": self.lidar_only,
            "latency_ms": ms(self.total),
            "decode_ms": ms(self.decode),
            "model_ms": ms(self.model),
            "encode_ms": ms(self.encode),
            "write_ms": ms(self.write),
            "stages_ms": {name: ms(x) for name, x in self.stages.items()},
            "share_decode": float(np.sum(self.decode)) / total if total else None,
            "share_encode": float(np.sum(self.encode)) / total if total else None,
            "share_write": float(np.sum(self.write)) / total if total else None,
            "frames_per_s": len(self.total) / total if total else None,
            "wall_s": wall,
            "points": {"total": self.points, "finite": self.valid, "above_operating_point": self.above,
                       "fraction_above": self.above / self.valid if self.valid else None},
        }
