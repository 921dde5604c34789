"""The speed switches (issue 23): exact ones leave the weights bit-equal, the others stay within
the tolerance stated here, bf16 runs where the CPU has it and is refused where it does not, and
both benchmarks run small. No test depends on elapsed time."""
from __future__ import annotations

import argparse
import copy

import numpy as np
import pytest
import torch

from segood.config import CONFIG_DIR, ConfigError, load_config
from segood.data.batching import collate
from segood.engine import parallel_branches, runtime
from segood.engine.builders import build_dataset, build_grid, build_label_map, build_synthesizer
from segood.engine.step import train_step
from segood.engine.train import freeze_encoders
from segood.models import build_model
from segood.models.fold import AddBias, fold_batchnorm
from segood.ood.losses import lovasz_softmax

SMALL = ["model.lidar.channels=[8, 16, 16]", "model.lidar.out_channels=16", "model.image.out_channels=16",
         "model.image.width_scale=0.25", "model.fusion.hidden=32", "synthesis.max_points=256", "synthesis.n_swap=4"]
# inference fast path vs plain path, fp32 (BN folding and the split fusion matmul reorder float sums)
SCORE_ATOL, SCORE_RTOL = 1e-4, 1e-4


def _cfg(root, *extra: str) -> dict:
    return load_config(CONFIG_DIR / "synthetic_feature_mixing.yaml", SMALL + [f"data.root={root}", *extra])


def _batch(cfg: dict) -> dict:
    dataset = build_dataset(cfg, "train", build_label_map(cfg), training=True)
    return collate([dataset[0], dataset[1]], build_grid(cfg), None, np.random.default_rng(0))


