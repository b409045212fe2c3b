"""Scatter / ApplyEdge / Gather kernels over one sub-chunk.

``gspmm`` (message op x reducer, one row per destination) and ``gsddmm``
(one row per edge) dispatch to a backend: ``"reference"`` (torch ops, the
oracle), and the fused backends registered in ``_BACKENDS``.
"""
from __future__ import annotations

import torch

from sagann.kernels import reference
from sagann.kernels.graph import ChunkTensors
from sagann.kernels.reference import MESSAGE_OPS, REDUCERS

__all__ = ["ChunkTensors", "MESSAGE_OPS", "REDUCERS", "gspmm", "gsddmm", "gspmm_sum_backward", "source_major_backward", "available_backends"]

_BACKENDS = {"reference": reference}


def _backend(name: str):
    if name == "cpu" and "cpu" not in _BACKENDS:
        from sagann.kernels import cpu  # numba: compiled lazily, on first use

        _BACKENDS["cpu"] = cpu
    if name == "cuda" and "cuda" not in _BACKENDS:
        from sagann.kernels import cuda  # numba.cuda (or its simulator): compiled lazily, on first use

        _BACKENDS["cuda"] = cuda
    if name not in _BACKENDS:
        known = ", ".join(available_backends())
        raise ValueError(f"unknown kernel backend {name!r}; known backends: {known}")
    return _BACKENDS[name]


def source_major_backward(backend: str, op: str, d_edge: int) -> bool:
    """Does ``backend``'s sum backward for ``src`` read everything in sequence given source-major operands?

    Then a caller that keeps ``ChunkTensors.src_dst`` and edge data in
    source-major order (``edge_order="source_major"``) saves a random read
    per edge; elsewhere it would only add a permutation.
    """
    return backend == "cpu" and (op in ("copy_src", "src_add_dst", "src_sub_dst") or (op == "src_mul_edge" and d_edge == 1))


def available_backends() -> list[str]:
    return ["reference", "cpu", "cuda"]


def gspmm(
    g: ChunkTensors,
    op: str,
    reduce: str,
    src: torch.Tensor | None = None,
    edge: torch.Tensor | None = None,
    dst: torch.Tensor | None = None,
    backend: str = "reference",
    src_rows: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused Gather(ApplyEdge(Scatter)) over one sub-chunk, autograd-aware.

    Returns ``(out [num_dst, d], arg)``; ``arg`` is the ``[num_dst, d]`` CSC
    position of each max/min winner (-1 for empty rows), None for sum/mean.
    With ``src_rows`` (``[num_src]``), ``src`` is a block holding the chunk's
    source ``s`` at row ``src_rows[s]`` (read in place where the backend can).
    With ``out`` (sum only, no autograd) the sum is added into that
    ``[num_dst, d]`` tensor, which is returned: an accumulator over sub-chunks.
    """
    if backend != "reference":
        extra = {k: v for k, v in (("src_rows", src_rows), ("out", out)) if v is not None}
        return _backend(backend).gspmm(g, op, reduce, src=src, edge=edge, dst=dst, **extra)
    if src_rows is not None and src is not None:
        src = src.index_select(0, src_rows.long())
    result, arg = reference.gspmm(g, op, reduce, src=src, edge=edge, dst=dst)
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
    backend: str = "reference",
) -> torch.Tensor:
    """Per-edge ApplyEdge of a builtin op, ``[nnz, d]`` in CSC order, autograd-aware."""
    return _backend(backend).gsddmm(g, op, src=src, edge=edge, dst=dst)


def gspmm_sum_backward(
    g: ChunkTensors,
    op: str,
    grad: torch.Tensor,
    src: torch.Tensor | None = None,
    edge: torch.Tensor | None = None,
    dst: torch.Tensor | None = None,
    needs: tuple[str, ...] = ("src", "edge", "dst"),
    src_out: torch.Tensor | None = None,
    src_rows: torch.Tensor | None = None,
    backend: str = "reference",
    edge_order: str = "csc",
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(d_src, d_edge, d_dst)`` of ``gspmm(g, op, "sum", ...)`` from the output gradient, no recompute.

    Operands not in ``needs`` get None. With ``src_out`` the src gradient is
    added into ``src_out[src_rows]`` (unique rows) and ``d_src`` is None.
    ``edge_order="source_major"``: ``edge`` is given as ``edge[g.src_perm]``
    (no edge gradient then); with ``g.src_dst`` the CPU backend reads every
    per-edge array in sequence.
    """
    return _backend(backend).gspmm_sum_backward(g, op, grad, src=src, edge=edge, dst=dst, needs=needs, src_out=src_out, src_rows=src_rows, edge_order=edge_order)
