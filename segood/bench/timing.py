"""Timing helpers every benchmark shares: device synchronisation and medians of timed calls.
torch is imported inside the functions, so ``segood --help`` does not pay for it."""
from __future__ import annotations

import time
from typing import Callable, Iterable


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], object], repeats: int, warmup: int, budget_s: float, device: str) -> list[float]:
    """Seconds per call: ``warmup`` untimed calls, then up to ``repeats`` timed ones (at least one;
    no new call starts once ``budget_s`` has been spent on the timed ones)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max(1, repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
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