def _train(cfg: dict, batch: dict, steps: int = 3, parallel: bool = False, frozen: bool = False) -> dict:
    """``steps`` training steps from seed 0 with the config's runtime switches, one torch thread
    (at two threads the step itself is not bit-reproducible run to run, switches or not); the
    final weights."""
    torch.manual_seed(0)
    model = build_model(cfg["model"]).train()
    before = torch.get_num_threads()
    runtime.apply_train_runtime({**cfg["train"], "threads": 1}, model)
    amp, _ = runtime.amp_settings(cfg["train"]["amp"], torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    synth = build_synthesizer(cfg)
    freeze_encoders(model, frozen)
    try:
        for i in range(steps):
            train_step(model, [batch], opt, cfg["loss"], 10.0, synthesize=lambda fi, fl, b: synth(fi, fl, b, i),
                       amp_dtype=amp, parallel_branches=parallel)
    finally:
        torch.set_num_threads(before)
        runtime.keep_freed_memory(True)
        runtime.set_channels_last(model, False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def batch_cfg(synthetic_root):
    cfg = _cfg(synthetic_root)
    return cfg, _batch(cfg)


def test_keep_freed_memory_leaves_weights_bit_equal(batch_cfg):
    cfg, batch = batch_cfg
    off = _train(_cfg(cfg["data"]["root"], "train.keep_freed_memory=false"), batch)
    on = _train(_cfg(cfg["data"]["root"], "train.keep_freed_memory=true"), batch)
    assert _equal(off, on)


def test_threads_option_is_applied_and_checked(batch_cfg):
    cfg, _ = batch_cfg
    before = torch.get_num_threads()
    model = build_model(cfg["model"])
    try:
        runtime.apply_train_runtime({**cfg["train"], "threads": 1}, model)
        assert torch.get_num_threads() == 1
        with pytest.raises(ConfigError, match="train.threads"):
            runtime.apply_train_runtime({**cfg["train"], "threads": 0}, model)
    finally:
        torch.set_num_threads(before)


def test_channels_last_keeps_image_features_and_gradients(batch_cfg):
    cfg, batch = batch_cfg
    torch.manual_seed(0)
    model = build_model(cfg["model"]).train()
    results = []
    for on in (False, True):
        runtime.set_channels_last(model, on)
        model.zero_grad()
        maps = model.image.feature_maps(batch["images"])
        maps.square().mean().backward()
        assert maps.is_contiguous(memory_format=torch.channels_last) == on
        results.append((maps.detach().clone(), {n: p.grad.clone() for n, p in model.image.named_parameters()
                                                if p.grad is not None}))
    runtime.set_channels_last(model, False)
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-3, atol=1e-6, msg=name)


def test_bf16_on_cpu_runs_where_supported_and_is_refused_elsewhere(batch_cfg, monkeypatch):
    cfg, batch = batch_cfg
    with pytest.raises(ConfigError, match="fp16 runs on a GPU only"):
        runtime.amp_settings("fp16", torch.device("cpu"))
    monkeypatch.setattr(runtime, "cpu_bf16", lambda: (False, "this CPU has none of the flags avx512_bf16"))
    with pytest.raises(ConfigError, match="train.amp: bf16 on the CPU needs native bf16 .*avx512_bf16"):
        runtime.amp_settings("bf16", torch.device("cpu"))
    monkeypatch.undo()
    if not runtime.cpu_bf16()[0]:
        pytest.fail(f"this machine's CPU lacks bf16 ({runtime.cpu_bf16()[1]}): the bf16 path cannot be tested")
    root = cfg["data"]["root"]
    fp32 = _train(_cfg(root, "train.amp=none"), batch, steps=1)
    bf16 = _train(_cfg(root, "train.amp=bf16"), batch, steps=1)
    assert all(torch.isfinite(v).all() for v in bf16.values() if v.is_floating_point())
    assert not _equal(fp32, bf16)  # it really ran in bf16
    for k in fp32:  # one step from the same weights: close (lr 1e-3), not equal
        torch.testing.assert_close(bf16[k].float(), fp32[k].float(), rtol=0.05, atol=2e-3, msg=k)


def test_losses_run_in_fp32_under_autocast(batch_cfg):
    from segood.engine.step import to_fp32

    out = {"a": torch.ones(2, dtype=torch.bfloat16), "i": torch.ones(2, dtype=torch.long)}
    got = to_fp32(out)
    assert got["a"].dtype == torch.float32 and got["i"].dtype == torch.long


def _probs_with_ties(n: int = 3000, c: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(n, c, generator=g), 1)
    probs[::9] = probs[0]  # many exactly equal errors
    target = torch.randint(-1, c, (n,), generator=g)
    return probs, target


def test_lovasz_keys_computes_the_same_loss():
    probs, target = _probs_with_ties()
    p1, p2 = probs.clone().requires_grad_(True), probs.clone().requires_grad_(True)
    ref, fast = lovasz_softmax(p1, target, "torch"), lovasz_softmax(p2, target, "keys")
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-7)
    ref.backward(), fast.backward()
    # gradients differ only among equal errors (a subgradient choice: which tied point comes
    # first); per class, a point with a unique error gets the same gradient, a group of equal
    # errors the same sum (column c's gradient comes from class c's term alone)
    valid = target >= 0
    for c in torch.unique(target[valid]).tolist():
        errors = ((target[valid] == c).float() - probs[valid, c]).abs()
        values, group, counts = torch.unique(errors, return_inverse=True, return_counts=True)
        g1, g2 = p1.grad[valid, c], p2.grad[valid, c]
        single = counts[group] == 1
        assert torch.equal(g1[single], g2[single]) and (~single).any()
        sums = [torch.zeros(len(values)).index_add_(0, group, g) for g in (g1, g2)]
        torch.testing.assert_close(sums[1], sums[0], rtol=1e-5, atol=1e-7)
    # without ties the order is the same, so loss and gradient are bit-equal
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(2000, 4, generator=g, dtype=torch.float32), 1)
    target = torch.randint(0, 4, (2000,), generator=g)
    q1, q2 = probs.clone().requires_grad_(True), probs.clone().requires_grad_(True)
    a, b = lovasz_softmax(q1, target, "torch"), lovasz_softmax(q2, target, "keys")
    a.backward(), b.backward()
    assert torch.equal(a, b) and torch.equal(q1.grad, q2.grad)
    with pytest.raises(ValueError, match="lovasz_sort"):
        lovasz_softmax(probs, target, "radix")


