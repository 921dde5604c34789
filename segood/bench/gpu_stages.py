"""The stages of the prepared GPU check (:mod:`segood.bench.gpu_check`), each run in its own child
process by ``segood bench gpu-check OUT --stage NAME``: what each measures is listed there."""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import time
import traceback
from pathlib import Path


FULL = {"points": (100_000, 1_000_000), "dims": (64,), "repeats": 5, "budget_s": 8.0, "steps": 300,
        "train_scans": 6, "val_scans": 2, "azimuth": 512, "image": (621, 188), "replay_frames": 5,
        "replay_columns": {"35k": (32, 1220), "120k": (64, 2048)}}
DRY = {"points": (2000,), "dims": (16,), "repeats": 1, "budget_s": 1.0, "steps": 2,
       "train_scans": 2, "val_scans": 1, "azimuth": 128, "image": (160, 48), "replay_frames": 1,
       "replay_columns": {"35k": (32, 128), "120k": (64, 128)}}
BENCH_METHODS = ("copy", "feature_mixing_op", "feature_mixing_into", "feature_mixing", "npmix_faithful", "npmix_cdist")
OPTIONAL = ("spconv", "open3d", "rosbags", "nuscenes", "scipy", "ninja")


# ------------------------------------------------------------------ stages (run in a child process)


def _sizes(ctx: dict) -> dict:
    return DRY if ctx["dry_run"] else FULL


def stage_env(ctx: dict) -> dict:
    """Versions and the optional packages present (the GPU machine lacks spconv, open3d, rosbags)."""
    import importlib.util

    import torch

    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    nvcc_version = None
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
        nvcc_version = out.strip().splitlines()[-1] if out.strip() else None
    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": cuda, "gpu": torch.cuda.get_device_name() if cuda else None,
            "cpu_cores": os.cpu_count(), "nvcc": nvcc_version,
            "packages": {m: importlib.util.find_spec(m) is not None for m in OPTIONAL}}


def stage_build(ctx: dict) -> dict:
    """Build and load the extension; on a CUDA device the CUDA kernel must be registered."""
    import torch

    from segood.ood.feature_mixing import build as fm_build

    t = time.perf_counter()
    ok = fm_build.load_extension(verbose=False)
    seconds = time.perf_counter() - t
    if not ok:
        raise RuntimeError(f"extension did not build: {fm_build.extension_reason()}")
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("segood::feature_mixing", "CUDA")
    if ctx["device"] == "cuda" and not has_cuda:
        raise RuntimeError("extension built without its CUDA kernel (nvcc or CUDA_HOME not found?)")
    return {"seconds": round(seconds, 1), "cuda_kernel": bool(has_cuda), "cpu_path": torch.ops.segood.cpu_path(),
            "build_dir": str(fm_build.build_dir(has_cuda))}


def _bitexact_cases(dry_run: bool):
    """(dtype, P, d_c, d_l, n, masked, seed, step): powers of two and odd dims, n = 0..max."""
    import torch

    seeds = ((987654321, 17),) if dry_run else ((0, 0), ((1 << 64) - 1, (1 << 32) - 1), (987654321, 17))
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for p, d_c, d_l in ((300, 64, 64), (77, 24, 40)) if dry_run else ((4099, 64, 64), (777, 24, 40), (33, 5, 7)):
            for n in sorted({0, 1, min(16, d_c, d_l), min(d_c, d_l)}):
                for masked in (False, True):
                    for seed, step in seeds:
                        yield dtype, p, d_c, d_l, n, masked, seed, step


