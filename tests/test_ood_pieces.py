"""Feature Mixing reference, OOD losses and post-hoc anomaly scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segood.ood.feature_mixing import FeatureMixing, feature_mixing
from segood.ood.losses import anomaly_bce, cross_entropy, entropy_maximization, focal_loss, lovasz_softmax


def _features(rows: int = 50, d_c: int = 16, d_l: int = 12, seed: int = 0,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous random features: every value is distinct, so every swap is visible."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, d_c, generator=g, dtype=dtype),
            torch.randn(rows, d_l, generator=g, dtype=dtype))


def _batch(rows: int = 50, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"visible": torch.rand(rows, generator=g) < 0.6,
            "target": torch.randint(-1, 5, (rows,), generator=g)}


# ------------------------------------------------------------------ feature mixing


@pytest.mark.parametrize("n_swap", [1, 3, 12])
def test_mixing_changes_exactly_n_swap_dims_and_keeps_values(n_swap: int) -> None:
    img, lid = _features()
    mixed_img, mixed_lid = feature_mixing(img, lid, n_swap, torch.Generator().manual_seed(0))
    assert mixed_img.shape == img.shape and mixed_lid.shape == lid.shape
    assert torch.all((mixed_img != img).sum(1) == n_swap)
    assert torch.all((mixed_lid != lid).sum(1) == n_swap)
    before = torch.cat([img, lid], 1).sort(1).values
    after = torch.cat([mixed_img, mixed_lid], 1).sort(1).values
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # per-point multiset preserved
    # What left the image is exactly what arrived in the LiDAR vector, and vice versa.
    for p in range(img.shape[0]):
        out_img = img[p][mixed_img[p] != img[p]].sort().values
        in_lid = mixed_lid[p][mixed_lid[p] != lid[p]].sort().values
        torch.testing.assert_close(out_img, in_lid, rtol=0, atol=0)


def test_mixing_draws_indices_per_point() -> None:
    img, lid = _features(rows=200)
    mixed_img, _ = feature_mixing(img, lid, 2, torch.Generator().manual_seed(0))
    changed_patterns = {tuple(row.tolist()) for row in (mixed_img != img)}
    assert len(changed_patterns) > 50  # not one shared set of dims for all points


def test_mixing_identity_and_argument_errors() -> None:
    img, lid = _features()
    mixed_img, mixed_lid = feature_mixing(img, lid, 0, torch.Generator())
    assert torch.equal(mixed_img, img) and torch.equal(mixed_lid, lid)
    for bad in (-1, 13):  # min(d_c, d_l) = 12
        with pytest.raises(ValueError, match="n_swap"):
            feature_mixing(img, lid, bad, torch.Generator())
    with pytest.raises(ValueError, match="row counts"):
        feature_mixing(img, lid[:-1], 1, torch.Generator())


def test_mixing_does_not_modify_inputs() -> None:
    img, lid = _features()
    img0, lid0 = img.clone(), lid.clone()
    feature_mixing(img, lid, 4, torch.Generator().manual_seed(0))
    assert torch.equal(img, img0) and torch.equal(lid, lid0)


def test_mixing_gradients() -> None:
    img, lid = _features(rows=4, d_c=5, d_l=3, dtype=torch.float64)
    img.requires_grad_(True)
    lid.requires_grad_(True)

    def mix(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return feature_mixing(a, b, 2, torch.Generator().manual_seed(7))  # fixed state per call

    assert torch.autograd.gradcheck(mix, (img, lid))
    # A swap is a permutation: a unit upstream gradient comes back as a unit gradient everywhere.
    mixed_img, mixed_lid = mix(img, lid)
    (mixed_img.sum() + mixed_lid.sum()).backward()
    torch.testing.assert_close(img.grad, torch.ones_like(img))
    torch.testing.assert_close(lid.grad, torch.ones_like(lid))
    # Gradient on the image output reaches the LiDAR input exactly at the swapped dims.
    img.grad, lid.grad = None, None
    mixed_img, mixed_lid = mix(img, lid)
    mixed_img.sum().backward()
    assert torch.all(lid.grad.sum(1) == 2) and torch.all(img.grad.sum(1) == 5 - 2)


def test_feature_mixing_selects_visible_id_points() -> None:
    img, lid = _features()
    batch = _batch()
    index, mixed_img, mixed_lid = FeatureMixing(n_swap=3, seed=5)(img, lid, batch, step=0)
    expected = torch.nonzero(batch["visible"] & (batch["target"] >= 0)).squeeze(1)
    assert index.dtype == torch.long and torch.equal(index, expected)
    assert mixed_img.shape == (len(index), img.shape[1]) and mixed_lid.shape == (len(index), lid.shape[1])
    assert torch.all((mixed_img != img[index]).sum(1) == 3)
    before = torch.cat([img[index], lid[index]], 1).sort(1).values
    torch.testing.assert_close(torch.cat([mixed_img, mixed_lid], 1).sort(1).values, before)


def test_feature_mixing_reproducible_per_seed_and_step() -> None:
    img, lid = _features()
    batch = _batch()
    fm = FeatureMixing(n_swap=2, seed=11)
    _, a_img, a_lid = fm(img, lid, batch, step=3)
    _, b_img, b_lid = fm(img, lid, batch, step=3)
    _, c_img, _ = fm(img, lid, batch, step=4)
    _, d_img, _ = FeatureMixing(n_swap=2, seed=12)(img, lid, batch, step=3)
    assert torch.equal(a_img, b_img) and torch.equal(a_lid, b_lid)
    assert not torch.equal(a_img, c_img)
    assert not torch.equal(a_img, d_img)


def test_feature_mixing_max_points() -> None:
    img, lid = _features()
    batch = _batch()
    eligible = set(torch.nonzero(batch["visible"] & (batch["target"] >= 0)).squeeze(1).tolist())
    fm = FeatureMixing(n_swap=1, seed=0, max_points=5)
    index, mixed_img, _ = fm(img, lid, batch, step=0)
    assert len(index) == 5 and set(index.tolist()) <= eligible
    assert torch.all(index[1:] > index[:-1]) and mixed_img.shape[0] == 5
    assert not torch.equal(index, fm(img, lid, batch, step=1)[0])
    with pytest.raises(ValueError, match="one row per point"):
        fm(img[:-1], lid[:-1], batch, step=0)


def test_feature_mixing_no_eligible_points() -> None:
    img, lid = _features(rows=4)
    batch = {"visible": torch.tensor([True, False, True, False]),
             "target": torch.tensor([-1, 2, -1, 0])}
    index, mixed_img, mixed_lid = FeatureMixing(n_swap=2)(img, lid, batch, step=0)
    assert index.numel() == 0 and mixed_img.shape == (0, 16) and mixed_lid.shape == (0, 12)


# ------------------------------------------------------------------ losses


def test_cross_entropy_matches_torch_and_handles_empty() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 6, generator=g, requires_grad=True)
    target = torch.randint(-1, 6, (40,), generator=g)
    torch.testing.assert_close(cross_entropy(logits, target),
                               F.cross_entropy(logits, target, ignore_index=-1))
    empty = cross_entropy(logits, torch.full((40,), -1))
    assert empty.item() == 0.0 and empty.dim() == 0
    empty.backward()  # still connected to the graph
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0), cross_entropy(logits, target))
    assert focal_loss(logits, target) < cross_entropy(logits, target)
    assert focal_loss(logits, torch.full((40,), -1)).item() == 0.0


def test_lovasz_softmax() -> None:
    target = torch.tensor([0, 1, 2, 2, -1, 1])
    perfect = F.one_hot(target.clamp(min=0), 4).double()
    assert lovasz_softmax(perfect, target).item() == pytest.approx(0.0)
    # At hard (one-hot) predictions the Lovasz extension equals mean(1 - IoU) over GT classes.
    pred = torch.tensor([0, 2, 2, 1, 3, 1])
    valid = target >= 0
    ious = []
    for c in (0, 1, 2):
        t, p = target[valid] == c, pred[valid] == c
        ious.append((t & p).sum().item() / (t | p).sum().item())
    expected = 1.0 - np.mean(ious)
    got = lovasz_softmax(F.one_hot(pred, 4).double(), target)
    assert got.item() == pytest.approx(expected)
    probs = torch.softmax(torch.randn(6, 4, dtype=torch.float64), 1).requires_grad_(True)
    lovasz_softmax(probs, target).backward()
    assert torch.isfinite(probs.grad).all()
    assert lovasz_softmax(perfect, torch.full((6,), -1)).item() == 0.0


def test_entropy_maximization() -> None:
    uniform = torch.full((5, 7), 3.0)
    assert entropy_maximization(uniform).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert entropy_maximization(logits).item() > 0.0
    # One row certain (entropy ~0) and one uniform: mean of (log 7 - 0) and 0.
    rows = torch.stack([torch.tensor([100.0] + [0.0] * 6), torch.zeros(7)])
    assert entropy_maximization(rows).item() == pytest.approx(math.log(7) / 2, abs=1e-5)


def test_anomaly_bce() -> None:
    values = [anomaly_bce(torch.full((10,), -a), torch.full((3,), a)).item() for a in (0.0, 1.0, 2.0, 4.0)]
    assert values[0] == pytest.approx(math.log(2))
    assert all(later < earlier for earlier, later in zip(values, values[1:]))
    # Balanced: the mean of the two means, regardless of how many points each side has.
    id_logit, out_logit = torch.tensor([-1.0] * 100), torch.tensor([0.5])
    expected = (F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(-0.5))) / 2
    torch.testing.assert_close(anomaly_bce(id_logit, out_logit), expected)
