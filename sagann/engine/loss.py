"""The training loop's loss and accuracy over the whole graph, a block of rows at a time.

``F.cross_entropy(logits[mask], y[mask])`` copies the masked rows, their
log-softmax and their gradient, then scatters the gradient into a new
``[N, classes]`` tensor: on a large graph the biggest arrays of backward,
and none under the host budget. Here the rows are read in blocks and the
gradient is written into a budgeted tensor (a spill file past the budget).
The gradient equals autograd's bit for bit (each block runs the same
log-softmax and NLL backward, scaled by the same ``1 / n``); the loss value
is summed block by block in float64, so its last bits may differ from
``F.cross_entropy``'s.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sagann.scheduler.host import HostMemory

__all__ = ["BLOCK_BYTES", "masked_accuracy", "masked_cross_entropy"]

BLOCK_BYTES = 8 << 20  # logits read at a time


def _blocks(mask: torch.Tensor, row_bytes: int):
    """The masked rows' indices, a block of rows at a time: no index as long as the mask."""
    step = max(1, BLOCK_BYTES // max(row_bytes, 1))
    for at in range(0, mask.shape[0], step):
        rows = mask[at : at + step].nonzero().squeeze(1)
        if rows.numel():
            yield rows + at


class _MaskedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, count: int, host: HostMemory) -> torch.Tensor:
        ctx.save_for_backward(logits, y, mask)
        ctx.host, ctx.count = host, count
        total = 0.0
        for rows in _blocks(mask, logits.shape[1] * logits.element_size()):
            total += float(F.cross_entropy(logits.index_select(0, rows), y.index_select(0, rows), reduction="sum"))
        return torch.tensor(total / count, dtype=logits.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, y, mask = ctx.saved_tensors
        host = ctx.host
        grad = host.zeros(tuple(logits.shape), logits.dtype, "loss gradient") if host.enabled else torch.zeros_like(logits)
        scale = grad_out / ctx.count  # nll_loss's mean: grad_output / total weight
        for rows in _blocks(mask, logits.shape[1] * logits.element_size()):
            with torch.enable_grad():
                block = logits.index_select(0, rows).detach().requires_grad_()
                part = F.nll_loss(F.log_softmax(block, dim=-1), y.index_select(0, rows), reduction="sum")
                (g,) = torch.autograd.grad(part, block, scale)
            grad.index_copy_(0, rows, g)
        return grad, None, None, None, None


def masked_cross_entropy(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, host: HostMemory | None = None) -> torch.Tensor:
    """``F.cross_entropy(logits[mask], y[mask])`` without copying the masked rows, its gradient under ``host``'s budget."""
    count = int(mask.sum())
    if count == 0:
        raise ValueError("masked_cross_entropy: the mask selects no rows; the loss is undefined")
    return _MaskedCrossEntropy.apply(logits, y, mask, count, host if host is not None else HostMemory())


def masked_accuracy(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
    """The fraction of masked rows whose arg-max is the label, read a block of rows at a time (NaN for an empty mask)."""
    count = int(mask.sum())
    if count == 0:
        return float("nan")
    right = 0
    for rows in _blocks(mask, logits.shape[1] * logits.element_size()):
        right += int((logits.index_select(0, rows).argmax(-1) == y.index_select(0, rows)).sum())
    return right / count
