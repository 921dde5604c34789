"""Training losses for ID segmentation and outlier exposure (all return a scalar tensor).

Conventions: ``logits`` are (N, C), ``probs`` are (N, C) softmax outputs, ``target`` holds train
ids in [0, C) or -1 (ignored, see DEVELOPERS.md "Label conventions"). A loss over zero valid points is 0 (still
connected to the graph, so ``backward()`` works), never NaN.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from segood.models.gather import masked_rows, rows

__all__ = ["cross_entropy", "focal_loss", "lovasz_softmax", "entropy_maximization", "anomaly_bce",
           "margin_hinge", "hellinger_distance", "a2d_loss", "discrepancy_loss"]


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that keeps the autograd graph of ``like`` (so empty batches still backprop)."""
    return like.sum() * 0.0


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over points with ``target >= 0`` (0 if there is none)."""
    valid = target >= 0
    if not valid.any():
        return _zero(logits)
    return F.cross_entropy(masked_rows(logits, valid), target[valid])


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) ``(1 - p_t)^gamma * CE``, mean over valid points."""
    valid = target >= 0
    if not valid.any():
        return _zero(logits)
    ce = F.cross_entropy(masked_rows(logits, valid), target[valid], reduction="none")
    p_t = torch.exp(-ce)
    return ((1.0 - p_t).pow(gamma) * ce).mean()


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


LOVASZ_SORTS = ("torch", "keys")


