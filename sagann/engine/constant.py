"""A Gather over inputs that never change, computed once and reused.

A training loop calls its first layer with the same features every epoch.
When that layer's messages are a builtin (``sagann.fn``: no parameters) and
neither the features nor the edge data need a gradient, the gathered rows
``acc`` are the same every call: from the second call with the same,
unchanged inputs the engine propagates them once, keeps ``acc`` on the host
and from then on runs only ApplyVertex, on an edgeless view of the graph. No
pass over the edges runs in that layer's forward or backward any more (a
GCN's first layer becomes ``(Â X) W``, a dense product).

The first call with new inputs runs the ordinary way: inputs seen once
(dropout's fresh mask every epoch) never pay for a cache. Costs host memory
of one ``[N, d_acc]`` tensor (``[N, d_in + d_acc]`` for a layer whose
ApplyVertex reads ``v``) per graph and Gather while the inputs stay the same;
``ScheduleConfig(cache_gather=False)`` turns it off. The same function as the
streamed layer, up to fp32 summation order.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from sagann.engine.faces import Face, ThenFace, base_of, face_of
from sagann.engine.pending import PendingRows, RowSource, chaining_enabled
from sagann.engine.probe import unread_rows
from sagann.engine.run import call_owner, draw_seed, layer_shape, run_layer
from sagann.fn import SUM_GATHERS, MessageFn

__all__ = ["seen_gather", "note_gather", "reuses_gather", "has_cached_gather", "run_on_cached_gather", "run_chained_on_cached_gather"]

_CACHE = "constant_gather"  # ChunkedGraph._derived key: {_key(...): _Sighting}


class _Sighting:
    """The inputs a Gather last ran on (weakly held, with their versions) and, from their second call, its acc."""

    def __init__(self, x: torch.Tensor, edge_data: torch.Tensor | None):
        self.x, self.x_version = weakref.ref(x), x._version
        self.edge = None if edge_data is None else weakref.ref(edge_data)
        self.edge_version = None if edge_data is None else edge_data._version
        self.rows: torch.Tensor | None = None  # what the edgeless pass reads: acc, or [x | acc]

    def alive(self) -> bool:
        """Are the inputs still there and unchanged (else this acc can never be used again)?"""
        x = self.x()
        if x is None or x._version != self.x_version:
            return False
        if self.edge is None:
            return True
        e = self.edge()
        return e is not None and e._version == self.edge_version

    def same(self, x: torch.Tensor, edge_data: torch.Tensor | None) -> bool:
        if self.x() is not x or self.x_version != x._version:
            return False
        if edge_data is None:
            return self.edge is None
        return self.edge is not None and self.edge() is edge_data and self.edge_version == edge_data._version


def _constant(layer: nn.Module, g, x: torch.Tensor, edge_data: torch.Tensor | None) -> bool:
    """Is the layer's acc a function of inputs that need no gradient (and so a constant while they are unchanged)?"""
    if not (g.schedule.cache_gather and getattr(layer, "caches_gather", True)) or g.process_group is not None:
        return False
    if not isinstance(layer.apply_edge, MessageFn) or layer.gather not in (*SUM_GATHERS, "max", "min"):
        return False
    if callable(getattr(layer, "apply_src", None)) or callable(getattr(layer, "apply_dst", None)):
        return False
    tensors = (x,) if edge_data is None else (x, edge_data)
    return not any(t.requires_grad or t.is_inference() for t in tensors)


def _key(layer: nn.Module, x: torch.Tensor, edge_data: torch.Tensor | None) -> tuple:
    """What acc depends on: the Gather, the message, the rows' layout, and which inputs (checked by ``_Sighting.same``)."""
    return layer.gather, layer.apply_edge.op, bool(layer.apply_vertex_reads_v), id(x), id(edge_data)


