"""Fused numba CPU backend: gSpMM and gSDDMM over one sub-chunk, autograd-aware.

Same results as :mod:`sagann.kernels.reference` (values, max/min winners,
gradients) without materialising the ``[nnz, d]`` message tensor in gSpMM
(``src_dot_dst`` is the exception: it gathers the ``[nnz, 1]`` gSDDMM
scores). Kernels compile on first use and are cached on disk by numba.

Inputs must be CPU tensors of one floating dtype; float32 and float64 are
computed natively, other floating dtypes in float32. ``src`` and ``dst``
must have the same width; ``edge`` may be ``[nnz]``, ``[nnz, 1]`` or
``[nnz, d]``. Double backward is not supported.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

import numba
import numpy as np
import torch
from torch.autograd.function import once_differentiable

from sagann.kernels import _cpu_kernels as K
from sagann.kernels._common import Frontend, GradCall, KernelCall, Placement, source_major_codes, validate
from sagann.kernels.graph import DERIVED, ChunkTensors, kernel_index

__all__ = ["gspmm", "gsddmm", "gspmm_sum_backward", "serial_pass"]

_BLOCKS_PER_THREAD = 8
_PLACEMENT = Placement("cpu", "use backend='reference' or a CUDA backend", "move it to the CPU")


def _operands(src, edge, dst, dtype: np.dtype | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-D C-contiguous numpy views of the operands; a ``(0, 0)`` dummy (of ``dtype`` if all are None) for None."""
    given = [t for t in (src, edge, dst) if t is not None]
    dtype = given[0].detach().numpy().dtype if given else dtype

    def view(t):
        if t is None:
            return np.empty((0, 0), dtype)
        a = t.detach().contiguous().numpy()
        return a.reshape(-1, 1) if a.ndim == 1 else a

    return view(src), view(edge), view(dst)


def filled(shape, dtype: np.dtype, fill=0) -> np.ndarray:
    """A kernel's output array on memory torch allocates (not numpy): the device meter counts it.
    ``fill=None``: left uninitialised, for a kernel that writes every entry."""
    dtype = torch.from_numpy(np.empty(0, dtype)).dtype
    return (torch.empty(tuple(shape), dtype=dtype) if fill is None else torch.full(tuple(shape), fill, dtype=dtype)).numpy()


def idx_array(t: torch.Tensor) -> np.ndarray:
    """An index tensor as the kernels read it: int32, or 16 bits read as unsigned (``kernels.graph.kernel_index``)."""
    a = t.contiguous().numpy()
    return a.view(np.uint16) if a.dtype == np.int16 else a


def row_bounds(ptr: np.ndarray) -> np.ndarray:
    rows = ptr.shape[0] - 1
    return K.balanced_bounds(ptr, max(1, min(rows, _BLOCKS_PER_THREAD * numba.get_num_threads())))


def bounds_of(g: ChunkTensors, ptr: str) -> np.ndarray:
    """:func:`row_bounds` of ``g.dst_ptr`` or ``g.src_ptr``, kept on ``g`` (and, for a copy of an
    ``EdgeChunk``, on the chunk: see ``ChunkTensors.from_chunk``), so each sub-chunk's blocks are cut once."""
    memo = g.__dict__.setdefault(DERIVED, {})  # not a field: dataclasses.replace starts afresh
    key = (ptr, numba.get_num_threads())
    found = memo.get(key)
    if found is None:
        found = memo[key] = row_bounds(idx_array(getattr(g, ptr)))
    return found


def _edge_bounds(nnz: int) -> np.ndarray:
    return K.even_bounds(nnz, max(1, min(nnz, _BLOCKS_PER_THREAD * numba.get_num_threads())))


# Below this much work ((edges + rows) x features) a kernel runs on one numba thread:
# waking the pool costs tens of microseconds when the cores are idle and far more when
# torch's OpenMP threads or other processes hold them, more than a second thread saves.
SERIAL_WORK = 1 << 18


_PASS = threading.local()  # .outer: this thread's numba thread count while serial_pass() holds it at one
_AS_IS = nullcontext()


class _Threads:
    """numba at ``n`` threads inside, on the calling thread only (the engine's other threads keep theirs)."""

    __slots__ = ("n", "_before")

    def __init__(self, n: int):
        self.n = n

    def __enter__(self) -> None:
        self._before = numba.get_num_threads()
        if self._before != self.n:
            numba.set_num_threads(self.n)

    def __exit__(self, *exc) -> bool:
        if self._before != self.n:
            numba.set_num_threads(self._before)
        return False


def _small(chunk, width: int) -> bool:
    """Does a (sub-)chunk's kernel work at ``width`` features fall below SERIAL_WORK (edges and rows times features)?"""
    return (chunk.nnz + chunk.num_dst + chunk.num_src) * max(width, 1) < SERIAL_WORK


