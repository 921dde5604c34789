"""Row gathers on ~120k points whose backward is cheap on the CPU.

``t[index]`` and ``t[mask]`` (advanced indexing) differentiate through ``index_put_`` with
accumulation, which on the CPU is slow at one thread and several times slower at two (48 ms for
the LiDAR branch's voxel-to-point gather of a demo batch at two threads). ``index_select`` gives
the same values and differentiates through ``index_add_``: bit-equal gradients at one thread (the
same sums in the same order; weights after training equal, tests/test_speed.py) and 3-5x faster.

``INDEX_SELECT`` exists for ``segood bench train-step`` only, which times the old path (False)
against this one in the same process; nothing else sets it.
"""
from __future__ import annotations

import torch

__all__ = ["rows", "masked_rows"]

INDEX_SELECT = True


def rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[index]`` for a 1-D integer ``index`` over the first dimension (see the module docstring)."""
    return t.index_select(0, index) if INDEX_SELECT else t[index]


def masked_rows(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``t[mask]`` for a boolean ``mask`` over the first dimension (see the module docstring)."""
    return t.index_select(0, mask.nonzero().squeeze(1)) if INDEX_SELECT else t[mask]