def stage_bitexact(ctx: dict) -> dict:
    """Every case: CPU op == reference; on CUDA also CUDA op == CPU op, the into-variant and the
    backward, bit for bit."""
    import torch

    from segood.ood.feature_mixing import build as fm_build, reference_feature_mixing

    if not fm_build.load_extension():
        raise RuntimeError(f"extension unavailable: {fm_build.extension_reason()}")
    ops, cuda = torch.ops.segood, ctx["device"] == "cuda"
    checked, failures = 0, []
    for dtype, p, d_c, d_l, n, masked, seed, step in _bitexact_cases(ctx["dry_run"]):
        g = torch.Generator().manual_seed(p + n)
        c = torch.randn(p, d_c, generator=g, dtype=torch.float64).to(dtype)
        l = torch.randn(p, d_l, generator=g, dtype=torch.float64).to(dtype)
        mask = (torch.rand(p, generator=g) < 0.6) if masked else None
        signed = seed - (1 << 64) if seed >= 1 << 63 else seed
        want = reference_feature_mixing(c, l, mask, n, seed, step)
        got = {"cpu": ops.feature_mixing(c, l, mask, n, signed, step)}
        if cuda:
            cm = mask.cuda() if masked else None
            got["cuda"] = [t.cpu() for t in ops.feature_mixing(c.cuda(), l.cuda(), cm, n, signed, step)]
            outs = (torch.empty_like(c, device="cuda"), torch.empty_like(l, device="cuda"))
            ops.feature_mixing_into(c.cuda(), l.cuda(), cm, n, signed, step, *outs)
            got["cuda_into"] = [t.cpu() for t in outs]
            got["cuda_backward"] = [t.cpu() for t in ops.feature_mixing_backward(c.cuda(), l.cuda(), cm, n, signed, step)]
        for name, (a, b) in got.items():
            checked += 1
            if not (torch.equal(a, want[0]) and torch.equal(b, want[1])):
                failures.append(f"{name} {dtype} P={p} d={d_c}+{d_l} n={n} masked={masked} seed={seed} step={step}")
    if failures:
        raise AssertionError(f"{len(failures)} of {checked} comparisons differ, e.g. {failures[:3]}")
    return {"comparisons": checked, "devices": ["cpu", "reference"] + (["cuda"] if cuda else []),
            "dtypes": ["float32", "float16", "bfloat16", "float64"],
            "note": None if cuda else "no CUDA: CPU == reference only"}


def stage_bench(ctx: dict) -> dict:
    """``segood bench synthesis --device DEVICE`` at 100k and 1M points, d = 64 + 64, float32."""
    from segood.bench.synthesis import run_synthesis_bench

    s = _sizes(ctx)
    result = run_synthesis_bench(points=s["points"], dims=s["dims"], dtypes=("float32",), repeats=s["repeats"],
                                 warmup=1, device=ctx["device"], out_dir=ctx["work"] / "bench",
                                 methods=BENCH_METHODS, faithful_max_points=100_000, budget_s=s["budget_s"],
                                 train_step=False)
    keep = ("method", "points", "dim", "ms", "measured", "x_clone", "x_copy", "vs_npmix_faithful", "vs_npmix_cdist", "note")
    return {"rows": [{k: r.get(k) for k in keep} for r in result["results"]], "targets": result["targets"],
            "device": ctx["device"]}


def _ensure_data(ctx: dict) -> Path:
    from segood.synthetic import SyntheticConfig, write_dataset

    s, data = _sizes(ctx), ctx["work"] / "data"
    if not (data / "synthetic.json").exists():
        write_dataset(data, SyntheticConfig(num_train=s["train_scans"], num_val=s["val_scans"],
                                            azimuth_columns=s["azimuth"], image_width=s["image"][0],
                                            image_height=s["image"][1]), progress=False)
    return data


def demo_config(ctx: dict, amp: str) -> tuple[dict, str]:
    """The demo model's config for this check, and the sparse backend it uses."""
    from segood.config import CONFIG_DIR, load_config

    path = CONFIG_DIR / "synthetic_feature_mixing.yaml"
    steps = _sizes(ctx)["steps"]
    overrides = [f"data.root={_ensure_data(ctx).resolve()}", f"train.steps={steps}", f"train.amp={amp}",
                 f"train.ckpt_every={steps}", f"train.log_every={max(1, steps // 10)}"]
    backend = "spconv (model.lidar.backend not in the config: the torch backend is not merged)"
    if "backend" in load_config(path)["model"]["lidar"]:
        overrides.append(f"model.lidar.backend={ctx['backend']}")
        backend = ctx["backend"]
    return load_config(path, overrides), backend


def _steady_step_ms(history: Path) -> float | None:
    """ms per step from history.jsonl's wall clock, second half of the run (no warm-up)."""
    recs = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    if len(recs) < 2:
        return None
    a, b = recs[len(recs) // 2 - 1] if len(recs) > 2 else recs[0], recs[-1]
    return 1e3 * (b["sec"] - a["sec"]) / max(1, b["step"] - a["step"])


def stage_train(ctx: dict, amp: str) -> dict:
    from segood.engine.train import train

    cfg, backend = demo_config(ctx, amp)
    run = ctx["work"] / f"train_{amp}"
    shutil.rmtree(run, ignore_errors=True)
    t = time.perf_counter()
    ckpt = train(cfg, run, progress=False)
    seconds = time.perf_counter() - t
    hist = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines() if x.strip()]
    return {"steps": cfg["train"]["steps"], "amp": amp, "backend": backend, "seconds": round(seconds, 1),
            "step_ms": _steady_step_ms(run / "history.jsonl"), "final_loss": hist[-1].get("total") if hist else None,
            "checkpoint": str(ckpt), "device": ctx["device"]}


