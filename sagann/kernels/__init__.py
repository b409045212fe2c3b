"""Scatter / ApplyEdge / Gather kernels over one sub-chunk.

``gspmm`` (message op x reducer, one row per destination) and ``gsddmm``
(one row per edge) dispatch to a backend from the registry
(:mod:`sagann.kernels.backend`): ``"reference"`` (torch ops, the oracle),
``"cpu"`` and ``"cuda"`` (fused numba kernels), or one added with
``register_backend``. The message ops are the records of the op table
(:mod:`sagann.kernels.ops`).
"""
from __future__ import annotations

import torch

from sagann.kernels.backend import (
    CALL_COUNTER,
    BackendFallbackWarning,
    KernelBackend,
    available_backends,
    backend_names,
    count_call,
    get_backend,
    gpu_fallback_reason,
    gpu_kernel_backend,
    register_backend,
)
from sagann.kernels.graph import ChunkTensors
from sagann.kernels.ops import MESSAGE_OPS, OPS, MessageOp, op_spec
from sagann.kernels.reference import REDUCERS

__all__ = [
    "ChunkTensors",
    "MESSAGE_OPS",
    "OPS",
    "MessageOp",
    "op_spec",
    "REDUCERS",
    "gspmm",
    "gsddmm",
    "gspmm_sum_backward",
    "source_major_backward",
    "KernelBackend",
    "register_backend",
    "get_backend",
    "available_backends",
    "backend_names",
    "BackendFallbackWarning",
    "gpu_kernel_backend",
    "gpu_fallback_reason",
    "count_call",
    "CALL_COUNTER",
]


def source_major_backward(backend: str, op: str, d_edge: int) -> bool:
    """Does ``backend``'s sum backward for ``src`` read everything in sequence given source-major operands?

    Then a caller that keeps ``ChunkTensors.src_dst`` and edge data in
    source-major order (``edge_order="source_major"``) saves a random read
    per edge; elsewhere it would only add a permutation. The op table says
    which ops (``MessageOp.source_major``; ``scalar_source_major`` for one
    edge value per edge) the CPU backend runs that way; another backend says
    so itself (``reads_source_major(op, d_edge)``: the cuda backend's CSR
    product, whose transposed matrix is exactly the source-major arrays).
    """
    spec = op_spec(op)
    if backend == "cpu":
        return spec.source_major or (spec.scalar_source_major and d_edge == 1)
    reads = getattr(get_backend(backend), "reads_source_major", None) if backend in available_backends() else None
    return bool(reads(op, d_edge)) if reads is not None else False


def gspmm(
    g: ChunkTensors,
    op: str,
    reduce: str,
    src: torch.Tensor | None = None,
    edge: torch.Tensor | None = None,
    dst: torch.Tensor | None = None,
    *,
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
    count_call(backend)
    return get_backend(backend).gspmm(g, op, reduce, src, edge, dst, src_rows=src_rows, out=out)


def gsddmm(
    g: ChunkTensors,
    op: str,
    src: torch.Tensor | None = None,
    edge: torch.Tensor | None = None,
    dst: torch.Tensor | None = None,
    backend: str = "reference",
) -> torch.Tensor:
    """Per-edge ApplyEdge of a builtin op, ``[nnz, d]`` in CSC order, autograd-aware."""
    count_call(backend)
    return get_backend(backend).gsddmm(g, op, src=src, edge=edge, dst=dst)


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
    count_call(backend)
    return get_backend(backend).gspmm_sum_backward(
        g, op, grad, src, edge, dst, needs=needs, src_out=src_out, src_rows=src_rows, edge_order=edge_order
    )
