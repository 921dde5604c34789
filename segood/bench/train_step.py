"""``segood bench train-step``: one training step of the demo model with every optimisation switch
side by side, measured in one process, and the torch profiler's top operators.

Rows are cumulative: the first is the unoptimised path (every switch off, as segood trained before
the switches existed), each next row turns one more switch on, so ``vs previous`` is that switch's
own gain and ``vs unoptimised`` the gain so far. Every row trains its own copy of the model from
the same initial weights on the same batch with the same outliers, rounds interleave the rows (so
they share the machine's load), and the time is the median over ``repeats`` rounds after
``warmup``, as wall clock and as process CPU time (user + sys; at one thread the cost of a step on
an idle core, even on a shared machine). After the run, ``same weights`` says whether a row's weights equal the previous row's
to the bit: an exact switch must say yes.

The step is :func:`segood.engine.step.train_step` (forward with Feature Mixing, losses, backward,
clipping, AdamW), with the switches applied by :func:`segood.engine.runtime.apply_train_runtime`
as the trainer applies them. Batch: 2 synthetic scans (``azimuth_columns`` 1024: ~120k points,
~39k voxels, two 188x621 images) read back through the SemanticKITTI reader and the training
dataset of ``configs/synthetic_feature_mixing.yaml`` (augmentation, ``collate``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from segood.config import add_overrides

__all__ = ["STEPS", "demo_batch", "run_train_step_bench", "add_parser", "run"]

CONFIG = "synthetic_feature_mixing.yaml"


@dataclass(frozen=True)
class Switch:
    name: str
    overrides: tuple[str, ...]  # what turns it on (from the unoptimised path)
    exact: bool  # meant to leave the weights bit-equal
    default: bool  # on in configs/base.yaml
    synth_attrs: tuple[tuple[str, object, object], ...] = ()  # (attribute, off, on) of the synthesizer
    module_attrs: tuple[tuple[str, str, object, object], ...] = ()  # (module, attribute, off, on)


UNOPTIMISED = ("train.keep_freed_memory=false", "loss.lovasz_sort=torch", "train.channels_last=false",
               "train.amp=none", "train.parallel_branches=never")
STEPS = (
    Switch("keep_freed_memory", ("train.keep_freed_memory=true",), True, True),
    # no config key: an exact implementation change (KernelFeatureMixing.rows_only, default True)
    Switch("fm_rows_only", (), True, True, (("rows_only", False, True),)),
    # no config key: an exact implementation change (segood.models.gather: index_select gathers)
    Switch("index_select", (), True, True, module_attrs=(("segood.models.gather", "INDEX_SELECT", False, True),)),
    Switch("lovasz_sort=keys", ("loss.lovasz_sort=keys",), False, True),
    # auto: on at >= 2 threads (at one thread this row is the previous one again)
    Switch("parallel_branches", ("train.parallel_branches=auto",), True, True),
    Switch("channels_last", ("train.channels_last=true",), False, False),
    Switch("amp=bf16", ("train.amp=bf16",), False, False),
)


def demo_batch(azimuth_columns: int = 1024, image_size: tuple[int, int] | None = None, seed: int = 0,
               overrides: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """(config, batch): 2 synthetic scans through the training dataset of the demo config and
    ``collate``, on the CPU."""
    import numpy as np

    from segood.config import CONFIG_DIR
    from segood.engine.families import load_config
    from segood.data.batching import collate
    from segood.engine.builders import build_dataset, build_grid, build_label_map
    from segood.synthetic import SyntheticConfig, write_dataset

    width, height = image_size or (SyntheticConfig.image_width, SyntheticConfig.image_height)
    with tempfile.TemporaryDirectory(prefix="segood_bench_") as root:
        write_dataset(root, SyntheticConfig(num_train=2, num_val=0, azimuth_columns=azimuth_columns,
                                            image_width=width, image_height=height, seed=seed), progress=False)
        cfg = load_config(CONFIG_DIR / CONFIG, [f"data.root={root}", f"seed={seed}", *overrides])
        dataset = build_dataset(cfg, "train", build_label_map(cfg), training=True)
        samples = [dataset[i] for i in range(2)]
    return cfg, collate(samples, build_grid(cfg), cfg["data"]["max_voxels"], np.random.default_rng(seed))


class _Row:
    """One variant: its config, its own model / optimizer / synthesizer from the shared seed."""

    def __init__(self, name: str, cfg: dict, seed: int, switch: Switch | None, synth_attrs: dict,
                 module_attrs: dict | None = None) -> None:
        import torch

        from segood.engine.builders import build_synthesizer
        from segood.engine.runtime import amp_settings
        from segood.models import build_model

        self.name, self.cfg, self.switch = name, cfg, switch
        self.module_attrs = dict(module_attrs or {})  # (module, attribute) -> value, set before each step
        torch.manual_seed(seed)
        self.model = build_model(cfg["model"]).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=float(cfg["train"]["lr"]),
                                     weight_decay=float(cfg["train"]["weight_decay"]))
        self.synth = build_synthesizer(cfg)
        for attr, value in synth_attrs.items():
            if hasattr(self.synth, attr):
                setattr(self.synth, attr, value)
        self.amp, _ = amp_settings(cfg["train"]["amp"], torch.device("cpu"))
        self.times: dict[int, list[float]] = {}  # threads -> wall seconds per step
        self.cpu: dict[int, list[float]] = {}  # threads -> process CPU seconds per step (user + sys)

    def step(self, batch: dict, index: int, threads: int) -> tuple[float, float]:
        """One training step; (wall seconds, process CPU seconds)."""
        import torch

        from segood.engine import parallel_branches
        from segood.engine.runtime import apply_train_runtime
        from segood.engine.step import train_step

        for (module, attr), value in self.module_attrs.items():
            setattr(importlib.import_module(module), attr, value)
        apply_train_runtime({**self.cfg["train"], "threads": threads}, self.model)
        parallel = parallel_branches.resolve(self.cfg["train"]["parallel_branches"], torch.device("cpu"), False, threads)
        synth = self.synth
        t0, c0 = time.perf_counter(), time.process_time()
        train_step(self.model, [batch], self.opt, self.cfg["loss"], float(self.cfg["train"]["grad_clip"]),
                   synthesize=(lambda fi, fl, b: synth(fi, fl, b, index)) if synth is not None else None,
                   amp_dtype=self.amp, parallel_branches=parallel)
        return time.perf_counter() - t0, time.process_time() - c0

    def weights(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def _rows(base_cfg_overrides: tuple[str, ...], azimuth_columns: int, image_size, seed: int,
          switches: tuple[Switch, ...]) -> tuple[list[_Row], dict]:
    from segood.config import CONFIG_DIR, ConfigError
    from segood.engine.families import load_config

    cfg, batch = demo_batch(azimuth_columns, image_size, seed, base_cfg_overrides)
    root = cfg["data"]["root"]
    overrides = [f"data.root={root}", f"seed={seed}", *base_cfg_overrides, *UNOPTIMISED]
    attrs = {a: off for sw in switches for a, off, _ in sw.synth_attrs}
    mods = {(m, a): off for sw in switches for m, a, off, _ in sw.module_attrs}
    rows = [_Row("unoptimised", load_config(CONFIG_DIR / CONFIG, overrides), seed, None, attrs, mods)]
    for sw in switches:
        attrs = {**attrs, **{a: on for a, _, on in sw.synth_attrs}}
        mods = {**mods, **{(m, a): on for m, a, _, on in sw.module_attrs}}
        try:
            row = _Row(f"+ {sw.name}", load_config(CONFIG_DIR / CONFIG, overrides + list(sw.overrides)), seed, sw,
                       attrs, mods)
        except ConfigError as e:  # e.g. bf16 on a CPU without it: the row is left out, and says why
            print(f"[bench] {sw.name} left out: {e}")
            continue
        overrides += list(sw.overrides)
        rows.append(row)
    return rows, batch


def fresh_process_step(keep: str, azimuth_columns: int, image_size, overrides: tuple[str, ...], steps: int) -> dict:
    """In this (fresh) process: the unoptimised row at one thread, ``steps`` steps, with glibc's
    allocator untouched (``keep="untouched"``) or ``train.keep_freed_memory`` true; CPU ms per step
    after the first. What :func:`fresh_process_check` runs in each child."""
    import torch

    torch.set_num_threads(1)
    rows, batch = _rows(overrides, azimuth_columns, image_size, 0, ())
    row = rows[0]
    if keep == "untouched":
        row.cfg["train"]["keep_freed_memory"] = None  # apply_train_runtime leaves glibc alone
    else:
        row.cfg["train"]["keep_freed_memory"] = True
    cpu = [row.step(batch, i, 1)[1] for i in range(steps + 1)][1:]
    return {"keep_freed_memory": keep, "cpu_ms": 1e3 * statistics.median(cpu), "samples_ms": [1e3 * c for c in cpu]}


def fresh_process_check(azimuth_columns: int, image_size, overrides: tuple[str, ...], steps: int = 3,
                        rounds: int = 1) -> dict:
    """``train.keep_freed_memory`` against glibc as a process finds it: the in-process rows can only
    emulate "off" (glibc's steady-state thresholds) once the allocator has been tuned, so this runs
    the unoptimised step in fresh child processes, untouched vs kept, alternating; CPU ms per step."""
    import subprocess
    import sys

    out: dict[str, list[float]] = {"untouched": [], "true": []}
    for _ in range(rounds):
        for keep in out:
            code = ("import json, sys; from segood.bench.train_step import fresh_process_step as f; "
                    "print(json.dumps(f(*json.loads(sys.argv[1]))))")
            args = json.dumps([keep, azimuth_columns, list(image_size) if image_size else None, list(overrides), steps])
            res = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, check=True)
            out[keep].append(json.loads(res.stdout.strip().splitlines()[-1])["cpu_ms"])
    glibc, kept = statistics.median(out["untouched"]), statistics.median(out["true"])
    return {"glibc_untouched_cpu_ms": glibc, "keep_freed_memory_cpu_ms": kept, "ratio": glibc / kept,
            "steps": steps, "rounds": rounds}


def _profile(row: _Row, batch: dict, threads: int, index: int, top: int) -> str:
    """The profiler's table of the ``top`` operators (self CPU time) over one step of ``row``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        row.step(batch, index, threads)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48)


def run_train_step_bench(threads: tuple[int, ...] = (1, 2), repeats: int = 3, warmup: int = 1,
                         azimuth_columns: int = 1024, image_size: tuple[int, int] | None = None,
                         switches: tuple[Switch, ...] = STEPS, profile_top: int = 15, seed: int = 0,
                         overrides: tuple[str, ...] = (), out_dir: str | Path | None = None,
                         fresh_steps: int = 3, say=print) -> dict:
    """Run the benchmark (module docstring); returns (and writes to ``out_dir``/bench_train_step.json)
    the medians, ratios, weight checks and profiler tables."""
    import torch

    previous_threads = torch.get_num_threads()
    load_before = os.getloadavg()
    t_start = time.time()
    rows, batch = _rows(tuple(overrides), azimuth_columns, image_size, seed, switches)
    n_points, n_voxels = int(batch["points"].shape[0]), int(batch["voxel_feats"].shape[0])
    say(f"[bench] batch: {n_points} points, {n_voxels} voxels, images {tuple(batch['images'].shape)}; "
        f"{len(rows)} rows x {len(threads)} thread counts x {warmup}+{repeats} rounds")
    index = 0
    try:
        for r in range(warmup + repeats):
            for n in threads:
                for row in rows:
                    dt, dc = row.step(batch, index, n)
                    if r >= warmup:
                        row.times.setdefault(n, []).append(dt)
                        row.cpu.setdefault(n, []).append(dc)
                index += 1
        same = [None] + [all(torch.equal(a, b) for a, b in zip(prev.weights().values(), row.weights().values()))
                         for prev, row in zip(rows, rows[1:])]
        profiles = {}
        for n in threads:
            for row in (rows[0], _default_row(rows)):
                profiles[f"{row.name} | {n} thread(s)"] = _profile(row, batch, n, index, profile_top)
            index += 1
    finally:
        torch.set_num_threads(previous_threads)
        for module, attr, _, on in (a for sw in switches for a in sw.module_attrs):
            setattr(importlib.import_module(module), attr, on)  # the implementation's default again
    say("[bench] keep_freed_memory in fresh processes (untouched glibc vs kept) ...")
    fresh = fresh_process_check(azimuth_columns, image_size, tuple(overrides), fresh_steps) if fresh_steps else None
    result = _result(rows, same, threads, profiles, dict(points=n_points, voxels=n_voxels, repeats=repeats,
                     warmup=warmup, azimuth_columns=azimuth_columns, image=list(batch["images"].shape),
                     loadavg_before=load_before, loadavg_after=os.getloadavg(), seconds=round(time.time() - t_start, 1),
                     config=f"configs/{CONFIG}", overrides=list(overrides), cpu_bf16=_bf16()))
    result["fresh_process"] = fresh
    say(format_result(result))
    if out_dir is not None:
        from segood.atomic import write_json

        say(f"[bench] wrote {write_json(Path(out_dir) / 'bench_train_step.json', result)}")
    return result


def _bf16() -> str:
    from segood.engine.runtime import cpu_bf16

    return cpu_bf16()[1]


def _default_row(rows: list[_Row]) -> _Row:
    """The last row whose switches are all on by default (what `segood train` runs)."""
    best = rows[0]
    for row in rows[1:]:
        if not row.switch.default:
            break
        best = row
    return best


def _result(rows: list[_Row], same: list, threads, profiles: dict, meta: dict) -> dict:
    table = []
    for n in threads:
        base, base_cpu = statistics.median(rows[0].times[n]), statistics.median(rows[0].cpu[n])
        prev, prev_cpu = base, base_cpu
        for row, eq in zip(rows, same):
            ms, cpu = statistics.median(row.times[n]), statistics.median(row.cpu[n])
            table.append({"threads": n, "row": row.name, "step_ms": 1e3 * ms, "vs_previous": prev / ms,
                          "vs_unoptimised": base / ms, "cpu_ms": 1e3 * cpu, "cpu_vs_previous": prev_cpu / cpu,
                          "cpu_vs_unoptimised": base_cpu / cpu, "same_weights_as_previous": eq,
                          "exact": None if row.switch is None else row.switch.exact,
                          "default": None if row.switch is None else row.switch.default,
                          "samples_ms": [1e3 * t for t in row.times[n]], "spread": _spread(row.times[n])})
            prev, prev_cpu = ms, cpu
    default = _default_row(rows).name
    return {"meta": meta, "rows": table, "default_row": default, "profiles": profiles}


def _spread(samples: list[float]) -> float:
    """Interquartile range over median of a row's samples: how far apart its rounds were (on a
    shared or virtual machine a switch worth less than about this much is not resolved)."""
    if len(samples) < 4:
        return float("nan")
    q = statistics.quantiles(samples, n=4)
    return (q[2] - q[0]) / statistics.median(samples)


def format_result(result: dict) -> str:
    """The profiler tables, then the switch table: per switch the old and new time and their ratio,
    wall clock and process CPU time (user + sys: at one thread, what the step costs on an idle
    core even when the machine is shared)."""
    lines = []
    for name, text in result["profiles"].items():
        lines += [f"== torch profiler, one step: {name}", text]
    m = result["meta"]
    lines.append(f"== one training step of {m['config']} ({m['points']} points, {m['voxels']} voxels, images "
                 f"{m['image']}), median of {m['repeats']} interleaved rounds; load average before "
                 f"{tuple(round(x, 1) for x in m['loadavg_before'])}, after "
                 f"{tuple(round(x, 1) for x in m['loadavg_after'])}; CPU bf16: {m['cpu_bf16']}")
    lines.append(f"{'thr':>3}  {'row':22s} {'wall: old':>9} {'new ms':>7} {'ratio':>6} {'vs unopt':>8} | "
                 f"{'cpu: old':>8} {'new ms':>7} {'ratio':>6} {'vs unopt':>8} | exact default same-weights spread")
    prev = None
    yn = lambda v: "-" if v is None else ("yes" if v else "no")  # noqa: E731
    for r in result["rows"]:
        old = prev if r["row"] != "unoptimised" else None
        lines.append(f"{r['threads']:>3}  {r['row']:22s} {'' if old is None else f'{old[0]:9.0f}':>9} "
                     f"{r['step_ms']:7.0f} {r['vs_previous']:6.2f} {r['vs_unoptimised']:8.2f} | "
                     f"{'' if old is None else f'{old[1]:8.0f}':>8} {r['cpu_ms']:7.0f} {r['cpu_vs_previous']:6.2f} "
                     f"{r['cpu_vs_unoptimised']:8.2f} | {yn(r['exact']):5s} {yn(r['default']):7s} "
                     f"{yn(r['same_weights_as_previous']):10s} {100 * r.get('spread', float('nan')):4.0f}%")
        prev = (r["step_ms"], r["cpu_ms"])
    lines.append(f"default path (configs/base.yaml) = row '{result['default_row']}'; spread = interquartile range "
                 "of a row's rounds over their median (with 4+ rounds): ratios closer to 1 than that are not resolved; "
                 "same-weights compares the weights after every round, both thread counts (parallel_branches runs "
                 "its branches at one thread each, so at two threads its weights differ from the row before by "
                 "float reassociation; tests/test_speed.py checks it bit-equal at one thread)")
    fresh = result.get("fresh_process")
    if fresh:
        lines.append(f"keep_freed_memory against an untouched glibc (fresh processes, 1 thread, unoptimised step, "
                     f"CPU ms): {fresh['glibc_untouched_cpu_ms']:.0f} -> {fresh['keep_freed_memory_cpu_ms']:.0f} "
                     f"({fresh['ratio']:.2f}x); the table's keep_freed_memory row emulates 'off' in-process "
                     f"(glibc's steady-state thresholds) and understates it")
    return "\n".join(lines)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train-step`` (``segood bench train-step``)."""
    p = subparsers.add_parser("train-step", help="one training step with every optimisation switch side by side",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (default 1 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (median; default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--azimuth-columns", type=int, default=1024, help="LiDAR columns per scan (1024: ~60k points)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("W", "H"), help="default 621 188")
    p.add_argument("--top", type=int, default=15, help="profiler rows per table")
    p.add_argument("--full", action="store_true", help="the full sweep: 9 rounds, 2048 columns (~120k points per scan) too")
    add_overrides(p, "model.lidar.backend=torch")
    p.add_argument("--out", default=None, help="folder for bench_train_step.json")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    image = tuple(args.image_size) if args.image_size else None
    columns = (args.azimuth_columns, 2048) if args.full else (args.azimuth_columns,)
    results = []
    for c in dict.fromkeys(columns):
        results.append(run_train_step_bench(tuple(args.threads), 9 if args.full else args.repeats, args.warmup, c,
                                            image, profile_top=args.top, overrides=tuple(args.set),
                                            out_dir=None))
    if args.out:
        from segood.atomic import write_json

        print(f"[bench] wrote {write_json(Path(args.out) / 'bench_train_step.json', results)}")
    return 0

