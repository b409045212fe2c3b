"""Forward graphs of user functions kept for backward on a budgeted device, with what they save on the host.

Without them backward recomputes each interval's ApplyVertex (and the
``apply_src``/``apply_dst`` hooks) to rebuild its autograd graph: one more
forward of every user function per epoch (a GCN's X W, a GIN's MLP).
Keeping the graph as it is would hold device memory outside the budget
until backward. Here the graph is kept, but every tensor it saves goes
through :func:`torch.autograd.graph.saved_tensors_hooks`:

* a parameter (or a view of one) stays as it is: it is resident anyway;
* a tensor that *is* rows the engine already keeps on the host (the
  interval's input rows, its aggregates, a hook's output) becomes a
  reference to those host rows: no copy at all;
* anything else (an MLP's hidden activations, a dropout mask) is copied to
  the host, if that costs less than recomputing (see :meth:`KeptGraph.seal`).

Backward loads each saved tensor into its device scope when autograd
unpacks it, so the budget charges it there. The graph's own input leaves
drop their memory once sealed (``leaf.data`` becomes empty; autograd only
needs their identity).
"""
from __future__ import annotations

import torch

from sagann.scheduler.devices import Scope
from sagann.scheduler.executor import load_narrowed
from sagann.units import storage_ptr as _storage_ptr, tensor_bytes


class _Saved:
    """One tensor the graph saved: the device tensor until sealed, then a host tensor (or a parameter)."""

    __slots__ = ("t", "host", "kept")

    def __init__(self, t: torch.Tensor, kept: bool):
        self.t, self.host, self.kept = t, None, kept


class KeptGraph:
    """One user-function call's autograd graph, held for backward with its saved tensors off the device."""

    def __init__(self, params: list[torch.Tensor]):
        self._param_ptrs = {_storage_ptr(p) for p in params}
        self._saved: list[_Saved] = []
        self._leaves: list[torch.Tensor] = []
        self.scope: Scope | None = None  # backward's scope: where unpacked tensors are loaded
        self.transfer_dtype: torch.dtype | None = None  # backward's: float32 saved tensors cross the link in it
        self.handle = None  # the output's gradient edge (or the output)
        self.inputs: tuple[torch.Tensor, ...] = ()
        self.seconds = 0.0  # the forward call's time: what a recompute in backward would cost

    def hooks(self):
        """The context under which the user function runs in forward."""
        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: torch.Tensor) -> _Saved:
        s = _Saved(t, kept=_storage_ptr(t) in self._param_ptrs)
        self._saved.append(s)
        return s

    def _unpack(self, s: _Saved) -> torch.Tensor:
        if s.kept:
            return s.t
        if s.host is None:
            raise RuntimeError("sagann internal error: a kept forward graph was used before it was sealed")
        if self.scope is None:
            raise RuntimeError("sagann internal error: a kept forward graph was unpacked outside a backward scope")
        return load_narrowed(self.scope, s.host, self.transfer_dtype, "saved tensor of a kept forward graph")

    def keep_inputs(self, *leaves: torch.Tensor) -> None:
        """The graph's input leaves: gradients are asked for them in backward; their memory goes at sealing."""
        self._leaves = list(leaves)
        self.inputs = tuple(leaves)

    def copy_bytes(self, aliases: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Bytes sealing would copy to the host: saved tensors that are neither parameters nor ``aliases``' rows."""
        return sum(tensor_bytes(s.t) for s in self._saved if not s.kept and _alias(s.t, aliases) is None)

    def seal(self, aliases: list[tuple[torch.Tensor, torch.Tensor]], device, host) -> int:
        """Move every saved tensor off the device; returns the bytes copied.

        ``aliases``: (device tensor, host tensor holding the same values)
        pairs, e.g. the interval's loaded rows and the host rows they came
        from. The leaves drop their reference to their memory: on a device it
        must not outlive the forward scope.
        """
        copied = 0
        for s in self._saved:
            if s.kept:
                continue
            view = _alias(s.t, aliases)
            if view is None:
                view = host.empty(tuple(s.t.shape), s.t.dtype, "saved tensor of a kept forward graph")
                device.copy_out(s.t.detach(), view)
                copied += tensor_bytes(view)
            s.host, s.t = view, None
        for leaf in self._leaves:
            leaf.data = torch.empty(0, dtype=leaf.dtype, device=leaf.device)
        self._leaves = []
        return copied

    def drop(self) -> None:
        """Let go of an unsealed graph's device tensors now (backward recomputes it instead).

        The graph and this object reference each other (its saved tensors are
        packed here, its gradient edge is ``handle``), and torch's garbage
        collector does not traverse that cycle: unbroken, every tensor the
        graph saved stayed alive for the rest of the process.
        """
        for s in self._saved:
            s.t = None
        self._saved, self._leaves, self.inputs, self.handle = [], [], (), None


def _alias(t: torch.Tensor, aliases: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor | None:
    """The host view holding ``t``'s values, if ``t`` is (a view of) one of the aliased device tensors."""
    ptr = _storage_ptr(t)
    for dev, host in aliases:
        if dev is None or host is None or _storage_ptr(dev) != ptr or dev.dtype != t.dtype or host.dtype != t.dtype or dev.shape != host.shape:
            continue
        offset = t.storage_offset() - dev.storage_offset()
        if t.shape == dev.shape and t.stride() == dev.stride() and offset == 0:
            return host
        if not (dev.is_contiguous() and host.is_contiguous()) or t.numel() == 0:
            continue
        extent = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
        if 0 <= offset and offset + extent <= dev.numel():  # a view inside dev: the same view of host
            return host.as_strided(t.shape, t.stride(), host.storage_offset() + offset)
    return None


try:
    from torch.autograd.graph import get_gradient_edge as _gradient_edge  # torch >= 2.4
except ImportError:  # pragma: no cover - older torch keeps the output tensor
    _gradient_edge = None


def graph_handle(t: torch.Tensor):
    """What backward needs of a kept forward graph's output: its gradient edge, not its memory.

    Holding the output tensor would keep its rows alive until backward
    (a GCN layer's N x d output, which autograd would otherwise free after
    the next ReLU); the edge keeps only the graph. Older torch: the tensor.
    """
    if _gradient_edge is None or not t.requires_grad:
        return t
    return _gradient_edge(t)


def own_version(t: torch.Tensor) -> torch.Tensor:
    """``t``'s memory under a version counter of its own.

    ``t`` may be a view of a host buffer whose other rows are written
    later in the pass (the next interval's accumulator); a graph saving a
    plain view would see those writes as modifications of its own rows.
    """
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
