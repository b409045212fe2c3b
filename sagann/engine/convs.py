"""Standard GNN layers as SAGA-NN layers, with PyG's math, defaults and parameter names.

A PyG ``state_dict`` of the same layer loads into these unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sagann import fn
from sagann.engine.chain import on_terms, pre_transformed
from sagann.engine.constant import has_cached_gather, note_gather, seen_gather
from sagann.engine.gcn_norm import gcn_norm, loop_weights, unit_gcn_norm
from sagann.engine.graph import ChunkedGraph
from sagann.engine.layer import Face, Layer, call_layer, face_of
from sagann.engine.pending import PendingRows, RowOp, chaining

__all__ = ["GCNConv", "SAGEConv", "GINConv", "GATConv", "GatedGCNConv"]


def _glorot_(w: torch.Tensor) -> None:
    bound = math.sqrt(6.0 / (w.size(-2) + w.size(-1)))
    with torch.no_grad():
        w.uniform_(-bound, bound)


class GCNConv(Layer):
    """Kipf & Welling's graph convolution, ``D^-1/2 (A + I) D^-1/2 X W + b``.

    Same math, defaults and parameter names (``lin.weight``, ``bias``) as
    ``torch_geometric.nn.GCNConv``: the degree is the (weighted) in-degree
    at the destination, and with ``add_self_loops`` every vertex gets exactly
    one self loop (existing ones are replaced; a weighted one keeps its weight).

    XW is computed once per vertex (``apply_src``), then propagated by the
    fused ``src_mul_edge`` kernel with the normalised edge weights; or, where
    that moves fewer rows, the inputs are propagated first and multiplied by
    W after (``(Â X) W``, DGL's order when ``in_channels < out_channels``,
    and always on inputs that need no gradient: the backward then has no
    pass over the edges at all). See :func:`aggregates_first`.

    Args:
        in_channels, out_channels: feature widths.
        improved: self loops of weight 2 (``A + 2I``).
        add_self_loops, normalize, bias: as in PyG.

    Shapes:
        x ``[N, in_channels]``, edge_weight ``[E]`` (optional), out ``[N, out_channels]``.
    """

    gather = "sum"
    apply_vertex_reads_v = False  # apply_vertex reads acc alone: out of core, V_j's input rows stay on the host
    apply_edge = fn.src_mul_edge

    def __init__(self, in_channels: int, out_channels: int, improved: bool = False, add_self_loops: bool = True, normalize: bool = True, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.improved, self.add_self_loops, self.normalize = improved, add_self_loops, normalize
        self.lin = nn.Linear(in_channels, out_channels, bias=False)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _glorot_(self.lin.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def apply_src(self, v: torch.Tensor) -> torch.Tensor:
        return self.lin(v)

    def apply_vertex(self, v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        return acc if self.bias is None else acc + self.bias

    def forward(self, g: ChunkedGraph, x: torch.Tensor, edge_weight: torch.Tensor | None = None) -> torch.Tensor:
        if edge_weight is not None and (edge_weight.dim() != 1 or edge_weight.shape[0] != g.num_edges):
            raise ValueError(f"GCNConv: edge_weight must have shape [num_edges={g.num_edges}], got {list(edge_weight.shape)}")
        graph, norm, aggregate_first, multiply_first = self._graph_and_faces(g, edge_weight)
        if seen_gather(aggregate_first, graph, x, norm) or aggregates_first(self, x, norm):  # seen: Â X is cached
            return call_layer(aggregate_first, graph, x, norm)
        note_gather(aggregate_first, graph, x, norm)  # the next call with this x propagates it once and caches Â X
        return call_layer(multiply_first, graph, x, norm)

    def sagann_notes(self) -> list[str]:
        """For :func:`sagann.explain`: what runs when no edge weights are given."""
        if not self.normalize or self.improved:
            return []
        return ["  without edge_weight: gather=sym (D^-1/2 A D^-1/2 from the degrees), fused gSpMM copy_src x sum: no weight per edge"]

    def chain_into(self, g: ChunkedGraph, x: torch.Tensor, nxt: "GCNConv", act) -> torch.Tensor | None:
        """``act(self(g, x)) @ nxt.lin.weight.T``, nxt's rows to propagate, in one vertex pass; None where that does not apply.

        The engine's layer chaining (:mod:`sagann.engine.chain`) for an
        explicit pair: it applies where this layer runs on its cached
        ``Â X`` (from the third call with the same constant features) and
        ``nxt`` multiplies before propagating (:func:`aggregates_first`);
        ``act`` is trusted to be row-wise. The caller then finishes nxt with
        :meth:`propagate_projected`. A plain ``nxt(g, act(self(g, x)))``
        chains the same way by itself for the activations
        :mod:`sagann.engine.pending` records.
        """
        if type(self) is not GCNConv or type(nxt) is not GCNConv or nxt.in_channels != self.out_channels:
            return None
        grad = torch.is_grad_enabled()
        grad_in = grad and any(p.requires_grad for p in self.parameters())  # nxt's input: this layer's output
        if _aggregates_first_for(nxt, grad_in, grad and any(p.requires_grad for p in nxt.parameters()), tie=False):
            return None
        graph, norm, face, _ = self._graph_and_faces(g, None)
        if not has_cached_gather(face, graph, x, norm):
            return None
        with chaining(True):
            h = call_layer(face, graph, x, norm)
        if not isinstance(h, PendingRows):
            return None
        nxt_runner = nxt._graph_and_faces(g, None)[3]
        return pre_transformed(nxt_runner, graph, h.then(RowOp(getattr(act, "__name__", "act"), (act,), act, act)))

    def propagate_projected(self, g: ChunkedGraph, xw: torch.Tensor) -> torch.Tensor:
        """``Â xw + b`` for rows already multiplied by this layer's weight (see :meth:`chain_into`)."""
        graph, norm, _, runner = self._graph_and_faces(g, None)
        return call_layer(on_terms(runner, self.in_channels, None), graph, xw, norm)

    def _graph_and_faces(self, g: ChunkedGraph, edge_weight: torch.Tensor | None):
        """``(graph, edge weights, aggregate-first face, multiply-first runner)`` of a call.

        With unit edge weights normalised (the default), ``Â`` is
        ``D^-1/2 A D^-1/2`` on the self-loop graph: a 'sym' gather scales
        the sources and the sums by ``deg^-1/2`` (DGL's ``norm='both'``),
        so no weight per edge is made, kept in RAM or sent. Given weights
        (or ``improved``'s loops of weight 2) are normalised per edge.
        """
        if edge_weight is None and self.normalize and not self.improved:
            graph = g.with_remaining_self_loops()[0] if self.add_self_loops else g
            return graph, None, face_of(self, "_sym_aggregate_first", _GCNSymAggregateFirst), face_of(self, "_sym", _GCNSym)
        graph, norm = self._graph_and_weights(g, edge_weight)
        return graph, norm, face_of(self, "_aggregate_first", _GCNAggregateFirst), self

    def _graph_and_weights(self, g: ChunkedGraph, edge_weight: torch.Tensor | None):
        fill = 2.0 if self.improved else 1.0
        if not self.normalize:
            w = edge_weight if edge_weight is not None else torch.ones(g.num_edges)
            return g, w
        if self.add_self_loops:
            graph, kept = g.with_remaining_self_loops()
        else:
            graph, kept = g, None
        if edge_weight is None:
            key = f"gcn_norm(fill={fill}, loops={self.add_self_loops})"
            return graph, graph.cached(key, lambda: unit_gcn_norm(g, graph, kept, fill))
        w = edge_weight if kept is None else loop_weights(g, kept, edge_weight, fill)
        return graph, gcn_norm(graph, w)


