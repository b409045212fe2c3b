"""Layer chaining: one layer's ApplyVertex, the activations after it and the next layer's per-vertex start, as one pass.

A layer that reads its input only through ``apply_src`` (GCN's ``X W``; a
user layer whose ``apply_edge`` the compiler hoisted to ``W(e.src)``), and
neither through ``e.src``, ``e.dst``, ``apply_dst`` nor ``v`` in
ApplyVertex, needs nothing of its input but ``apply_src(x)``. When that
input is :class:`~sagann.engine.pending.PendingRows` (the layer before has
not run its ApplyVertex yet, plus row-wise activations), the engine runs
the layer before's ApplyVertex, the activations and this layer's
``apply_src`` as one vertex pass and hands this layer the pre-transformed
rows: the hidden rows never cross the link or sit on the host, and the
hook pass over them goes. The layer then runs as :class:`OnTerms`, its
edge stage reading those rows where it read ``e.src_term``.

Nothing here knows a model class: whether a layer chains is learnt from
the compiler (:func:`sagann.engine.hoist.compiled`) and the probe
(:class:`~sagann.scheduler.planner.LayerShape`), per call, so a user's own
``nn.Module`` calling two sagann layers gets it as the ready-made models do.
The same function as the unchained calls, up to fp32 rounding; a
hand-written ``apply_src`` that draws random numbers in training mode draws
them from the pass's stream instead of the layer's own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sagann.engine.faces import Face, base_of, face_of
from sagann.engine.hoist import compiled
from sagann.engine.pending import PendingRows
from sagann.engine.probe import has_hook
from sagann.engine.run import check_call, layer_shape, run_layer
from sagann.fn import AttentionFn, MessageFn

__all__ = ["ChainRecord", "OnTerms", "chain_blocker", "chained_call", "on_terms", "pre_transformed"]

RECORD = "_sagann_chain"  # a layer's __dict__ key: its last call's ChainRecord


@dataclass(frozen=True)
class ChainRecord:
    """How a layer's last call took its input (printed by ``sagann.explain``)."""

    producer: str  # the layer whose output it read (display name)
    producer_layer: object  # that layer (the user's module)
    ops: tuple[str, ...]  # row-wise ops between
    width_in: int  # the producer's output width (what unchained calls move)
    width_link: int  # the rows chaining moved instead (this layer's apply_src width); 0: not chained
    reason: str = ""  # why it did not chain


def chain_blocker(runner: nn.Module, shape) -> str:
    """Why a compiled layer cannot take pre-transformed input ('' where it can): it reads its input other than by ``apply_src``."""
    if not has_hook(runner, "apply_src"):
        return "it has no per-vertex source pre-transform (apply_src) to chain into"
    reads = [what for what, used in (("apply_dst", has_hook(runner, "apply_dst")), ("e.src", shape.uses_src), ("e.dst", shape.uses_dst), ("v in apply_vertex", shape.vertex_reads_x)) if used]
    if reads:
        return f"it reads its input through {', '.join(reads)}, not only apply_src"
    if shape.attention is not None or isinstance(runner.apply_edge, AttentionFn) or runner.gather == "softmax":
        return "a softmax Gather reads the hooks' terms at both ends"
    return ""


class _TermsAsSource:
    """What the base layer's apply_edge sees under :class:`OnTerms`: its ``src_term`` is the rows this call streams."""

    def __init__(self, e):
        self._e = e

    num_edges = property(lambda self: self._e.num_edges)
    src_term = property(lambda self: self._e.src)
    data = property(lambda self: self._e.data)
    dst_term = property(lambda self: None)

    def __len__(self) -> int:
        return len(self._e)

    @property
    def src(self):
        raise RuntimeError("sagann: a chained layer read e.src, which its probe said it does not; call sagann.chaining(False) around it")

    dst = src


