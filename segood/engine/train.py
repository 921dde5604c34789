"""Training loop: one forward per step, the weighted objective, a progress bar, a readable log,
atomic checkpoints and resume."""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from segood.config import ConfigError
from segood.engine.builders import build_label_map, build_loader, build_synthesizer, seed_everything
from segood.engine.checkpoint import load_checkpoint, save_checkpoint
from segood.engine.objective import compute_losses
from segood.models import build_model

LOG = logging.getLogger("segood.train")


def _lr_lambda(warmup: int, total: int):
    """Linear warm-up, then cosine decay to 1% of the base rate."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return f


def _setup_log(out_dir: Path) -> logging.FileHandler:
    handler = logging.FileHandler(out_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    return handler


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}


def check_num_classes(cfg: dict, label_map) -> None:
    if int(cfg["model"]["num_classes"]) != label_map.num_classes:
        raise ConfigError(
            f"model.num_classes is {cfg['model']['num_classes']} but label map '{label_map.source}' has "
            f"{label_map.num_classes} in-distribution classes"
        )


def train(cfg: dict, out_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train the model described by ``cfg``; returns the path of the final checkpoint."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{ckpt_path}: a run already exists here; pass --resume to continue it or choose another --out")
    handler = _setup_log(out_dir)
    try:
        return _train(cfg, out_dir, ckpt_path, resume, progress)
    finally:
        LOG.removeHandler(handler)
        handler.close()


def _train(cfg: dict, out_dir: Path, ckpt_path: Path, resume: bool, progress: bool) -> Path:
    seed_everything(int(cfg["seed"]))
    label_map = build_label_map(cfg)
    check_num_classes(cfg, label_map)
    loader = build_loader(cfg, "train", label_map, shuffle=True)
    model = build_model(cfg)
    tcfg = cfg["train"]
    total = int(tcfg["steps"])
    opt = torch.optim.AdamW(model.parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(int(tcfg["warmup_steps"]), total))
    synthesizer = build_synthesizer(cfg)
    synth_start = int(float(cfg["synthesis"]["start_fraction"]) * total)
    step = 0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        LOG.info("resumed from %s at step %d", ckpt_path, step)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    LOG.info("training %d steps on %d scans, synthesis=%s", total, len(loader.dataset), cfg["synthesis"]["method"])

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "step": step, "config": cfg, "label_map": label_map.checksum(), "rng": _rng_state(),
        })

    model.train()
    bar = tqdm(total=total, initial=step, desc="train", disable=not progress, dynamic_ncols=True)
    history = open(out_dir / "history.jsonl", "a")
    epoch = step // max(1, len(loader))
    t0 = time.time()
    while step < total:
        loader.dataset.epoch = epoch
        loader.generator.manual_seed(int(cfg["seed"]) * 100_003 + epoch)
        skip = step - epoch * len(loader)  # when resuming mid-epoch, skip what was already seen
        for i, batch in enumerate(loader):
            if i < skip:
                continue
            if step >= total:
                break
            synth = synthesizer if (synthesizer is not None and step >= synth_start) else None
            out = model(batch, synthesize=(lambda fi, fl, b, s=step: synth(fi, fl, b, s)) if synth else None)
            terms = compute_losses(out, batch, cfg["loss"])
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(tcfg["grad_clip"]))
            opt.step()
            sched.step()
            step += 1
            vals = {k: round(float(v.detach()), 4) for k, v in terms.items()}
            bar.update(1)
            bar.set_postfix(loss=vals["total"])
            if step % int(tcfg["log_every"]) == 0 or step == total:
                rec = {"step": step, "lr": sched.get_last_lr()[0], "sec": round(time.time() - t0, 1), **vals}
                history.write(json.dumps(rec) + "\n")
                history.flush()
                LOG.info("step %d/%d  %s", step, total, "  ".join(f"{k}={v:.4f}" for k, v in vals.items()))
            if step % int(tcfg["ckpt_every"]) == 0:
                checkpoint()
        epoch += 1
    bar.close()
    history.close()
    checkpoint()
    LOG.info("done: %s (%.1f s)", ckpt_path, time.time() - t0)
    return ckpt_path