def aggregates_first(conv: Layer, x: torch.Tensor, edge_data: torch.Tensor | None = None, tie: bool = False) -> bool:
    """Propagate a linear layer's inputs before its matmul, ``(A X) W``, rather than ``A (X W)``?

    For a linear aggregation (sum, mean, GCN's weighted sum) both are the
    same function, up to fp32 summation order. The edge stage costs one
    pass over the edges per direction at the width it propagates: X W first
    propagates ``out_channels`` wide forward, and again backward whenever W
    or x needs a gradient; X first propagates ``in_channels`` wide forward,
    and backward only when x (or the edge weights) needs a gradient. The
    cheaper one wins; ``tie``: the answer when both cost the same (the
    peer's order: PyG's GCNConv multiplies first, its SAGEConv aggregates first).
    """
    grad = torch.is_grad_enabled()
    grad_in = grad and (x.requires_grad or (edge_data is not None and edge_data.requires_grad))
    grad_w = grad and any(p.requires_grad for p in conv.parameters())
    return _aggregates_first_for(conv, grad_in, grad_w, tie)


def _aggregates_first_for(conv: Layer, grad_in: bool, grad_w: bool, tie: bool) -> bool:
    lin_first = conv.out_channels * (1 + (grad_in or grad_w))
    agg_first = conv.in_channels * (1 + grad_in)
    return agg_first < lin_first or (agg_first == lin_first and tie)


