"""Training: one forward per step, the weighted objective, DDP under torchrun, gradient
accumulation, mixed precision (GPU; bf16 on CPUs that have it), atomic checkpoints (last K + best), exact
resume, and a clean stop on SIGINT / SIGTERM (the current step is finished and checkpointed, see
:mod:`segood.engine.interrupt`)."""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from segood.config import ConfigError
from segood.data.batching import collate
from segood.engine.builders import build_dataset, build_grid, build_label_map, build_loader, build_synthesizer
from segood.atomic import check_writable, write_json
from segood.engine.checkpoint import load_checkpoint, save_checkpoint
from segood.engine.model_config import check_resume_model
from segood.engine.objective import check_objective
from segood.engine.distributed import (DistInfo, all_reduce_sum, barrier, broadcast_buffers, gather_objects,
                                       init_distributed, shutdown, weights_checksum)
from segood.engine.interrupt import SIGNALS, Interrupted, StopRequest
from segood.engine.monitor import Monitor
from segood.engine import parallel_branches
from segood.engine.runtime import amp_settings, apply_train_runtime, loader_worker_init
from segood.engine.resume import ResumableSampler, rng_state, seed_everything, set_rng_state, trim_history
from segood.engine.step import train_step
from segood.metrics.iou import ConfusionMatrix
from segood.models import build_model

LOG = logging.getLogger("segood.train")


def lr_lambda(warmup: int, total: int, phase: int = 0, phase_lr: float = 0.1, schedule: str = "own"):
    """Linear warm-up, then cosine decay to 1% of the base rate. ``schedule`` of the last ``phase`` steps
    (``train.outlier_phase``): ``own``: the cosine ends ``phase`` steps early and the phase runs at the
    constant ``phase_lr`` times the base; ``overlay``: the cosine spans all ``total`` steps and the phase
    runs at ``max(cosine, phase_lr)`` (the ID schedule is the one a run without a phase has)."""
    start = total - phase
    cosine_end = start if schedule == "own" else total

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, cosine_end - warmup)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    def f(step: int) -> float:
        if phase and step >= start:
            return phase_lr if schedule == "own" else max(cosine(step), phase_lr)
        return cosine(step)

    return f


def check_num_classes(cfg: dict, label_map) -> None:
    if int(cfg["model"]["num_classes"]) != label_map.num_classes:
        raise ConfigError(
            f"model.num_classes is {cfg['model']['num_classes']} but label map '{label_map.source}' has "
            f"{label_map.num_classes} in-distribution classes"
        )


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


class Run:
    """The files of a run folder and the rank-0-only writing of them."""

    def __init__(self, out_dir: Path, info: DistInfo, keep_last: int):
        self.dir = out_dir
        self.info = info
        self.keep_last = keep_last
        self.latest = out_dir / "checkpoint.pt"
        self.best = out_dir / "best.pt"

    def save(self, state: dict, step: int, best: bool = False) -> None:
        if not self.info.is_main:
            return
        save_checkpoint(self.latest, state)
        if self.keep_last > 0:
            save_checkpoint(self.dir / f"checkpoint_step{step:07d}.pt", state)
            for old in sorted(self.dir.glob("checkpoint_step*.pt"))[: -self.keep_last]:
                old.unlink(missing_ok=True)
        if best:
            save_checkpoint(self.best, state)


