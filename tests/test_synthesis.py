"""Outlier synthesis family (segood.ood.synthesis) and the MultiOOD losses (A2D, discrepancy)."""

from __future__ import annotations

import math

import pytest
import torch

from segood.ood.feature_mixing import FeatureMixing
from segood.ood.losses import a2d_loss, discrepancy_loss
from segood.ood.synthesis import (SYNTHESIZERS, VOS, ClassBank, Mixup, NPMix, SharedIndexFeatureMixing,
                                  build_synthesizer, nearest_classes)

D_C, D_L, C = 6, 5, 4
CFG = {"n_swap": 3, "max_points": 40, "npmix": {"bank_size": 8}, "npmix_cdist": {"bank_size": 8},
       "vos": {"sample_from": 500, "select": 2},
       "mixup": {"alpha": 1.0}}
METHODS = ["feature_mixing_shared", "npmix", "npmix_cdist", "vos", "mixup"]


def _features(rows: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, D_C, generator=g), torch.randn(rows, D_L, generator=g)


def _batch(rows: int = 120, classes: int = C, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"visible": torch.rand(rows, generator=g) < 0.7,
            "target": torch.randint(-1, classes, (rows,), generator=g)}


def _build(name: str, seed: int = 0):
    return build_synthesizer(name, CFG, C, D_C, D_L, seed)


def _eligible(batch: dict) -> torch.Tensor:
    return batch["visible"] & (batch["target"] >= 0)


# ------------------------------------------------------------------ the common interface


@pytest.mark.parametrize("name", METHODS)
def test_interface_shapes_eligibility_and_reproducibility(name: str) -> None:
    fi, fl = _features()
    batch = _batch()
    index, oi, ol = _build(name)(fi, fl, batch, step=5)
    m = index.shape[0]
    assert m > 0 and index.dtype == torch.long
    assert oi.shape == (m, D_C) and ol.shape == (m, D_L)
    assert int(index.min()) >= 0 and int(index.max()) < fi.shape[0]
    assert _eligible(batch)[index].all()
    assert m <= CFG["max_points"]
    again = _build(name)(fi, fl, batch, step=5)           # fresh instance, same history
    assert all(torch.equal(a, b) for a, b in zip((index, oi, ol), again))
    other = _build(name)(fi, fl, batch, step=6)
    assert not (other[1].shape == oi.shape and torch.equal(other[1], oi))


@pytest.mark.parametrize("name", METHODS)
def test_no_eligible_point_gives_zero_outliers(name: str) -> None:
    fi, fl = _features()
    batch = _batch()
    batch["visible"] = torch.zeros_like(batch["visible"])
    index, oi, ol = _build(name)(fi, fl, batch, step=0)
    assert index.shape == (0,) and oi.shape == (0, D_C) and ol.shape == (0, D_L)


# ------------------------------------------------------------------ Feature Mixing, shared indices


def test_shared_index_mixing_swaps_the_same_n_dims_everywhere() -> None:
    fi, fl = _features()
    batch = _batch()
    synth = SharedIndexFeatureMixing(n_swap=3, seed=0)
    index, oi, ol = synth(fi, fl, batch, step=2)
    changed_i, changed_l = oi != fi[index], ol != fl[index]
    assert torch.equal(changed_i, changed_i[:1].expand_as(changed_i))       # same dims for every point
    assert torch.equal(changed_l, changed_l[:1].expand_as(changed_l))
    assert int(changed_i[0].sum()) == 3 and int(changed_l[0].sum()) == 3
    assert torch.equal(torch.nonzero(changed_i[0]).squeeze(1), synth.last_dims[0].sort().values)
    before = torch.cat((fi[index], fl[index]), 1).sort(1).values
    assert torch.equal(torch.cat((oi, ol), 1).sort(1).values, before)        # multiset per point
    assert torch.equal(index, FeatureMixing(3, seed=0).select(batch, FeatureMixing(3, seed=0).generator(2)))


# ------------------------------------------------------------------ NP-Mix: bank


@pytest.mark.parametrize("push", ["push_faithful", "push_fast"])
def test_bank_is_a_fifo_of_the_newest_entries(push: str) -> None:
    bank = ClassBank(num_classes=2, size=3)
    labels = torch.tensor([0, 1, 0, 0, 0, 1, 0])
    feats = torch.arange(7.0).view(-1, 1)                     # row i holds value i
    getattr(bank, push)(feats[:4], labels[:4])
    assert bank.rows(0).view(-1).tolist() == [0.0, 2.0, 3.0]
    getattr(bank, push)(feats[4:], labels[4:])
    assert bank.rows(0).view(-1).tolist() == [3.0, 4.0, 6.0]   # oldest first, newest last
    assert bank.rows(1).view(-1).tolist() == [1.0, 5.0]
    assert bank.count.tolist() == [3, 2]