def _descending_by_keys(errors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.sort(errors, descending=True)`` for non-negative float32 errors on the CPU, ties in
    index order (a stable sort): each point's key is (its error's bits inverted, its index) in one
    uint64, sorted by numpy (AVX-512 sorting networks where the CPU has them, ~15x faster than
    torch.sort here). Non-negative floats order like their bit patterns, and the keys are unique,
    so any sort of them gives exactly the stable descending order."""
    bits = errors.detach().numpy().view(np.uint32)
    keys = ((~bits).astype(np.uint64) << np.uint64(32)) | np.arange(bits.size, dtype=np.uint64)
    perm = torch.from_numpy((np.sort(keys) & np.uint64(0xFFFFFFFF)).astype(np.int64))
    return rows(errors, perm), perm


def lovasz_softmax(probs: torch.Tensor, target: torch.Tensor, sort: str = "torch") -> torch.Tensor:
    """Lovasz-Softmax loss (Berman et al. 2018), flat over points, classes present only.

    Averages, over the classes that occur in the valid targets, the Lovasz extension of
    ``1 - IoU`` applied to the per-point errors ``|1[target == c] - probs[:, c]|``.

    ``sort`` (``loss.lovasz_sort``) orders each class's errors: ``torch`` (``torch.sort``, which
    leaves the order of equal errors unspecified) or ``keys`` (:func:`_descending_by_keys`: equal
    errors in index order; float32 on the CPU, else ``torch``). The loss is the same function:
    the order among equal errors only changes the order of a float sum (tests/test_speed.py).
    """
    if sort not in LOVASZ_SORTS:
        raise ValueError(f"loss.lovasz_sort must be one of {list(LOVASZ_SORTS)}, got {sort!r}")
    valid = target >= 0
    if not valid.any():
        return _zero(probs)
    probs, target = masked_rows(probs, valid), target[valid]
    by_keys = sort == "keys" and probs.device.type == "cpu" and probs.dtype == torch.float32
    losses = []
    for c in torch.unique(target).tolist():
        fg = (target == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = _descending_by_keys(errors) if by_keys else torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[perm])))
    return torch.stack(losses).mean()


def entropy_maximization(logits: torch.Tensor) -> torch.Tensor:
    """Mean over points of ``log C - H(softmax(logits))``: >= 0, and 0 at the uniform softmax.

    Minimising it pushes the head's prediction on synthesized outliers towards uniform.
    """
    if logits.shape[0] == 0:
        return _zero(logits)
    log_p = F.log_softmax(logits, dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1)
    return (math.log(logits.shape[1]) - entropy).mean()


def anomaly_bce(id_logit: torch.Tensor, outlier_logit: torch.Tensor) -> torch.Tensor:
    """Balanced BCE for an anomaly head: ID points -> 0, outliers -> 1.

    The mean of the ID-term mean and the outlier-term mean, so the usually much larger ID set
    does not swamp the outliers; an empty side is left out (0 if both are empty).
    """
    id_logit, outlier_logit = id_logit.reshape(-1), outlier_logit.reshape(-1)
    terms = []
    if id_logit.numel():
        terms.append(F.binary_cross_entropy_with_logits(id_logit, torch.zeros_like(id_logit)))
    if outlier_logit.numel():
        terms.append(F.binary_cross_entropy_with_logits(outlier_logit, torch.ones_like(outlier_logit)))
    if not terms:
        return _zero(id_logit) + _zero(outlier_logit)
    return torch.stack(terms).mean()


def margin_hinge(score_in: torch.Tensor, score_out: torch.Tensor, m_in: float, m_out: float) -> torch.Tensor:
    """``mean relu(score_in - m_in)^2 + mean relu(m_out - score_out)^2``: the squared hinge of the
    energy (Liu et al. 2020) and RbA outlier losses, for a score that is high on anomalies. ID scores
    are pushed below ``m_in``, outlier scores above ``m_out``; an empty side contributes 0."""
    terms = [_zero(score_in) + _zero(score_out)]
    if score_in.numel():
        terms.append(F.relu(score_in - m_in).pow(2).mean())
    if score_out.numel():
        terms.append(F.relu(m_out - score_out).pow(2).mean())
    return sum(terms)


# ------------------------------------------------------------------ MultiOOD: A2D and discrepancy


def hellinger_distance(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-row Hellinger distance ``sqrt(1/2 * sum_i (sqrt p_i - sqrt q_i)^2)`` in [0, 1].

    Takes log-probabilities (N, K) so that ``sqrt(p) = exp(log p / 2)`` is exact and has a finite
    gradient even where a softmax underflows (MultiOOD clamps p at 1e-6 instead). The outer sqrt
    is 0 with a zero gradient at identical rows (a plain sqrt would give 0 * inf = NaN there).
    """
    sq = 0.5 * (torch.exp(0.5 * log_p) - torch.exp(0.5 * log_q)).pow(2).sum(dim=1)
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def _drop_class(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N, C-1): each row without its ``target`` column, other columns in order."""
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[torch.arange(logits.shape[0], device=logits.device), target] = False
    return logits[keep].view(logits.shape[0], logits.shape[1] - 1)


def a2d_loss(logits_image: torch.Tensor, logits_lidar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MultiOOD's Agree-to-Disagree loss (Dong et al., NeurIPS 2024, eq. 2-3), minus sign included.

    For every row with ``target >= 0`` (the caller passes only rows where both modalities are
    available, i.e. camera-visible points), the ground-truth column is removed from each modality
    head's logits and the remaining C-1 are softmaxed: ``pbar^img``, ``pbar^lid``. The loss is

        L_Discr = -mean_rows D(pbar^img, pbar^lid),  D(p, q) = sqrt(1/2 sum_i (sqrt p_i - sqrt q_i)^2)
                = -(1/sqrt 2) ||sqrt p - sqrt q||_2,

    in [-1, 0]; minimising it makes the modalities *disagree* off the ground-truth class while
    their cross-entropies make them *agree* on it. MultiOOD weighs it by gamma = 0.5.
    """
    valid = target >= 0
    if not valid.any():
        return _zero(logits_image) + _zero(logits_lidar)
    if logits_image.shape[1] < 2:
        raise ValueError(f"a2d_loss needs C >= 2 classes, got {logits_image.shape[1]}")
    t = target[valid]
    log_p = F.log_softmax(_drop_class(masked_rows(logits_image, valid), t), dim=1)
    log_q = F.log_softmax(_drop_class(masked_rows(logits_lidar, valid), t), dim=1)
    return -hellinger_distance(log_p, log_q).mean()


def discrepancy_loss(logits_image_outlier: torch.Tensor, logits_lidar_outlier: torch.Tensor) -> torch.Tensor:
    """MultiOOD's outlier discrepancy term: ``-mean D(softmax(img), softmax(lid))`` on full softmaxes.

    For synthesized outliers (no class to drop): minimising it maximises the Hellinger distance
    between the two modality heads' predictions. MultiOOD weighs it by 0.5 (``a2d_ratio_ood``).
    0 (graph-connected) when there is no outlier.
    """
    if logits_image_outlier.shape[0] == 0:
        return _zero(logits_image_outlier) + _zero(logits_lidar_outlier)
    return -hellinger_distance(F.log_softmax(logits_image_outlier, dim=1),
                               F.log_softmax(logits_lidar_outlier, dim=1)).mean()
