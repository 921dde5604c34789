"""Feature-based post-hoc OOD scores fitted on ID training features; higher = more anomalous.

All of them read ``out[FEATURE_KEY]``: the fused per-point features, which are exactly the input
of the final linear classifier (``FusionSegmenter.seg_head``: ``logits = fused @ W.T + b``), and
are post-ReLU (the fusion MLP ends with LayerNorm -> ReLU), as ReAct and ASH assume.

What is fitted comes from a :class:`FitBank`: a class-balanced subsample of ID training points'
features plus the final layer's weight and bias. Each score keeps its fitted tensors in
``state`` (plain tensors, so they save with ``torch.save`` and replay needs no training data):

* Mahalanobis (Lee et al. 2018): class means + tied covariance; score = min over classes of the
  Mahalanobis distance.
* kNN (Sun et al. 2022): L2-normalised features; score = distance to the K-th nearest neighbour
  in the normalised bank.
* ViM (Wang et al. 2022): origin ``u = -pinv(W) b``; principal subspace of the (uncentred, about
  ``u``) feature covariance; residual norm scaled by ``alpha = mean max-logit / mean residual``
  on the fit set; score = virtual logit - logsumexp(logits) (= minus ViM's ID score).
* ReAct (Sun et al. 2021): clip features at the p-th percentile of all ID fit activations, then
  energy through the final layer.
* ASH (Djurisic et al. 2023): per point, keep the top (100 - p)% activations (ASH-P), and with
  ASH-S rescale them by ``exp(sum before / sum after)``; then energy through the final layer.
  ASH fits nothing but the final layer, so it needs no training data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

__all__ = [
    "FEATURE_KEY", "FitBank", "ClassBalancedSampler", "FittedScore", "Mahalanobis", "KNN", "ViM",
    "ReAct", "ASH", "free_energy",
]

FEATURE_KEY = "fused"
Output = Mapping[str, torch.Tensor]


def free_energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``-T * logsumexp(logits / T)`` per row: high energy = anomalous (Liu et al. 2020)."""
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


@dataclass
class FitBank:
    """ID training features (N, D) with their train ids (N,), and the final linear layer (C, D), (C,)."""

    features: torch.Tensor
    labels: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self) -> torch.Tensor:
        """The final layer's logits of the bank's features."""
        return self.features @ self.weight.T + self.bias

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"features": self.features, "labels": self.labels, "weight": self.weight, "bias": self.bias}


class ClassBalancedSampler:
    """Streaming class-balanced uniform subsample of at most ``total`` labelled points.

    Each point gets an i.i.d. uniform key; per class the ``total // num_classes`` points with the
    smallest keys are kept, which is a uniform sample without replacement of that class, however
    the data are split into batches. Memory is bounded by ``total`` rows plus one batch.
    """

    def __init__(self, num_classes: int, total: int, seed: int = 0) -> None:
        if total < num_classes:
            raise ValueError(f"need at least one fit point per class: total={total} < {num_classes} classes")
        self.quota = total // num_classes
        self.rng = np.random.default_rng(seed)
        self.features = np.zeros((0, 0), np.float32)
        self.labels = np.zeros(0, np.int64)
        self.keys = np.zeros(0, np.float64)

    def update(self, features: Any, labels: Any) -> None:
        """Offer a batch of points; labels < 0 (ignored / OOD) are skipped."""
        f, y = np.asarray(features, np.float32), np.asarray(labels, np.int64)
        keep = y >= 0
        f, y = f[keep], y[keep]
        if self.features.size == 0:
            self.features = np.zeros((0, f.shape[1]), np.float32)
        f = np.concatenate([self.features, f])
        y = np.concatenate([self.labels, y])
        k = np.concatenate([self.keys, self.rng.random(len(y) - len(self.keys))])
        order = np.lexsort((k, y))  # by class, then key
        ys = y[order]
        rank = np.arange(len(ys)) - np.searchsorted(ys, ys, side="left")
        sel = np.sort(order[rank < self.quota])
        self.features, self.labels, self.keys = f[sel], y[sel], k[sel]

    def per_class(self, num_classes: int) -> list[int]:
        """Points kept per class (fewer than the quota where the class is rare)."""
        return np.bincount(self.labels, minlength=num_classes).tolist()