def _sighting(layer: nn.Module, g, x: torch.Tensor, edge_data: torch.Tensor | None) -> tuple[dict, tuple, bool] | None:
    """(the graph's sightings, this call's key, seen before?), or None where the layer's acc is no constant."""
    if not _constant(layer, g, x, edge_data):
        return None
    sightings, key = g.cached(_CACHE, dict), _key(layer, x, edge_data)
    seen = sightings.get(key)
    return sightings, key, seen is not None and seen.same(x, edge_data)


def _note(sightings: dict, key: tuple, x: torch.Tensor, edge_data: torch.Tensor | None) -> None:
    for k in [k for k, s in sightings.items() if not s.alive()]:  # inputs freed or changed: their acc goes
        del sightings[k]
    sightings[key] = _Sighting(x, edge_data)


def seen_gather(layer: nn.Module, g, x: torch.Tensor, edge_data: torch.Tensor | None = None) -> bool:
    """Did an earlier call run (or note) this layer's Gather on these very inputs, unchanged? Records nothing."""
    found = _sighting(layer, g, x, edge_data)
    return found is not None and found[2]


def note_gather(layer: nn.Module, g, x: torch.Tensor, edge_data: torch.Tensor | None = None) -> None:
    """Record this call's inputs (a conv evaluating the layer in another order notes them for its next call)."""
    found = _sighting(layer, g, x, edge_data)
    if found is not None and not found[2]:
        _note(found[0], found[1], x, edge_data)


def reuses_gather(layer: nn.Module, g, x: torch.Tensor, edge_data: torch.Tensor | None = None) -> bool:
    """Will ``layer(g, x, edge_data)`` run on a cached acc? True from the inputs' second call; records the first."""
    found = _sighting(layer, g, x, edge_data)
    if found is None:
        return False
    sightings, key, seen = found
    if not seen:
        _note(sightings, key, x, edge_data)
    return seen


def has_cached_gather(layer: nn.Module, g, x: torch.Tensor, edge_data: torch.Tensor | None = None) -> bool:
    """Is this layer's acc over these very inputs already cached (so its call is an ApplyVertex pass alone)? Records nothing."""
    found = _sighting(layer, g, x, edge_data)
    return found is not None and found[2] and found[0][found[1]].rows is not None


def run_on_cached_gather(layer: nn.Module, g, x: torch.Tensor, edge_data: torch.Tensor | None) -> torch.Tensor:
    """The layer's output from its cached acc (propagated now if this is the inputs' second call).

    With chaining on (:func:`sagann.chaining`), the ApplyVertex pass itself
    waits: the result is :class:`~sagann.engine.pending.PendingRows`, which
    the next sagann layer may take pre-transformed (:mod:`sagann.engine.chain`).
    """
    seen = g.cached(_CACHE, dict)[_key(layer, x, edge_data)]
    filling = seen.rows is None  # this call propagates: its plan is a one-off, so it runs as it is, unchained
    if filling:
        with torch.no_grad(), g.one_off_partition():  # a one-time pass at the input width: later passes keep their P
            acc = _run(face_of(layer, "_sagann_gather_only", _GatherOnly), g, x, edge_data)
        if layer.apply_vertex_reads_v:
            rows = g.host.empty((x.shape[0], x.shape[1] + acc.shape[1]), what="cached gather with its inputs")
            rows[:, : x.shape[1]] = x
            rows[:, x.shape[1]:] = acc
            acc = rows
        seen.rows = acc
        g.allow_coarser_partition(call_owner(layer, x, edge_data))  # this layer's streamed calls on x, which may have set P, are over while x stays
    face = _on_gathered(layer, x)
    if filling or not chaining_enabled():
        return _run(face, g.without_edges(), seen.rows)
    source = CachedVertexPass(layer, g, int(x.shape[1]), seen.rows)
    d_out = layer_shape(face, seen.rows, None, g.device.torch_device).d_out
    needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in face.parameters())
    return PendingRows(source, (x.shape[0], d_out), needs_grad)