class OnTerms(Face):
    """The base layer run on rows already pre-transformed by its ``apply_src``: its edge stage and ApplyVertex, no hook pass."""

    apply_vertex_reads_v = False
    caches_gather = False  # the pre-transformed rows change with the weights every step

    def __init__(self, base: nn.Module):
        super().__init__(base)
        self.gather = base.gather
        if isinstance(base.apply_edge, MessageFn):  # the builtin read apply_src's rows; here they are the source rows
            self.apply_edge = base.apply_edge

    def apply_edge(self, e):
        return self._base.apply_edge(_TermsAsSource(e))

    def apply_vertex(self, v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        return self._base.apply_vertex(v, acc)  # v: unread rows (the base does not read v)


class _ThenPre(nn.Module):
    """The row-wise ops after the layer before, then this layer's ``apply_src``: the chained pass's tail."""

    def __init__(self, ops: tuple, runner: nn.Module):
        super().__init__()
        self.__dict__["_runner"] = runner  # not a submodule: its parameters are the next layer's
        self.ops = ops
        self.display_name = "act+lin" if ops else "lin"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            h = op.device(h)
        return self._runner.apply_src(h)

    def named_parameters(self, *args, **kwargs):
        return self._runner.named_parameters(*args, **kwargs)

    def parameters(self, recurse: bool = True):
        return self._runner.parameters(recurse)


def _then_for(runner: nn.Module, ops: tuple) -> _ThenPre:
    """One tail per (layer, ops): its chained face and probed shape are then made once."""
    tails = runner.__dict__.setdefault("_sagann_then_pre", {})
    key = tuple(op.key for op in ops)
    if key not in tails:
        tails[key] = _ThenPre(ops, runner)
    return tails[key]


def _plan(layer: nn.Module, g, x: PendingRows, edge_data):
    """``(runner, shape, '')`` where ``layer`` can take ``x`` pre-transformed, else ``(None, None, why not)``."""
    if not x.chainable():
        return None, None, "the rows were already computed (or chaining is off)"
    if getattr(g, "process_group", None) is not None or x.shape[0] != g.num_vertices:
        return None, None, "the graph is distributed or of another size"
    runner = compiled(layer, int(x.shape[1]), edge_data)
    shape = layer_shape(runner, x, edge_data, g.device.torch_device)
    why = chain_blocker(runner, shape)
    return (None, None, why) if why else (runner, shape, "")


def pre_transformed(layer: nn.Module, g, x: PendingRows, edge_data: torch.Tensor | None = None) -> torch.Tensor | None:
    """``layer``'s ``apply_src`` of ``x``'s rows, made in the pass that makes them; None where the layer cannot take them so."""
    runner, shape, why = _plan(layer, g, x, edge_data)
    if runner is None:
        _record(layer, x, 0, why)
        return None
    out = x.sagann_source.chained(_then_for(runner, x.sagann_ops))
    _record(layer, x, shape.d_src_term, "")
    return out


def on_terms(layer: nn.Module, d_in: int, edge_data: torch.Tensor | None) -> OnTerms:
    """The face running ``layer`` (compiled for input width ``d_in``) on its pre-transformed rows."""
    return face_of(compiled(layer, d_in, edge_data), "_sagann_on_terms", OnTerms)


def chained_call(layer: nn.Module, g, x: PendingRows, edge_data: torch.Tensor | None = None) -> torch.Tensor | None:
    """``layer(g, x, edge_data)`` with ``x`` taken pre-transformed; None where the layer cannot (the caller computes ``x``)."""
    t = pre_transformed(layer, g, x, edge_data)
    if t is None:
        return None
    face = on_terms(layer, int(x.shape[1]), edge_data)
    check_call(face, g, t, edge_data)
    return run_layer(face, g, t, edge_data, face.display_name)


def _record(layer: nn.Module, x: PendingRows, width: int, reason: str) -> None:
    src = x.sagann_source
    ops = tuple(op.name for op in x.sagann_ops)
    owner = getattr(src, "owner", None)
    base_of(layer).__dict__[RECORD] = ChainRecord(src.name, owner, ops, int(x.shape[1]), width, reason)
