"""Outlier synthesis family: Feature Mixing variants and the MultiOOD baselines, one interface.

Every synthesizer is a callable

    synth(feat_image (P, d_c), feat_lidar (P, d_l), batch, step)
        -> (index (M,), out_image (M, d_c), out_lidar (M, d_l))

An outlier is an (image part, LiDAR part) pair, so the model sends it through its own ``fuse``
and heads (``FusionSegmenter.score_outliers``). ``index`` names the batch point each outlier is
attached to (bookkeeping only; for bank-based methods: the anchor point). Anchors are
camera-visible (``batch['visible']``), ID-labelled (``batch['target'] >= 0``) points. ``M`` may
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
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from segood.ood.feature_mixing import FeatureMixing, _check_mixing_inputs, _step_seed

__all__ = ["SYNTHESIZERS", "build_synthesizer", "SharedIndexFeatureMixing", "shared_feature_mixing",
           "ClassBank", "nearest_classes", "NPMix", "VOS", "Mixup"]

Outliers = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Batch = Mapping[str, torch.Tensor]


# ------------------------------------------------------------------ shared helpers


def step_generator(seed: int, step: int) -> torch.Generator:
    """A fresh CPU generator for (seed, step); calls never share state."""
    return torch.Generator().manual_seed(_step_seed(seed, step))


def eligible_points(batch: Batch) -> torch.Tensor:
    """Sorted CPU LongTensor of camera-visible, ID-labelled points."""
    mask = batch["visible"].bool() & (batch["target"] >= 0)
    return torch.nonzero(mask.cpu(), as_tuple=False).squeeze(1)


def subsample(index: torch.Tensor, max_points: int | None, generator: torch.Generator) -> torch.Tensor:
    """At most ``max_points`` entries of ``index``, a uniform random subset kept in order."""
    if max_points is None or index.numel() <= max_points:
        return index
    keep = torch.randperm(index.numel(), generator=generator)[:max_points]
    return index[keep.sort().values]


def beta_sample(alpha: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) float64 draws of Beta(alpha, alpha). torch's Beta takes no generator, so a numpy
    generator is seeded from ``generator`` (still a pure function of (seed, step))."""
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    return torch.from_numpy(rng.beta(alpha, alpha, size=n))


def _check_rows(feat_image: torch.Tensor, feat_lidar: torch.Tensor, batch: Batch) -> None:
    num_points = batch["target"].shape[0]
    if feat_image.shape[0] != num_points or feat_lidar.shape[0] != num_points:
        raise ValueError(f"features must have one row per point ({num_points}), got "
                         f"{feat_image.shape[0]} (image) and {feat_lidar.shape[0]} (lidar)")


def _split(rows: torch.Tensor, index: torch.Tensor, feat_image: torch.Tensor) -> Outliers:
    """(index, image part, LiDAR part) of concatenated rows, on the features' device and dtype."""
    rows = rows.to(device=feat_image.device, dtype=feat_image.dtype)
    d_c = feat_image.shape[1]
    return index.to(feat_image.device), rows[:, :d_c], rows[:, d_c:]


