"""The SAGA-NN layer: Scatter and Gather are the engine's, ApplyEdge and ApplyVertex are yours."""
from __future__ import annotations

import torch
from torch import nn

from sagann.engine.arguments import sagann_order
from sagann.engine.constant import reuses_gather, run_on_cached_gather
from sagann.engine.edges import EdgeBatch
from sagann.engine.faces import Face, face_of
from sagann.engine.pending import PendingRows
from sagann.engine.chain import chained_call, note_input, run_streamed
from sagann.engine.hoist import compiled
from sagann.engine.probe import probe_layer, unread_rows
from sagann.engine.run import check_call

__all__ = ["EdgeBatch", "Face", "Layer", "call_layer", "face_of", "probe_layer", "unread_rows"]


class Layer(nn.Module):
    """Base class of SAGA-NN layers.

    Subclasses set ``gather`` (``"sum" | "mean" | "max" | "min"``) and write
    ``apply_edge(self, e)`` (or assign a builtin such as
    ``sagann.fn.copy_src``) and ``apply_vertex(self, v, acc)``. Optional
    hooks ``apply_src(self, v)`` / ``apply_dst(self, v)`` compute per-vertex
    terms once per vertex instead of once per edge; ``apply_edge`` then reads
    them as ``e.src_term`` / ``e.dst_term``.

    Call a layer as ``layer(g, x, edge_data=None)``: ``x`` is a host tensor
    ``[N, d_in]``, the result a host tensor ``[N, d_out]``, differentiable
    w.r.t. ``x``, ``edge_data`` and the parameters. The graph is walked in
    chunks that fit ``g.device``'s memory budget. PyG's order works too:
    ``layer(x, g)``, or ``layer(x, edge_index)`` with a ``[2, E]`` tensor
    (an in-memory graph, built once per tensor; see
    :mod:`sagann.engine.arguments`).

    Shapes:
        x ``[N, d_in]``, edge_data ``[E]`` or ``[E, k]`` in ``edge_index``
        order, output ``[N, d_out]``.

    A layer whose ``apply_vertex`` never reads ``v`` (GCN's: a function of
    ``acc`` alone) may set ``apply_vertex_reads_v = False``: out of core the
    engine then does not send V_j's input rows for it, and ``v`` is a
    zero-stride tensor of zeros. A promise, not checked.
    """

    gather: str = "sum"
    hoist: bool = True  # let the ApplyEdge compiler move per-vertex terms into hooks (sagann.explain shows it)
    apply_vertex_reads_v: bool = True

    def __call__(self, *args, **kwargs):
        return super().__call__(*sagann_order(args), **kwargs)

    def apply_edge(self, e: EdgeBatch) -> torch.Tensor:
        """Message of each edge ``[num_edges, d_msg]``; default: the source rows."""
        return e.src

    def apply_vertex(self, v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """New vertex rows from the input rows ``v`` and gathered rows ``acc``; default: acc."""
        return acc

    def forward(self, g, x: torch.Tensor, edge_data: torch.Tensor | None = None) -> torch.Tensor:
        return call_layer(self, g, x, edge_data)


def call_layer(layer: nn.Module, g, x: torch.Tensor, edge_data: torch.Tensor | None = None) -> torch.Tensor:
    """What ``layer(g, x, edge_data)`` runs (a :class:`Layer` or a face of one): checked, then cached or compiled and run.

    ``x`` pending rows of the layer before (:mod:`sagann.engine.pending`)
    are taken pre-transformed where the layer allows it
    (:func:`sagann.engine.chain.chained_call`), else computed first.
    """
    if isinstance(x, PendingRows):
        out = chained_call(layer, g, x, edge_data)
        if out is not None:
            return out
        x = x.value()
    check_call(layer, g, x, edge_data)
    if reuses_gather(layer, g, x, edge_data):  # a Gather over unchanged inputs that need no gradient: computed once
        return run_on_cached_gather(layer, g, x, edge_data)
    note_input(layer, g, x, edge_data)
    return run_streamed(compiled(layer, int(x.shape[1]), edge_data), g, x, edge_data)
