"""What ``segood bench synthesis`` times: every synthesizer of the registry
(:data:`segood.ood.synthesis.SYNTHESIZERS`, built through :func:`~segood.ood.synthesis.build_synthesizer`
with base.yaml's ``synthesis`` section), option variants of registry members (:data:`VARIANTS`), and
probes that are not synthesizers (:data:`PROBES`: the copy floors and the Feature Mixing op alone).
A synthesizer added to the registry is timed without editing this module."""
from __future__ import annotations

from typing import Callable

PROBES = {
    "clone": "feat_image.clone(), feat_lidar.clone(): the floor",
    "copy": "out.copy_(feat) into outputs allocated once: the bandwidth floor without allocation (a fresh "
            "output of > 32 MB is a new mmap whose page faults a clone, and every method, pays)",
    "feature_mixing_op": "feature_mixing_op(fi, fl, anchor_mask, n_swap, seed, step) alone (P output rows)",
    "feature_mixing_into": "feature_mixing_into(...): the op alone into outputs allocated once, as copy (the "
                           "target's comparison: the same bytes, no page faults on either side)",
    "feature_mixing_ref": "reference_feature_mixing: the op's pure-torch (Philox) fallback, bit-exact",
    "feature_mixing_torch": "FeatureMixing: the original torch reference (argsort of uniform noise per row)",
}
# name -> (registry member, overrides of its synthesis sub-section, what it is)
VARIANTS = {
    "npmix_faithful": ("npmix", {"npmix": {"faithful": True}},
                       "NP-Mix as MultiOOD runs it (faithful: per-sample FIFO enqueue of every eligible point, "
                       "KD-tree over class prototypes; one outlier per anchor, MultiOOD makes one per class)"),
}


def registry_methods() -> list[str]:
    """The synthesizers of the registry, read at call time (a member added later is included)."""
    from segood.ood.synthesis import SYNTHESIZERS

    return [n for n, build in SYNTHESIZERS.items() if build is not None]


def synthesizer_methods() -> list[str]:
    """Every registry synthesizer and the variants of :data:`VARIANTS`."""
    return [*registry_methods(), *VARIANTS]


def all_methods() -> list[str]:
    """Probes first (the floors), then every synthesizer and variant."""
    return [*PROBES, *synthesizer_methods()]


def describe(name: str) -> str:
    """One line on what one call of ``name`` is (a registry member: its builder's docstring)."""
    from segood.ood.synthesis import SYNTHESIZERS

    if name in PROBES:
        return PROBES[name]
    if name in VARIANTS:
        return VARIANTS[name][2]
    build = SYNTHESIZERS[name]
    doc = (getattr(build, "func", build).__doc__ or name).strip().splitlines()[0]
    extra = f" with {build.keywords}" if getattr(build, "keywords", None) else ""
    return f"build_synthesizer('{name}'): {doc}{extra}; base.yaml options"


def check_methods(names: list[str]) -> None:
    """Refuse names that are neither probes, registry synthesizers nor variants, listing the valid ones."""
    valid = all_methods()
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown benchmark method(s) {unknown}; valid: {', '.join(valid)}")


def base_synthesis_cfg(max_points: int | None) -> dict:
    """base.yaml's ``synthesis`` section with ``max_points`` replaced."""
    from segood.config import CONFIG_DIR, load_config

    cfg = load_config(CONFIG_DIR / "base.yaml")["synthesis"]
    return {**cfg, "max_points": max_points}


def make_synthesizer(name: str, cfg: dict, classes: int, d_c: int, d_l: int, seed: int):
    """The ``synth(fi, fl, batch, step)`` of a registry member or variant, through ``build_synthesizer``
    with the ``synthesis`` section ``cfg`` (a variant's overrides merged into its sub-sections)."""
    from segood.ood.synthesis import build_synthesizer

    if name in VARIANTS:
        name, overrides, _ = VARIANTS[name]
        cfg = {**cfg, **{k: {**(cfg.get(k) or {}), **v} for k, v in overrides.items()}}
    return build_synthesizer(name, cfg, classes, d_c, d_l, seed)


def make_inputs(points: int, dim: int, dtype: str, classes: int, visible_fraction: float, device: str,
                seed: int = 0) -> tuple:
    """(feat_image, feat_lidar, batch) random benchmark inputs (see :mod:`segood.bench.synthesis`)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    fi = torch.randn(points, dim, generator=g).to(device, getattr(torch, dtype))
    fl = torch.randn(points, dim, generator=g).to(device, getattr(torch, dtype))
    visible = torch.rand(points, generator=g) < visible_fraction
    target = torch.randint(0, classes, (points,), generator=g)
    return fi, fl, {"visible": visible.to(device), "target": target.to(device)}


def _probe_call(name: str, fi, fl, batch: dict, n_swap: int, seed: int, info: dict, counter) -> Callable[[], None]:
    """One call of a probe (no synthesizer): the floors and the Feature Mixing op alone."""
    import torch

    from segood.ood.feature_mixing import (FeatureMixing, anchor_mask, feature_mixing_into, feature_mixing_op,
                                           reference_feature_mixing)

    if name in ("clone", "copy"):
        out_i, out_l = torch.empty_like(fi), torch.empty_like(fl)
        info["outliers"] = fi.shape[0]
        if name == "clone":
            return lambda: (fi.clone(), fl.clone())
        return lambda: (out_i.copy_(fi), out_l.copy_(fl))
    if name == "feature_mixing_torch":
        synth = FeatureMixing(n_swap, seed=seed, max_points=None)

        def call() -> None:
            info["outliers"] = int(synth(fi, fl, batch, next(counter))[0].numel())
        return call
    mask = anchor_mask(batch)
    info["outliers"] = int(mask.sum())
    if name == "feature_mixing_into":
        out_i, out_l = fi.new_empty(fi.shape), fl.new_empty(fl.shape)
        return lambda: feature_mixing_into(fi, fl, mask, n_swap, seed, next(counter), out_i, out_l)
    op = feature_mixing_op if name == "feature_mixing_op" else reference_feature_mixing
    return lambda: op(fi, fl, mask, n_swap, seed, next(counter))


def method_call(name: str, fi, fl, batch: dict, cfg: dict, classes: int, seed: int, info: dict) -> Callable[[], None]:
    """A no-argument closure doing one call of ``name`` (a new ``step`` each call); the number of
    outliers of the last call goes to ``info['outliers']``."""
    counter = iter(range(1 << 31))
    n_swap = min(int(cfg["n_swap"]), fi.shape[1], fl.shape[1])
    if name in PROBES:
        return _probe_call(name, fi, fl, batch, n_swap, seed, info, counter)
    synth = make_synthesizer(name, {**cfg, "n_swap": n_swap}, classes, fi.shape[1], fl.shape[1], seed)

    def call() -> None:
        info["outliers"] = int(synth(fi, fl, batch, next(counter))[0].numel())
    return call
