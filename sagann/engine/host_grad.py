"""Host gradients of a layer call's inputs, written interval by interval as backward walks the chunks."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["HostGrad", "owns_storage"]


def owns_storage(t: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Is ``t`` a fresh tensor, sharing memory with none of ``others``? (Safe to return as the output.)"""
    ptr = t.untyped_storage().data_ptr()
    return all(o is None or o.untyped_storage().data_ptr() != ptr for o in others)


class HostGrad:
    """A host gradient ``[N, d]``, made at its first write; rows are zero-filled only where something adds into them.

    With P = 1 in memory a gradient often has one writer (a GCN's input
    gradient comes from its ``apply_src`` backward alone): adopting it saves
    an N x d zero fill, an add and the buffer. Only a tensor that aliases
    none of ``avoid`` (the inputs and incoming gradients autograd may hand
    back as views) is adopted, so later in-place adds never touch them. Out
    of core, the first write to an interval's rows is a copy, not a zero
    fill and an add.
    """

    def __init__(self, host, like: torch.Tensor, what: str, avoid: tuple = ()):
        self._host, self._like, self._what, self._avoid = host, like, what, avoid
        self._t: torch.Tensor | None = None
        self._written: np.ndarray | None = None  # rows holding a value (the rest are garbage until zeroed)

    def _buffer(self) -> torch.Tensor:
        if self._t is None:
            self._t = self._host.empty(tuple(self._like.shape), self._like.dtype, self._what)
            self._written = np.zeros(self._like.shape[0], dtype=bool)
        return self._t

    def _zero_unwritten(self, lo: int, hi: int) -> None:
        fresh = ~self._written[lo:hi]
        if fresh.all():
            self._t[lo:hi].zero_()
        elif fresh.any():
            self._t[lo:hi][torch.from_numpy(fresh)] = 0
        self._written[lo:hi] = True

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        """Rows lo:hi to accumulate into (zeroed where nothing was written yet)."""
        self._buffer()
        if self._written is not None:
            self._zero_unwritten(lo, hi)
        return self._t[lo:hi]

    def add(self, dev, t: torch.Tensor, lo: int, hi: int) -> None:
        """Add device rows ``t`` into rows lo:hi."""
        whole = lo == 0 and hi == self._like.shape[0] and t.shape == self._like.shape and t.dtype == self._like.dtype
        if self._t is None and whole and dev.shares_host_memory and not self._host.enabled and t.is_contiguous() and owns_storage(t, *self._avoid):
            self._t = t.detach()
            return
        self._buffer()
        if self._written is not None and not self._written[lo:hi].any():
            dev.copy_out(t, self._t[lo:hi])  # the first write to these rows
            self._written[lo:hi] = True
            return
        dev.add_out(t, self.rows(lo, hi))

    def scale_rows(self, scale: torch.Tensor) -> None:
        """Multiply every row by ``scale`` (``[N, 1]``), in place: a sym gather's source scaling (rows not written stay zero)."""
        if self._t is not None:
            self._t.mul_(scale.to(self._t.dtype))

    def tensor(self) -> torch.Tensor:
        if self._t is None:
            return self._host.zeros_like(self._like, self._what)
        if self._written is not None:
            self._zero_unwritten(0, self._like.shape[0])
        return self._t