def threads_for(g: ChunkTensors, width: int):
    """A context running the kernels inside on one numba thread when the chunk is small (see SERIAL_WORK).

    Inside :func:`serial_pass` a small chunk's kernels switch nothing, and a
    large one gets the threads the pass put aside while it runs.
    """
    outer = getattr(_PASS, "outer", None)
    if not _small(g, width):  # checked first: no numba call on a big chunk's path
        return _AS_IS if outer is None else _Threads(outer)
    return _Threads(1) if outer is None else _AS_IS


@contextmanager
def serial_pass(chunks, width: int):
    """Hold this thread's numba kernels at one thread through a pass whose every sub-chunk (``chunks``, anything
    with ``nnz``, ``num_dst`` and ``num_src``) is small at ``width`` (see :func:`threads_for`); else change nothing.

    Every kernel of such a pass runs on one thread anyway, and switching
    numba to one thread and back around each call cost about 5 us, 4-8 % of
    a small step's fixed work (``benchmarks/step_cost.py``).
    """
    held = getattr(_PASS, "outer", None) is not None or not all(_small(c, width) for c in chunks)
    n = 1 if held else numba.get_num_threads()
    if n == 1:  # a large pass, a pass inside one, or numba already at one thread: nothing to hold
        yield
        return
    numba.set_num_threads(1)
    _PASS.outer = n
    try:
        yield
    finally:
        _PASS.outer = None
        numba.set_num_threads(n)


def _validate(fn: str, g: ChunkTensors, op: str, src, edge, dst) -> tuple[int, torch.dtype]:
    """Check inputs of ``fn``; return the message width and the input dtype."""
    return validate(f"sagann.kernels.cpu.{fn}", _PLACEMENT, g, op, src, edge, dst)


def _degree(g: ChunkTensors, dtype: np.dtype) -> np.ndarray:
    """max(in-degree within the chunk, 1) of each destination row, ``[num_dst]``."""
    ptr = idx_array(g.dst_ptr)
    return np.maximum(ptr[1:] - ptr[:-1], 1).astype(dtype)


def _backward(ctx, mode: int, grad: torch.Tensor, arg: torch.Tensor | None):
    """Gradients of (src, edge, dst) from ``grad`` ([num_dst, d] or [nnz, k])."""
    src, edge, dst = ctx.saved_tensors[:3]
    return grads(GradCall(ctx.g, ctx.code, mode, grad, arg, src, edge, dst, (ctx.needs_src, ctx.needs_edge, ctx.needs_dst)))


def grads(call: GradCall, src_out=None, src_rows=None, source_major=False):
    """The backward kernels; with ``src_out`` the src gradient is added into ``src_out[src_rows]`` (rows unique) and None returned for it.

    ``source_major``: ``edge`` is ``edge[src_perm]`` and ``g.src_dst`` is
    set; only the src gradient (ops in :data:`SOURCE_MAJOR_CODES`).
    """
    with threads_for(call.g, call.grad.shape[1]):
        return _grads(call, src_out, src_rows, source_major)


# ops whose row-mode src gradient is a plain gather-sum of grad rows (the op table's
# source_major): with source-major arrays (g.src_dst, weights permuted alike) the kernel
# reads every per-edge array in sequence
SOURCE_MAJOR_CODES = source_major_codes()


def _grads(call: GradCall, src_out, src_rows, source_major=False):
    g, code, mode, arg, src, edge, dst = call.g, call.code, call.mode, call.arg, call.src, call.edge, call.dst
    needs_src, needs_edge, needs_dst = call.needs
    G = call.grad.contiguous().numpy()
    # int32 winners halve the bytes that the per-(edge, feature) winner test reads.
    A = np.empty((0, 0), np.int32) if arg is None else idx_array(arg.to(torch.int32))
    S, E, D = _operands(src, edge, dst, G.dtype)
    dtype = G.dtype
    d_src = d_edge = d_dst = None
    if needs_src:
        src_ptr = idx_array(g.src_ptr)
        if src_out is None:
            shape = S.shape if src is not None else (g.num_src, G.shape[1])  # a sum's src grad never reads src
            out, rows = filled(shape, dtype), np.empty(0, np.int32)
        else:
            out, rows = src_out.numpy(), idx_array(src_rows)
        if source_major:  # destination rows and weights already in source-major order: no permutation
            K.grad_src(code, mode, G, A, E, D, idx_array(kernel_index(g, "src_dst")), src_ptr, np.empty(0, np.int32), bounds_of(g, "src_ptr"), rows, out)
        else:
            K.grad_src(code, mode, G, A, E, D, idx_array(g.dst_idx), src_ptr, idx_array(g.src_perm), bounds_of(g, "src_ptr"), rows, out)
        d_src = torch.from_numpy(out) if src_out is None else None
    if needs_edge:
        out = filled(E.shape, dtype)
        K.grad_edge(code, mode, G, A, S, idx_array(g.src_idx), idx_array(g.dst_idx), _edge_bounds(g.nnz), out)
        d_edge = torch.from_numpy(out).reshape(edge.shape)
    if needs_dst:
        out = filled(D.shape, dtype)
        K.grad_dst(code, mode, G, A, S, idx_array(g.src_idx), idx_array(g.dst_ptr), bounds_of(g, "dst_ptr"), out)
        d_dst = torch.from_numpy(out)
    return d_src, d_edge, d_dst