def _bank_rows(feat_image: torch.Tensor, feat_lidar: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Detached ``[f_c, f_l]`` of the eligible points (what the banks hold)."""
    rows = eligible.to(feat_image.device)
    return torch.cat((feat_image.detach()[rows], feat_lidar.detach()[rows]), 1)


def _empty(feat_image: torch.Tensor, feat_lidar: torch.Tensor) -> Outliers:
    dev = feat_image.device
    return (torch.zeros(0, dtype=torch.long, device=dev), feat_image.new_zeros(0, feat_image.shape[1]),
            feat_lidar.new_zeros(0, feat_lidar.shape[1]))


# ------------------------------------------------------------------ Feature Mixing, shared indices


def shared_feature_mixing(feat_image: torch.Tensor, feat_lidar: torch.Tensor, dims_image: torch.Tensor,
                          dims_lidar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap columns ``dims_image`` of ``feat_image`` with columns ``dims_lidar`` of ``feat_lidar``
    in every row (one shared set of dims). Out-of-place and differentiable."""
    mixed_image = feat_image.index_copy(1, dims_image, feat_lidar.index_select(1, dims_lidar))
    mixed_lidar = feat_lidar.index_copy(1, dims_lidar, feat_image.index_select(1, dims_image))
    return mixed_image, mixed_lidar


class SharedIndexFeatureMixing(FeatureMixing):
    """The naive Feature Mixing: one set of ``n_swap`` image dims and ``n_swap`` LiDAR dims per
    call, shared by every selected point (the reference draws them per point). Same point
    selection as :class:`FeatureMixing`; the dims of the last call are kept in ``last_dims``."""

    def __call__(self, feat_image: torch.Tensor, feat_lidar: torch.Tensor, batch: Batch, step: int) -> Outliers:
        _check_rows(feat_image, feat_lidar, batch)
        _check_mixing_inputs(feat_image, feat_lidar, self.n_swap)
        generator = self.generator(step)
        index = self.select(batch, generator).to(feat_image.device)
        dims_image = torch.randperm(feat_image.shape[1], generator=generator)[: self.n_swap]
        dims_lidar = torch.randperm(feat_lidar.shape[1], generator=generator)[: self.n_swap]
        self.last_dims = (dims_image, dims_lidar)
        mixed = shared_feature_mixing(feat_image[index], feat_lidar[index],
                                      dims_image.to(feat_image.device), dims_lidar.to(feat_image.device))
        return (index, *mixed)


# ------------------------------------------------------------------ per-class FIFO bank


class ClassBank:
    """Per-class FIFO of detached feature rows, at most ``size`` per class, oldest first.

    Storage ``data`` (C, size, D) is allocated on the first push (device and dtype of the
    features); the rows of class c are ``data[c, :count[c]]``, oldest -> newest. A plain FIFO
    from the first push on: MultiOOD's warm-up instead ignores new samples of an already full
    class until every class is full, which only changes which entries the bank holds early on.
    """

    def __init__(self, num_classes: int, size: int) -> None:
        if num_classes < 1 or size < 1:
            raise ValueError(f"num_classes and size must be >= 1, got {num_classes}, {size}")
        self.num_classes, self.size = int(num_classes), int(size)
        self.data: torch.Tensor | None = None
        self.count = torch.zeros(self.num_classes, dtype=torch.long)

    def _prepare(self, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = feats.detach(), labels.to(feats.device)
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
            raise ValueError(f"labels must be in [0, {self.num_classes}), "
                             f"got [{int(labels.min())}, {int(labels.max())}]")
        if self.data is None:
            self.data = feats.new_zeros(self.num_classes, self.size, feats.shape[1])
        elif feats.shape[1] != self.data.shape[2]:
            raise ValueError(f"feature dim changed: bank holds {self.data.shape[2]}, got {feats.shape[1]}")
        return feats.to(self.data.dtype), labels

    def rows(self, c: int) -> torch.Tensor:
        """The entries of class ``c``, oldest first."""
        return self.data[c, : int(self.count[c])] if self.data is not None else torch.zeros(0, 0)

    @torch.no_grad()
    def push_faithful(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Enqueue the rows one by one, as MultiOOD does (fill, then ``cat(bank[1:], x)``)."""
        feats, labels = self._prepare(feats, labels)
        count = self.count.tolist()
        for i, c in enumerate(labels.tolist()):
            if count[c] < self.size:
                self.data[c, count[c]] = feats[i]
                count[c] += 1
            else:
                self.data[c] = torch.cat((self.data[c, 1:], feats[i].view(1, -1)), 0)
        self.count = torch.tensor(count, dtype=torch.long)

    @torch.no_grad()
    def push_fast(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Same result as :meth:`push_faithful`: per class, keep the newest ``size`` of old + new."""
        feats, labels = self._prepare(feats, labels)
        for c in torch.unique(labels).tolist():
            new = feats[torch.nonzero(labels == c).squeeze(1)[-self.size:]]
            keep = torch.cat((self.rows(c), new), 0)[-self.size:]
            self.data[c, : keep.shape[0]] = keep
            self.count[c] = keep.shape[0]

    def newest(self, labels: torch.Tensor) -> torch.Tensor:
        """Sorted positions of the rows :meth:`push_fast` would keep (the last ``size`` of each
        class): pushing only those rows gives the same bank, without gathering the others."""
        keep = [torch.nonzero(labels == c).squeeze(1)[-self.size:] for c in torch.unique(labels).tolist()]
        return torch.cat(keep).sort().values if keep else labels.new_zeros(0)

    def means(self, classes: torch.Tensor) -> torch.Tensor:
        """(A, D) mean of the entries of each class in ``classes`` (each must be non-empty)."""
        valid = torch.arange(self.size) < self.count[classes, None]            # (A, size)
        valid = valid.to(self.data.device, self.data.dtype)
        total = (self.data[classes.to(self.data.device)] * valid[..., None]).sum(1)
        return total / valid.sum(1, keepdim=True)

    def state_dict(self) -> dict:
        return {"data": self.data, "count": self.count.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.data, self.count = state["data"], state["count"].clone()


# ------------------------------------------------------------------ NP-Mix


def _kdtree(points: np.ndarray):
    """A KD-tree with ``query(x, k) -> (dist, ind)``: scipy's cKDTree, else scikit-learn's."""
    try:
        from scipy.spatial import cKDTree
        return cKDTree(points)
    except ImportError:
        pass
    try:
        from sklearn.neighbors import KDTree
        return KDTree(points)
    except ImportError as exc:
        raise ImportError("knn='kdtree' needs scipy (or scikit-learn); install it or use knn='cdist'") from exc


def _drop_self(ind: torch.Tensor, k: int) -> torch.Tensor:
    """(A, k+1) neighbour lists -> (A, k) without the row itself (the farthest is dropped when a
    tie pushed the row itself out of its own list)."""
    keep = ind != torch.arange(ind.shape[0])[:, None]
    keep[keep.all(1), -1] = False
    return ind[keep].view(ind.shape[0], k)


def nearest_classes(prototypes: torch.Tensor, k: int, method: str = "kdtree") -> torch.Tensor:
    """(A, k) indices of each prototype's k nearest other prototypes (Euclidean), nearest first.

    ``method='kdtree'``: a CPU KD-tree queried for k+1 neighbours (itself included), as MultiOOD
    does with ``scipy.spatial.KDTree``; ``'cdist'``: ``torch.cdist`` with the diagonal masked.
    """
    a = prototypes.shape[0]
    if not 1 <= k < a:
        raise ValueError(f"k must be in [1, {a - 1}] for {a} prototypes, got {k}")
    if method == "kdtree":
        points = prototypes.detach().cpu().double().numpy()
        _, ind = _kdtree(points).query(points, k=k + 1)
        return _drop_self(torch.as_tensor(np.asarray(ind), dtype=torch.long).view(a, k + 1), k)
    if method == "cdist":
        p = prototypes.detach().cpu().double()
        dist = torch.cdist(p, p, compute_mode="donot_use_mm_for_euclid_dist")
        dist.fill_diagonal_(float("inf"))
        return dist.topk(k, dim=1, largest=False, sorted=True).indices
    raise ValueError(f"knn method must be 'kdtree' or 'cdist', got {method!r}")


class NPMix:
    """MultiOOD's Nearest-neighbour Prototype Mixup, one outlier per anchor point.

    Each call (1) enqueues every eligible point's detached ``[f_c, f_l]`` into its class's FIFO
    bank (``faithful=True``: one point at a time, MultiOOD's loop; ``False``: vectorised, same
    bank), (2) takes class prototypes = bank means over the classes with >= ``min_entries``
    entries and each one's ``k_nearest`` nearest other prototypes (KD-tree or cdist), (3) for
    every anchor (eligible point of an available class, at most ``max_points``) of class c
    picks a neighbour class s uniformly among them, a random bank entry a of c, b of s and
    lambda ~ Beta(alpha, alpha), and returns ``lambda * a + (1 - lambda) * b`` split into
    (image, LiDAR). MultiOOD makes one outlier per class per step; we make one per anchor so
    the outlier count matches the other methods. Fewer than 2 available classes -> M = 0.
    The draws of the last call are kept in ``last_draw`` (classes, bank rows, lambdas).
    """

    def __init__(self, num_classes: int, bank_size: int = 65, k_nearest: int = 2, alpha: float = 10.0,
                 seed: int = 0, max_points: int | None = None, knn: str = "kdtree", faithful: bool = True,
                 min_entries: int = 1) -> None:
        if knn not in ("kdtree", "cdist"):
            raise ValueError(f"knn must be 'kdtree' or 'cdist', got {knn!r}")
        if k_nearest < 1 or alpha <= 0 or not 1 <= min_entries <= bank_size:
            raise ValueError(f"need k_nearest >= 1, alpha > 0, 1 <= min_entries <= bank_size; got "
                             f"{k_nearest}, {alpha}, {min_entries}")
        self.bank = ClassBank(num_classes, bank_size)
        self.num_classes, self.k_nearest, self.alpha = int(num_classes), int(k_nearest), float(alpha)
        self.seed, self.max_points, self.knn = int(seed), max_points, knn
        self.faithful, self.min_entries = bool(faithful), int(min_entries)
        self.last_draw: dict[str, torch.Tensor] = {}

    def update_bank(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """MultiOOD's per-sample enqueue (the slow path the benchmark compares against)."""
        self.bank.push_faithful(feats, labels)

    def update_bank_fast(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Vectorised enqueue; leaves the bank exactly as :meth:`update_bank` would."""
        self.bank.push_fast(feats, labels)

    def neighbour_table(self) -> torch.Tensor:
        """(C, k) neighbour classes of every available class; -1 rows for the others (k = 0 when
        fewer than 2 classes are available)."""
        avail = torch.nonzero(self.bank.count >= self.min_entries).squeeze(1)
        k = min(self.k_nearest, avail.numel() - 1)
        table = torch.full((self.num_classes, max(k, 0)), -1, dtype=torch.long)
        if k >= 1:
            table[avail] = avail[nearest_classes(self.bank.means(avail), k, self.knn)]
        return table

    def __call__(self, feat_image: torch.Tensor, feat_lidar: torch.Tensor, batch: Batch, step: int) -> Outliers:
        _check_rows(feat_image, feat_lidar, batch)
        eligible = eligible_points(batch)
        labels = batch["target"].cpu()[eligible]
        if self.faithful:
            self.update_bank(_bank_rows(feat_image, feat_lidar, eligible), labels)
        else:
            new = self.bank.newest(labels)
            self.update_bank_fast(_bank_rows(feat_image, feat_lidar, eligible[new]), labels[new])
        table = self.neighbour_table()
        if table.shape[1] == 0:
            return _empty(feat_image, feat_lidar)
        g = step_generator(self.seed, step)
        ok = table[labels, 0] >= 0
        anchors = subsample(eligible[ok], self.max_points, g)
        return _split(self._mix(batch["target"].cpu()[anchors], table, g), anchors, feat_image)

    def _mix(self, cls: torch.Tensor, table: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """(M, D) outliers for anchors of classes ``cls``: random entry of c mixed with one of s."""
        m, count = cls.numel(), self.bank.count
        nbr = table[cls, torch.randint(0, table.shape[1], (m,), generator=g)]
        row_a = (torch.rand(m, generator=g) * count[cls]).long().clamp_max(count[cls] - 1)
        row_b = (torch.rand(m, generator=g) * count[nbr]).long().clamp_max(count[nbr] - 1)
        lam = beta_sample(self.alpha, m, g)
        self.last_draw = {"cls": cls, "nbr": nbr, "row_a": row_a, "row_b": row_b, "lam": lam}
        data, dev = self.bank.data, self.bank.data.device
        lam = lam.to(dev, data.dtype)[:, None]
        a, b = data[cls.to(dev), row_a.to(dev)], data[nbr.to(dev), row_b.to(dev)]
        return lam * a + (1.0 - lam) * b

    def state_dict(self) -> dict:
        return self.bank.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.bank.load_state_dict(state)


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
        _check_rows(feat_image, feat_lidar, batch)
        if feat_image.shape[1] + feat_lidar.shape[1] != self.dim:
            raise ValueError(f"VOS: d_c + d_l must equal dim={self.dim}, "
                             f"got {feat_image.shape[1]} + {feat_lidar.shape[1]}")
        eligible = eligible_points(batch)
        labels = batch["target"].cpu()[eligible]
        new = self.bank.newest(labels)
        self.bank.push_fast(_bank_rows(feat_image, feat_lidar, eligible[new]), labels[new])
        avail = torch.nonzero(self.bank.count >= self.min_entries).squeeze(1)
        present = avail[torch.bincount(labels, minlength=self.bank.num_classes)[avail] > 0]
        if step < self.start_after or present.numel() == 0:
            return _empty(feat_image, feat_lidar)
        g = step_generator(self.seed, step)
        per_class = self.select or max(1, self.max_points // present.numel())
        index, rows = self._sample(avail, present, labels, eligible, min(per_class, self.sample_from), g)
        if self.max_points is not None and index.numel() > self.max_points:
            keep = torch.randperm(index.numel(), generator=g)[: self.max_points]
            index, rows = index[keep], rows[keep.to(rows.device)]
        return _split(rows, index, feat_image)

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


# ------------------------------------------------------------------ Mixup


class Mixup:
    """Mixup outliers (Zhang et al. 2018) between eligible points of the current batch.

    Each anchor (eligible point, at most ``max_points``) is paired with a uniformly drawn
    eligible point of another class (any eligible point when the batch holds one class only)
    and both modalities are mixed with the same lambda ~ Beta(alpha, alpha), one lambda per
    pair. Live features: differentiable. ``last_draw`` keeps partners and lambdas.
    """

    def __init__(self, alpha: float = 1.0, seed: int = 0, max_points: int | None = None) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha, self.seed, self.max_points = float(alpha), int(seed), max_points
        self.last_draw: dict[str, torch.Tensor] = {}

    @staticmethod
    def partners(labels: torch.Tensor, anchors: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Positions (into ``labels``) of a random other-class partner for each anchor position."""
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        start = counts.cumsum(0) - counts
        c = labels[anchors]
        n_other = labels.numel() - counts[c]
        single = n_other == 0                     # only one class: fall back to any point
        span = torch.where(single, torch.full_like(n_other, labels.numel()), n_other)
        r = (torch.rand(anchors.numel(), generator=g) * span).long().clamp_max(span - 1)
        skip = (~single) & (r >= start[c])        # jump over class c's block in sorted order
        return order[r + skip * counts[c]]

    def __call__(self, feat_image: torch.Tensor, feat_lidar: torch.Tensor, batch: Batch, step: int) -> Outliers:
        _check_rows(feat_image, feat_lidar, batch)
        eligible = eligible_points(batch)
        if eligible.numel() == 0:
            return _empty(feat_image, feat_lidar)
        g = step_generator(self.seed, step)
        pos = subsample(torch.arange(eligible.numel()), self.max_points, g)
        partner = eligible[self.partners(batch["target"].cpu()[eligible], pos, g)]
        lam = beta_sample(self.alpha, pos.numel(), g)
        index = eligible[pos]
        self.last_draw = {"partner": partner, "lam": lam}
        dev = feat_image.device
        ia, ib, lam = index.to(dev), partner.to(dev), lam.to(dev, feat_image.dtype)[:, None]
        return (ia, lam * feat_image[ia] + (1 - lam) * feat_image[ib],
                lam * feat_lidar[ia] + (1 - lam) * feat_lidar[ib])


# ------------------------------------------------------------------ factory


SYNTHESIZERS = ("none", "feature_mixing", "feature_mixing_shared", "npmix", "npmix_cdist", "vos", "mixup")
_KEYS = {"npmix": ("bank_size", "k_nearest", "alpha", "faithful", "min_entries"),
         "vos": ("queue_size", "sample_from", "select", "start_after", "ridge", "min_entries"),
         "mixup": ("alpha",)}


def _options(cfg: Mapping, name: str) -> dict:
    """The ``synthesis.<name>`` sub-dict, rejecting keys the method does not take."""
    opts = dict(cfg.get(name) or {})
    unknown = sorted(set(opts) - set(_KEYS[name]))
    if unknown:
        raise ValueError(f"synthesis.{name}: unknown keys {unknown}, valid: {list(_KEYS[name])}")
    return opts


def _feature_mixing_class():
    """The kernel-backed Feature Mixing when its module imports, else the torch reference."""
    try:
        from .fm_kernel import KernelFeatureMixing
        return KernelFeatureMixing
    except ImportError:
        return FeatureMixing


def build_synthesizer(name: str, cfg_synthesis: Mapping, num_classes: int, d_image: int, d_lidar: int,
                      seed: int):
    """The synthesizer called ``name`` (None for 'none'), configured from the ``synthesis`` section.

    Shared keys: ``n_swap`` (Feature Mixing), ``max_points`` (outliers per step, null = all
    anchors); per-method sub-dicts ``npmix``, ``vos``, ``mixup`` (see ``_KEYS``).
    """
    if name not in SYNTHESIZERS:
        raise ValueError(f"unknown synthesis method {name!r}, valid: {', '.join(SYNTHESIZERS)}")
    max_points = cfg_synthesis.get("max_points")
    max_points = None if max_points is None else int(max_points)
    if name == "none":
        return None
    if name in ("feature_mixing", "feature_mixing_shared"):
        cls = _feature_mixing_class() if name == "feature_mixing" else SharedIndexFeatureMixing
        return cls(int(cfg_synthesis["n_swap"]), seed=seed, max_points=max_points)
    if name in ("npmix", "npmix_cdist"):
        knn = "cdist" if name == "npmix_cdist" else "kdtree"
        return NPMix(num_classes, seed=seed, max_points=max_points, knn=knn, **_options(cfg_synthesis, "npmix"))
    if name == "vos":
        return VOS(num_classes, d_image + d_lidar, seed=seed, max_points=max_points, **_options(cfg_synthesis, "vos"))
    return Mixup(seed=seed, max_points=max_points, **_options(cfg_synthesis, "mixup"))
