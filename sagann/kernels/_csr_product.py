"""Sums of ``copy_src`` and ``src_mul_edge`` (one weight per edge) as torch's sparse CSR product: cuSPARSE's SpMM on a GPU.

Why: for these two ops a sub-chunk's gSpMM sum *is* a sparse-dense matrix
product, ``A @ src`` with ``A[dst, src] = weight`` (1 for ``copy_src``),
and its src gradient is ``A^T @ grad``. cuSPARSE runs that product faster
than the numba Gather, and torch calls it with a fraction of the host time
numba's launch from torch tensors costs; per-step host time is what bounds
an out-of-core GPU epoch (measured in docs/benchmarks.md). The numba
kernels keep every other op, max/min, and the edge and dst gradients.

No ``[nnz, d]`` message tensor is made: what a call holds beyond its
operands is :func:`scratch_bytes_per_edge` (the unit weights of
``copy_src``; the transposed column ids and weights of a backward), which
the memory model charges.
"""
from __future__ import annotations

import warnings

import torch

from sagann.kernels.graph import ChunkTensors
from sagann.kernels.ops import OPS

__all__ = ["CODES", "UNIT_CODE", "eligible", "fits", "takes", "scratch_bytes_per_edge", "forward_sum", "src_grad"]

UNIT_CODE = OPS["copy_src"].code
"""``copy_src``: every edge weighs 1."""
CODES = frozenset({UNIT_CODE, OPS["src_mul_edge"].scalar_code})
"""The kernel codes whose sums are a CSR product: ``copy_src`` and ``src_mul_edge`` with one value per edge."""

# torch announces its sparse CSR support as beta on first use, once per process: nothing a user can act on
warnings.filterwarnings("ignore", message=r"Sparse CSR tensor support is in beta state")


def eligible(code: int, reduce: str, dtype: torch.dtype) -> bool:
    """Can a gSpMM of kernel ``code`` and ``reduce`` on ``dtype`` operands run as the CSR product?"""
    return code in CODES and reduce in ("sum", "mean") and dtype in (torch.float32, torch.float64)


def fits(nnz: int, rows: int, cols: int) -> bool:
    """Can a ``rows`` x ``cols`` CSR matrix hold ``nnz`` entries? cuSPARSE refuses more (multi-edges in a tiny chunk); the numba kernels take those."""
    return nnz <= rows * cols


def takes(op: str, d_edge: int) -> bool:
    """Do the sums of builtin ``op`` with ``d_edge`` edge columns run as the product?"""
    return op == "copy_src" or (op == "src_mul_edge" and d_edge == 1)


def scratch_bytes_per_edge(op: str, d_edge: int) -> int:
    """Device bytes per edge one call holds beyond its operands (0 for an op that never runs as the product).

    Forward: the column ids of a block read in place (int32), and the unit
    weights of ``copy_src``. Backward reads the source-major arrays the
    engine sends (``src_dst``, edge weights in ``src_perm`` order): only
    ``copy_src``'s unit weights. A backward given CSC-order weights instead
    permutes them and the column ids (8 bytes; ``gspmm_sum_backward``'s own
    callers, not the engine's passes).
    """
    if not takes(op, d_edge):
        return 0
    return 8 if op == "copy_src" else 4


def _weights(g: ChunkTensors, code: int, edge: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    if code == UNIT_CODE:
        return torch.ones(g.nnz, dtype=dtype, device=g.device)
    return edge.reshape(-1)


def _matrix(ptr: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    # the chunk's arrays were checked where they were made (ChunkTensors); torch's own check would read them back
    return torch.sparse_csr_tensor(ptr, cols, values, (rows, width), check_invariants=False)


def forward_sum(
    g: ChunkTensors, code: int, src: torch.Tensor, edge: torch.Tensor | None, *, src_rows: torch.Tensor | None = None,
    into: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum_e w_e * src[src_idx[e]]`` per destination row, ``[num_dst, d]``; no autograd.

    ``src_rows``: ``src`` is a block and the chunk's source ``s`` its row
    ``src_rows[s]`` (read in place). ``into``: the sum is added into that
    ``[num_dst, d]`` tensor (the product's own ``beta = 1``), which is returned.
    """
    # index_select takes the int32 ids as they are: an int64 copy would be 8 uncharged bytes per edge
    cols = g.src_idx if src_rows is None else src_rows.to(torch.int32).index_select(0, g.src_idx)
    if g.nnz == 0:
        return into if into is not None else src.new_zeros(g.num_dst, src.shape[1])
    a = _matrix(g.dst_ptr, cols, _weights(g, code, edge, src.dtype), g.num_dst, src.shape[0])
    src = src.contiguous()
    if into is not None:
        return torch.addmm(into, a, src, out=into)
    return a @ src


def src_grad(g: ChunkTensors, code: int, grad: torch.Tensor, edge: torch.Tensor | None, *, source_major: bool = False) -> torch.Tensor:
    """The gradient of :func:`forward_sum`'s sum w.r.t. the compact src rows, ``[num_src, d]``: ``A^T @ grad``.

    ``edge`` in CSC order, or as ``edge[src_perm]`` with ``source_major``.
    """
    if g.nnz == 0:
        return grad.new_zeros(g.num_src, grad.shape[1])
    cols = g.src_dst if g.src_dst is not None else g.dst_idx.index_select(0, g.src_perm)
    if code == UNIT_CODE:
        values = torch.ones(g.nnz, dtype=grad.dtype, device=g.device)
    else:
        values = edge.reshape(-1) if source_major else edge.reshape(-1).index_select(0, g.src_perm)
    return _matrix(g.src_ptr, cols, values, g.num_src, g.num_dst) @ grad.contiguous()