def test_faithful_and_fast_bank_updates_are_identical() -> None:
    slow, fast, newest = ClassBank(5, 7), ClassBank(5, 7), ClassBank(5, 7)
    g = torch.Generator().manual_seed(3)
    for rows in (3, 20, 1, 50, 9):                              # chunks below and above the bank size
        feats, labels = torch.randn(rows, 4, generator=g), torch.randint(0, 5, (rows,), generator=g)
        slow.push_faithful(feats, labels)
        fast.push_fast(feats, labels)
        keep = newest.newest(labels)                            # pre-selecting the survivors
        newest.push_fast(feats[keep], labels[keep])
        for bank in (fast, newest):
            assert torch.equal(slow.data, bank.data) and torch.equal(slow.count, bank.count)
    assert int(slow.count.max()) <= 7


def test_npmix_faithful_and_fast_give_the_same_outliers() -> None:
    fi, fl = _features()
    batch = _batch()
    outs = [NPMix(C, bank_size=8, seed=1, faithful=f)(fi, fl, batch, step=3) for f in (True, False)]
    assert all(torch.equal(a, b) for a, b in zip(*outs))


# ------------------------------------------------------------------ NP-Mix: neighbours


@pytest.mark.parametrize("k", [1, 2, 4])
def test_kdtree_and_cdist_find_the_same_neighbour_classes(k: int) -> None:
    for seed in range(5):
        protos = torch.randn(19, 128, generator=torch.Generator().manual_seed(seed))
        tree, brute = nearest_classes(protos, k, "kdtree"), nearest_classes(protos, k, "cdist")
        assert torch.equal(tree, brute)
        assert not (tree == torch.arange(19)[:, None]).any()           # never itself
        d = torch.cdist(protos.double(), protos.double()).fill_diagonal_(float("inf"))
        assert torch.equal(tree, d.argsort(1)[:, :k])


