"""What ``segood bench synthesis`` derives and prints from its timed rows: extrapolated faithful
NP-Mix times, GB/s and ratios, the tables, the chart and the issue's targets (see
:mod:`segood.bench.synthesis` for what is timed)."""
from __future__ import annotations

import os
import platform
from pathlib import Path

SLOW = "npmix_faithful"   # the faithful MultiOOD NP-Mix: extrapolated above faithful_max_points
TARGETS = {"x_clone": 2.0, "x_copy": {"cpu": 2.0, "cuda": 1.5}, "vs_npmix": 370.0, "train_share": 0.02}


def extrapolate(rows: list[dict]) -> None:
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


def derive(rows: list[dict]) -> None:
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
        for ref, col in ((SLOW, "vs_npmix_faithful"), ("npmix_cdist", "vs_npmix_cdist")):
            ref_row = by_key.get((ref, *key), {})
            r[col] = ref_row["ms"] / r["ms"] if ref_row.get("ms") else None
            if col == "vs_npmix_faithful":
                r["vs_npmix_extrapolated"] = bool(ref_row) and not ref_row.get("measured", True)


def _fmt(v: float | None, width: int, decimals: int, approx: bool = False) -> str:
    """``v`` right-aligned in ``width``, prefixed by ``~`` when it rests on an extrapolated time."""
    text = "-" if v is None else ("~" if approx else "") + f"{v:.{decimals}f}"
    return f"{text:>{width}s}"


def format_table(result: dict) -> str:
    """The readable tables: per-call times, the training-step share and the targets."""
    head = (f"{'method':22s} {'P':>9s} {'d':>4s} {'dtype':9s} {'ms':>10s} {'GB/s':>7s} {'x clone':>8s} {'x copy':>7s} "
            f"{'vs faithful':>11s} {'vs cdist':>9s} {'M':>8s}  note")
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
                     f"{_fmt(r.get('x_clone'), 8, 2)} {_fmt(r.get('x_copy'), 7, 2)} {_fmt(r.get('vs_npmix_faithful'), 11, 1, approx)} "
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


def targets(rows: list[dict], train: dict | None, device: str = "cpu") -> dict:
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
        "feature_mixing vs npmix faithful (P=100k, d=64)": entry(fm100.get("vs_npmix_faithful"), ">= 370",
                                                                lambda v: v >= TARGETS["vs_npmix"]),
        "feature_mixing vs npmix_cdist (P=100k, d=64)": entry(fm100.get("vs_npmix_cdist"), "(report)"),
    }
    if train and "feature_mixing" in train["methods"]:
        out["feature_mixing share of a demo training step"] = entry(
            train["methods"]["feature_mixing"]["share"], "< 2%", lambda v: v < TARGETS["train_share"])
    return out


def machine() -> dict:
    """torch, threads, CPU, cores, whether the Feature Mixing extension runs (and its CPU path), GPU."""
    import torch

    from segood.ood.feature_mixing import extension_reason, load_extension

    ok = load_extension()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu, "cores": os.cpu_count(),
            "fm_extension": ok, "fm_extension_reason": extension_reason(),
            "fm_cpu_path": torch.ops.segood.cpu_path() if ok else "torch reference",
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
