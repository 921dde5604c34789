"""Models: sparse LiDAR U-Net, ResNet image branch, fusion segmenter.

``build_model(cfg["model"])`` turns the ``model:`` section of an experiment config into
a :class:`FusionSegmenter`.  spconv is imported only when the LiDAR backend
(``model.lidar.backend``, :mod:`segood.models.sparse_backend`) resolves to it,
with its CPU guards (:mod:`segood.models.spconv_guard`) applied first.
"""

from __future__ import annotations

from typing import Any, Mapping

from segood.config import base_defaults
from segood.models.image_net import ImageBranch, ResNetEncoder, load_pretrained
from segood.models.lidar_unet import LidarBranch
from segood.models.sparse_backend import BACKENDS
from segood.models.segmenter import FusionSegmenter

__all__ = ["build_model", "FusionSegmenter", "LidarBranch", "ImageBranch", "ResNetEncoder", "load_pretrained"]

# The defaults are the ``model:`` section of configs/base.yaml (sized there for a <= 1 s training
# step on a 2-core CPU).
DEFAULTS: dict[str, Any] = base_defaults()["model"]


def _positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int, or raise ValueError naming the config key."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
    return value


def _choice(value: Any, allowed: tuple, name: str) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise ValueError."""
    if value not in allowed:
        raise ValueError(f"model.{name} must be one of {list(allowed)}, got {value!r}")
    return value


def _section(model_cfg: Mapping[str, Any], name: str) -> dict:
    """Defaults for one sub-section, overridden by the config's values."""
    given = model_cfg.get(name) or {}
    if not isinstance(given, Mapping):
        raise ValueError(f"model.{name} must be a mapping, got {type(given).__name__}")
    return {**DEFAULTS[name], **given}


def _build_lidar(lidar_cfg: dict) -> LidarBranch:
    """Validated ``model.lidar`` section -> LidarBranch."""
    channels = lidar_cfg["channels"]
    if not isinstance(channels, (list, tuple)) or len(channels) < 1:
        raise ValueError(f"model.lidar.channels must be a non-empty list, got {channels!r}")
    channels = [_positive_int(c, "lidar.channels[]") for c in channels]
    return LidarBranch(
        in_channels=_positive_int(lidar_cfg["in_channels"], "lidar.in_channels"),
        channels=channels,
        out_channels=_positive_int(lidar_cfg["out_channels"], "lidar.out_channels"),
        point_hidden=_positive_int(lidar_cfg["point_hidden"], "lidar.point_hidden"),
        skip=_choice(lidar_cfg["skip"], ("add", "concat"), "lidar.skip"),
        backend=_choice(lidar_cfg["backend"], BACKENDS, "lidar.backend"),
    )


def _build_image(image_cfg: dict) -> ImageBranch:
    """Validated ``model.image`` section -> ImageBranch (loads ImageNet weights if given)."""
    depth = image_cfg["depth"]
    if depth not in (18, 34) or isinstance(depth, bool):
        raise ValueError(f"model.image.depth must be 18 or 34, got {depth!r}")
    scale = image_cfg["width_scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        raise ValueError(f"model.image.width_scale must be a positive number, got {scale!r}")
    if image_cfg["pretrained"] and float(scale) != 1.0:
        raise ValueError(
            f"model.image.pretrained ({image_cfg['pretrained']}) holds full-width ImageNet weights: "
            f"set model.image.width_scale to 1.0 (got {scale})"
        )
    branch = ImageBranch(depth, _positive_int(image_cfg["out_channels"], "image.out_channels"), float(scale))
    if image_cfg["pretrained"]:
        load_pretrained(branch.encoder, image_cfg["pretrained"])
    return branch


def build_model(model_cfg: Mapping[str, Any]) -> FusionSegmenter:
    """Build a FusionSegmenter from the ``model:`` section of a config (``cfg["model"]``, not the whole
    config). Missing keys take :data:`DEFAULTS` (configs/base.yaml); invalid values raise ValueError."""
    if "model" in model_cfg:
        raise TypeError("build_model takes the model section (cfg['model']), not the whole config")
    num_classes = _positive_int(model_cfg.get("num_classes", DEFAULTS["num_classes"]), "num_classes")
    fusion = _section(model_cfg, "fusion")
    return FusionSegmenter(
        lidar=_build_lidar(_section(model_cfg, "lidar")),
        image=_build_image(_section(model_cfg, "image")),
        num_classes=num_classes,
        hidden=_positive_int(fusion["hidden"], "fusion.hidden"),
        modality_norm=_choice(fusion["modality_norm"], ("none", "layernorm", "standardize"), "fusion.modality_norm"),
        out_of_view=_choice(fusion["out_of_view"], ("placeholder", "predicted"), "fusion.out_of_view"),
        extra_logit=_choice(fusion["extra_logit"], (False, True), "fusion.extra_logit"),
        completion_trains_lidar=_choice(fusion["completion_trains_lidar"], (False, True),
                                        "fusion.completion_trains_lidar"),
    )
