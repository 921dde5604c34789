"""Feature Mixing, in one package: outliers made by swapping random dims between each point's image
and LiDAR features right before fusion.

- :mod:`~segood.ood.feature_mixing.anchors`: the one rule for which points may be mixed (camera-visible,
  ID-labelled) and the per-step generators every synthesizer uses.
- :mod:`~segood.ood.feature_mixing.reference`: the plain-torch reference op and :class:`FeatureMixing`.
- :mod:`~segood.ood.feature_mixing.kernel`: the ``cuda_ext`` op (:func:`feature_mixing_op`), its bit-exact
  torch fallback and :class:`KernelFeatureMixing`; :mod:`~segood.ood.feature_mixing.philox` the index
  stream; :mod:`~segood.ood.feature_mixing.build` building and loading the library.
- :mod:`~segood.ood.feature_mixing.synthesizers`, :mod:`~segood.ood.feature_mixing.block`: the builders
  that :data:`segood.ood.synthesis.SYNTHESIZERS` names (``feature_mixing``, ``feature_mixing_shared``,
  ``feature_mixing_block``).

The kernel sources stay in the top-level ``cuda_ext/``.
"""
from __future__ import annotations

from segood.ood.feature_mixing.anchors import anchor_mask, anchor_points, select_anchors, step_generator
from segood.ood.feature_mixing.build import extension_reason, load_extension
from segood.ood.feature_mixing.kernel import (KernelFeatureMixing, feature_mixing_into, feature_mixing_op,
                                              reference_feature_mixing)
from segood.ood.feature_mixing.reference import FeatureMixing, feature_mixing

__all__ = ["anchor_mask", "anchor_points", "select_anchors", "step_generator", "extension_reason", "load_extension",
           "KernelFeatureMixing", "feature_mixing_into", "feature_mixing_op", "reference_feature_mixing",
           "FeatureMixing", "feature_mixing"]
