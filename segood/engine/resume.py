"""Exact resume: the sampler that starts mid-epoch, the RNG states a checkpoint carries, seeding,
and the run history cut back to the checkpoint's step."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from segood.atomic import write_text
from segood.engine.distributed import DistInfo


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled by seed + epoch, as torch does) that can start mid-epoch, so a
    resumed run sees exactly the batches the interrupted one would have, without loading the
    skipped ones."""

    def __init__(self, dataset, info: DistInfo, seed: int, batch_size: int):
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed,
                         drop_last=len(dataset) >= info.world_size)
        self.batch_size = batch_size
        self.start_batch = 0

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start_batch * self.batch_size:])


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def trim_history(path: Path, step: int) -> None:
    """Keep only the records of ``history.jsonl`` up to ``step`` (and drop a half-written last
    line): a resumed run logs the steps after its checkpoint again."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            rec_step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
        if rec_step <= step:
            keep.append(line if line.endswith("\n") else line + "\n")
    if keep != lines:
        write_text(path, "".join(keep))
