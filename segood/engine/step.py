"""The one training step: forward (with outlier synthesis), losses, backward, clipping, optimizer
step. The trainer (:mod:`segood.engine.train`) and the benchmarks (:mod:`segood.bench`) call it."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch

from segood.engine.objective import compute_losses
from segood.engine.parallel_branches import BranchCut

Synthesize = Callable[[torch.Tensor, torch.Tensor, Mapping], tuple]


def to_fp32(out: Mapping) -> dict:
    """The model's floating-point outputs in fp32 (a no-op for fp32 outputs; under autocast the
    losses, their softmaxes and reductions then run in fp32)."""
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in out.items()}


def train_step(model: torch.nn.Module, batches: Sequence[Mapping], opt: torch.optim.Optimizer,
               loss_cfg: Mapping, grad_clip: float, synthesize: Synthesize | None = None,
               scaler: torch.amp.GradScaler | None = None, amp_dtype: torch.dtype | None = None,
               clip_params: Iterable[torch.nn.Parameter] | None = None,
               prepare: Callable[[Mapping], Mapping] | None = None,
               observe: Callable[[Mapping, Mapping], None] | None = None,
               parallel_branches: bool = False) -> dict[str, float]:
    """One optimizer step over ``batches`` (gradient accumulation: the loss of each is divided by
    their number); returns the mean loss terms (floats).

    ``synthesize(feat_image, feat_lidar, batch)`` makes the step's outliers (None: no synthesis);
    ``scaler`` / ``amp_dtype``: mixed precision (fp16 needs the scaler); ``clip_params``: the
    parameters whose gradient norm is clipped (default: the model's; the module under DDP);
    ``prepare(batch)``: e.g. the move to the device, applied to one batch at a time; ``observe(out, batch)``
    sees each forward's output (the shortcut monitor, :mod:`segood.engine.monitor`);
    ``parallel_branches``: the two encoders' forward and backward run at once
    (:mod:`segood.engine.parallel_branches`; exact; CPU, no DDP: see its ``resolve``).
    """
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    device_type = next(model.parameters()).device.type
    sums: dict[str, float] = {}
    opt.zero_grad(set_to_none=True)
    for batch in batches:
        batch = prepare(batch) if prepare is not None else batch
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            cut = BranchCut(model, batch) if parallel_branches else None
            out = model(batch, synthesize=synthesize, branches=cut.branches if cut else None)
        terms = compute_losses(to_fp32(out), batch, loss_cfg)  # losses, softmax and reductions in fp32
        if observe is not None:
            observe(out, batch)
        scaler.scale(terms["total"] / len(batches)).backward()
        if cut is not None:
            cut.backward()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(batches)
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(list(clip_params if clip_params is not None else model.parameters()),
                                   float(grad_clip))
    scaler.step(opt)
    scaler.update()
    return sums