def test_npmix_kdtree_and_cdist_synthesize_the_same_outliers() -> None:
    fi, fl = _features()
    batch = _batch()
    a, b = _build("npmix")(fi, fl, batch, 4), _build("npmix_cdist")(fi, fl, batch, 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------ NP-Mix: outliers


def test_npmix_outliers_lie_between_bank_entries_of_neighbouring_classes() -> None:
    fi, fl = _features(rows=80)
    batch = _batch(rows=80)
    synth = NPMix(C, bank_size=5, k_nearest=2, seed=0)
    index, oi, ol = synth(fi, fl, batch, step=1)
    out, draw, data = torch.cat((oi, ol), 1), synth.last_draw, synth.bank.data
    table = synth.neighbour_table()
    assert torch.equal(draw["cls"], batch["target"][index])
    assert (draw["cls"] != draw["nbr"]).all()
    assert (table[draw["cls"]] == draw["nbr"][:, None]).any(1).all()       # one of its k nearest
    assert ((draw["lam"] > 0) & (draw["lam"] < 1)).all()
    lam = draw["lam"].float()[:, None]
    expect = lam * data[draw["cls"], draw["row_a"]] + (1 - lam) * data[draw["nbr"], draw["row_b"]]
    torch.testing.assert_close(out, expect)
    # Independent of last_draw: each outlier is on a segment between entries of two classes.
    entries = torch.cat([synth.bank.rows(c) for c in range(C)])
    cls = torch.cat([torch.full((int(n),), c) for c, n in enumerate(synth.bank.count)])
    a, b = entries[:, None, :], entries[None, :, :]                          # all (a, b) pairs
    for o in out[:10]:
        ab = a - b
        lam_ab = ((o - b) * ab).sum(-1) / ab.pow(2).sum(-1).clamp_min(1e-12)
        resid = (o - b - lam_ab[..., None] * ab).norm(dim=-1)
        ok = (resid < 1e-4) & (lam_ab > 0) & (lam_ab < 1) & (cls[:, None] != cls[None, :])
        assert ok.any()


def test_npmix_skips_classes_without_entries() -> None:
    fi, fl = _features()
    batch = _batch()
    one_class = dict(batch, target=torch.where(batch["target"] >= 0, 2, -1))
    synth = NPMix(C, bank_size=8, seed=0)
    assert synth(fi, fl, one_class, step=0)[0].numel() == 0               # no neighbour class yet
    two = dict(batch, target=torch.where(batch["target"] >= 0, batch["target"] % 2, -1))
    index, _, _ = synth(fi, fl, two, step=1)                                # classes 0, 1, 2 now
    assert index.numel() == int(_eligible(two).sum())
    assert synth.neighbour_table().shape == (C, 2) and (synth.neighbour_table()[3] == -1).all()


# ------------------------------------------------------------------ VOS


def _gaussian_scene(n_per_class: int = 3000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D_C + D_L, D_C + D_L, generator=g) / math.sqrt(D_C + D_L)
    cov = a @ a.T + 0.5 * torch.eye(D_C + D_L)
    means = 4 * torch.randn(C, D_C + D_L, generator=g)
    labels = torch.arange(C).repeat_interleave(n_per_class)
    x = means[labels] + torch.randn(labels.numel(), D_C + D_L, generator=g) @ torch.linalg.cholesky(cov).T
    batch = {"visible": torch.ones(labels.numel(), dtype=torch.bool), "target": labels}
    return x, batch, means, cov


def test_vos_fits_the_shared_covariance_and_selects_low_likelihood_samples() -> None:
    x, batch, means, cov = _gaussian_scene()
    synth = VOS(C, D_C + D_L, queue_size=3000, sample_from=2000, select=3, seed=0)
    index, oi, ol = synth(x[:, :D_C], x[:, D_C:], batch, step=0)
    fit_means, fit_cov = synth.fit(torch.arange(C))
    assert (fit_cov.float() - cov).abs().max() < 0.15               # pooled within-class, not total
    assert (fit_means.float() - means).abs().max() < 0.15
    assert index.numel() == 3 * C and torch.equal(batch["target"][index].bincount(), torch.full((C,), 3))
    draw = synth.last_draw
    assert (draw["log_prob"] < draw["candidate_median"]).all()
    fitted = torch.distributions.MultivariateNormal(draw["mean"], scale_tril=draw["scale_tril"])
    out = torch.cat((oi, ol), 1)
    fitted_logp = fitted.log_prob(out[:, None, :])[torch.arange(out.shape[0]), batch["target"][index]]
    torch.testing.assert_close(fitted_logp, draw["log_prob"])          # the closed form is MVN's
    # Under the true Gaussians, too: below the median of fresh samples of the class.
    cls = batch["target"][index]
    true = torch.distributions.MultivariateNormal(means, covariance_matrix=cov)
    out_logp = true.log_prob(out[:, None, :])[torch.arange(out.shape[0]), cls]
    fresh_logp = true.log_prob(true.sample((2000,)))                 # (2000, C)
    assert (out_logp < fresh_logp.median(0).values[cls]).all()


def test_vos_waits_for_start_after_but_fills_its_queues() -> None:
    fi, fl = _features()
    batch = _batch()
    synth = VOS(C, D_C + D_L, queue_size=10, sample_from=100, start_after=3)
    assert synth(fi, fl, batch, step=2)[0].numel() == 0
    assert int(synth.bank.count.sum()) > 0
    assert synth(fi, fl, batch, step=3)[0].numel() == C


# ------------------------------------------------------------------ Mixup


def test_mixup_outputs_are_convex_combinations_of_two_eligible_points() -> None:
    fi, fl = _features()
    batch = _batch()
    synth = Mixup(alpha=1.0, seed=0)
    index, oi, ol = synth(fi, fl, batch, step=0)
    partner, lam = synth.last_draw["partner"], synth.last_draw["lam"].float()[:, None]
    assert _eligible(batch)[partner].all()
    assert (batch["target"][partner] != batch["target"][index]).all()      # other class preferred
    torch.testing.assert_close(oi, lam * fi[index] + (1 - lam) * fi[partner])
    torch.testing.assert_close(ol, lam * fl[index] + (1 - lam) * fl[partner])
    # Independent of last_draw: some eligible b and one l in [0, 1] explain both modalities.
    both = torch.cat((fi, fl), 1)
    cand = both[_eligible(batch)]
    for p, o in zip(index[:10], torch.cat((oi, ol), 1)[:10]):
        ab = both[p] - cand
        lam_b = ((o - cand) * ab).sum(1) / ab.pow(2).sum(1).clamp_min(1e-12)
        resid = (o - cand - lam_b[:, None] * ab).norm(dim=1)
        assert ((resid < 1e-5) & (lam_b >= 0) & (lam_b <= 1)).any()


def test_mixup_is_differentiable() -> None:
    fi, fl = _features()
    fi.requires_grad_(True)
    _, oi, _ = Mixup(seed=0)(fi, fl, _batch(), step=0)
    oi.sum().backward()
    assert fi.grad is not None and fi.grad.abs().sum() > 0


# ------------------------------------------------------------------ A2D and discrepancy


def test_a2d_is_zero_for_identical_predictions_with_finite_gradients() -> None:
    logits = torch.randn(6, C, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, -1, 1])
    loss = a2d_loss(logits, logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_a2d_decreases_as_modalities_diverge() -> None:
    target = torch.tensor([0, 0])
    image = torch.zeros(2, C)
    losses = []
    for t in (0.0, 0.5, 1.0, 2.0, 4.0):
        lidar = torch.zeros(2, C)
        lidar[:, 2] = t                                          # push a non-GT class
        losses.append(a2d_loss(image, lidar, target).item())
    assert all(a > b for a, b in zip(losses, losses[1:]))
    assert -1.0 <= losses[-1] < losses[0] == 0.0


def test_a2d_drops_the_ground_truth_class() -> None:
    g = torch.Generator().manual_seed(0)
    image, lidar = torch.randn(8, C, generator=g), torch.randn(8, C, generator=g)
    target = torch.randint(0, C, (8,), generator=g)
    base = a2d_loss(image, lidar, target)
    rows = torch.arange(8)
    image2, lidar2 = image.clone(), lidar.clone()
    image2[rows, target] += 7.0
    lidar2[rows, target] -= 3.0
    torch.testing.assert_close(a2d_loss(image2, lidar2, target), base)
    other = (target + 1) % C                                     # a non-GT logit does matter
    image2[rows, other] += 7.0
    assert not torch.isclose(a2d_loss(image2, lidar2, target), base)


def test_a2d_hand_computed_two_points() -> None:
    # Point 1: GT 0; without it the image head gives [.5, .5], the LiDAR head [.75, .25].
    # Point 2: GT 2; both heads give [.5, .5] on classes 0, 1 -> distance 0.
    image = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    lidar = torch.tensor([[-3.0, math.log(3.0), 0.0], [0.0, 0.0, -1.0]])
    target = torch.tensor([0, 2])
    h1 = math.sqrt(0.5 * ((math.sqrt(.5) - math.sqrt(.75)) ** 2 + (math.sqrt(.5) - math.sqrt(.25)) ** 2))
    assert a2d_loss(image, lidar, target).item() == pytest.approx(-h1 / 2, rel=1e-5)
    # The discrepancy term uses the full softmax instead: compute it by hand, too.
    p, q = image.softmax(1), lidar.softmax(1)
    h = ((p.sqrt() - q.sqrt()).pow(2).sum(1) / 2).sqrt()
    assert discrepancy_loss(image, lidar).item() == pytest.approx(-h.mean().item(), rel=1e-5)


def test_a2d_and_discrepancy_on_empty_input_are_zero_and_connected() -> None:
    logits = torch.randn(3, C, requires_grad=True)
    loss = a2d_loss(logits, logits * 2, torch.full((3,), -1)) + discrepancy_loss(logits[:0], logits[:0])
    assert loss.item() == 0.0
    loss.backward()


def test_discrepancy_maximised_by_disjoint_predictions() -> None:
    image = torch.tensor([[20.0, 0, 0, 0]])
    lidar = torch.tensor([[0, 20.0, 0, 0]])
    assert discrepancy_loss(image, lidar).item() == pytest.approx(-1.0, abs=1e-4)
    assert discrepancy_loss(image, image).item() == 0.0


# ------------------------------------------------------------------ factory


def test_factory_builds_every_method_and_rejects_unknown_names() -> None:
    assert _build("none") is None
    types = {"feature_mixing_shared": SharedIndexFeatureMixing, "npmix": NPMix, "npmix_cdist": NPMix,
             "vos": VOS, "mixup": Mixup}
    for name, cls in types.items():
        assert type(_build(name)) is cls
    assert _build("npmix_cdist").knn == "cdist" and _build("npmix").knn == "kdtree"
    assert type(_build("feature_mixing")).__name__ in ("KernelFeatureMixing", "FeatureMixing")
    with pytest.raises(ValueError) as err:
        _build("np-mix")
    assert all(name in str(err.value) for name in SYNTHESIZERS)
    with pytest.raises(ValueError, match="bank_sise"):
        build_synthesizer("npmix", {"npmix": {"bank_sise": 3}}, C, D_C, D_L, 0)
