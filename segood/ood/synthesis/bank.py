"""Per-class FIFO banks of detached features (NP-Mix and VOS draw from them)."""
from __future__ import annotations

import torch



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
