"""A layer's output rows computed when first read, so the next sagann layer can take them pre-transformed.

Where a layer's ApplyVertex runs as a pass of its own (over a cached
Gather), or its streamed output was seen feeding a layer that chains, the
engine hands back a :class:`PendingRows` instead of running it: a tensor
with the output's shape, dtype and ``requires_grad`` but no values yet. Row-wise activations applied to it (``F.relu``, dropout in
eval, ...) are recorded, not run. If the next sagann layer reads its input
only through a per-vertex pre-transform (its ``apply_src``: GCN's ``X W``),
the engine runs this ApplyVertex, the activations and that pre-transform as
one vertex pass (:mod:`sagann.engine.chain`): the hidden rows never cross
the link. Anything else that touches the tensor (indexing, a loss, a
print, a non-sagann module, a second use) computes it first, exactly as
the unchained call would have, once; the result is then a plain tensor.
``sagann.chaining(False)`` turns the whole mechanism off.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["PendingRows", "RowOp", "RowSource", "chaining", "chaining_enabled", "materialized"]

_STATE = threading.local()


def chaining_enabled() -> bool:
    """Is layer chaining on in this thread (``sagann.chaining``)? On by default."""
    return getattr(_STATE, "on", True)


@contextlib.contextmanager
def chaining(enabled: bool = True):
    """Turn layer chaining on or off inside the block (this thread): off, every layer output is computed at once."""
    before = chaining_enabled()
    _STATE.on = bool(enabled)
    try:
        yield
    finally:
        _STATE.on = before


@dataclass(frozen=True)
class RowOp:
    """A row-wise op recorded on pending rows: ``host`` runs it on the host rows, ``device`` inside a vertex pass."""

    name: str
    key: tuple  # what makes two ops the same (the function and its non-tensor arguments)
    host: Callable[[torch.Tensor], torch.Tensor]
    device: Callable[[torch.Tensor], torch.Tensor]


class RowSource:
    """Where pending rows come from: a vertex pass not run yet (subclassed by the engine)."""

    name = "layer"

    def __init__(self, grad_enabled: bool):
        self.grad_enabled = grad_enabled  # the mode of the call that made the rows: they are computed in it
        self.value: torch.Tensor | None = None
        self.name = type(self).__name__
        self._watched: list[tuple[torch.Tensor, int]] = []

    def watch(self, tensors) -> None:
        """Tensors the rows are computed from (parameters, inputs): changed in place before then, computing raises."""
        self._watched += [(t, t._version) for t in tensors]

    def check_unchanged(self) -> None:
        changed = [tuple(t.shape) for t, version in self._watched if t._version != version]
        if changed:
            raise RuntimeError(
                f"sagann: {self.name}'s output was left pending (layer chaining) and a tensor it is computed from "
                f"(shape {changed[0]}) changed in place since the call (an optimizer step?); read the output before "
                "changing its inputs or parameters, or call the layer under sagann.chaining(False)"
            )

    def compute(self) -> torch.Tensor:  # pragma: no cover - the engine's subclass
        raise NotImplementedError

    def chained(self, then: torch.nn.Module) -> torch.Tensor:  # pragma: no cover - the engine's subclass
        """``then`` of the rows, in the pass that makes them (the rows themselves are not kept)."""
        raise NotImplementedError

    def rows(self) -> torch.Tensor:
        """The layer's output rows, computed at the first need (once)."""
        if self.value is None:
            self.check_unchanged()
            with torch.set_grad_enabled(self.grad_enabled):
                self.value = self.compute()
        return self.value


_ACTIVATIONS = {F.relu, torch.relu, torch.Tensor.relu, F.leaky_relu, F.elu, F.gelu, F.silu, torch.tanh, torch.Tensor.tanh, torch.sigmoid, torch.Tensor.sigmoid}
_METADATA_PROPERTIES = {"shape", "dtype", "device", "requires_grad", "ndim", "_version", "layout", "is_cuda", "is_sparse", "is_quantized", "is_meta"}
_METADATA_METHODS = {"size", "dim", "numel", "nelement", "is_inference", "is_floating_point", "is_complex", "element_size", "is_contiguous", "__len__", "get_device"}


