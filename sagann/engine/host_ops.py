"""ReLU and dropout between layers, with their outputs and gradients under the host-memory budget.

Between two sagann layers a model runs plain torch ops on the host rows
(``F.dropout``, ``F.relu``); each makes a new ``N x d`` tensor in RAM, and
its gradient another, outside any budget. Under a budget
(:class:`~sagann.scheduler.host.HostMemory` enabled) these versions write
their outputs and gradients into tensors the budget places (RAM or spill
file), a block of rows at a time, so the only RAM they add is one block.
The values are bit for bit those of ``F.relu`` and ``F.dropout``: the same
elementwise operations, and the same random draw (one ``bernoulli_`` over
the whole mask, as ``F.dropout`` does on the CPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sagann.engine.pending import PendingRows, RowOp
from sagann.scheduler.host import check_spill

__all__ = ["dropout", "relu"]

BLOCK_BYTES = 8 << 20  # rows handled at a time: the RAM these ops add beyond their budgeted buffers


def _blocks(t: torch.Tensor):
    row = max(1, t[:1].numel() * t.element_size())
    step = max(1, BLOCK_BYTES // row)
    for lo in range(0, t.shape[0], step):
        yield slice(lo, lo + step)


def _host_of(g):
    host = getattr(g, "host", None)
    return host if host is not None and host.enabled else None


def _applies(host, x: torch.Tensor) -> bool:
    return host is not None and x.device.type == "cpu" and x.dim() >= 1 and x.numel() > 0 and x.is_contiguous()


class _Relu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, host):
        out = host.empty(tuple(x.shape), x.dtype, "ReLU output")
        for b in _blocks(x):
            torch.clamp_min(x[b], 0, out=out[b])  # what F.relu computes on the CPU
        ctx.host = host
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        check_spill(out)
        gx = ctx.host.empty(tuple(out.shape), grad.dtype, "ReLU gradient")
        for b in _blocks(out):
            gx[b].copy_(grad[b]).masked_fill_(out[b] <= 0, 0)  # threshold_backward(grad, out, 0)
        return gx, None


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, host):
        noise = host.empty(tuple(x.shape), x.dtype, "dropout mask")
        noise.bernoulli_(1 - p)  # one draw over the whole mask, as F.dropout makes it
        noise.div_(1 - p)
        out = host.empty(tuple(x.shape), x.dtype, "dropout output")
        for b in _blocks(x):
            torch.mul(x[b], noise[b], out=out[b])
        ctx.host = host
        ctx.save_for_backward(noise)
        return out

    @staticmethod
    def backward(ctx, grad):
        (noise,) = ctx.saved_tensors
        check_spill(noise)
        gx = ctx.host.empty(tuple(noise.shape), grad.dtype, "dropout gradient")
        for b in _blocks(noise):
            torch.mul(grad[b], noise[b], out=gx[b])
        return gx, None, None


def relu(x: torch.Tensor, g=None) -> torch.Tensor:
    """``F.relu(x)``; under ``g``'s host budget, output and gradient placed by the budget.

    On pending layer rows (:mod:`sagann.engine.pending`) it is recorded, to
    run inside the next layer's chained pass, or here when they are computed.
    """
    if isinstance(x, PendingRows):
        if x.chainable():
            return x.then(RowOp("relu", ("relu",), lambda t: relu(t, g), F.relu))
        x = x.value()
    host = _host_of(g)
    if not _applies(host, x):
        return F.relu(x)
    if not torch.is_grad_enabled() or not x.requires_grad:
        with torch.no_grad():
            return _Relu.forward(_NoCtx(), x, host)
    return _Relu.apply(x, host)


def dropout(x: torch.Tensor, p: float, training: bool, g=None) -> torch.Tensor:
    """``F.dropout(x, p, training)``; under ``g``'s host budget, mask, output and gradient placed by the budget."""
    if isinstance(x, PendingRows):
        if not training or p == 0:
            return x  # the identity: pending rows stay pending
        x = x.value()
    host = _host_of(g)
    if not training or p == 0 or not _applies(host, x) or not 0 < p < 1 or not x.is_floating_point():
        return F.dropout(x, p, training)
    if not torch.is_grad_enabled() or not x.requires_grad:
        with torch.no_grad():
            return _Dropout.forward(_NoCtx(), x, p, host)
    return _Dropout.apply(x, p, host)


class _NoCtx:
    """Stands in for autograd's ctx when nothing needs a gradient: saves nothing."""

    def save_for_backward(self, *tensors) -> None:
        pass