class _GCNAggregateFirst(Face):
    """The same GCNConv evaluated as ``(Â X) W + b``: its parameters are the conv's own."""

    gather = "sum"
    apply_vertex_reads_v = False  # apply_vertex reads acc alone: out of core, V_j's input rows stay on the host
    apply_edge = fn.src_mul_edge

    def apply_vertex(self, v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        return F.linear(acc, self._base.lin.weight, self._base.bias)  # one addmm: no N x d temporary for the bias


class _GCNSym(Face):
    """The same GCNConv with unit edge weights: ``X W`` per vertex, the 'sym' gather (no per-edge weight), then ``+ b``."""

    gather = "sym"
    apply_vertex_reads_v = False
    apply_edge = fn.copy_src

    def apply_src(self, v: torch.Tensor) -> torch.Tensor:
        return self._base.apply_src(v)

    def apply_vertex(self, v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        return self._base.apply_vertex(v, acc)


class _GCNSymAggregateFirst(_GCNAggregateFirst):
    """The same GCNConv with unit edge weights as ``(Â X) W + b``, ``Â X`` by the 'sym' gather (cacheable: no hook)."""

    gather = "sym"
    apply_edge = fn.copy_src


class SAGEConv(Layer):
    """GraphSAGE: ``lin_l(aggr_j x_j) + lin_r(x_i)``, as ``torch_geometric.nn.SAGEConv``.

    Args:
        in_channels, out_channels: feature widths.
        aggr: ``"mean"`` (default), ``"sum"``, ``"max"`` or ``"min"``.
        normalize: L2-normalise the output rows.
        root_weight: add ``lin_r(x_i)``.
        bias: bias of ``lin_l``.
    """

    apply_edge = fn.copy_src

    def __init__(self, in_channels: int, out_channels: int, aggr: str = "mean", normalize: bool = False, root_weight: bool = True, bias: bool = True):
        super().__init__()
        if aggr not in fn.REDUCERS:
            raise ValueError(f"SAGEConv: unknown aggr {aggr!r}; use one of {', '.join(fn.REDUCERS)}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.gather, self.normalize, self.root_weight = aggr, normalize, root_weight
        self.lin_l = nn.Linear(in_channels, out_channels, bias=bias)
        self.lin_r = nn.Linear(in_channels, out_channels, bias=False) if root_weight else None

    def apply_vertex(self, v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        out = self.lin_l(acc)
        if self.lin_r is not None:
            out = out + self.lin_r(v)
        return F.normalize(out, p=2.0, dim=-1) if self.normalize else out

    def forward(self, g: ChunkedGraph, x: torch.Tensor, edge_data: torch.Tensor | None = None) -> torch.Tensor:
        # sum and mean are linear: multiplying by lin_l first propagates out_channels
        # wide instead of in_channels (DGL's order when in > out), the same function
        if seen_gather(self, g, x, edge_data):  # a cached Gather of x: only lin_l and lin_r run
            return super().forward(g, x, edge_data)
        if self.gather in ("sum", "mean") and not aggregates_first(self, x, tie=True):
            note_gather(self, g, x, edge_data)
            return call_layer(face_of(self, "_linear_first", _SAGELinearFirst), g, x, edge_data)
        return super().forward(g, x, edge_data)


class _SAGELinearFirst(Face):
    """The same SAGEConv (sum or mean) evaluated as ``aggr_j (x_j W_l) + b_l + lin_r(x_i)``: the conv's parameters."""

    apply_edge = fn.copy_src

    def __init__(self, conv: SAGEConv):
        super().__init__(conv)
        self.gather = conv.gather

    def apply_src(self, v: torch.Tensor) -> torch.Tensor:
        return F.linear(v, self._base.lin_l.weight)

    def apply_vertex(self, v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        conv = self._base
        out = acc if conv.lin_l.bias is None else acc + conv.lin_l.bias
        if conv.lin_r is not None:
            out = out + conv.lin_r(v)
        return F.normalize(out, p=2.0, dim=-1) if conv.normalize else out


class GINConv(Layer):
    """Graph isomorphism network: ``nn((1 + eps) x_i + sum_j x_j)``, as ``torch_geometric.nn.GINConv``.

    Args:
        nn: the MLP applied per vertex (any ``torch.nn.Module``).
        eps: initial epsilon.
        train_eps: learn epsilon.
    """

    gather = "sum"
    apply_edge = fn.copy_src

    def __init__(self, nn: torch.nn.Module, eps: float = 0.0, train_eps: bool = False):
        super().__init__()
        self.nn = nn
        if train_eps:
            self.eps = torch.nn.Parameter(torch.tensor([eps]))
        else:
            self.register_buffer("eps", torch.tensor([eps]))

    def apply_vertex(self, v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        return self.nn((1 + self.eps) * v + acc)


class GATConv(Layer):
    """Graph attention (Velickovic et al.), exact across chunks, as ``torch_geometric.nn.GATConv``.

    ``out_i = sum_j softmax_j(LeakyReLU(a_src . W x_j + a_dst . W x_i)) W x_j``
    per head, over i's in-edges plus one self loop (existing loops replaced,
    as PyG does). The attention halves ``a_src . W x_j`` and
    ``a_dst . W x_i`` are per-vertex terms (``apply_src`` / ``apply_dst``);
    per edge only the sum, LeakyReLU and the weighting run, fused
    (``sagann.fn.leaky_attention``: no per-edge tensor). The softmax over
    in-edges spread across source chunks is computed online (running max and
    sum per destination and head) and its backward uses the saved output.
    Parameter names and shapes are PyG's: ``lin.weight``, ``att_src``,
    ``att_dst``, ``bias``. Attention dropout is not supported.

    Args:
        in_channels, out_channels: widths (per head).
        heads: attention heads.
        concat: concatenate heads (else average them).
        negative_slope: of the LeakyReLU.
        add_self_loops, bias: as in PyG.
    """

    gather = "softmax"
    apply_vertex_reads_v = False  # apply_vertex reads acc alone: out of core, V_j's input rows stay on the host

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, concat: bool = True, negative_slope: float = 0.2, add_self_loops: bool = True, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, heads
        self.concat, self.negative_slope, self.add_self_loops = concat, negative_slope, add_self_loops
        self.apply_edge = fn.leaky_attention(negative_slope)  # fused: scores and weighting read the hooks' terms
        self.lin = nn.Linear(in_channels, heads * out_channels, bias=False)
        self.att_src = nn.Parameter(torch.empty(1, heads, out_channels))
        self.att_dst = nn.Parameter(torch.empty(1, heads, out_channels))
        self.bias = nn.Parameter(torch.empty(heads * out_channels if concat else out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w in (self.lin.weight, self.att_src, self.att_dst):
            _glorot_(w)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _heads(self, v: torch.Tensor) -> torch.Tensor:
        return self.lin(v).view(-1, self.heads, self.out_channels)

    def apply_src(self, v: torch.Tensor) -> torch.Tensor:
        h = self._heads(v)
        return torch.cat([h.flatten(1), (h * self.att_src).sum(-1)], dim=1)

    def apply_dst(self, v: torch.Tensor) -> torch.Tensor:
        return (self._heads(v) * self.att_dst).sum(-1)

    def apply_vertex(self, v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        out = acc if self.concat else acc.view(-1, self.heads, self.out_channels).mean(dim=1)
        return out if self.bias is None else out + self.bias

    def forward(self, g: ChunkedGraph, x: torch.Tensor, edge_attr: torch.Tensor | None = None) -> torch.Tensor:
        if edge_attr is not None:  # the argument exists for PyG's callers, which pass edge_attr=None
            raise ValueError("GATConv: edge features in the attention (edge_attr) are not supported; call it without edge_attr")
        graph = g.with_remaining_self_loops()[0] if self.add_self_loops else g
        return super().forward(graph, x)


class GatedGCNConv(Layer):
    """NeuGraph's gated GCN (G-GCN): ``relu(W sum_j sigmoid(W_H h_i + W_C h_j) * h_j)``.

    Written per edge, as the paper states it; the ApplyEdge compiler hoists
    ``W_H h_i`` and ``W_C h_j`` to once per vertex (``sagann.explain`` shows
    it), so no matmul runs per edge.

    Args:
        in_channels, out_channels: feature widths.
        activation: apply the ReLU (the paper's sigma).
    """

    gather = "sum"
    apply_vertex_reads_v = False  # apply_vertex reads acc alone: out of core, V_j's input rows stay on the host

    def __init__(self, in_channels: int, out_channels: int, activation: bool = True):
        super().__init__()
        self.W_H = nn.Linear(in_channels, in_channels, bias=False)
        self.W_C = nn.Linear(in_channels, in_channels, bias=False)
        self.W = nn.Linear(in_channels, out_channels)
        self.activation = activation

    def apply_edge(self, e):
        return torch.sigmoid(self.W_H(e.dst) + self.W_C(e.src)) * e.src

    def apply_vertex(self, v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        out = self.W(acc)
        return torch.relu(out) if self.activation else out
