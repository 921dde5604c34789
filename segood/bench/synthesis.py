"""Outlier-synthesis benchmark: time per call of every synthesizer against a memory-copy floor,
and the share of synthesis in one training step of the demo model.

Inputs, per (P points, d dims, dtype): ``feat_image``, ``feat_lidar`` ~ N(0, 1) of shape (P, d)
(d_c = d_l = d), ``visible`` all True (``visible_fraction=1.0``: training crops scans to the
camera FOV, so every point is visible before camera dropout; this is also the largest outlier
count), ``target`` uniform over ``classes`` (19), no ignored points. Every synthesizer runs with
``max_points=None``: every eligible point becomes an outlier (Feature Mixing's natural setting),
except VOS, which keeps ``select`` (1) outlier per present class by design. Features do not
require grad (forward only). A method's time is the median over ``repeats`` calls after
``warmup`` calls (``torch.cuda.synchronize`` around each call on CUDA); a call stops the repeats
early once ``budget_s`` is spent (the number actually taken is recorded). Bank-based methods keep
their synthesizer across calls, so after warm-up their banks are full (steady state).

What one call is, per method: :data:`WHAT` (also written into the JSON).

Bytes moved (all methods) = the clone's read + write of both tensors, ``2 * P * (d_c + d_l) *
itemsize``; a method's GB/s is those bytes / its time (effective bandwidth, comparable across
methods). ``x_clone`` = t / t_clone; ``vs_npmix`` = t_npmix / t; ``vs_npmix_cdist`` = t_npmix_cdist / t.
Faithful NP-Mix above ``faithful_max_points`` is not run: its time is the straight line through
the two largest measured P of the same (d, dtype) (its cost is a constant plus a per-point
enqueue), marked ``measured: false``; ratios that use it are marked ``~`` in the table.

``copy`` (``copy_`` into outputs allocated once) shows the bandwidth alone: above 32 MB every
fresh output is a new ``mmap`` whose page faults a clone and every method pay (measured: 2 x 256
MB, clone 187 ms, copy 35 ms). Ratios stay against ``clone``, which allocates like the methods.

torch is imported inside the functions, so ``segood --help`` does not pay for it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

__all__ = ["METHODS", "TRAIN_METHODS", "run_synthesis_bench", "bench_kwargs", "train_step_share", "format_table", "plot_chart",
           "configure_parser", "add_parser", "run"]

WHAT = {
    "clone": "feat_image.clone(), feat_lidar.clone(): the floor",
    "copy": "out.copy_(feat) into outputs allocated once: the bandwidth floor without allocation (a fresh "
            "output of > 32 MB is a new mmap whose page faults a clone, and every method, pays)",
    "feature_mixing": "build_synthesizer('feature_mixing') = KernelFeatureMixing (the C++ op when the extension "
                      "loads, else its torch fallback): eligibility mask, op over all P rows, gather of the M "
                      "outlier rows",
    "feature_mixing_op": "feature_mixing_op(fi, fl, eligible_mask, n_swap, seed, step) alone (P output rows)",
    "feature_mixing_into": "feature_mixing_into(...): the op alone into outputs allocated once, as copy (the "
                           "target's comparison: the same bytes, no page faults on either side)",
    "feature_mixing_ref": "reference_feature_mixing: the op's pure-torch (Philox) fallback, bit-exact",
    "feature_mixing_torch": "FeatureMixing: the original torch reference (argsort of uniform noise per row)",
    "feature_mixing_shared": "SharedIndexFeatureMixing: one set of swapped dims shared by all points",
    "npmix": "NPMix(faithful=True, knn='kdtree'), MultiOOD's NP-Mix: per-sample FIFO enqueue of every eligible "
             "point's [f_c, f_l], class prototypes, scipy KD-tree over them, one outlier per anchor (MultiOOD "
             "makes one per class; that only shrinks the vectorised mix, the per-sample enqueue dominates)",
    "npmix_fast": "NPMix(faithful=False, knn='kdtree'): vectorised enqueue (same bank), else as npmix",
    "npmix_cdist": "NPMix(faithful=False, knn='cdist'), as base.yaml configures npmix (faithful: false)",
    "vos": "VOS with base.yaml settings: bank update, shared-covariance Gaussian fit, 10k candidates per "
           "present class, the lowest-likelihood 1 kept per class (M = classes)",
    "mixup": "Mixup: an other-class partner and a Beta(1, 1) lambda per anchor, both modalities",
}
METHODS = tuple(WHAT)
TRAIN_METHODS = ("feature_mixing", "feature_mixing_shared", "npmix", "npmix_fast", "npmix_cdist", "vos", "mixup")
SLOW = "npmix"            # the faithful MultiOOD NP-Mix: extrapolated above faithful_max_points
TARGETS = {"x_clone": 2.0, "x_copy": {"cpu": 2.0, "cuda": 1.5}, "vs_npmix": 370.0, "train_share": 0.02}
QUICK = {"name": "quick", "points": (2000,), "dims": (16,), "dtypes": ("float32",), "repeats": 1, "warmup": 1,
         "faithful_max_points": 100_000, "budget_s": 20.0}
# no flags: a few minutes on a 2-core CPU (fp32, d = 64, up to 100k points, faithful NP-Mix run up to
# 10k points and extrapolated above); --full: the whole sweep (> 20 minutes there)
DEFAULT = {"name": "default", "points": (10_000, 100_000), "dims": (64,), "dtypes": ("float32",), "repeats": 3,
           "warmup": 1, "faithful_max_points": 10_000, "budget_s": 5.0}
FULL = {"name": "full", "points": (10_000, 100_000, 1_000_000), "dims": (64, 128),
        "dtypes": ("float32", "bfloat16", "float16"), "repeats": 5, "warmup": 1, "faithful_max_points": 100_000,
        "budget_s": 20.0}


# ------------------------------------------------------------------ helpers


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_calls(fn: Callable[[], object], repeats: int, warmup: int, budget_s: float, device: str) -> list[float]:
    """Seconds per call: ``warmup`` untimed calls, then up to ``repeats`` timed ones (at least one;
    no new call starts once ``budget_s`` has been spent on the timed ones)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max(1, repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return samples


def supported_dtypes(names: Iterable[str], device: str) -> list[str]:
    """The dtype names among ``names`` this device can index, clone and multiply."""
    import torch

    ok = []
    for name in names:
        dtype = getattr(torch, name)
        if device.startswith("cuda") and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            continue
        try:
            x = torch.ones(4, 4, dtype=dtype, device=device)
            (x @ x)[torch.tensor([0, 2], device=device)].clone().sum().item()
            ok.append(name)
        except (RuntimeError, TypeError):
            pass
    return ok


def _synthesis_cfg(max_points: int | None) -> dict:
    """base.yaml's ``synthesis`` section with ``max_points`` replaced."""
    from segood.config import CONFIG_DIR, load_config

    cfg = load_config(CONFIG_DIR / "base.yaml")["synthesis"]
    return {**cfg, "max_points": max_points}


def make_synthesizer(name: str, cfg: dict, classes: int, d_c: int, d_l: int, seed: int):
    """The ``synth(fi, fl, batch, step)`` of a benchmark method: ``build_synthesizer`` with the
    ``synthesis`` section ``cfg``, plus the variants it does not name (``feature_mixing_torch``;
    ``npmix`` = faithful, ``npmix_fast`` / ``npmix_cdist`` = vectorised enqueue)."""
    from segood.ood.feature_mixing import FeatureMixing
    from segood.ood.synthesis import build_synthesizer

    if name == "feature_mixing_torch":
        return FeatureMixing(int(cfg["n_swap"]), seed=seed, max_points=cfg["max_points"])
    if name in ("npmix", "npmix_fast", "npmix_cdist"):
        cfg = {**cfg, "npmix": {**cfg["npmix"], "faithful": name == "npmix"}}
        name = "npmix_cdist" if name == "npmix_cdist" else "npmix"
    return build_synthesizer(name, cfg, classes, d_c, d_l, seed)


def _method_call(name: str, fi, fl, batch: dict, cfg: dict, classes: int, seed: int, info: dict) -> Callable[[], None]:
    """A no-argument closure doing one call of ``name`` (a new ``step`` each call); the number of
    outliers of the last call goes to ``info['outliers']``."""
    from segood.ood.fm_kernel import feature_mixing_op, reference_feature_mixing

    counter = iter(range(1 << 31))
    n_swap = min(int(cfg["n_swap"]), fi.shape[1], fl.shape[1])
    if name == "clone":
        def call() -> None:
            fi.clone(), fl.clone()
            info["outliers"] = fi.shape[0]
        return call
    if name == "copy":
        import torch

        out_i, out_l = torch.empty_like(fi), torch.empty_like(fl)

        def call() -> None:
            out_i.copy_(fi), out_l.copy_(fl)
            info["outliers"] = fi.shape[0]
        return call
    if name == "feature_mixing_into":
        from segood.ood.fm_kernel import feature_mixing_into

        mask = batch["visible"] & (batch["target"] >= 0)
        info["outliers"] = int(mask.sum())
        out_i, out_l = fi.new_empty(fi.shape), fl.new_empty(fl.shape)

        def call() -> None:
            feature_mixing_into(fi, fl, mask, n_swap, seed, next(counter), out_i, out_l)
        return call
    if name in ("feature_mixing_op", "feature_mixing_ref"):
        op = feature_mixing_op if name == "feature_mixing_op" else reference_feature_mixing
        mask = batch["visible"] & (batch["target"] >= 0)
        info["outliers"] = int(mask.sum())

        def call() -> None:
            op(fi, fl, mask, n_swap, seed, next(counter))
        return call
    synth = make_synthesizer(name, {**cfg, "n_swap": n_swap}, classes, fi.shape[1], fl.shape[1], seed)

    def call() -> None:
        info["outliers"] = int(synth(fi, fl, batch, next(counter))[0].numel())
    return call


def make_inputs(points: int, dim: int, dtype: str, classes: int, visible_fraction: float, device: str,
                seed: int = 0) -> tuple:
    """(feat_image, feat_lidar, batch) random benchmark inputs (see the module docstring)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    fi = torch.randn(points, dim, generator=g).to(device, getattr(torch, dtype))
    fl = torch.randn(points, dim, generator=g).to(device, getattr(torch, dtype))
    visible = torch.rand(points, generator=g) < visible_fraction
    target = torch.randint(0, classes, (points,), generator=g)
    return fi, fl, {"visible": visible.to(device), "target": target.to(device)}


def _extrapolate(rows: list[dict]) -> None:
    """Fill the unmeasured rows of the faithful NP-Mix from the measured ones of the same (d, dtype):
    the line through the two largest measured P (proportional when only one was measured)."""
    for row in (r for r in rows if r["method"] == SLOW and not r["measured"]):
        known = sorted((r["points"], r["ms"]) for r in rows if r["method"] == SLOW and r["measured"]
                       and r["dim"] == row["dim"] and r["dtype"] == row["dtype"] and r.get("ms"))
        if not known:
            row["note"] = "not run (no measured P to extrapolate from)"
            continue
        if len(known) == 1 or known[-1][1] <= known[-2][1]:
            (p1, t1), slope, row["extrapolated_from"] = known[-1], known[-1][1] / known[-1][0], [known[-1][0]]
        else:
            (p0, t0), (p1, t1) = known[-2:]
            slope, row["extrapolated_from"] = (t1 - t0) / (p1 - p0), [p0, p1]
        row["ms"] = t1 + slope * (row["points"] - p1)
        row["note"] = f"extrapolated (linear in P from P={row['extrapolated_from']})"


def _derive(rows: list[dict]) -> None:
    """GB/s, x_clone and the speed-ups, from the times of the same (P, d, dtype)."""
    by_key = {(r["method"], r["points"], r["dim"], r["dtype"]): r for r in rows}
    for r in rows:
        if not r.get("ms"):
            continue
        key = (r["points"], r["dim"], r["dtype"])
        r["gbps"] = r["bytes"] / (r["ms"] * 1e-3) / 1e9
        clone = by_key.get(("clone", *key), {}).get("ms")
        r["x_clone"] = r["ms"] / clone if clone else None
        copy = by_key.get(("copy", *key), {}).get("ms")
        r["x_copy"] = r["ms"] / copy if copy else None
        for ref, col in ((SLOW, "vs_npmix"), ("npmix_cdist", "vs_npmix_cdist")):
            ref_row = by_key.get((ref, *key), {})
            r[col] = ref_row["ms"] / r["ms"] if ref_row.get("ms") else None
            if col == "vs_npmix":
                r["vs_npmix_extrapolated"] = bool(ref_row) and not ref_row.get("measured", True)


# ------------------------------------------------------------------ training-step share


def train_step_share(methods: Sequence[str] = TRAIN_METHODS, repeats: int = 3, warmup: int = 1, device: str = "cpu",
                     max_points: int | None = None, azimuth_columns: int = 512, image_size: tuple[int, int] | None = None,
                     seed: int = 0) -> dict:
    """Time one optimizer step of the demo model (configs/synthetic_feature_mixing.yaml) without
    synthesis and with each method, on one fixed batch of 2 synthetic scans read back through the
    SemanticKITTI reader and the training dataset (augmentation, FOV crop, ``collate``).

    A step is zero_grad, forward (+ synthesis and outlier heads), ``compute_losses``, backward,
    gradient clipping and the AdamW step. Rounds interleave the baseline and every method so they
    see the same machine load; medians over ``repeats`` rounds after ``warmup``. ``synth_ms`` is
    the synthesizer call alone (forward, live features with grad), timed inside the step;
    ``share = synth_ms / baseline step``; ``overhead = step with synthesis / baseline - 1`` also
    counts the outlier heads, losses and their backward. ``max_points=None``: every eligible point
    becomes an outlier (the config trains with base.yaml's 4096; None is the upper bound).
    """
    import torch

    from segood.bench.train_step import demo_batch
    from segood.engine.step import train_step
    from segood.engine.train import to_device
    from segood.models import build_model

    cfg, batch = demo_batch(azimuth_columns, image_size, seed)
    width, height = batch["images"].shape[-1], batch["images"].shape[-2]
    batch = to_device(batch, torch.device(device))
    torch.manual_seed(seed)
    model = build_model(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["train"]["lr"]),
                            weight_decay=float(cfg["train"]["weight_decay"]))
    syn_cfg = {**cfg["synthesis"], "max_points": max_points}
    mcfg = cfg["model"]
    synths = {m: make_synthesizer(m, syn_cfg, int(mcfg["num_classes"]), int(mcfg["image"]["out_channels"]),
                                  int(mcfg["lidar"]["out_channels"]), seed) for m in methods}
    times: dict[str, dict[str, list[float]]] = {m: {"step": [], "synth": []} for m in ("none", *methods)}
    outliers: dict[str, int] = {}

    def step(name: str, n: int, record: bool) -> None:
        synth = synths.get(name)

        def timed(fi, fl, b):
            _sync(device)
            t0 = time.perf_counter()
            res = synth(fi, fl, b, n)
            _sync(device)
            if record:
                times[name]["synth"].append(time.perf_counter() - t0)
            outliers[name] = int(res[0].numel())
            return res

        _sync(device)
        t0 = time.perf_counter()
        train_step(model, [batch], opt, cfg["loss"], float(cfg["train"]["grad_clip"]),
                   synthesize=timed if synth is not None else None)
        _sync(device)
        if record:
            times[name]["step"].append(time.perf_counter() - t0)

    for r in range(warmup + repeats):
        for name in times:
            step(name, r, record=r >= warmup)
    med = {m: {k: statistics.median(v) * 1e3 for k, v in t.items() if v} for m, t in times.items()}
    base = med["none"]["step"]
    return {
        "config": "configs/synthetic_feature_mixing.yaml", "points": int(batch["target"].shape[0]),
        "eligible": int((batch["visible"] & (batch["target"] >= 0)).sum()), "max_points": max_points,
        "azimuth_columns": azimuth_columns, "image_size": [width, height], "repeats": repeats, "warmup": warmup,
        "step_ms_no_synthesis": base,
        "methods": {m: {"synth_ms": med[m]["synth"], "step_ms": med[m]["step"], "share": med[m]["synth"] / base,
                        "overhead": med[m]["step"] / base - 1.0, "outliers": outliers.get(m, 0)} for m in methods},
    }


# ------------------------------------------------------------------ report


def _fmt(v: float | None, width: int, decimals: int, approx: bool = False) -> str:
    """``v`` right-aligned in ``width``, prefixed by ``~`` when it rests on an extrapolated time."""
    text = "-" if v is None else ("~" if approx else "") + f"{v:.{decimals}f}"
    return f"{text:>{width}s}"


def format_table(result: dict) -> str:
    """The readable tables: per-call times, the training-step share and the targets."""
    head = (f"{'method':22s} {'P':>9s} {'d':>4s} {'dtype':9s} {'ms':>10s} {'GB/s':>7s} {'x clone':>8s} {'x copy':>7s} "
            f"{'vs npmix':>10s} {'vs cdist':>9s} {'M':>8s}  note")
    lines = [head, "-" * len(head)]
    prev = None
    for r in result["results"]:
        key = (r["points"], r["dim"], r["dtype"])
        if prev is not None and key != prev:
            lines.append("")
        prev = key
        approx = r.get("vs_npmix_extrapolated", False)
        lines.append(f"{r['method']:22s} {r['points']:9d} {r['dim']:4d} {r['dtype']:9s} "
                     f"{_fmt(r.get('ms'), 10, 3, not r['measured'])} {_fmt(r.get('gbps'), 7, 2)} "
                     f"{_fmt(r.get('x_clone'), 8, 2)} {_fmt(r.get('x_copy'), 7, 2)} {_fmt(r.get('vs_npmix'), 10, 1, approx)} "
                     f"{_fmt(r.get('vs_npmix_cdist'), 9, 2)} {r.get('outliers', 0):8d}  {r.get('note', '')}")
    ts = result.get("train_step")
    if ts:
        lines += ["", f"training step of the demo model ({ts['config']}, P={ts['points']} points, "
                  f"{ts['eligible']} eligible, max_points={ts['max_points']}): "
                  f"{ts['step_ms_no_synthesis']:.1f} ms without synthesis",
                  f"{'method':22s} {'synth ms':>9s} {'share':>7s} {'step ms':>9s} {'overhead':>9s} {'M':>7s}"]
        for m, v in ts["methods"].items():
            lines.append(f"{m:22s} {v['synth_ms']:9.2f} {100 * v['share']:6.2f}% {v['step_ms']:9.1f} "
                         f"{100 * v['overhead']:8.1f}% {v['outliers']:7d}")
    if result.get("targets"):
        lines += ["", "targets:"]
        for name, t in result["targets"].items():
            val = "-" if t["value"] is None else f"{t['value']:.4g}"
            lines.append(f"  {name:48s} {val:>10s}  target {t['target']:10s} "
                         f"{ {True: 'HOLDS', False: 'MISSED', None: 'n/a'}[t['holds']]}  {t.get('note', '')}")
    return "\n".join(lines)


def plot_chart(rows: list[dict], path: Path, points: int, dim: int, dtype: str) -> None:
    """Bar chart (log scale) of the time per call of every method at (P, d, dtype), the clone
    floor as a line; extrapolated bars hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if (r["points"], r["dim"], r["dtype"]) == (points, dim, dtype) and r.get("ms")]
    bars = [r for r in sel if r["method"] != "clone"]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    for i, r in enumerate(bars):
        ax.bar(i, r["ms"], color="tab:orange" if r["method"].startswith("feature_mixing") else "tab:blue",
               hatch="//" if not r["measured"] else None, edgecolor="black", linewidth=0.5)
        ax.text(i, r["ms"] * 1.15, f"{r['ms']:.3g}", ha="center", fontsize=8)
    clone = next((r["ms"] for r in sel if r["method"] == "clone"), None)
    if clone:
        ax.axhline(clone, color="red", linestyle="--", label=f"clone floor {clone:.3g} ms")
        ax.legend(loc="upper left")
    ax.set_yscale("log")
    ax.set_xticks(range(len(bars)), [r["method"] for r in bars], rotation=30, ha="right")
    ax.set_ylabel("ms per call (median)")
    ax.set_title(f"outlier synthesis, P={points:,} d={dim}+{dim} {dtype} (hatched: extrapolated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _targets(rows: list[dict], train: dict | None, device: str = "cpu") -> dict:
    """The issue's targets, on float32 rows at d = 64 (or the largest P / first d present)."""
    def find(method: str, points: int, dim: int = 64) -> dict:
        return next((r for r in rows if (r["method"], r["points"], r["dim"], r["dtype"])
                     == (method, points, dim, "float32") and r.get("ms")), {})

    def entry(value, target: str, ok=None, note: str = "") -> dict:
        holds = None if value is None or ok is None else bool(ok(value))
        return {"value": value, "target": target, "holds": holds, "note": note}

    fm, op = find("feature_mixing", 1_000_000), find("feature_mixing_op", 1_000_000)
    into, fm100 = find("feature_mixing_into", 1_000_000), find("feature_mixing", 100_000)
    x_copy = TARGETS["x_copy"]["cuda" if device.startswith("cuda") else "cpu"]
    out = {
        "feature_mixing_into x copy (P=1M, d=64+64, fp32)": entry(into.get("x_copy"), f"<= {x_copy:g}",
                                                                 lambda v: v <= x_copy,
                                                                 "the op into preallocated outputs vs copy_"),
        "feature_mixing x clone (P=1M, d=64+64, fp32)": entry(fm.get("x_clone"), "<= 2", lambda v: v <= TARGETS["x_clone"],
                                                             "KernelFeatureMixing: op + gather of outlier rows"),
        "feature_mixing_op x clone (P=1M, d=64+64, fp32)": entry(op.get("x_clone"), "<= 2",
                                                                lambda v: v <= TARGETS["x_clone"], "the op alone"),
        "feature_mixing vs npmix faithful (P=100k, d=64)": entry(fm100.get("vs_npmix"), ">= 370",
                                                                lambda v: v >= TARGETS["vs_npmix"]),
        "feature_mixing vs npmix_cdist (P=100k, d=64)": entry(fm100.get("vs_npmix_cdist"), "(report)"),
    }
    if train and "feature_mixing" in train["methods"]:
        out["feature_mixing share of a demo training step"] = entry(
            train["methods"]["feature_mixing"]["share"], "< 2%", lambda v: v < TARGETS["train_share"])
    return out


def _machine() -> dict:
    import torch

    from segood.ood.fm_kernel import _ext_state, load_extension

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu, "cores": os.cpu_count(),
            "fm_extension": load_extension(), "fm_extension_reason": _ext_state.get("reason", ""),
            "fm_cpu_path": torch.ops.segood.cpu_path() if _ext_state.get("ok") else "torch reference",
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


# ------------------------------------------------------------------ entry points


def run_synthesis_bench(points: Sequence[int] = (10_000, 100_000, 1_000_000), dims: Sequence[int] = (64, 128),
                        dtypes: Sequence[str] = ("float32", "bfloat16", "float16"), classes: int = 19,
                        repeats: int = 5, warmup: int = 1, device: str = "cpu", out_dir: str | Path = "runs/bench_synthesis",
                        methods: Sequence[str] = METHODS, visible_fraction: float = 1.0,
                        faithful_max_points: int = 100_000, budget_s: float = 20.0, train_step: bool = True,
                        train_kwargs: dict | None = None, threads: int | None = None, seed: int = 0,
                        verbose: bool = True) -> dict:
    """Run the benchmark (see the module docstring); writes ``bench_synthesis.json`` and
    ``bench_synthesis.png`` into ``out_dir`` and returns the JSON's content. Dtypes the device
    cannot handle are dropped; a method that fails records its error and the run goes on.
    ``threads``: torch intra-op threads for the run (None: unchanged); on a machine shared with
    other jobs, 1 thread avoids parallel regions waiting on a descheduled worker."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(points, dims, dtypes, classes, repeats, warmup, device, Path(out_dir), methods, visible_fraction,
                    faithful_max_points, budget_s, train_step, train_kwargs, seed, verbose)
    finally:
        torch.set_num_threads(previous)


def _run(points, dims, dtypes, classes, repeats, warmup, device, out_dir, methods, visible_fraction,
         faithful_max_points, budget_s, train_step, train_kwargs, seed, verbose) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = list(dict.fromkeys(["clone", *methods]))       # the floor is always measured
    dtypes = supported_dtypes(dtypes, device)
    cfg = _synthesis_cfg(max_points=None)
    load_before = os.getloadavg()
    say = print if verbose else (lambda *a, **k: None)
    rows: list[dict] = []
    t_start = time.time()
    for dim in dims:
        for dtype in dtypes:
            for p in sorted(points):
                fi, fl, batch = make_inputs(p, dim, dtype, classes, visible_fraction, device, seed)
                nbytes = 2 * p * (fi.shape[1] + fl.shape[1]) * fi.element_size()
                for m in methods:
                    row = {"method": m, "points": p, "dim": dim, "dtype": dtype, "bytes": nbytes, "measured": True}
                    rows.append(row)
                    if m == SLOW and p > faithful_max_points:
                        row.update(measured=False, outliers=int((batch["visible"] & (batch["target"] >= 0)).sum()))
                        continue
                    info: dict = {}
                    try:
                        samples = _time_calls(_method_call(m, fi, fl, batch, cfg, classes, seed, info),
                                              repeats, warmup, budget_s, device)
                        row.update(ms=statistics.median(samples) * 1e3, repeats=len(samples),
                                   samples_ms=[s * 1e3 for s in samples], outliers=info.get("outliers", 0))
                    except Exception as exc:  # noqa: BLE001 - record and go on (e.g. a dtype a method lacks)
                        row["note"] = f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
                    say(f"[bench] {m:22s} P={p:<8d} d={dim:<4d} {dtype:9s} "
                        f"{row.get('ms', float('nan')):10.3f} ms {row.get('note', '')}", flush=True)
                del fi, fl, batch
                gc.collect()
    _extrapolate(rows)
    _derive(rows)
    train = None
    if train_step:
        say("[bench] training-step share ...", flush=True)
        train = train_step_share(device=device, seed=seed, **(train_kwargs or {}))
    result = {
        "meta": {**_machine(), "device": device, "classes": classes, "n_swap": int(cfg["n_swap"]),
                 "visible_fraction": visible_fraction, "target": f"uniform over {classes} classes, none ignored",
                 "max_points": None, "repeats": repeats, "warmup": warmup, "budget_s": budget_s,
                 "faithful_max_points": faithful_max_points, "loadavg_before": load_before,
                 "loadavg_after": os.getloadavg(), "seconds": round(time.time() - t_start, 1),
                 "bytes": "2 * P * (d_c + d_l) * itemsize (read + write of both tensors, = clone)",
                 "timed": {m: WHAT[m] for m in methods}},
        "results": rows, "train_step": train, "targets": _targets(rows, train, device),
    }
    (out_dir / "bench_synthesis.json").write_text(json.dumps(result, indent=1) + "\n")
    chart = (100_000, 64, "float32")
    if not any((r["points"], r["dim"], r["dtype"]) == chart for r in rows):
        chart = (max(points), dims[0], dtypes[0])
    plot_chart(rows, out_dir / "bench_synthesis.png", *chart)
    say(format_table(result))
    say(f"[bench] wrote {out_dir / 'bench_synthesis.json'} and {out_dir / 'bench_synthesis.png'}; "
        f"load average before {load_before}, after {result['meta']['loadavg_after']}")
    return result


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options (shared by ``segood bench synthesis`` and tools/bench_synthesis.py)."""
    p.add_argument("--points", type=int, nargs="+", help="P values (default 10000 100000; --full adds 1000000)")
    p.add_argument("--dims", type=int, nargs="+", help="d per modality (default 64; --full: 64 128)")
    p.add_argument("--dtypes", nargs="+", help="default float32 (--full: float32 bfloat16 float16; unsupported "
                                               "ones are skipped)")
    p.add_argument("--methods", nargs="+", choices=METHODS, help="default: all")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default="runs/bench_synthesis", help="folder for bench_synthesis.json/.png")
    p.add_argument("--repeats", type=int, help="timed calls per method (median; default 3, --full 5)")
    p.add_argument("--warmup", type=int, help="untimed calls first (default 1)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed calls per method before stopping (default 5, --full 20)")
    p.add_argument("--faithful-max-points", type=int, default=None,
                   help="above this P the faithful NP-Mix is extrapolated, not run (default 10000, --full 100000)")
    p.add_argument("--visible-fraction", type=float, default=1.0)
    p.add_argument("--threads", type=int, help="torch threads during the run (default: unchanged)")
    p.add_argument("--no-train-step", action="store_true", help="skip the training-step share")
    p.add_argument("--quick", action="store_true",
                   help="small run: P=2000, d=16, float32, 1 repeat, tiny training step (options given win)")
    p.add_argument("--full", action="store_true",
                   help="the whole sweep: P up to 1M, d 64 and 128, three dtypes (> 20 minutes on 2 cores)")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``synthesis`` on an argparse sub-parsers object (``segood bench synthesis``)."""
    p = subparsers.add_parser("synthesis", help="time the outlier synthesizers against a clone floor")
    configure_parser(p).set_defaults(func=run)
    return p


def bench_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`run_synthesis_bench` from parsed options: the small default
    (a few minutes on a 2-core CPU), ``--full`` (the whole sweep) or ``--quick``; options given win."""
    preset = QUICK if args.quick else FULL if args.full else DEFAULT
    pick = lambda name: getattr(args, name) or preset[name]  # noqa: E731
    train_kwargs = {"quick": {"repeats": 1, "warmup": 1, "azimuth_columns": 128, "image_size": (160, 48)},
                    "default": {"repeats": 2, "warmup": 1}, "full": {}}[preset["name"]]
    return dict(points=pick("points"), dims=pick("dims"), dtypes=pick("dtypes"), repeats=pick("repeats"),
                warmup=preset["warmup"] if args.warmup is None else args.warmup, device=args.device,
                out_dir=args.out, methods=args.methods or METHODS, visible_fraction=args.visible_fraction,
                faithful_max_points=args.faithful_max_points or preset["faithful_max_points"],
                budget_s=args.budget or preset["budget_s"], train_step=not args.no_train_step,
                train_kwargs=train_kwargs, threads=args.threads)


def run(args: argparse.Namespace) -> int:
    """Run from parsed options; returns the exit code."""
    run_synthesis_bench(**bench_kwargs(args))
    return 0
