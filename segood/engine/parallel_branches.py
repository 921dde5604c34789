"""The two encoders of a training step, forward and backward, on two cores at once (``train.parallel_branches``).

The sparse U-Net (spconv) must run single-threaded on the CPU (:mod:`segood.models.spconv_guard`),
so in a sequential step one core idles while it runs, and the image branch's two threads wait for
it. Here the step is cut at the two branch outputs:

1. forward: the LiDAR branch in the calling thread and the image branch in a worker thread, at the
   same time, one torch thread each (their costs are close: ~80 ms forward, ~125-160 ms backward
   on the demo batch; a cut that moved the LiDAR branch's per-point layers to the two-thread part
   measured slower, 516 against 469 ms per step);
2. the rest of the forward (fusion, heads, synthesis), the losses and their backward run on the
   branch outputs as detached leaves, with the process's threads; the leaves collect the gradients;
3. backward of each branch from its leaf's gradient, again the LiDAR branch here and the image
   branch in the worker, at the same time.

Exact: every operation and every gradient sum is the one of the sequential step (the leaves' gradients
are the sums the sequential backward hands to the branches), so at one thread the weights are
bit-equal to the sequential step's (tests/test_speed.py). The branches own disjoint
parameters, so the two concurrent backward passes never write to the same gradient; autograd runs
concurrent backward calls on disjoint graphs (torch's documented thread-safe autograd).

Threads: :func:`segood.models.concurrency.run_concurrently` (the predictor's too): torch's intra-op
thread count (OpenMP) is per thread, so the worker sets its own and the calling thread drops to one
for phases 1 and 3 and returns to its count for phase 2; autocast and grad mode are thread-local,
the worker enters the caller's. CPU only, without DDP (its gradient
hooks expect one backward); :func:`resolve` says when it is on.
"""
from __future__ import annotations

from typing import Callable

import torch

from segood.config import ConfigError
from segood.models.concurrency import run_concurrently

__all__ = ["resolve", "BranchCut"]


def resolve(mode: str, device: torch.device, distributed: bool, threads: int | None = None) -> bool:
    """``train.parallel_branches`` (``auto`` | ``always`` | ``never``) -> on or off for this process.

    ``auto``: on where it pays, on a CPU with at least two torch threads (``threads``; default
    torch's count) and no DDP; ``always``: the same conditions, and a ConfigError naming the one that
    fails; ``never``: off."""
    if mode not in ("auto", "always", "never"):
        raise ConfigError(f"train.parallel_branches: {mode!r}: expected auto, always or never")
    if mode == "never":
        return False
    threads = torch.get_num_threads() if threads is None else threads
    why = ("it runs on the CPU only" if device.type != "cpu" else
           "it does not run under DDP (one backward per step)" if distributed else
           f"it needs at least 2 torch threads (this process has {threads})" if threads < 2 else None)
    if why and mode == "always":
        raise ConfigError(f"train.parallel_branches: always, but {why}; set it to auto or never")
    return why is None


class BranchCut:
    """One batch's encoders, run at once; their outputs are detached leaves for the rest of the step.

    ``branches``: (image output, LiDAR output) as leaves to hand to ``model(batch, branches=...)``;
    :meth:`backward` (after the loss's backward) sends the leaves' gradients through both branches
    at once."""

    def __init__(self, model: torch.nn.Module, batch: dict) -> None:
        lidar, image = run_concurrently(lambda: model.lidar(batch), lambda: model.image(batch))
        self.outputs = (image, lidar)
        self.branches = tuple(t.detach().requires_grad_(t.requires_grad) for t in self.outputs)

    def backward(self) -> None:
        """Backward of both branches from their leaves' gradients (a branch without gradient, e.g.
        frozen in an outlier phase, is skipped); frees both graphs."""
        (image, lidar), (leaf_image, leaf_lidar) = self.outputs, self.branches

        def run(out: torch.Tensor, leaf: torch.Tensor) -> Callable[[], None]:
            def go() -> None:
                if out.requires_grad and leaf.grad is not None:
                    out.backward(leaf.grad)
            return go

        run_concurrently(run(lidar, leaf_lidar), run(image, leaf_image))
        self.outputs = self.branches = ()
