"""NP-Mix (MultiOOD): mix a bank feature of one class with one of a nearby class."""
from __future__ import annotations

import numpy as np
from typing import Mapping

import torch

from segood.ood.synthesis.bank import ClassBank
from segood.ood.feature_mixing.anchors import Batch, Outliers, anchor_points, check_rows, step_generator, subsample
from segood.ood.synthesis.common import bank_rows, beta_sample, no_outliers, split_rows
from segood.ood.synthesis_context import SynthesisContext, section_options


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
        check_rows(feat_image, feat_lidar, batch)
        eligible = anchor_points(batch)
        labels = batch["target"].cpu()[eligible]
        if self.faithful:
            self.update_bank(bank_rows(feat_image, feat_lidar, eligible), labels)
        else:
            new = self.bank.newest(labels)
            self.update_bank_fast(bank_rows(feat_image, feat_lidar, eligible[new]), labels[new])
        table = self.neighbour_table()
        if table.shape[1] == 0:
            return no_outliers(feat_image, feat_lidar)
        g = step_generator(self.seed, step)
        ok = table[labels, 0] >= 0
        anchors = subsample(eligible[ok], self.max_points, g)
        return split_rows(self._mix(batch["target"].cpu()[anchors], table, g), anchors, feat_image)

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


NPMIX_KEYS = ("bank_size", "k_nearest", "alpha", "faithful", "min_entries")


def build_npmix(cfg_synthesis: Mapping, ctx: SynthesisContext, knn: str = "kdtree") -> NPMix:
    """``npmix`` (KD-tree neighbours) / ``npmix_cdist`` (exact cdist), options in ``synthesis.npmix``."""
    return NPMix(ctx.num_classes, seed=ctx.seed, max_points=ctx.max_points, knn=knn,
                 **section_options(cfg_synthesis, "npmix", NPMIX_KEYS))
