"""GCN's symmetric normalisation ``D^-1/2 (A + I) D^-1/2``, per edge, without the edge list in RAM where there is none.

A dataset's graph keeps its edges in chunks (``ChunkedGraph.edges_in_chunks``);
its weights are then computed chunk by chunk, and unit weights are never
materialised. Where the list is in RAM the whole-list formulas run. Both
give the same values: with unit weights every degree is a small integer,
exact in float32 in any summation order.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from sagann.chunks.recut import edges_at
from sagann.engine.graph import ChunkedGraph
from sagann.scheduler.devices import host_tensor

__all__ = ["gcn_norm", "loop_weights", "unit_gcn_norm"]


def _loop_vertices(g: ChunkedGraph, loop_ids: np.ndarray) -> np.ndarray:
    part = g.edges_in_chunks()
    return g.edge_index()[0][loop_ids] if part is None else edges_at(part, loop_ids)[0]


def loop_weights(g: ChunkedGraph, kept: np.ndarray, edge_weight: torch.Tensor | None, fill: float) -> torch.Tensor:
    """Weights of the self-loop graph: kept edges' weights (``kept``: a mask over g's edges), then one loop per vertex."""
    if edge_weight is None:  # unit weights: an existing self loop keeps weight 1
        edge_weight = torch.ones(g.num_edges)
    loop_w = torch.full((g.num_vertices,), fill, dtype=edge_weight.dtype)
    loop_ids = np.flatnonzero(~kept)
    if loop_ids.size:  # an existing self loop keeps its weight
        loop_w = loop_w.index_put((torch.from_numpy(_loop_vertices(g, loop_ids)),), edge_weight[torch.from_numpy(loop_ids)])
    return torch.cat([edge_weight[torch.from_numpy(kept)], loop_w])


def gcn_norm(graph: ChunkedGraph, w: torch.Tensor) -> torch.Tensor:
    """``w`` (one weight per edge of ``graph``) normalised by the weighted degrees at both ends."""
    part = graph.edges_in_chunks()
    if part is None:
        ei = torch.from_numpy(graph.edge_index())
        deg = torch.zeros(graph.num_vertices, dtype=w.dtype).index_add(0, ei[1], w)
        dinv = deg.pow(-0.5).masked_fill(deg == 0, 0.0)
        return dinv[ei[0]] * w * dinv[ei[1]]
    return _by_chunks(graph, part, lambda ids: w[ids], torch.empty(graph.num_edges, dtype=w.dtype))


def unit_gcn_norm(g: ChunkedGraph, graph: ChunkedGraph, kept: np.ndarray | None, fill: float) -> torch.Tensor:
    """The normalised weights of unit edge weights on ``graph`` (``g``'s self-loop graph when ``kept`` is given), placed under the host budget."""
    part = graph.edges_in_chunks()
    if part is None:
        w = gcn_norm(graph, torch.ones(graph.num_edges) if kept is None else loop_weights(g, kept, None, fill))
        return graph.host.copy(w, "GCN edge weights") if graph.host.enabled else w
    n, one = graph.num_vertices, torch.ones(())
    if kept is None:
        weight = lambda ids: one.expand(ids.shape[0])  # noqa: E731
    else:
        first, loop_w = graph.num_edges - n, torch.full((n,), fill)
        loop_ids = np.flatnonzero(~kept)
        if loop_ids.size:
            loop_w[torch.from_numpy(_loop_vertices(g, loop_ids))] = 1.0
        weight = lambda ids: torch.where(ids >= first, loop_w[(ids - first).clamp(min=0)], one)  # noqa: E731
    out = graph.host.empty(graph.num_edges, what="GCN edge weights") if graph.host.enabled else torch.empty(graph.num_edges)
    return _by_chunks(graph, part, weight, out)


def _by_chunks(graph: ChunkedGraph, part, weight: Callable[[torch.Tensor], torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """Two passes over the chunks: weighted in-degrees, then each edge's ``w / sqrt(deg_src deg_dst)`` into ``out``."""
    deg = torch.zeros(graph.num_vertices, dtype=out.dtype)
    for c in part.sub_chunks():
        deg.index_add_(0, torch.from_numpy(c.global_dst()), weight(host_tensor(c.edge_ids)))
    dinv = deg.pow(-0.5).masked_fill(deg == 0, 0.0)
    for c in part.sub_chunks():
        ids = host_tensor(c.edge_ids)
        out[ids] = dinv[torch.from_numpy(c.global_src())] * weight(ids) * dinv[torch.from_numpy(c.global_dst())]
    return out