def _random_bn(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                    m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("backend", ["spconv", "torch"])
def test_fold_batchnorm_keeps_outputs(batch_cfg, backend):
    cfg, batch = batch_cfg
    model = _random_bn(build_model(_cfg(cfg["data"]["root"], f"model.lidar.backend={backend}")["model"]))
    with torch.no_grad():
        ref = model(batch)
        folded = fold_batchnorm(copy.deepcopy(model))
        got = folded(batch)
    kinds = [type(m) for m in folded.modules()]
    assert not any(issubclass(k, torch.nn.modules.batchnorm._BatchNorm) for k in kinds)
    assert AddBias in kinds  # the sparse convs' shifts
    for key in ("logits", "anomaly_logit", "feat_image", "feat_lidar"):
        torch.testing.assert_close(got[key], ref[key], rtol=SCORE_RTOL, atol=SCORE_ATOL, msg=key)
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm(build_model(cfg["model"]).train())


def test_lazy_output_runs_only_the_heads_read(batch_cfg):
    cfg, batch = batch_cfg
    model = build_model(cfg["model"]).eval()
    with torch.no_grad():
        out = model.infer(batch)
        assert "anomaly_logit" in out and out.computed() == ["feat_image", "feat_lidar", "fused"]
        ref = model(batch)
        torch.testing.assert_close(out["anomaly_logit"], ref["anomaly_logit"], rtol=SCORE_RTOL, atol=SCORE_ATOL)
        assert "logits" not in out.computed()
        for key in ("logits", "logits_lidar", "logits_image", "fused"):
            torch.testing.assert_close(out[key], ref[key], rtol=SCORE_RTOL, atol=SCORE_ATOL, msg=key)


@pytest.fixture(scope="module")
def bn_checkpoint(tmp_path_factory, synthetic_root):
    from segood.bench.replay import random_bn_checkpoint

    return random_bn_checkpoint(tmp_path_factory.mktemp("speed") / "bn.pt", str(CONFIG_DIR / "synthetic_feature_mixing.yaml"),
                                SMALL + [f"data.root={synthetic_root}"])


@pytest.mark.parametrize("camera", [True, False], ids=["camera", "lidar_only"])
def test_fast_predictor_scores_equal_plain_within_tolerance(bn_checkpoint, synthetic_root, camera):
    from dataclasses import replace

    from segood.data.readers import open_reader
    from segood.engine.inference import InferenceOptions, Predictor

    cfg = _cfg(synthetic_root)
    scan = open_reader(cfg["data"], ["08"], build_label_map(cfg), with_labels=False)[0]
    if not camera:
        scan = replace(scan, images=[], lidar_to_image=[], pixel_uv=None, camera_id=None)
    plain = Predictor(bn_checkpoint, options=InferenceOptions.plain())
    fast = Predictor(bn_checkpoint, options=InferenceOptions.from_config())
    a, b = plain(scan), fast(scan)
    name = plain.op.score
    np.testing.assert_allclose(b.scores[name], a.scores[name], rtol=SCORE_RTOL, atol=SCORE_ATOL)
    assert (a.label == b.label).mean() > 0.999
    stages = {"voxelise", "lidar", "image", "fusion", "heads"}
    assert set(fast.timer.last) == (stages | {"inputs", "branches", "fusion_lidar"} if camera and torch.get_num_threads() > 1 else stages)
    assert set(plain.timer.last) == {"voxelise", "model", "heads"}
    assert fast.model.image.channels_last and not plain.model.image.channels_last  # inference.channels_last


def test_train_step_bench_runs_small(synthetic_root):
    from segood.bench import train_step as bench

    res = bench.run_train_step_bench(threads=(1,), repeats=1, warmup=0, azimuth_columns=64, image_size=(96, 32),
                                     profile_top=5, overrides=tuple(SMALL), fresh_steps=1, say=lambda *a, **k: None)
    rows = {r["row"]: r for r in res["rows"]}
    assert list(rows)[0] == "unoptimised" and "+ keep_freed_memory" in rows
    assert rows["+ keep_freed_memory"]["same_weights_as_previous"] is True
    assert all(r["step_ms"] > 0 and r["vs_unoptimised"] > 0 for r in rows.values())
    assert any("Self CPU" in t for t in res["profiles"].values())
    assert "ratio" in bench.format_result(res)
    fresh = res["fresh_process"]
    assert fresh["glibc_untouched_cpu_ms"] > 0 and fresh["keep_freed_memory_cpu_ms"] > 0


def test_replay_bench_runs_small(monkeypatch, tmp_path):
    from segood.bench import replay as bench

    monkeypatch.setitem(bench.SIZES, "tiny", dict(azimuth_columns=96, beams=16))
    res = bench.run_replay_bench(("tiny",), frames=1, repeats=1, warmup=0, config=str(CONFIG_DIR / "base.yaml"),
                                 overrides=SMALL, top=5, out_dir=tmp_path, say=lambda *a, **k: None, bag_frames=2)
    entry = res["sizes"]["tiny"]
    for mode in ("lidar_only", "camera"):
        rows = entry["switches"][mode]
        assert rows[0]["row"] == "plain" and len(rows) >= 5
        assert all(r["max_abs_score_diff"] <= SCORE_ATOL for r in rows if r["row"] != "+ amp=bf16")
    for mode, rows in entry["bag"].items():
        names = [r["row"] for r in rows]
        assert names[0] == "plain" and names[-1] == "+ background_write" and "+ parallel_branches" in names
        serial, fast = rows[1], rows[-1]
        assert {"decode", "voxelise", "lidar", "image", "fusion", "heads", "encode", "write"} <= set(serial["stages_ms_p50"])
        assert {"wait_input", "wait_output"} <= set(fast["stages_ms_p50"])
        assert ("branches" in rows[2]["stages_ms_p50"]) == (mode == "camera" and torch.get_num_threads() > 1)
        assert all(r["cpu_ms_per_frame"] > 0 and 0 < r["cpu_share_write"] < 1 and r["ms"] > 0 for r in rows)
        assert 0 < serial["share_write"] < 1
    assert "+ channels_last" in {r["row"] for r in entry["switches"]["camera"]}
    assert (tmp_path / "bench_replay.json").is_file()


def test_synthesis_bench_defaults_are_small():
    from segood.bench import synthesis

    p = synthesis.configure_parser(argparse.ArgumentParser())
    args = p.parse_args([])
    kw = synthesis.bench_kwargs(args)
    assert max(kw["points"]) <= 100_000 and len(kw["dtypes"]) == 1 and kw["repeats"] <= 3
    full = synthesis.bench_kwargs(p.parse_args(["--full"]))
    assert max(full["points"]) == 1_000_000 and len(full["dtypes"]) == 3


@pytest.mark.parametrize("frozen", [False, True], ids=["trained", "encoders_frozen"])
def test_parallel_branches_leave_weights_bit_equal(batch_cfg, frozen):
    """The branches' forward and backward on two threads give the sequential step's weights to the
    bit (one torch thread in each, as in the sequential step), also with frozen encoders (outlier phase)."""
    cfg, batch = batch_cfg
    sequential = _train(cfg, batch, parallel=False, frozen=frozen)
    parallel = _train(cfg, batch, parallel=True, frozen=frozen)
    assert _equal(sequential, parallel)
    if frozen:  # the encoders did not move, the heads did
        torch.manual_seed(0)
        init = build_model(cfg["model"]).state_dict()
        assert all(torch.equal(init[k], parallel[k]) for k in init if k.startswith(("lidar.", "image.")))
        assert not torch.equal(init["seg_head.weight"], parallel["seg_head.weight"])


def test_parallel_branches_resolve():
    cpu = torch.device("cpu")
    assert parallel_branches.resolve("auto", cpu, False, threads=2)
    assert not parallel_branches.resolve("auto", cpu, False, threads=1)
    assert not parallel_branches.resolve("auto", cpu, True, threads=2)
    assert not parallel_branches.resolve("auto", torch.device("cuda"), False, threads=8)
    assert not parallel_branches.resolve("never", cpu, False, threads=2)
    with pytest.raises(ConfigError, match="at least 2 torch threads"):
        parallel_branches.resolve("always", cpu, False, threads=1)
    with pytest.raises(ConfigError, match="DDP"):
        parallel_branches.resolve("always", cpu, True, threads=2)
    with pytest.raises(ConfigError, match="expected auto, always or never"):
        parallel_branches.resolve("yes", cpu, False)


def test_index_select_gathers_leave_weights_bit_equal(batch_cfg, monkeypatch):
    """segood.models.gather (index_select, whose backward is index_add_) against advanced indexing
    (index_put_ with accumulation): the same weights after training, to the bit, at one thread."""
    from segood.models import gather

    cfg, batch = batch_cfg
    fast = _train(cfg, batch)
    monkeypatch.setattr(gather, "INDEX_SELECT", False)
    plain = _train(cfg, batch)
    assert _equal(fast, plain)
    x = torch.randn(5, 3, requires_grad=True)
    mask = torch.tensor([True, False, True, True, False])
    assert torch.equal(gather.masked_rows(x, mask), x[mask]) and torch.equal(gather.rows(x, torch.tensor([4, 0, 4])),
                                                                               x[torch.tensor([4, 0, 4])])


def test_loader_workers_and_training_run_numpy_blas_on_one_thread():
    """In a fresh process with numpy's BLAS on several threads, the data loader's worker init (and
    the trainer's runtime setup, which calls the same function) leaves it one."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json; from threadpoolctl import threadpool_info; from segood.engine.runtime import "
            "loader_worker_init; blas = lambda: [x['num_threads'] for x in threadpool_info() if x['user_api'] == "
            "'blas']; before = blas(); loader_worker_init(0); print(json.dumps([before, blas()]))")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    before, after = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                              check=True, env=env).stdout)
    assert before and max(before) == 2 and after == [1] * len(before)


def test_run_concurrently_splits_threads_and_restores_them():
    import threading

    from segood.models.concurrency import run_concurrently

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        def probe():
            return threading.get_ident(), torch.get_num_threads(), torch.is_inference_mode_enabled()

        with torch.inference_mode():
            (main_id, main_n, _), (side_id, side_n, side_inf) = run_concurrently(probe, probe)
        assert main_id == threading.get_ident() != side_id and (main_n, side_n, side_inf) == (1, 1, True)
        assert torch.get_num_threads() == 2

        def boom():
            raise RuntimeError("side failed")

        with pytest.raises(RuntimeError, match="side failed"):
            run_concurrently(lambda: 1, boom)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_parallel_branches_give_the_sequential_scores(bn_checkpoint, synthetic_root):
    """inference.parallel_branches: voxelising + the LiDAR branch beside the image branch (worker
    thread) give the sequential path's scores within the fast path's tolerance (the image
    convolutions at one thread may round differently); a frame without a camera runs as before."""
    from dataclasses import replace

    from segood.data.readers import open_reader
    from segood.engine.inference import InferenceOptions, Predictor

    cfg = _cfg(synthetic_root)
    scan = open_reader(cfg["data"], ["08"], build_label_map(cfg), with_labels=False)[0]
    opts = InferenceOptions.from_config()
    seq = Predictor(bn_checkpoint, options=replace(opts, parallel_branches=False))
    par = Predictor(bn_checkpoint, options=replace(opts, parallel_branches=True, threads=2))
    a, b = seq(scan), par(scan)
    name = seq.op.score
    np.testing.assert_allclose(b.scores[name], a.scores[name], rtol=SCORE_RTOL, atol=SCORE_ATOL)
    assert (a.label == b.label).mean() > 0.999
    assert set(par.timer.last) == {"inputs", "branches", "voxelise", "lidar", "fusion_lidar", "image", "fusion", "heads"}
    par(replace(scan, images=[], lidar_to_image=[], pixel_uv=None, camera_id=None))
    assert set(par.timer.last) == {"voxelise", "lidar", "image", "fusion", "heads"}
