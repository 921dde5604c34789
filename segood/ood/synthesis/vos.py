"""VOS: virtual outliers sampled from the low-likelihood tail of per-class Gaussians."""
from __future__ import annotations

import math
from typing import Mapping

import torch

from segood.ood.synthesis.bank import ClassBank
from segood.ood.feature_mixing.anchors import Batch, Outliers, anchor_points, check_rows, step_generator
from segood.ood.synthesis.common import bank_rows, no_outliers, split_rows
from segood.ood.synthesis_context import SynthesisContext, section_options


# ------------------------------------------------------------------ VOS


class VOS:
    """Virtual Outlier Synthesis (Du et al., ICLR 2022) on the concatenated features.

    Per-class FIFO queues (``queue_size``) of detached ``[f_c, f_l]``; class-conditional
    Gaussians N(mu_c, Sigma) with mu_c the queue means and one covariance Sigma shared by all
    classes (pooled over the class-centred entries, ``+ ridge * I``, as VOS). For each class
    present among the batch's eligible points and holding >= ``min_entries`` entries, draw
    ``sample_from`` candidates and keep the ``select`` of lowest log-likelihood (that of
    ``torch.distributions.MultivariateNormal``, in closed form; ``select=None``: ``max_points``
    spread evenly over those classes). Each outlier is attached to a random eligible point of
    its class. No outliers before ``step >= start_after`` (the queues fill regardless).
    ``max_points``, if set, caps the total (random subset). ``last_draw`` keeps the selected
    log-likelihoods, each class's candidate median and the fitted means / Cholesky factor.
    """

    def __init__(self, num_classes: int, dim: int, queue_size: int = 1000, sample_from: int = 10000,
                 select: int | None = 1, seed: int = 0, start_after: int = 0, ridge: float = 1e-4,
                 max_points: int | None = None, min_entries: int = 1) -> None:
        if select is None and max_points is None:
            raise ValueError("VOS: select=None spreads max_points over classes, so max_points is required")
        if select is not None and not 1 <= select <= sample_from:
            raise ValueError(f"VOS: need 1 <= select <= sample_from, got {select}, {sample_from}")
        self.bank = ClassBank(num_classes, queue_size)
        self.dim, self.sample_from, self.select = int(dim), int(sample_from), select
        self.seed, self.start_after, self.ridge = int(seed), int(start_after), float(ridge)
        self.max_points, self.min_entries = max_points, int(min_entries)
        self.last_draw: dict[str, torch.Tensor] = {}

    def fit(self, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, D) class means and the (D, D) shared covariance, both float64, from the queues."""
        means = self.bank.means(classes).double()
        centred = torch.cat([self.bank.rows(c).double() - means[i] for i, c in enumerate(classes.tolist())])
        cov = centred.T @ centred / centred.shape[0]
        return means, cov + self.ridge * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)

    def __call__(self, feat_image: torch.Tensor, feat_lidar: torch.Tensor, batch: Batch, step: int) -> Outliers:
        check_rows(feat_image, feat_lidar, batch)
        if feat_image.shape[1] + feat_lidar.shape[1] != self.dim:
            raise ValueError(f"VOS: d_c + d_l must equal dim={self.dim}, "
                             f"got {feat_image.shape[1]} + {feat_lidar.shape[1]}")
        eligible = anchor_points(batch)
        labels = batch["target"].cpu()[eligible]
        new = self.bank.newest(labels)
        self.bank.push_fast(bank_rows(feat_image, feat_lidar, eligible[new]), labels[new])
        avail = torch.nonzero(self.bank.count >= self.min_entries).squeeze(1)
        present = avail[torch.bincount(labels, minlength=self.bank.num_classes)[avail] > 0]
        if step < self.start_after or present.numel() == 0:
            return no_outliers(feat_image, feat_lidar)
        g = step_generator(self.seed, step)
        per_class = self.select or max(1, self.max_points // present.numel())
        index, rows = self._sample(avail, present, labels, eligible, min(per_class, self.sample_from), g)
        if self.max_points is not None and index.numel() > self.max_points:
            keep = torch.randperm(index.numel(), generator=g)[: self.max_points]
            index, rows = index[keep], rows[keep.to(rows.device)]
        return split_rows(rows, index, feat_image)

    def _sample(self, avail, present, labels, eligible, k, g) -> tuple[torch.Tensor, torch.Tensor]:
        """Lowest-likelihood ``k`` of ``sample_from`` candidates per present class, + anchors.

        A candidate is ``x = mu_c + L z`` with ``z ~ N(0, I)`` and ``L L^T = Sigma``, so
        ``MultivariateNormal(mu_c, scale_tril=L).log_prob(x) = -|z|^2 / 2 - sum(log diag L)
        - D/2 log(2 pi)``: ranking and log-likelihoods come from ``z`` without solving with L,
        and only the kept candidates are mapped to feature space.
        """
        means, cov = self.fit(avail)
        scale_tril = torch.linalg.cholesky(cov).to(self.bank.data.dtype)
        means = means.to(self.bank.data.dtype)
        log_norm = scale_tril.diagonal().log().sum() + 0.5 * self.dim * math.log(2 * math.pi)
        out, index, logp_sel, medians = [], [], [], []
        for c in present.tolist():
            z = torch.randn(self.sample_from, self.dim, generator=g, dtype=means.dtype).to(means.device)
            logp = -0.5 * z.pow(2).sum(1) - log_norm
            low = torch.topk(-logp, k).indices
            points = eligible[labels == c]
            out.append(means[int(torch.nonzero(avail == c))] + z[low] @ scale_tril.T)
            index.append(points[torch.randint(0, points.numel(), (k,), generator=g)])
            logp_sel.append(logp[low])
            medians.append(logp.median().expand(k))
        self.last_draw = {"log_prob": torch.cat(logp_sel), "candidate_median": torch.cat(medians),
                          "mean": means, "scale_tril": scale_tril, "classes": avail}
        return torch.cat(index), torch.cat(out)

    def state_dict(self) -> dict:
        return self.bank.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.bank.load_state_dict(state)


VOS_KEYS = ("queue_size", "sample_from", "select", "start_after", "ridge", "min_entries")


def build_vos(cfg_synthesis: Mapping, ctx: SynthesisContext) -> VOS:
    """``vos``, options in ``synthesis.vos``; the Gaussians live on concatenated [f_c, f_l] features."""
    return VOS(ctx.num_classes, ctx.d_image + ctx.d_lidar, seed=ctx.seed, max_points=ctx.max_points,
               **section_options(cfg_synthesis, "vos", VOS_KEYS))
