"""Outlier synthesis family: Feature Mixing variants and the MultiOOD baselines, one interface;
:data:`SYNTHESIZERS` is the registry (``synthesis.method`` picks one), one file per method.

Every synthesizer is a callable

    synth(feat_image (P, d_c), feat_lidar (P, d_l), batch, step)
        -> (index (M,), out_image (M, d_c), out_lidar (M, d_l))

An outlier is an (image part, LiDAR part) pair, so the model sends it through its own ``fuse``
and heads (``FusionSegmenter.score_outliers``). ``index`` names the batch point each outlier is
attached to (bookkeeping only; for bank-based methods: the anchor point). Anchors follow the one
rule of :mod:`segood.ood.feature_mixing.anchors` (camera-visible, ID-labelled points). ``M`` may
be 0 (the caller skips the outlier losses then). All randomness comes from a CPU
``torch.Generator`` seeded from ``(seed, step)``: the same seed, step (and, for bank-based
methods, the same history of calls) give the same outliers.

Gradients: Feature Mixing (both variants) and Mixup mix the live features, so outlier losses
reach the encoders. NP-Mix and VOS draw from banks of *detached* features (as MultiOOD and VOS
do), so their outlier losses train only the fusion MLP and the heads.

What the banks hold: the concatenation ``[f_c, f_l]`` of a point's pre-fusion features, which is
what MultiOOD banks (``torch.cat((v_emd, f_emd))``, the inputs of its per-modality heads and of
its fusion layer). Any convex combination or Gaussian sample of such vectors splits back into an
(image, LiDAR) pair that our fusion consumes like a real point; banking the fused vector instead
would bypass the fusion MLP and give outliers the modality heads could not score.

Feature Mixing (all variants) lives in :mod:`segood.ood.feature_mixing`; the baselines in this package.
To add a synthesizer: write its class and a builder ``build(cfg_synthesis, ctx: SynthesisContext)
-> synth`` in a module (of this package, or anywhere) and add one line to :data:`SYNTHESIZERS`,
``"<name>": Synthesizer(build, options={...})`` with its options declared once as ``{option: Opt}``
(the builder reads them, checked and filled, from ``ctx.options``); then ``synthesis.method: <name>``
trains with it, ``synthesis.<name>.<option>`` sets its options (checked when the config is loaded,
listed by ``segood config --show synthesis``) and ``segood bench synthesis`` times it (it iterates
this registry, through the same builder).
"""
from __future__ import annotations

import functools
from typing import Mapping

from segood.ood.feature_mixing.block import BlockFeatureMixing, build_block_feature_mixing
from segood.ood.feature_mixing.synthesizers import (SharedIndexFeatureMixing, build_feature_mixing,
                                                    build_shared_feature_mixing, shared_feature_mixing)
from segood.ood.synthesis.bank import ClassBank
from segood.ood.synthesis.mixup import Mixup, build_mixup
from segood.ood.synthesis.npmix import NPMix, build_npmix, nearest_classes
from segood.ood.synthesis.vos import VOS, build_vos
from segood.ood.synthesis_context import SynthesisContext, Synthesizer
from segood.options import check_options

__all__ = ["SYNTHESIZERS", "Synthesizer", "build_synthesizer", "synthesizer_options", "SynthesisContext",
           "SharedIndexFeatureMixing", "BlockFeatureMixing", "shared_feature_mixing", "ClassBank", "nearest_classes",
           "NPMix", "VOS", "Mixup"]

SYNTHESIZERS: dict[str, Synthesizer | None] = {
    "none": None,
    "feature_mixing": Synthesizer(build_feature_mixing),
    "feature_mixing_shared": Synthesizer(build_shared_feature_mixing),
    "feature_mixing_block": Synthesizer(build_block_feature_mixing, BlockFeatureMixing.OPTIONS),
    "npmix": Synthesizer(build_npmix, NPMix.OPTIONS),
    "npmix_cdist": Synthesizer(functools.partial(build_npmix, knn="cdist"), NPMix.OPTIONS),
    "vos": Synthesizer(build_vos, VOS.OPTIONS),
    "mixup": Synthesizer(build_mixup, Mixup.OPTIONS),
}


def synthesizer_options(name: str, cfg_synthesis: Mapping) -> dict:
    """``synthesis.<name>`` checked against the member's declaration, its defaults filled in
    (ValueError: an unknown option, listing the known ones, or a value that does not match)."""
    entry = SYNTHESIZERS[name]
    return check_options(f"synthesis.{name}", cfg_synthesis.get(name), entry.options if entry else {})


def build_synthesizer(name: str, cfg_synthesis: Mapping, num_classes: int, d_image: int, d_lidar: int,
                      seed: int):
    """The synthesizer called ``name`` (None for 'none'), configured from the ``synthesis`` section.

    Shared keys: ``n_swap`` (Feature Mixing), ``max_points`` (outliers per step, null = all
    anchors); the member's own section ``synthesis.<name>`` is checked against its declared options
    and handed to the builder, defaults filled, as ``ctx.options``.
    """
    if name not in SYNTHESIZERS:
        raise ValueError(f"unknown synthesis method {name!r}, valid: {', '.join(SYNTHESIZERS)}")
    entry = SYNTHESIZERS[name]
    if entry is None:
        return None
    max_points = cfg_synthesis.get("max_points")
    ctx = SynthesisContext(int(num_classes), int(d_image), int(d_lidar), int(seed),
                           None if max_points is None else int(max_points), synthesizer_options(name, cfg_synthesis),
                           cfg_synthesis.get("mix_points", "visible"))
    return entry.build(cfg_synthesis, ctx)