class CachedVertexPass(RowSource):
    """A layer's ApplyVertex over its cached acc, not run yet: alone (:meth:`compute`) or with the next layer's start (:meth:`chained`)."""

    def __init__(self, layer: nn.Module, g, d_in: int, rows: torch.Tensor):
        super().__init__(torch.is_grad_enabled())
        self.layer, self.g, self.d_in, self.cached = layer, g, d_in, rows
        self.owner = base_of(layer)  # the user's layer, whatever face of it ran
        self.name = getattr(layer, "display_name", None) or type(layer).__name__
        self.seed = draw_seed(self._face())  # drawn now, as the call would: the caller's stream moves as unchained
        self.watch(self._face().parameters())

    def _face(self) -> "_OnGathered":
        face = face_of(self.layer, "_sagann_on_gathered", _OnGathered)
        face.d_in = self.d_in
        return face

    def compute(self) -> torch.Tensor:
        return _run(self._face(), self.g.without_edges(), self.cached, seed=self.seed)

    def chained(self, then: torch.nn.Module) -> torch.Tensor:
        """``then(the layer's output)`` in the same ApplyVertex pass: the output itself never reaches the host."""
        chained = face_of(self._face(), f"_sagann_then_{id(then)}", lambda base: _Chained(base, then))
        self.check_unchanged()
        return _run(chained, self.g.without_edges(), self.cached, seed=self.seed)


def run_chained_on_cached_gather(layer: nn.Module, g, x: torch.Tensor, edge_data: torch.Tensor | None, then: torch.nn.Module) -> torch.Tensor | None:
    """``then(layer's output)`` in one ApplyVertex pass over the cached acc, or None where no acc is cached yet.

    ``then`` is row-wise (the next layer's per-vertex start: an activation
    and a matmul, say). The layer's own output never goes to the host: out
    of core that saves sending it back and forth once per direction, and
    the host pass of whatever ``then`` computes. Only from the call after
    the one that cached acc; records nothing.
    """
    if not has_cached_gather(layer, g, x, edge_data):
        return None
    rows = g.cached(_CACHE, dict)[_key(layer, x, edge_data)].rows
    return CachedVertexPass(layer, g, int(x.shape[1]), rows).chained(then)


def _run(face: Face, g, x: torch.Tensor, edge_data: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
    """Run a face the engine made: its inputs are the engine's own, it caches nothing and is not compiled."""
    return run_layer(face, g, x, edge_data, face.display_name, seed=seed)


def _on_gathered(layer: nn.Module, x: torch.Tensor) -> "_OnGathered":
    """The layer's ApplyVertex over its cached rows (``x``: the inputs they were gathered from)."""
    on_acc = face_of(layer, "_sagann_on_gathered", _OnGathered)
    on_acc.d_in = int(x.shape[1])
    return on_acc


class _GatherOnly(Face):
    """The base layer's Gather with ApplyVertex = identity: the acc to cache. No parameters."""

    apply_vertex_reads_v = False
    caches_gather = False  # it is what fills the cache

    def __init__(self, base: nn.Module):
        super().__init__(base)
        self.gather, self.apply_edge = base.gather, base.apply_edge

    def named_parameters(self, *args, **kwargs):
        return iter(())

    def parameters(self, recurse: bool = True):
        return iter(())


class _OnGathered(Face):
    """The base layer's ApplyVertex over the cached rows (acc, or [x | acc]): run on an edgeless graph."""

    d_in = 0

    def apply_edge(self, e):
        return e.src[:, :1]  # never runs (no edges): a one-column acc keeps the engine's buffers and fills small

    def apply_vertex(self, v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        base = self._base
        if not base.apply_vertex_reads_v:
            return base.apply_vertex(unread_rows(v.shape[0], self.d_in, v.dtype, v.device), v)
        return base.apply_vertex(v[:, : self.d_in], v[:, self.d_in:])


class _Chained(ThenFace):
    """A face's ApplyVertex followed by ``then``, as one ApplyVertex: over the face's parameters and ``then``'s."""

    def apply_edge(self, e):
        return e.src[:, :1]  # never runs (no edges), as _OnGathered