def _save(ctx, g: ChunkTensors, code: int, src, edge, dst, *extra) -> None:
    ctx.g, ctx.code = g, code
    ctx.needs_src, ctx.needs_edge, ctx.needs_dst = ctx.needs_input_grad[-3:]
    ctx.save_for_backward(src, edge, dst, *extra)


class _GSpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: ChunkTensors, code: int, reduce: str, width: int, src, edge, dst):
        with threads_for(g, width):
            result, arg = _GSpMM._kernel(KernelCall(g, code, width, src, edge, dst), reduce)
        ctx.reduce = reduce
        _save(ctx, g, code, src, edge, dst, arg)
        ctx.mark_non_differentiable(arg)
        return result, arg

    @staticmethod
    def _kernel(call: KernelCall, reduce: str, src_rows=None, into=None):
        g, code, width = call.g, call.code, call.width
        S, E, D = _operands(call.src, call.edge, call.dst)
        src_idx = idx_array(kernel_index(g, "src_idx"))  # 16 bits where a stream kept them so
        # read the block in place: the kernel maps compact ids to block rows (src[src_rows[src_idx[e]]])
        rmap = np.empty(0, np.int32) if src_rows is None else idx_array(src_rows.to(torch.int32))
        dst_ptr = idx_array(g.dst_ptr)
        bounds = bounds_of(g, "dst_ptr")
        out = filled((g.num_dst, width), S.dtype) if into is None else into.numpy()  # the sum kernel adds into out
        if reduce in ("sum", "mean"):
            deg = _degree(g, S.dtype) if reduce == "mean" else np.empty(0, S.dtype)
            K.spmm_sum(code, S, E, D, src_idx, dst_ptr, bounds, deg, out, rmap)
            result = torch.from_numpy(out) if into is None else into
            arg = torch.empty(0, dtype=torch.long)
        else:
            arg_np = filled((g.num_dst, width), np.int64, -1)
            K.spmm_arg(code, reduce == "max", S, E, D, src_idx, dst_ptr, bounds, out, arg_np, rmap)
            result, arg = torch.from_numpy(out), torch.from_numpy(arg_np)
        return result, arg

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_arg):
        if ctx.reduce == "sum":
            grads = _backward(ctx, K.ROW, grad_out, None)
        elif ctx.reduce == "mean":
            deg = torch.from_numpy(_degree(ctx.g, grad_out.numpy().dtype))
            grads = _backward(ctx, K.ROW, grad_out / deg.unsqueeze(-1), None)
        else:
            grads = _backward(ctx, K.ARG, grad_out, ctx.saved_tensors[3])
        return (None, None, None, None) + grads


class _GSDDMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: ChunkTensors, code: int, width: int, src, edge, dst):
        S, E, D = _operands(src, edge, dst)
        out = filled((g.nnz, width), S.dtype)
        with threads_for(g, S.shape[1]):
            K.sddmm(code, S, E, D, idx_array(g.src_idx), idx_array(g.dst_idx), _edge_bounds(g.nnz), out)
        _save(ctx, g, code, src, edge, dst)
        return torch.from_numpy(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return (None, None, None) + _backward(ctx, K.EDGE, grad_out, None)



# the public API: checks, operand selection and casting shared with the other fused backend
def _block_spmm(call: KernelCall, reduce: str, src_rows, into=None):
    """gSpMM without autograd (the front-end ensures none is needed): ``src`` rows
    ``src_rows[src_idx]`` read in place (if given), a sum added into ``into`` (if given)."""
    with threads_for(call.g, call.width):
        return _GSpMM._kernel(call, reduce, src_rows, into)


_FRONTEND = Frontend(_validate, _GSpMM, _GSDDMM, grads, _block_spmm, source_major_codes=SOURCE_MAJOR_CODES)
gspmm = _FRONTEND.gspmm
gsddmm = _FRONTEND.gsddmm
gspmm_sum_backward = _FRONTEND.gspmm_sum_backward


def sum_backward_bytes_per_edge(op: str, d_edge: int, grad_edge: bool, source_major: bool = False, narrow_ids: bool = False) -> int:
    """Device bytes per edge of a direct sum backward here (:func:`_grads`), for the memory model.

    In CSC order the kernels read ``src_idx``, ``src_perm`` and
    ``dst_idx``: three int32 per edge. ``source_major``: the pass computes
    the source gradient alone from source-major arrays, and the host keeps
    each edge's destination in that order (``EdgeChunk.src_major_dst``, not
    for a file-backed chunk): ``src_dst`` alone crosses, one int32. Then the
    edge data and, when asked for, its gradient, in float32. ``narrow_ids``:
    ``src_dst`` in 16 bits, read so (``kernels.graph.kernel_index``); the
    memory model adds 2 bytes an edge back for a chunk whose ids do not fit.
    """
    if source_major and not grad_edge:
        return (2 if narrow_ids else 4) + 4 * int(d_edge)
    return 3 * 4 + 4 * int(d_edge) * (2 if grad_edge else 1)
