"""Config -> objects: readers, loaders, model, synthesizer. The only place that knows all layers."""
from __future__ import annotations

from functools import partial

import torch
from torch.utils.data import DataLoader, Subset

from segood.config import ConfigError
from segood.data.batching import Augment, ScanDataset, VoxelGrid, collate
from segood.data.labels import LabelMap, load_label_map
from segood.data.readers import open_reader
from segood.engine.runtime import loader_worker_init
from segood.ood.synthesis import build_synthesizer as make_synthesizer


def build_label_map(cfg: dict) -> LabelMap:
    return load_label_map(cfg["data"]["label_map"])


def build_grid(cfg: dict) -> VoxelGrid:
    return VoxelGrid(float(cfg["data"]["voxel_size"]), tuple(float(v) for v in cfg["data"]["point_range"]))


def build_reader(cfg: dict, split: str, label_map: LabelMap, with_labels: bool = True):
    """The reader of ``data.dataset`` (:data:`segood.data.readers.READERS`) over ``data.<split>_sequences``."""
    return open_reader(cfg["data"], cfg["data"][f"{split}_sequences"], label_map, with_labels)


def build_dataset(cfg: dict, split: str, label_map: LabelMap, training: bool) -> ScanDataset:
    """Scans of one split as samples; training adds augmentation, the FOV crop and the point cap."""
    data = cfg["data"]
    aug = Augment(**{**data["augment"], "scale": tuple(data["augment"]["scale"])}) if training else None
    fov_only = training and bool(data["train_fov_only"]) and data["camera"] is not None
    max_points = data["max_points"] if training else None
    return ScanDataset(build_reader(cfg, split, label_map), label_map, aug, seed=int(cfg["seed"]),
                       fov_only=fov_only, max_points=max_points)


def build_loader(cfg: dict, split: str, label_map: LabelMap, shuffle: bool = False,
                 shard: tuple[int, int] = (0, 1)) -> DataLoader:
    """An evaluation loader over one split (no augmentation, full scans); ``shard=(rank, world)``
    gives each rank every world-th scan, without the padding a DistributedSampler would add."""
    dataset = build_dataset(cfg, split, label_map, training=shuffle)
    rank, world = shard
    if world > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world))
    section = "train" if shuffle else "eval"
    return DataLoader(
        dataset,
        batch_size=int(cfg[section]["batch_size"]),
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(int(cfg["seed"])),
        num_workers=int(cfg["data"]["num_workers"]),
        collate_fn=partial(collate, grid=build_grid(cfg)),
        worker_init_fn=loader_worker_init,
    )


def build_synthesizer(cfg: dict, rank: int = 0):
    """The outlier synthesizer selected by ``synthesis.method`` (None for 'none'); each rank of a
    distributed run draws its own stream."""
    syn, model = cfg["synthesis"], cfg["model"]
    try:
        return make_synthesizer(syn["method"], syn, int(model["num_classes"]), int(model["image"]["out_channels"]),
                                int(model["lidar"]["out_channels"]), seed=int(cfg["seed"]) + 7919 * rank)
    except ValueError as e:
        raise ConfigError(f"synthesis: {e}") from None
