"""Offline replay: run a checkpoint over every PointCloud2 of a bag and write the bag back with the scores.

The output holds every original message unchanged (raw bytes, same receive time) plus, for each
processed cloud, a PointCloud2 on ``<topic>/segood``: same header, size and point order, the original
fields and two more, ``anomaly`` (float32, the operating point's score) and ``label`` (uint16; raw
dataset ids through the label map's ``train_to_raw`` by default, or train ids). Points that are not
finite in the input get ``anomaly = NaN`` and label 0 (raw) / 65535 (train ids).

A cloud that cannot be used (truncated buffer, no x/y/z, no finite point) is dropped with its reason
and the replay goes on; a summary JSON (``OUT.summary.json``) lists frames, drops, latency and the
share of points above the operating point.

Threads (the ``inference:`` keys of the predictor's options): with ``prefetch_decode`` a reader
thread reads the bag and decodes the next cloud while the model runs; with ``background_write`` a
writer thread encodes each output and writes every message, in the input's order (the same bag
byte for byte); both niced and bounded (:mod:`segood.ros.pipeline`). numpy's BLAS runs one thread
for the whole replay (:func:`segood.models.concurrency.numpy_blas_threads`). The summary's shares
of a frame are given by the main thread's time and by CPU time (:class:`_Stats`).
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
    SQLITE3,
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
from segood.ros.pipeline import InOrder, Prefetch
from segood.ros.pointcloud2 import CloudError, with_scores
from segood.engine.inference import InferenceOptions, OperatingPoint, Predictor
from segood.models.concurrency import numpy_blas_threads

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
        io = getattr(predictor, "options", None) or inference_options(opts)
        # sqlite3 objects serve only the thread that made them: a .db3 bag is read / written inline
        prefetch, background = io.prefetch_decode and in_fmt != SQLITE3, io.background_write and out_fmt != SQLITE3
        stats = _Stats(background)
        t_start = time.perf_counter()
        with numpy_blas_threads(1), BagWriter(out, out_fmt, bare, opts.overwrite) as writer:
            out_conns = {c.id: writer.copy_connection(c, reader.typestore) for c in reader.connections}
            seg_conn = writer.add_connection(topic + OUTPUT_SUFFIX, POINTCLOUD2)
            bar = tqdm(total=n_clouds, desc="replay", unit="cloud", disable=not opts.progress, dynamic_ncols=True)
            events = _events(reader, topic, decode, lo, hi, opts.every)
            source = Prefetch(events, PREFETCH_DEPTH) if prefetch else events
            sink = InOrder(WRITE_DEPTH) if background else _Inline()
            try:
                emit = _Emitter(writer, seg_conn, op, lm, opts.label_ids, stats)
                _frames(source, sink, lambda conn: out_conns[conn.id], predictor, emit, stats, bar, camera is not None)
            finally:
                sink.abort()
                if isinstance(source, Prefetch):
                    source.close()
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


def _frames(source, sink, out_conn, predictor, emit: "_Emitter", stats: "_Stats", bar, camera: bool) -> None:
    """The replay loop over ``source``'s work items (:func:`_events`): every message passed to
    ``sink`` (inline, or the writer thread), each cloud through the predictor and its output to
    ``sink``; per frame the main thread's times to ``stats``, the writer's wait at the end as
    ``stats.drain``."""
    prefetch, background = isinstance(source, Prefetch), isinstance(sink, InOrder)
    waited_in = waited_out = 0.0
    for event in source:
        if event[0] == "message":
            _, conn, t, raw = event
            sink.submit(emit.writer.write, out_conn(conn), t, raw)
            continue
        bar.update(1)
        if event[0] != "cloud":
            stats.skip(*event)
            continue
        _, t, d, decode_cpu = event
        t1 = time.perf_counter()
        pred = predictor(d.scan)
        t2 = time.perf_counter()
        sink.submit(emit, t, d.msg, d.valid, pred)
        t3 = time.perf_counter()
        # the main thread's wait for this cloud: its decode inline, or with prefetch the time it was
        # blocked on the reader thread since the last frame; likewise for the output
        now_in, now_out = getattr(source, "waited", 0.0), sink.waited
        stats.frame(d.decode_s, decode_cpu, now_in - waited_in if prefetch else None, t2 - t1, t3 - t2,
                    now_out - waited_out if background else None, len(d.valid), int(d.valid.sum()),
                    int(emit.above(pred).sum()), d.camera_note if camera else NO_CAMERA,
                    getattr(predictor, "timer", None) and predictor.timer.last)
        waited_in, waited_out = now_in, now_out
        bar.set_postfix(fps=f"{1.0 / max(np.mean(stats.total[-10:]), 1e-9):.2f}", dropped=len(stats.dropped))
    before = sink.waited
    sink.close()  # the last frames' writes: counted in the frames' time
    stats.drain = sink.waited - before


PREFETCH_DEPTH = 4  # messages read (and clouds decoded) ahead of the model, inference.prefetch_decode
WRITE_DEPTH = 8  # writes waiting for the writer thread, inference.background_write


def _events(reader, topic: str, decode: CloudDecoder, lo: int, hi: int | None, every: int):
    """The bag in order, as replay's work items: ``("message", conn, t, raw)`` for every message
    (each is passed through), then for each cloud of ``topic`` one of ``("cloud", t, decoded,
    decode CPU seconds)``, ``("drop", index, t from the bag's start, reason)``, ``("window",)`` or
    ``("every",)`` (skipped). Runs in the reader thread with ``inference.prefetch_decode``."""
    index = in_window = 0
    for conn, t, raw in messages(reader):
        yield "message", conn, t, raw
        if conn.topic != topic:
            continue
        i, index = index, index + 1
        if t < lo or (hi is not None and t >= hi):
            yield ("window",)
            continue
        in_window += 1
        if (in_window - 1) % every:
            yield ("every",)
            continue
        c0 = time.thread_time()
        try:
            d = decode(conn, raw, i)
        except CloudError as e:
            yield "drop", i, t - reader.start_time, str(e)
            continue
        yield "cloud", t, d, time.thread_time() - c0


class _Inline:
    """The sink without a background thread: each call runs at once (``inference.background_write`` off)."""

    waited = 0.0

    def submit(self, fn, *args) -> None:
        fn(*args)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _Emitter:
    """One frame's output: the scored PointCloud2 built, serialised (``encode``) and written
    (``write``), each stage's wall and CPU seconds handed to the stats from the thread that ran it."""

    def __init__(self, writer: BagWriter, conn, op: OperatingPoint, label_map, label_ids: str, stats: "_Stats") -> None:
        self.writer, self.conn, self.op, self.stats = writer, conn, op, stats
        self.lm, self.label_ids = label_map, label_ids

    def above(self, pred) -> np.ndarray:
        """The frame's points above the operating point."""
        return self.op.above(pred.scores[self.op.score])

    def __call__(self, t: int, msg, valid: np.ndarray, pred) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        anomaly = np.full(len(valid), np.nan, dtype=np.float32)
        anomaly[valid] = pred.scores[self.op.score]
        raw_ids = self.label_ids == "raw"
        label = np.full(len(valid), 0 if raw_ids else INVALID_TRAIN_ID, dtype=np.uint16)
        label[valid] = self.lm.train_to_raw(pred.label) if raw_ids else pred.label
        data = self.writer.serialize(with_scores(msg, anomaly, label, self.writer.typestore), POINTCLOUD2)
        t1, c1 = time.perf_counter(), time.thread_time()
        self.writer.write(self.conn, t, data)
        self.stats.output(t1 - t0, c1 - c0, time.perf_counter() - t1, time.thread_time() - c1)


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


STAGES = ("decode", "wait_input", "inputs", "branches", "voxelise", "model", "lidar", "fusion_lidar", "image",
          "fusion", "heads", "encode", "write", "wait_output")  # the summary's order of stages


def _stage_order(name: str) -> int:
    return STAGES.index(name) if name in STAGES else len(STAGES)


class _Stats:
    """Per-frame timings and counts of one replay.

    A frame's time is the main thread's: getting its cloud (the decode, or with
    ``prefetch_decode`` the wait for the reader thread), the predictor, and handing its output on
    (encode + write, or with ``background_write`` the wait for a place in the writer's queue); the
    wait for the writer at the end (``drain``) is added to the total. Shares of a frame: ``share_*``
    that main-thread time per stage over the frames' time (what the frame pays; with
    ``background_write`` the wait for the writer thread, encode included, is ``share_write``), and
    ``cpu_share_*`` the stage's CPU time, in whichever thread ran it, over the same time.
    """

    def __init__(self, background_write: bool = False) -> None:
        self.background_write = background_write
        self.input: list[float] = []
        self.model: list[float] = []
        self.handoff: list[float] = []
        self.total: list[float] = []
        self.cpu: dict[str, float] = {"decode": 0.0, "encode": 0.0, "write": 0.0}
        self.main: dict[str, float] = {"decode": 0.0, "encode": 0.0, "write": 0.0}
        self.drain = 0.0
        self.points = self.valid = self.above = 0
        self.skipped_window = self.skipped_every = 0
        self.dropped: list[dict] = []
        self.lidar_only: dict[str, int] = {}
        self.stages: dict[str, list[float]] = {}  # decode, the predictor's stages, encode, write, waits

    def skip(self, kind: str, *drop) -> None:
        """A cloud not processed: outside the window, not every N-th, or dropped (index, t in ns from
        the bag's start, reason)."""
        if kind == "window":
            self.skipped_window += 1
        elif kind == "every":
            self.skipped_every += 1
        else:
            index, t, reason = drop
            self.dropped.append({"index": index, "time_s": t / 1e9, "reason": reason})

    def _stage(self, name: str, seconds: float) -> None:
        self.stages.setdefault(name, []).append(seconds)

    def output(self, encode: float, encode_cpu: float, write: float, write_cpu: float) -> None:
        """One frame's encode and write, wall and CPU seconds (from the thread that ran them)."""
        self._stage("encode", encode)
        self._stage("write", write)
        self.cpu["encode"] += encode_cpu
        self.cpu["write"] += write_cpu
        if not self.background_write:
            self.main["encode"] += encode
            self.main["write"] += write

    def frame(self, decode: float, decode_cpu: float, wait_input: float | None, model: float, handoff: float,
              wait_output: float | None, points: int, valid: int, above: int, camera_note: str,
              stages: dict[str, float] | None = None) -> None:
        """One processed frame (seconds): its decode (wall, CPU), the main thread's wait for it when
        prefetched (None: decoded inline), the predictor, the hand-off of its output (encode +
        write inline, else the submit) and the wait in it (None: written inline); counts; the
        predictor's stages."""
        got = decode if wait_input is None else wait_input
        for name, seconds in {"decode": decode, **({} if wait_input is None else {"wait_input": wait_input}),
                              **(stages or {})}.items():
            self._stage(name, seconds)
        if wait_output is not None:
            self._stage("wait_output", wait_output)
            self.main["write"] += handoff
        self.cpu["decode"] += decode_cpu
        self.main["decode"] += got
        self.input.append(got)
        self.model.append(model)
        self.handoff.append(handoff)
        self.total.append(got + model + handoff)
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

        main = {**self.main, "write": self.main["write"] + self.drain}  # the writer's final drain
        total = float(np.sum(self.total)) + self.drain if self.total else 0.0
        reasons: dict[str, int] = {}
        for d in self.dropped:
            key = d["reason"].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        share = {f"share_{k}": v / total if total else None for k, v in main.items()}
        cpu_share = {f"cpu_share_{k}": v / total if total else None for k, v in self.cpu.items()}
        return {
            "frames": {"processed": len(self.total), "dropped": len(self.dropped),
                       "skipped_outside_window": self.skipped_window, "skipped_every": self.skipped_every,
                       "lidar_only": sum(self.lidar_only.values())},
            "dropped_frames": self.dropped,
            "dropped_reasons": reasons,
            "lidar_only_reasons": self.lidar_only,
            "latency_ms": ms(self.total),
            "decode_ms": ms(self.stages.get("decode", [])),
            "model_ms": ms(self.model),
            "encode_ms": ms(self.stages.get("encode", [])),
            "write_ms": ms(self.stages.get("write", [])),
            "stages_ms": {name: ms(self.stages[name]) for name in sorted(self.stages, key=_stage_order)},
            **share, **cpu_share,
            "shares": "share_*: the main thread's time in (or waiting for) the stage over the frames' time; "
                      "cpu_share_*: the stage's CPU time in any thread over the same time",
            "drain_ms": 1000 * self.drain,
            "frames_per_s": len(self.total) / total if total else None,
            "wall_s": wall,
            "points": {"total": self.points, "finite": self.valid, "above_operating_point": self.above,
                       "fraction_above": self.above / self.valid if self.valid else None},
        }
