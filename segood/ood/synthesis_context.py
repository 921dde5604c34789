"""A synthesizer's registry entry (:class:`Synthesizer`: its builder and its options, declared once)
and what the builder receives besides the ``synthesis`` config section (:class:`SynthesisContext`,
with the member's own options checked and filled). A leaf, so that every synthesizer package
(``segood.ood.feature_mixing``, ``segood.ood.synthesis``) can import it without importing the
registry in ``segood.ood.synthesis``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from segood.options import Opt


@dataclass(frozen=True)
class SynthesisContext:
    """What a synthesizer's builder gets besides the ``synthesis`` config section."""

    num_classes: int
    d_image: int
    d_lidar: int
    seed: int
    max_points: int | None  # outliers per step (null = all anchors)
    options: Mapping[str, Any] = field(default_factory=dict)  # synthesis.<name>, checked, defaults filled
    mix_points: str = "visible"  # Feature Mixing anchors: visible | all (synthesis.mix_points)


Builder = Callable[[Mapping, SynthesisContext], Callable]


@dataclass(frozen=True)
class Synthesizer:
    """One registry entry of :data:`segood.ood.synthesis.SYNTHESIZERS`: ``build(cfg_synthesis, ctx)
    -> synth`` and ``options``, the member's own section ``synthesis.<name>`` declared once
    (``{option: Opt}``; the builder reads the checked values, defaults filled, from ``ctx.options``)."""

    build: Builder
    options: Mapping[str, Opt] = field(default_factory=dict)