class FittedScore:
    """Base of the fitted scores: ``fit(bank)`` fills ``state``; calling it scores an output dict.

    ``fit_params`` name the constructor parameters the state depends on (a saved state is reused
    only if they match); the others only change how the state is applied.
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = True
    reads: ClassVar[tuple[str, ...]] = (FEATURE_KEY,)  # the model outputs it scores from
    fit_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, state: Mapping[str, torch.Tensor] | None = None) -> None:
        self.state: dict[str, torch.Tensor] = dict(state) if state is not None else {}

    def params(self) -> dict[str, Any]:
        """The parameters the fitted state depends on."""
        return {k: getattr(self, k) for k in self.fit_params}

    def fit(self, bank: FitBank) -> "FittedScore":
        """Compute the state from the bank (stored as contiguous float32 tensors)."""
        self.state = {k: v.detach().float().contiguous() for k, v in self._fit(bank).items()}
        return self

    def _fit(self, bank: FitBank) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _features(self, out: Output) -> torch.Tensor:
        if not self.state:
            raise RuntimeError(f"score '{self.name}' is not fitted: call fit(bank) or load a saved state")
        return out[FEATURE_KEY].float()

    def __call__(self, out: Output) -> torch.Tensor:
        raise NotImplementedError


class Mahalanobis(FittedScore):
    """Min over classes of the Mahalanobis distance under class means and a tied covariance.

    The precision is kept as a whitening map ``A`` (``precision = A A^T``, pseudo-inverse: directions
    with variance below 1e-10 of the largest are dropped), so distances are Euclidean distances of
    whitened features, computed from differences (no cancellation) in float32.
    """

    name = "mahalanobis"

    def _fit(self, bank: FitBank) -> dict[str, torch.Tensor]:
        x, y = bank.features.double(), bank.labels
        classes = torch.unique(y)
        means = torch.stack([x[y == c].mean(0) for c in classes])
        centred = x - means[torch.searchsorted(classes, y)]
        eigval, eigvec = torch.linalg.eigh(centred.T @ centred / len(x))
        keep = eigval > 1e-10 * eigval.max().clamp_min(1e-300)
        return {"means": means, "whiten": eigvec[:, keep] / eigval[keep].sqrt()}

    def __call__(self, out: Output) -> torch.Tensor:
        a = self.state["whiten"]
        z, mz = self._features(out) @ a, self.state["means"] @ a
        return torch.cdist(z, mz, compute_mode="donot_use_mm_for_euclid_dist").min(1).values


class KNN(FittedScore):
    """Distance from the L2-normalised feature to its K-th nearest neighbour in the normalised bank."""

    name = "knn"
    fit_params = ("bank_size",)

    def __init__(self, state: Mapping[str, torch.Tensor] | None = None, k: int = 10, bank_size: int | None = None,
                 chunk: int = 4096) -> None:
        super().__init__(state)
        if int(k) < 1:
            raise ValueError(f"knn: k must be >= 1, got {k}")
        self.k, self.bank_size, self.chunk = int(k), bank_size, int(chunk)

    def _fit(self, bank: FitBank) -> dict[str, torch.Tensor]:
        """The normalised bank; with ``bank_size``, a seeded random subset of it (cost is O(points x bank))."""
        x = bank.features.float()
        if self.bank_size is not None and int(self.bank_size) < len(x):
            x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[: int(self.bank_size)]]
        return {"bank": torch.nn.functional.normalize(x, dim=1)}

    def __call__(self, out: Output) -> torch.Tensor:
        x = torch.nn.functional.normalize(self._features(out), dim=1)
        bank = self.state["bank"]
        if self.k > len(bank):
            raise ValueError(f"knn: k={self.k} exceeds the fitted bank's {len(bank)} points")
        sims = [(c @ bank.T).topk(self.k, dim=1).values[:, -1] for c in x.split(self.chunk)]
        kth = torch.cat(sims) if sims else x.new_zeros(0)
        return (2.0 - 2.0 * kth).clamp_min(0.0).sqrt()


class ViM(FittedScore):
    """Virtual-logit matching: alpha * ||residual off the principal subspace|| - logsumexp(logits)."""

    name = "vim"
    reads = (FEATURE_KEY, "logits")
    fit_params = ("dim",)

    def __init__(self, state: Mapping[str, torch.Tensor] | None = None, dim: int | None = None) -> None:
        super().__init__(state)
        self.dim = dim

    @staticmethod
    def default_dim(d: int) -> int:
        """The ViM paper's rule: 1000 for D >= 2048, 512 for D >= 768, else D // 2."""
        return 1000 if d >= 2048 else 512 if d >= 768 else max(1, d // 2)

    def _fit(self, bank: FitBank) -> dict[str, torch.Tensor]:
        x, w, b = bank.features.double(), bank.weight.double(), bank.bias.double()
        d = x.shape[1]
        dim = self.dim if self.dim is not None else self.default_dim(d)
        if not 0 < dim < d:
            raise ValueError(f"vim: principal dim must be in (0, {d}), got {dim}")
        origin = -torch.linalg.pinv(w) @ b
        xc = x - origin
        eigval, eigvec = torch.linalg.eigh(xc.T @ xc / len(xc))
        null = eigvec[:, torch.argsort(eigval, descending=True)[dim:]]
        residual = (xc @ null).norm(dim=1)
        alpha = bank.logits().double().max(1).values.mean() / residual.mean().clamp_min(1e-12)
        return {"origin": origin, "null_space": null, "alpha": alpha.reshape(1)}

    def __call__(self, out: Output) -> torch.Tensor:
        x = self._features(out)
        s = self.state
        vlogit = ((x - s["origin"]) @ s["null_space"]).norm(dim=1) * s["alpha"]
        return vlogit - torch.logsumexp(out["logits"].float(), dim=1)


class ReAct(FittedScore):
    """Energy of the final layer applied to features clipped at the p-th percentile of ID activations."""

    name = "react"
    fit_params = ("percentile",)

    def __init__(self, state: Mapping[str, torch.Tensor] | None = None, percentile: float = 90.0) -> None:
        super().__init__(state)
        if not 0.0 < float(percentile) <= 100.0:
            raise ValueError(f"react: percentile must be in (0, 100], got {percentile}")
        self.percentile = float(percentile)

    def _fit(self, bank: FitBank) -> dict[str, torch.Tensor]:
        clip = float(np.percentile(bank.features.numpy().reshape(-1), self.percentile))
        return {"clip": torch.tensor([clip]), "weight": bank.weight, "bias": bank.bias}

    def __call__(self, out: Output) -> torch.Tensor:
        s = self.state
        x = self._features(out).clamp(max=float(s["clip"]))
        return free_energy(x @ s["weight"].T + s["bias"])


class ASH(FittedScore):
    """Activation shaping (ASH-P: prune, ASH-S: prune + rescale) then energy through the final layer."""

    name = "ash"
    needs_data = False

    def __init__(self, state: Mapping[str, torch.Tensor] | None = None, percentile: float = 90.0,
                 variant: str = "s") -> None:
        super().__init__(state)
        if not 0.0 <= float(percentile) < 100.0:
            raise ValueError(f"ash: percentile must be in [0, 100), got {percentile}")
        if variant not in ("s", "p"):
            raise ValueError(f"ash: variant must be 's' (ASH-S) or 'p' (ASH-P), got {variant!r}")
        self.percentile, self.variant = float(percentile), variant

    def _fit(self, bank: FitBank) -> dict[str, torch.Tensor]:
        return {"weight": bank.weight, "bias": bank.bias}

    def shape(self, x: torch.Tensor) -> torch.Tensor:
        """Keep each row's top ``n - round(n p / 100)`` values (as the ASH reference code), zero the rest."""
        n = x.shape[1]
        k = max(1, n - int(round(n * self.percentile / 100.0)))
        top = x.topk(k, dim=1)
        pruned = torch.zeros_like(x).scatter_(1, top.indices, top.values)
        if self.variant == "p":
            return pruned
        ratio = x.sum(1) / pruned.sum(1).clamp_min(1e-12)
        return pruned * torch.exp(ratio).unsqueeze(1)

    def __call__(self, out: Output) -> torch.Tensor:
        s = self.state
        return free_energy(self.shape(self._features(out)) @ s["weight"].T + s["bias"])

