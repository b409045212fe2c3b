"""PyG's calling convention for sagann layers: ``conv(x, edge_index)`` as well as ``conv(g, x)``.

A PyG script calls ``conv(x, edge_index, ...)``; a converted model (see
``sagann.convert``) calls ``conv(x, g, ...)`` with a :class:`ChunkedGraph`
where it used to pass ``edge_index``. Both are put into sagann's order
``(g, x, ...)`` here. A plain ``[2, E]`` edge_index tensor becomes a
ChunkedGraph on an unlimited CPU device (in memory, P = 1), built once per
tensor and reused while that tensor lives unchanged, so the layers of one
model share it (and GCN's normalisation). To run out of core, build the
graph with a device budget: ``sagann.from_pyg(data, device=...)``.
"""
from __future__ import annotations

import weakref

import torch

from sagann.engine.graph import ChunkedGraph

__all__ = ["graph_for_edge_index", "sagann_order"]

_GRAPHS: dict[int, tuple] = {}  # id(edge_index) -> (weakref to it, its version, N, the graph)


def graph_for_edge_index(edge_index: torch.Tensor, num_vertices: int) -> ChunkedGraph:
    """The in-memory ChunkedGraph of a ``[2, E]`` edge_index tensor with N vertices, cached while the tensor lives unchanged."""
    key = id(edge_index)
    hit = _GRAPHS.get(key)
    if hit is not None and hit[0]() is edge_index and hit[1] == edge_index._version and hit[2] == num_vertices:
        return hit[3]
    try:
        graph = ChunkedGraph(edge_index, num_vertices)
    except ValueError as err:
        raise ValueError(f"layer(x, edge_index): x has {num_vertices} rows, one per vertex, so ids must lie in [0, {num_vertices}); {err}") from None
    _GRAPHS[key] = (weakref.ref(edge_index), edge_index._version, num_vertices, graph)
    weakref.finalize(edge_index, _GRAPHS.pop, key, None)
    return graph


def _is_edge_index(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[0] == 2 and not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def sagann_order(args: tuple) -> tuple:
    """``(x, edge_index, ...)`` or ``(x, g, ...)`` as ``(g, x, ...)``; anything else unchanged (the layer's checks name what is wrong)."""
    if len(args) < 2 or isinstance(args[0], ChunkedGraph) or not isinstance(args[0], torch.Tensor):
        return args
    x, second = args[0], args[1]
    if isinstance(second, ChunkedGraph):
        return (second, x, *args[2:])
    if _is_edge_index(second) and x.dim() == 2:
        return (graph_for_edge_index(second, int(x.shape[0])), x, *args[2:])
    if isinstance(second, torch.Tensor) and second.layout != torch.strided:
        raise TypeError(
            "a sagann layer takes edge_index as a [2, E] integer tensor or a sagann.ChunkedGraph, not a sparse "
            f"{second.layout} adjacency; pass data.edge_index, or build the graph with sagann.from_pyg(data, device=...)"
        )
    return args
