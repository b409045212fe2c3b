"""In-memory references a chunked layer call is held equal to."""
from __future__ import annotations

import numpy as np
import torch

from sagann.engine.layer import EdgeBatch
from sagann.fn import MessageFn
from sagann.kernels import reference
from sagann.kernels.graph import ChunkTensors


def whole_graph_layer(layer, edge_index: np.ndarray, x: torch.Tensor, edge_data: torch.Tensor | None = None) -> torch.Tensor:
    """The layer on the whole graph at once with plain torch ops (no chunks, no engine)."""
    n = x.shape[0]
    src, dst = np.asarray(edge_index[0]), np.asarray(edge_index[1])
    g, order = ChunkTensors.from_coo(src, dst, n, n)  # CSC order = by destination, then edge id
    s_term = layer.apply_src(x) if callable(getattr(layer, "apply_src", None)) else None
    d_term = layer.apply_dst(x) if callable(getattr(layer, "apply_dst", None)) else None
    data = None if edge_data is None else edge_data[order]
    ae = layer.apply_edge
    if isinstance(ae, MessageFn):
        msg = reference.message(g, ae.op, src=s_term if s_term is not None else x, edge=data, dst=d_term if d_term is not None else x)
    else:
        gs, gd = g.src_idx, g.dst_idx
        e = EdgeBatch(
            g.nnz,
            {
                "src": lambda: x[gs],
                "dst": lambda: x[gd],
                "data": lambda: None if data is None else (data.unsqueeze(-1) if data.dim() == 1 else data),
                "src_term": lambda: None if s_term is None else s_term[gs],
                "dst_term": lambda: None if d_term is None else d_term[gd],
            },
        )
        msg = ae(e)
    reduce = "sum" if layer.gather in ("sum", "mean") else layer.gather
    acc, _ = reference.gather(g, msg, reduce)
    if layer.gather == "mean":
        deg = torch.from_numpy(np.bincount(dst, minlength=n)).clamp(min=1).float()
        acc = acc / deg.unsqueeze(-1)
    return layer.apply_vertex(x, acc)


def dense_aggregate(edge_index: np.ndarray, x: torch.Tensor, reduce: str) -> torch.Tensor:
    """sum/mean/max/min of source rows per destination with a dense loop: an independent check."""
    n, d = x.shape
    out = torch.zeros(n, d, dtype=torch.float64)
    for v in range(n):
        rows = x.double()[torch.from_numpy(edge_index[0][edge_index[1] == v])]
        if len(rows) == 0:
            continue
        out[v] = {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.max(0).values, "min": rows.min(0).values}[reduce]
    return out.float()