def _has_tensor(values) -> bool:
    return any(isinstance(v, torch.Tensor) for v in values)


class PendingRows(torch.Tensor):
    """A layer's output ``[N, d]`` whose values are computed when first read (see the module docstring).

    Behaves as the plain tensor it stands for: any op on it computes the
    rows first (once) and runs on them. Only metadata (shape, dtype,
    ``requires_grad``, ...) and recorded row-wise activations leave it
    pending. ``materialized(t)`` gives the plain tensor.
    """

    @staticmethod
    def __new__(cls, source: RowSource, shape, requires_grad: bool, ops: tuple = ()):
        t = torch.Tensor._make_wrapper_subclass(cls, tuple(shape), dtype=torch.float32, device=torch.device("cpu"), requires_grad=requires_grad)
        t.sagann_source, t.sagann_ops, t.sagann_value = source, tuple(ops), None
        return t

    def then(self, op: RowOp) -> "PendingRows":
        """These rows with one more row-wise op recorded (not run)."""
        return PendingRows(self.sagann_source, self.shape, self.requires_grad, self.sagann_ops + (op,))

    def value(self) -> torch.Tensor:
        """The plain tensor: the source's rows (computed at the first need), then the recorded ops on the host."""
        if self.sagann_value is None:
            out = self.sagann_source.rows()
            with torch.set_grad_enabled(self.sagann_source.grad_enabled):
                for op in self.sagann_ops:
                    out = op.host(out)
            self.sagann_value = out
        return self.sagann_value

    def chainable(self) -> bool:
        """Could a next layer still take these rows pre-transformed (nothing has computed them, same grad mode)?"""
        src = self.sagann_source
        return self.sagann_value is None and src.value is None and src.grad_enabled == torch.is_grad_enabled() and chaining_enabled()

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else None
        if isinstance(first, PendingRows):
            name = getattr(func, "__name__", "")
            owner = getattr(getattr(func, "__self__", None), "__name__", "")
            if (name == "__get__" and owner in _METADATA_PROPERTIES) or name in _METADATA_METHODS:
                with torch._C.DisableTorchFunctionSubclass():
                    return func(*args, **kwargs)
            recorded = _recorded(func, first, args[1:], kwargs)
            if recorded is not None:
                return recorded
        args, kwargs = torch.utils._pytree.tree_map(materialized, (args, kwargs))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"sagann: {func} reached pending layer rows without computing them; call sagann.engine.pending.materialized(t) first")


def _recorded(func, x: PendingRows, rest: tuple, kwargs: dict):
    """``func(x, *rest, **kwargs)`` recorded on pending rows, or None where it must run now."""
    if not x.chainable() or _has_tensor(rest) or _has_tensor(kwargs.values()) or kwargs.get("inplace"):
        return None
    if func is F.dropout:  # identity unless it draws a mask: a drawn mask must be the caller's own draw
        training = kwargs.get("training", rest[1] if len(rest) > 1 else True)
        p = kwargs.get("p", rest[0] if rest else 0.5)
        return x if (not training or p == 0) else None
    if func not in _ACTIVATIONS:
        return None

    def run(t: torch.Tensor) -> torch.Tensor:
        return func(t, *rest, **kwargs)

    key = (func, rest, tuple(sorted(kwargs.items())))
    try:
        hash(key)
    except TypeError:  # an argument that is no plain value: run it now
        return None
    return x.then(RowOp(getattr(func, "__name__", "op"), key, run, run))


def materialized(t):
    """``t`` itself, or the plain tensor pending rows stand for (computed now if they were not)."""
    return t.value() if isinstance(t, PendingRows) else t