def stage_eval(ctx: dict) -> dict:
    from segood.engine.evaluate import evaluate
    from segood.metrics.headline import headline

    ckpt = ctx["work"] / "train_none" / "checkpoint.pt"
    if not ckpt.exists():
        return {"status": "skipped", "reason": "no fp32 checkpoint (train_fp32 did not finish)"}
    cfg, _ = demo_config(ctx, "none")
    t = time.perf_counter()
    metrics = evaluate(cfg, ckpt, ctx["work"] / "eval", progress=False)
    return {"seconds": round(time.perf_counter() - t, 1), "device": "cpu (evaluate runs on the host)",
            "scores": {s: headline(metrics, s) for s in metrics.get("ood", {})}}


def _replay_model(ctx: dict):
    """(model on the device, grid, source): the fp32 checkpoint when trained, else a fresh model."""
    from segood.engine.builders import build_grid
    from segood.engine.artifacts import load_model
    from segood.models import build_model

    ckpt = ctx["work"] / "train_none" / "checkpoint.pt"
    if ckpt.exists():
        model, state = load_model(ckpt)
        cfg, source = state["config"], str(ckpt)
    else:
        cfg, _ = demo_config(ctx, "none")
        model, source = build_model(cfg["model"]).eval(), "randomly initialised (no fp32 checkpoint)"
    return model.to(ctx["device"]), build_grid(cfg), source


def stage_replay(ctx: dict) -> dict:
    """ms per frame of what ``segood replay`` does per LiDAR message, minus the bag I/O: voxelise
    on the host, model on the device, labels and energy score back on the host."""
    import numpy as np
    import torch

    from segood.data.batching import collate, scan_to_sample
    from segood.data.scan import Scan
    from segood.synthetic import SyntheticConfig, generate_scene, render_scan
    from segood.engine.train import to_device

    model, grid, source = _replay_model(ctx)
    sync = torch.cuda.synchronize if ctx["device"] == "cuda" else (lambda: None)
    frames, out = _sizes(ctx)["replay_frames"], {"model": source, "device": ctx["device"], "sizes": {}}
    for name, (beams, columns) in _sizes(ctx)["replay_columns"].items():
        cfg = SyntheticConfig(beams=beams, azimuth_columns=columns, **({"fov_up_deg": 10.0, "fov_down_deg": -30.0}
                                                                         if beams == 32 else {}))
        scans = [Scan(points=render_scan(generate_scene(np.random.default_rng(k), cfg), cfg)[0])
                 for k in range(frames + 1)]
        total, model_ms = [], []
        with torch.no_grad():
            for i, scan in enumerate([scans[0], *scans]):  # the first frame warms up
                sync()
                t0 = time.perf_counter()
                batch = to_device(collate([scan_to_sample(scan, None)], grid), torch.device(ctx["device"]))
                sync()
                t1 = time.perf_counter()
                logits = model(batch)["logits"]
                sync()
                t2 = time.perf_counter()
                logits.argmax(-1).cpu().numpy(), (-torch.logsumexp(logits.float(), -1)).cpu().numpy()
                if i:
                    total.append(time.perf_counter() - t0)
                    model_ms.append(t2 - t1)
        out["sizes"][name] = {"points": int(np.mean([len(s.points) for s in scans])),
                              "frame_ms": 1e3 * statistics.median(total), "model_ms": 1e3 * statistics.median(model_ms),
                              "frames_per_s": 1 / statistics.median(total), "frames": len(total)}
    return out


RUNNERS = {"env": stage_env, "build": stage_build, "bitexact": stage_bitexact, "bench": stage_bench,
           "train_fp32": lambda ctx: stage_train(ctx, "none"), "replay": stage_replay,
           "train_bf16": lambda ctx: stage_train(ctx, "bf16"), "eval": stage_eval}


def run_stage(name: str, ctx: dict) -> dict:
    """Run one stage; {status, seconds, figures | error | reason}."""
    t = time.perf_counter()
    try:
        figures = RUNNERS[name](ctx)
        if figures.get("status") == "skipped":
            return {"status": "skipped", "reason": figures["reason"], "seconds": round(time.perf_counter() - t, 1)}
        return {"status": "ok", "seconds": round(time.perf_counter() - t, 1), "figures": figures}
    except Exception as exc:  # noqa: BLE001 - a stage's failure is its result
        traceback.print_exc()
        return {"status": "failed", "seconds": round(time.perf_counter() - t, 1),
                "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:600]}"}
