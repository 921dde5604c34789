"""The share of outlier synthesis in one training step of the demo model (part of ``segood bench
synthesis``): the real step (:func:`segood.engine.step.train_step`) with each synthesizer of the
registry against the step without synthesis."""
from __future__ import annotations

import statistics
import tempfile
import time
from typing import Sequence

from segood.bench.synthesis_methods import make_synthesizer, synthesizer_methods
from segood.bench.timing import sync


def train_step_share(methods: Sequence[str] | None = None, repeats: int = 3, warmup: int = 1, device: str = "cpu",
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
    ``methods``: default every synthesizer of the registry and its benchmarked variants.
    """
    import numpy as np
    import torch

    from segood.config import CONFIG_DIR, load_config
    from segood.data.batching import collate
    from segood.synthetic import SyntheticConfig, write_dataset
    from segood.engine.builders import build_dataset, build_grid, build_label_map
    from segood.engine.step import train_step
    from segood.engine.train import to_device
    from segood.models import build_model

    methods = list(synthesizer_methods() if methods is None else methods)
    width, height = image_size or (SyntheticConfig.image_width, SyntheticConfig.image_height)
    with tempfile.TemporaryDirectory(prefix="segood_bench_") as root:
        write_dataset(root, SyntheticConfig(num_train=2, num_val=0, azimuth_columns=azimuth_columns,
                                            image_width=width, image_height=height, seed=seed), progress=False)
        cfg = load_config(CONFIG_DIR / "synthetic_feature_mixing.yaml", [f"data.root={root}", f"seed={seed}"])
        dataset = build_dataset(cfg, "train", build_label_map(cfg), training=True)
        samples = [dataset[i] for i in range(2)]
    batch = to_device(collate(samples, build_grid(cfg), cfg["data"]["max_voxels"], np.random.default_rng(seed)),
                      torch.device(device))
    torch.manual_seed(seed)
    model = build_model(cfg["model"]).to(device).train()
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
            sync(device)
            t0 = time.perf_counter()
            res = synth(fi, fl, b, n)
            sync(device)
            if record:
                times[name]["synth"].append(time.perf_counter() - t0)
            outliers[name] = int(res[0].numel())
            return res

        sync(device)
        t0 = time.perf_counter()
        train_step(model, [batch], opt, cfg["loss"], float(cfg["train"]["grad_clip"]),
                   synthesize=timed if synth is not None else None)
        sync(device)
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
