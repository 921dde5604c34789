"""The outlier-synthesis benchmark (segood.bench.synthesis), on tiny inputs."""
from __future__ import annotations

import argparse
import json
import math

import pytest

from segood.bench.synthesis import all_methods, configure_parser, run, run_synthesis_bench, train_step_share

pytestmark = pytest.mark.slow  # each bench runs real training steps (memory: one subprocess per size)


def test_quick_bench_writes_consistent_json_and_chart(tmp_path):
    args = configure_parser(argparse.ArgumentParser()).parse_args(
        ["--quick", "--no-train-step", "--threads", "1", "--out", str(tmp_path)])
    assert run(args) == 0
    data = json.loads((tmp_path / "bench_synthesis.json").read_text())
    rows = {r["method"]: r for r in data["results"]}
    methods = all_methods()
    assert set(rows) == set(methods) and len(data["results"]) == len(methods)
    assert {"feature_mixing_block", "npmix", "npmix_faithful", "vos", "mixup"} <= set(rows)  # from the registry
    clone, npmix, cdist = rows["clone"]["ms"], rows["npmix_faithful"]["ms"], rows["npmix_cdist"]["ms"]
    for m, r in rows.items():
        assert (r["points"], r["dim"], r["dtype"]) == (2000, 32, "float32"), m
        assert r["measured"] and r["repeats"] == 1 and "note" not in r, (m, r.get("note"))
        assert r["ms"] > 0 and r["gbps"] > 0 and r["outliers"] > 0, m
        assert r["bytes"] == 2 * 2000 * (32 + 32) * 4
        assert math.isclose(r["x_clone"], r["ms"] / clone, rel_tol=1e-9), m
        assert math.isclose(r["vs_npmix_faithful"], npmix / r["ms"], rel_tol=1e-9), m
        assert math.isclose(r["vs_npmix_cdist"], cdist / r["ms"], rel_tol=1e-9), m
        assert math.isclose(r["gbps"], r["bytes"] / (r["ms"] * 1e-3) / 1e9, rel_tol=1e-9), m
    assert rows["clone"]["x_clone"] == 1.0 and rows["vos"]["outliers"] == 19
    assert set(data["meta"]["timed"]) == set(methods) and data["meta"]["threads"] == 1
    assert data["meta"]["fm_cpu_path"] in ("avx2", "scalar")
    assert (tmp_path / "bench_synthesis.png").stat().st_size > 1000


def test_faithful_npmix_is_extrapolated_above_the_cap(tmp_path):
    res = run_synthesis_bench(points=(500, 1000, 2000), dims=(8,), dtypes=("float32",), methods=("npmix_faithful",),
                              repeats=1, warmup=0, out_dir=tmp_path, faithful_max_points=1000, train_step=False,
                              threads=1, verbose=False)
    t = {r["points"]: r for r in res["results"] if r["method"] == "npmix_faithful"}
    assert t[500]["measured"] and t[1000]["measured"] and not t[2000]["measured"]
    # the line through the two measured sizes; proportional to the larger one when timing noise
    # makes the line fall (a faster 1000-point run than the 500-point one)
    rising = t[1000]["ms"] > t[500]["ms"]
    line = t[1000]["ms"] + ((t[1000]["ms"] - t[500]["ms"]) / 500 if rising else t[1000]["ms"] / 1000) * 1000
    assert t[2000]["ms"] == pytest.approx(line) and "extrapolated" in t[2000]["note"]
    clone2k = next(r for r in res["results"] if r["method"] == "clone" and r["points"] == 2000)
    assert clone2k["vs_npmix_extrapolated"] and not t[1000]["vs_npmix_extrapolated"]


def test_train_step_share_tiny():
    res = train_step_share(methods=("feature_mixing",), repeats=1, warmup=0, azimuth_columns=64, image_size=(96, 32))
    fm = res["methods"]["feature_mixing"]
    assert res["step_ms_no_synthesis"] > 0 and fm["synth_ms"] > 0 and fm["step_ms"] > 0
    assert fm["share"] == pytest.approx(fm["synth_ms"] / res["step_ms_no_synthesis"])
    assert 0 < fm["outliers"] == res["eligible"] <= res["points"]


def test_memory_bench_runs_a_real_step_and_respects_the_point_cap(tmp_path):
    from segood.bench.memory import run_memory_bench
    from segood.config import CONFIG_DIR

    rows = run_memory_bench([4000], str(CONFIG_DIR / "synthetic_feature_mixing.yaml"),
                            ["data.max_points=2500", "model.image.width_scale=0.25"], repeats=1)
    (r,) = rows
    assert "error" not in r, r
    assert r["points"] == 4000 and r["points_in_batch"] == 2500 and 0 < r["voxels"] <= 2500
    assert r["step_ms_median"] > 0 and r["peak_rss_mib"] > 100


def test_eval_memory_bench_runs_small_and_skips_scores_that_cannot_run(capsys):
    from segood.bench.eval_memory import run_eval_memory
    from segood.ood.scores import SCORES

    res = run_eval_memory(20_000, 5_000, sorted(SCORES), fit_points=200, bins=1024)
    assert set(res["skipped"]) == {"relative_energy"} and "extra logits" in res["skipped"]["relative_energy"]
    assert "skipped relative_energy" in capsys.readouterr().out
    assert set(res["scores"]) == set(SCORES) - {"relative_energy"} and res["points"] == 20_000
    assert res["peaks_mib"][20_000] > 0 and all(0.3 < a < 0.7 for a in res["auroc"].values())


def test_every_benchmark_is_a_segood_bench_subcommand():
    from segood.cli import build_parser

    parser = build_parser()
    for name in ("synthesis", "memory", "eval-memory", "replay", "sparse-backends", "probe-head", "gpu-check"):
        required = {"probe-head": ["ckpt.pt"], "gpu-check": ["out"]}.get(name, [])
        args = parser.parse_args(["bench", name, *required])
        assert callable(args.func), name