def setup_logging(out_dir: Path, info: DistInfo) -> logging.Handler | None:
    if not info.is_main:
        return None
    handler = logging.FileHandler(out_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    return handler


def train(cfg: dict, out_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train the model described by ``cfg`` (single process, or one rank of a torchrun job);
    returns the path of the final checkpoint."""
    info = init_distributed()
    out_dir = Path(out_dir)
    if (out_dir / "checkpoint.pt").exists() and not resume:
        raise FileExistsError(f"{out_dir / 'checkpoint.pt'}: a run already exists here; pass --resume to "
                              "continue it or choose another --out")
    if info.is_main:
        check_writable(out_dir, "run folder")
        out_dir.mkdir(parents=True, exist_ok=True)
    barrier(info)
    handler = setup_logging(out_dir, info)
    try:
        return Trainer(cfg, out_dir, info).fit(resume, progress)
    finally:
        if handler is not None:
            LOG.removeHandler(handler)
            handler.close()
        shutdown(info)


class Trainer:
    def __init__(self, cfg: dict, out_dir: Path, info: DistInfo):
        self.cfg, self.info, self.tcfg = cfg, info, cfg["train"]
        seed_everything(int(cfg["seed"]), bool(cfg["deterministic"]))
        self.label_map = build_label_map(cfg)
        check_num_classes(cfg, self.label_map)
        check_objective(cfg)
        self.run = Run(out_dir, info, int(self.tcfg["keep_last"]))
        self.total = int(self.tcfg["steps"])
        self.accumulate = int(self.tcfg["accumulate"])
        self.model = build_model(cfg["model"]).to(info.device)
        if info.enabled and cfg["train"]["sync_bn"]:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.ddp = DistributedDataParallel(self.model, find_unused_parameters=True) if info.enabled else None
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=float(self.tcfg["lr"]),
                                     weight_decay=float(self.tcfg["weight_decay"]))
        self.phase = int(self.tcfg["outlier_phase"])
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(
            int(self.tcfg["warmup_steps"]), self.total, self.phase, float(self.tcfg["outlier_phase_lr"]),
            self.tcfg["outlier_phase_schedule"]))
        apply_train_runtime(self.tcfg, self.model)
        self.parallel_branches = parallel_branches.resolve(self.tcfg["parallel_branches"], info.device, info.enabled)
        self.amp_dtype, use_scaler = amp_settings(self.tcfg["amp"], info.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.synthesizer = build_synthesizer(cfg, rank=info.rank)
        self.synth_start = int(float(cfg["synthesis"]["start_fraction"]) * self.total)
        self.loader, self.sampler = self._train_loader()
        self.step, self.best_miou = 0, -1.0
        self._saved_step = -1
        self.monitor = Monitor(cfg, out_dir) if self.tcfg["monitor"] and cfg["data"]["val_sequences"] else None

    def _train_loader(self) -> tuple[DataLoader, ResumableSampler]:
        dataset = build_dataset(self.cfg, "train", self.label_map, training=True)
        bs = int(self.tcfg["batch_size"])
        sampler = ResumableSampler(dataset, self.info, int(self.cfg["seed"]), bs)
        max_vox = self.cfg["data"]["max_voxels"]
        grid = build_grid(self.cfg)

        def collate_fn(samples):
            rng = np.random.default_rng([int(self.cfg["seed"]), sum(len(s["points"]) for s in samples)])
            return collate(samples, grid, max_vox, rng)

        workers = int(self.cfg["data"]["num_workers"])
        loader = DataLoader(dataset, batch_size=bs, sampler=sampler, drop_last=True, num_workers=workers,
                            collate_fn=collate_fn, persistent_workers=False, worker_init_fn=loader_worker_init)
        if len(loader) == 0:
            raise ConfigError(f"train.batch_size={bs} is larger than the {len(sampler)} training scans per rank")
        return loader, sampler

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
            "step": self.step, "best_miou": self.best_miou, "config": self.cfg,
            "label_map": self.label_map.checksum(), "rng": rng_state(), "world_size": self.info.world_size,
            "synthesizer": getattr(self.synthesizer, "state_dict", dict)(),
        }

    def load(self, path: Path) -> None:
        state = load_checkpoint(path)
        check_resume_model(self.cfg, state, path)
        if state["label_map"] != self.label_map.checksum():
            raise ValueError(f"{path}: trained with another label map than '{self.label_map.source}'")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.best_miou = int(state["step"]), float(state.get("best_miou", -1.0))
        if state.get("synthesizer") and hasattr(self.synthesizer, "load_state_dict"):
            self.synthesizer.load_state_dict(state["synthesizer"])  # NP-Mix / VOS banks
        set_rng_state(state["rng"])
        LOG.info("resumed from %s at step %d", path, self.step)

    def fit(self, resume: bool, progress: bool) -> Path:
        self._start(resume)
        if self.info.is_main:
            (self.run.dir / "config.yaml").write_text(yaml.safe_dump(self.cfg, sort_keys=False))
        LOG.info("training %d steps on %d scans x %d rank(s), synthesis=%s", self.total, len(self.loader.dataset),
                 self.info.world_size, self.cfg["synthesis"]["method"])
        bar = tqdm(total=self.total, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (progress and self.info.is_main))
        history = open(self.run.dir / "history.jsonl", "a") if self.info.is_main else None
        t0 = time.time()
        self.model.train()
        note = "finishing this step, writing a checkpoint, then stopping (SIGKILL stops at once)"
        try:
            with StopRequest(note if self.info.is_main else "") as stop:
                while self.step < self.total:
                    self._epoch(bar, history, t0, stop)
        finally:
            bar.close()
            if history is not None:
                history.close()
        broadcast_buffers(self.model, self.info)
        self.run.save(self.state(), self.step)
        self._write_summary(time.time() - t0)
        LOG.info("done: %s (%.1f s)", self.run.latest, time.time() - t0)
        return self.run.latest

    def _say(self, text: str) -> None:
        """One line for the person running this (rank 0 only), also in train.log."""
        if self.info.is_main:
            print(f"[train] {text}", flush=True)
        LOG.info("%s", text)

    def _start(self, resume: bool) -> None:
        """Load the last checkpoint when resuming (saying from which step, or that there is none),
        then cut ``history.jsonl`` back to that step so that no step is logged twice."""
        if resume and self.run.latest.exists():
            self.load(self.run.latest)
            self._say(f"resuming {self.run.dir} from step {self.step} of {self.total} ({self.run.latest})")
        elif resume:
            self._say(f"--resume: nothing to resume in {self.run.dir} (no checkpoint.pt): training from step 0")
        if self.info.is_main:
            trim_history(self.run.dir / "history.jsonl", self.step)

    def _stop_requested(self, stop: StopRequest) -> int | None:
        """The signal that asks every rank to stop after this step (None: go on). Ranks agree."""
        if not self.info.enabled:
            return stop.signum
        asked = all_reduce_sum(np.array([stop.signum == s for s in SIGNALS], dtype=np.int64), self.info)
        return next((int(s) for s, n in zip(SIGNALS, asked) if n), None)

    def _interrupt(self, signum: int) -> None:
        """Checkpoint the finished step (unless that was just done) and raise :class:`Interrupted`."""
        if self._saved_step != self.step:
            broadcast_buffers(self.model, self.info)
            self.run.save(self.state(), self.step)
        barrier(self.info)
        raise Interrupted(signum, f"{self.run.dir}: stopped after step {self.step} of {self.total}; "
                                  f"checkpoint written: {self.run.latest}", step=self.step)

    def _write_summary(self, seconds: float) -> None:
        """run_summary.json: final step, time and every rank's weight checksum (they must agree
        under DDP; a mismatch means the ranks diverged and is logged loudly)."""
        sums = gather_objects(weights_checksum(self.model), self.info)
        if len(set(sums)) > 1:
            LOG.error("weights differ across ranks: %s", sums)
        if self.info.is_main:
            write_json(self.run.dir / "run_summary.json", {
                "step": self.step, "seconds": round(seconds, 1), "world_size": self.info.world_size,
                "weights_checksum_per_rank": sums, "best_val_miou_fov": self.best_miou,
            })
        barrier(self.info)

    def _epoch(self, bar, history, t0: float, stop: StopRequest) -> None:
        per_epoch = len(self.loader) // self.accumulate
        epoch, offset = divmod(self.step, per_epoch)
        self.sampler.set_epoch(epoch)
        self.loader.dataset.epoch = epoch  # augmentation seeded per (seed, epoch, index); workers copy it at iter()
        self.sampler.start_batch = offset * self.accumulate
        it = iter(self.loader)
        for _ in range(offset, per_epoch):
            if self.step >= self.total:
                return
            terms = self._optimizer_step([next(it) for _ in range(self.accumulate)])
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=terms["total"])
            self._log(terms, history, t0)
            self._maybe_validate_and_save()
            signum = self._stop_requested(stop)
            if signum is not None and self.step < self.total:  # on the last step: finish normally
                self._interrupt(signum)

    def in_outlier_phase(self) -> bool:
        """True during the last ``train.outlier_phase`` steps."""
        return self.phase > 0 and self.step >= self.total - self.phase

    def _optimizer_step(self, batches: list[dict]) -> dict[str, float]:
        phase = self.in_outlier_phase()
        freeze_encoders(self.model, phase, self.tcfg["outlier_phase_trains"] == "heads")
        synth = self.synthesizer if (self.synthesizer is not None and (phase or self.step >= self.synth_start)) else None
        step = self.step
        sums = train_step(self.ddp or self.model, batches, self.opt, self.cfg["loss"], float(self.tcfg["grad_clip"]),
                          synthesize=(lambda fi, fl, b: synth(fi, fl, b, step)) if synth else None,
                          scaler=self.scaler, amp_dtype=self.amp_dtype, clip_params=self.model.parameters(),
                          prepare=lambda b: to_device(b, self.info.device),
                          observe=self.monitor.observe_train if self._monitor_step(step + 1) else None,
                          parallel_branches=self.parallel_branches)
        self.sched.step()
        return {k: round(v, 4) for k, v in sums.items()}

    def _log(self, terms: dict, history, t0: float) -> None:
        if history is None or not (self.step % int(self.tcfg["log_every"]) == 0 or self.step == self.total):
            return
        rec = {"step": self.step, "lr": self.sched.get_last_lr()[0], "sec": round(time.time() - t0, 1), **terms}
        history.write(json.dumps(rec) + "\n")
        history.flush()
        LOG.info("step %d/%d  %s", self.step, self.total, "  ".join(f"{k}={v:.4f}" for k, v in terms.items()))

    def _monitor_step(self, step: int) -> bool:
        """The shortcut monitor runs at every validation step and at the last step."""
        val_every = int(self.tcfg["val_every"])
        return self.monitor is not None and (step == self.total or (val_every > 0 and step % val_every == 0))

    def _maybe_validate_and_save(self) -> None:
        val_every, ckpt_every = int(self.tcfg["val_every"]), int(self.tcfg["ckpt_every"])
        best = False
        if val_every and self.step % val_every == 0:
            miou = self.validate()
            best = miou > self.best_miou
            self.best_miou = max(self.best_miou, miou)
            LOG.info("step %d: validation mIoU (FOV) %.4f%s", self.step, miou, "  (best)" if best else "")
        elif self._monitor_step(self.step):
            self.validate()
        if best or (ckpt_every and self.step % ckpt_every == 0):
            self.run.save(self.state(), self.step, best=best)
            self._saved_step = self.step

    @torch.no_grad()
    def validate(self) -> float:
        """FOV mIoU on the validation split; each rank takes a shard, confusion matrices are summed. At a
        monitor step the same pass feeds the shortcut monitor, whose record rank 0 writes."""
        broadcast_buffers(self.model, self.info)
        if not self._monitor_step(self.step):
            return validate_miou(self.model, self.cfg, self.label_map, self.info)
        miou = validate_miou(self.model, self.cfg, self.label_map, self.info, observe=self.monitor.observe_val)
        parts = gather_objects((self.monitor.synthetic, self.monitor.real), self.info)
        if self.info.is_main:
            self.monitor.record(self.step, miou, parts)
        self.monitor.reset()
        return miou


def freeze_encoders(model: torch.nn.Module, frozen: bool, heads_only: bool = False) -> None:
    """Outlier phase: the encoders (``model.encoders()``; with ``heads_only`` also the fusion MLP and
    the camera completion, ``model.fusion_modules()``) get no gradient and run in eval mode (BatchNorm
    uses and keeps its running statistics, as at test time); off: trainable, train mode."""
    for module in model.encoders() + (model.fusion_modules() if heads_only else []):
        module.requires_grad_(not frozen)
        module.train(not frozen and model.training)


@torch.no_grad()
def validate_miou(model: torch.nn.Module, cfg: dict, label_map, info: DistInfo,
                  observe: Callable[[dict, dict], None] | None = None) -> float:
    """Camera-visible ID mIoU over the validation split, reduced across ranks as a confusion matrix;
    ``observe(out, batch)`` sees every forward (the shortcut monitor's real side)."""
    was_training = model.training
    model.eval()
    loader = build_loader(cfg, "val", label_map, shuffle=False, shard=(info.rank, info.world_size))
    conf = ConfusionMatrix(label_map.num_classes)
    for batch in loader:
        batch = to_device(batch, info.device)
        out = model(batch)
        pred = out["logits"].argmax(-1)
        if observe is not None:
            observe(out, batch)
        vis = batch["visible"]
        conf.update(pred[vis].cpu(), batch["target"][vis].cpu())
    conf.matrix = all_reduce_sum(conf.matrix, info)
    model.train(was_training)
    return float(conf.miou())
