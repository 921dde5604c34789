"""What a synthesizer's builder receives besides its config section (:class:`SynthesisContext`) and
how it reads its own options sub-dict (:func:`section_options`). A leaf, so that every synthesizer
package (``segood.ood.feature_mixing``, ``segood.ood.synthesis``) can import it without importing
the registry in ``segood.ood.synthesis``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class SynthesisContext:
    """What a synthesizer's builder gets besides the ``synthesis`` config section."""

    num_classes: int
    d_image: int
    d_lidar: int
    seed: int
    max_points: int | None  # outliers per step (null = all anchors)
    mix_points: str = "visible"  # Feature Mixing anchors: visible | all (synthesis.mix_points)


def section_options(cfg_synthesis: Mapping, section: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The ``synthesis.<section>`` sub-dict, rejecting keys the method does not take."""
    opts = dict(cfg_synthesis.get(section) or {})
    unknown = sorted(set(opts) - set(keys))
    if unknown:
        raise ValueError(f"synthesis.{section}: unknown keys {unknown}, valid: {list(keys)}")
    return opts
