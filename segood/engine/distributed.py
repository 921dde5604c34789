"""torchrun / DDP plumbing: ranks from the environment, env:// rendezvous, histogram all-reduce.

Launch: ``torchrun --nproc_per_node=N -m segood train CONFIG --out RUN``. Multi-node works through
torchrun's own options (``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``); nothing here
hard-codes a port or an address.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    return DistInfo(rank, world, local, device)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(array: np.ndarray, info: DistInfo) -> np.ndarray:
    """Sum a count array (confusion matrix, score histogram) over ranks; never per-point tensors."""
    if not info.enabled:
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (small picklable values only), in rank order."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def weights_checksum(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, to check that ranks hold identical weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP broadcasts them only
    at the start of each forward, so after the last training forward the ranks differ; call this
    before validating or finishing so every rank holds the same model."""
    if not info.enabled:
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)
