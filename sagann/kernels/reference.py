"""The oracle: Scatter / ApplyEdge / Gather with plain torch ops and autograd.

Every fast kernel is held equal to these functions (values and gradients).
They materialise the ``[nnz, d]`` message tensor; that is their job.

Semantics shared by all backends:

* ``sum`` adds messages per destination row; ``mean`` divides by the row's
  in-degree within the chunk (max(deg, 1)).
* ``max``/``min`` pick, per row and feature, the winning edge: the extreme
  value, ties broken by the smallest CSC position (= smallest global edge
  id, since a row's edges are stored in global edge order). The gradient
  flows to that edge alone (DGL's convention). ``arg`` holds the winner's
  CSC position, -1 for rows without edges, whose output is 0.
"""
from __future__ import annotations

import torch

from sagann.kernels.graph import ChunkTensors
from sagann.kernels.ops import MESSAGE_OPS, OPS, op_spec

__all__ = ["MESSAGE_OPS", "REDUCERS", "NEEDS", "check_op", "check_reducer", "message", "gather", "gspmm", "gsddmm", "gspmm_sum_backward"]

REDUCERS = ("sum", "mean", "max", "min")
# the operands each message op reads (from the op table)
NEEDS = {name: spec.operands for name, spec in OPS.items()}


def check_op(op: str) -> None:
    op_spec(op)


def check_reducer(reduce: str) -> None:
    if reduce not in REDUCERS:
        raise ValueError(f"unknown reducer {reduce!r}; known reducers: {', '.join(REDUCERS)}")


def _edge_column(edge: torch.Tensor) -> torch.Tensor:
    return edge.unsqueeze(-1) if edge.dim() == 1 else edge


def message(
    g: ChunkTensors,
    op: str,
    src: torch.Tensor | None = None,
    edge: torch.Tensor | None = None,
    dst: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scatter + ApplyEdge for a builtin op: the ``[nnz, d]`` messages in CSC order.

    Shapes:
        src ``[num_src, d]``, dst ``[num_dst, d]``, edge ``[nnz]``, ``[nnz, 1]``
        or ``[nnz, d]``; result ``[nnz, d]`` (``[nnz, 1]`` for src_dot_dst).
    """
    spec = op_spec(op)
    s = src.index_select(0, g.src_idx) if "src" in spec.operands else None
    e = _edge_column(edge) if "edge" in spec.operands else None
    d = dst.index_select(0, g.dst_idx) if "dst" in spec.operands else None
    return spec.reference(s, e, d)


def gather(g: ChunkTensors, msg: torch.Tensor, reduce: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gather ``[nnz, d]`` messages into ``[num_dst, d]`` rows; also the max/min winners."""
    check_reducer(reduce)
    nnz, d = msg.shape[0], msg.shape[1]
    index = g.dst_idx.long().unsqueeze(-1).expand(nnz, d)
    if reduce in ("sum", "mean"):
        out = msg.new_zeros(g.num_dst, d).index_add(0, g.dst_idx, msg)
        if reduce == "mean":
            deg = (g.dst_ptr[1:] - g.dst_ptr[:-1]).clamp(min=1).to(msg.dtype)
            out = out / deg.unsqueeze(-1)
        return out, None
    amax = "amax" if reduce == "max" else "amin"
    fill = float("-inf") if reduce == "max" else float("inf")
    values = msg.detach()
    best = values.new_full((g.num_dst, d), fill).scatter_reduce(0, index, values, amax, include_self=True)
    positions = torch.arange(nnz, device=msg.device).unsqueeze(-1).expand(nnz, d)
    candidates = torch.where(values == best.index_select(0, g.dst_idx), positions, nnz)
    arg = torch.full((g.num_dst, d), nnz, dtype=torch.long, device=msg.device)
    arg = arg.scatter_reduce(0, index, candidates, "amin", include_self=True)
    empty = arg == nnz
    arg = arg.masked_fill(empty, -1)
    if nnz == 0:
        return msg.new_zeros(g.num_dst, d), arg
    out = msg.gather(0, arg.clamp(min=0)).masked_fill(empty, 0.0)
    return out, arg


def gspmm(
    g: ChunkTensors,
    op: str,
    reduce: str,
    src: torch.Tensor | None = None,
    edge: torch.Tensor | None = None,
    dst: torch.Tensor | None = None,
    *,
    src_rows: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Generalised SpMM: Gather(ApplyEdge(Scatter(...))) over one sub-chunk.

    ``src_rows`` and ``out`` as in :func:`sagann.kernels.gspmm` (rows picked
    from a block first; a sum added into ``out`` without autograd).
    """
    if src_rows is not None and src is not None:
        src = src.index_select(0, src_rows.long())
    result, arg = gather(g, message(g, op, src, edge, dst), reduce)
    if out is None:
        return result, arg
    if reduce != "sum" or result.requires_grad:
        raise ValueError("gspmm: out= accumulates sums without autograd; use reduce='sum' under torch.no_grad(), or drop out=")
    return out.add_(result), None


def gsddmm(
    g: ChunkTensors,
    op: str,
    src: torch.Tensor | None = None,
    edge: torch.Tensor | None = None,
    dst: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalised SDDMM: one output row per edge, in CSC order."""
    return message(g, op, src, edge, dst)


def gspmm_sum_backward(
    g: ChunkTensors,
    op: str,
    grad: torch.Tensor,
    src: torch.Tensor | None = None,
    edge: torch.Tensor | None = None,
    dst: torch.Tensor | None = None,
    *,
    needs: tuple[str, ...] = ("src", "edge", "dst"),
    src_out: torch.Tensor | None = None,
    src_rows: torch.Tensor | None = None,
    edge_order: str = "csc",
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``gspmm(g, op, "sum", ...)`` w.r.t. the operands in ``needs``, by autograd (the oracle).

    With ``src_out`` the src gradient is added into ``src_out[src_rows]`` and None returned for it.
    ``edge_order="source_major"``: ``edge`` is ``edge[g.src_perm]`` (put back in CSC order here; no edge gradient).
    """
    spec = op_spec(op)
    if edge_order not in ("csc", "source_major"):
        raise ValueError(f"gspmm_sum_backward: edge_order must be 'csc' or 'source_major', got {edge_order!r}")
    if edge_order == "source_major" and edge is not None:
        if "edge" in needs and "edge" in spec.grad_operands:
            raise ValueError("gspmm_sum_backward: edge_order='source_major' gives no edge gradient; drop 'edge' from needs or pass edge in CSC order")
        edge = torch.empty_like(edge).index_copy_(0, g.src_perm.long(), edge)
    leaves = {}
    with torch.enable_grad():
        args = {}
        for name, t in (("src", src), ("edge", edge), ("dst", dst)):
            if t is not None and name in needs and name in spec.grad_operands:
                t = leaves[name] = t.detach().requires_grad_(True)
            args[name] = t
        out, _ = gspmm(g, op, "sum", **args)
        got = dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()), grad, allow_unused=True))) if leaves and out.requires_grad else {}
    d = [got.get(name) for name in ("src", "edge", "dst")]
    d = [torch.zeros_like(leaves[name]) if name in leaves and t is None else t for name, t in zip(("src", "edge", "dst"), d)]
    if src_out is not None and d[0] is not None:
        src_out.index_add_(0, src_rows.to(device=src_out.device, dtype=torch.long), d[0].to(src_out.dtype))
        d[0] = None
    return d[0], d[1], d[2]
