"""Config -> objects: readers, loaders, model, synthesizer. The only place that knows all layers."""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader

from segood.config import ConfigError, resolve_path
from segood.data.batching import Augment, ScanDataset, VoxelGrid, collate
from segood.data.labels import LabelMap, load_label_map
from segood.data.semantickitti import SemanticKittiReader
from segood.ood.feature_mixing import FeatureMixing

READERS = {"semantickitti": SemanticKittiReader}
SYNTHESIS_METHODS = ("none", "feature_mixing")


def build_label_map(cfg: dict) -> LabelMap:
    return load_label_map(cfg["data"]["label_map"])


def build_grid(cfg: dict) -> VoxelGrid:
    return VoxelGrid(float(cfg["data"]["voxel_size"]), tuple(float(v) for v in cfg["data"]["point_range"]))


def build_reader(cfg: dict, split: str, label_map: LabelMap, with_labels: bool = True):
    data = cfg["data"]
    if data["dataset"] not in READERS:
        raise ConfigError(f"data.dataset: unknown dataset '{data['dataset']}', expected one of {sorted(READERS)}")
    sequences = data[f"{split}_sequences"]
    return READERS[data["dataset"]](resolve_path(data["root"]), sequences, label_map,
                                    camera=data["camera"], with_labels=with_labels)


def build_loader(cfg: dict, split: str, label_map: LabelMap, shuffle: bool) -> DataLoader:
    """A loader over one split; training applies augmentation and shuffles with a seeded generator."""
    aug = Augment(**{**cfg["data"]["augment"], "scale": tuple(cfg["data"]["augment"]["scale"])}) if shuffle else None
    fov_only = shuffle and bool(cfg["data"]["train_fov_only"]) and cfg["data"]["camera"] is not None
    dataset = ScanDataset(build_reader(cfg, split, label_map), label_map, aug, seed=int(cfg["seed"]), fov_only=fov_only)
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    section = "train" if split == "train" else "eval"
    return DataLoader(
        dataset,
        batch_size=int(cfg[section]["batch_size"]),
        shuffle=shuffle,
        drop_last=shuffle and len(dataset) >= int(cfg[section]["batch_size"]),
        generator=gen,
        num_workers=int(cfg["data"]["num_workers"]),
        collate_fn=partial(collate, grid=build_grid(cfg)),
        persistent_workers=int(cfg["data"]["num_workers"]) > 0,
    )


def build_synthesizer(cfg: dict):
    """The outlier synthesizer selected by ``synthesis.method`` (None for 'none')."""
    syn = cfg["synthesis"]
    if syn["method"] not in SYNTHESIS_METHODS:
        raise ConfigError(f"synthesis.method: unknown method '{syn['method']}', expected one of {SYNTHESIS_METHODS}")
    if syn["method"] == "none":
        return None
    return FeatureMixing(int(syn["n_swap"]), seed=int(cfg["seed"]), max_points=syn["max_points"])


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
