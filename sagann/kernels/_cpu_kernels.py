"""Numba kernels behind :mod:`sagann.kernels.cpu` (numpy in, numpy out).

Every kernel takes the same operand triple ``(src, edge, dst)`` as 2-D
C-contiguous arrays of one float dtype (an unused operand is a ``(0, 0)``
dummy) and an integer op code. Parallel loops run over *blocks* of rows or
edges cut by :func:`balanced_bounds`, so R-MAT's heavy rows do not leave one
thread doing most of the work. No kernel writes a location that another
iteration of its parallel loop also writes: forward and grad of ``dst`` are
destination-parallel, grad of ``src`` is source-major (``src_ptr`` /
``src_perm``), grad of ``edge`` and gSDDMM are edge-parallel.

Coefficient modes of the backward kernels (what multiplies d msg / d input):
``ROW``: ``grad[dst row]`` (sum; mean is pre-scaled by the caller),
``ARG``: ``grad[dst row]`` only for the max/min winner edge, ``EDGE``:
``grad[edge]`` (gradient of a gSDDMM output).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from sagann.kernels._common import (  # noqa: F401  (the op table's codes; compile-time constants here)
    ADD_DST,
    ADD_EDGE,
    ADD_SCALAR,
    ARG,
    COPY_EDGE,
    COPY_SRC,
    DOT_DST,
    EDGE,
    MUL_DST,
    MUL_EDGE,
    MUL_SCALAR,
    ROW,
    SUB_DST,
)
from sagann.kernels._row_gather import (
    sum_mapped_rows,
    sum_permuted_rows,
    sum_rows,
    sum_weighted_mapped_rows,
    sum_weighted_permuted_rows,
    sum_weighted_rows,
)

# "contract" lets LLVM fuse a multiply and an add into one FMA (one rounding instead of two);
# no reassociation, so each kernel's summation order is still the one written here.
# Measured: 7-10% on the GCN bench's gather-sums.
_JIT = dict(nogil=True, cache=True, fastmath={"contract"})
_PJIT = dict(parallel=True, nogil=True, cache=True, fastmath={"contract"})


@njit(**_JIT)
def balanced_bounds(ptr, nblocks):
    """Cut rows ``0..len(ptr)-1`` into ``nblocks`` runs of about equal ``nnz + rows``.

    Shapes: ptr ``[rows + 1]`` (a CSR/CSC pointer); result int64 ``[nblocks + 1]``.
    """
    rows = ptr.shape[0] - 1
    bounds = np.empty(nblocks + 1, np.int64)
    bounds[0] = 0
    bounds[nblocks] = rows
    total = np.int64(ptr[rows]) + rows
    for b in range(1, nblocks):
        target = total * b // nblocks
        lo, hi = bounds[b - 1], rows  # smallest r with ptr[r] + r >= target
        while lo < hi:
            mid = (lo + hi) // 2
            if np.int64(ptr[mid]) + mid < target:
                lo = mid + 1
            else:
                hi = mid
        bounds[b] = lo
    return bounds


@njit(**_JIT)
def even_bounds(n, nblocks):
    """Cut ``0..n`` into ``nblocks`` runs of equal length (int64 ``[nblocks + 1]``)."""
    bounds = np.empty(nblocks + 1, np.int64)
    for b in range(nblocks + 1):
        bounds[b] = np.int64(n) * b // nblocks
    return bounds


@njit(**_JIT)
def _fill_msg(op, src, edge, dst, s, e, r, buf):
    """Write the message of edge ``e`` (source ``s``, destination row ``r``) into ``buf [d]``."""
    d = buf.shape[0]
    if op == COPY_SRC:
        for k in range(d):
            buf[k] = src[s, k]
    elif op == COPY_EDGE:
        for k in range(d):
            buf[k] = edge[e, k]
    elif op == MUL_EDGE:
        for k in range(d):
            buf[k] = src[s, k] * edge[e, k]
    elif op == MUL_SCALAR:
        w = edge[e, 0]
        for k in range(d):
            buf[k] = src[s, k] * w
    elif op == ADD_EDGE:
        for k in range(d):
            buf[k] = src[s, k] + edge[e, k]
    elif op == ADD_SCALAR:
        w = edge[e, 0]
        for k in range(d):
            buf[k] = src[s, k] + w
    elif op == ADD_DST:
        for k in range(d):
            buf[k] = src[s, k] + dst[r, k]
    elif op == SUB_DST:
        for k in range(d):
            buf[k] = src[s, k] - dst[r, k]
    else:  # MUL_DST
        for k in range(d):
            buf[k] = src[s, k] * dst[r, k]


@njit(**_PJIT)
def spmm_sum(op, src, edge, dst, src_idx, dst_ptr, bounds, deg, out, rmap):
    """``out[r] = sum of msg(e)`` over the edges ``e`` of row ``r``, then ``/ deg[r]`` for mean.

    ``out`` starts at zero (or holds what to add onto); ``deg`` is
    ``[num_dst]`` (max(in-degree, 1) in ``out``'s dtype) for mean, ``[0]``
    for sum. Source rows are ``src[rmap[src_idx[e]]]`` (``rmap`` empty: no map).
    copy_src and scalar-weighted sums go through :mod:`._row_gather`.
    """
    if op == COPY_SRC or op == MUL_SCALAR:
        _gather_forward(op == MUL_SCALAR, src, edge, src_idx, dst_ptr, bounds, deg, out, rmap)
        return
    d = out.shape[1]
    has_map = rmap.shape[0] > 0
    for b in prange(bounds.shape[0] - 1):
        for r in range(bounds[b], bounds[b + 1]):
            for e in range(dst_ptr[r], dst_ptr[r + 1]):
                s = rmap[src_idx[e]] if has_map else src_idx[e]
                if op == COPY_EDGE:
                    for k in range(d):
                        out[r, k] += edge[e, k]
                elif op == MUL_EDGE:
                    for k in range(d):
                        out[r, k] += src[s, k] * edge[e, k]
                elif op == ADD_EDGE:
                    for k in range(d):
                        out[r, k] += src[s, k] + edge[e, k]
                elif op == ADD_SCALAR:
                    w = edge[e, 0]
                    for k in range(d):
                        out[r, k] += src[s, k] + w
                elif op == ADD_DST:
                    for k in range(d):
                        out[r, k] += src[s, k] + dst[r, k]
                elif op == SUB_DST:
                    for k in range(d):
                        out[r, k] += src[s, k] - dst[r, k]
                else:
                    for k in range(d):
                        out[r, k] += src[s, k] * dst[r, k]
            if deg.shape[0] > 0:
                for k in range(d):
                    out[r, k] /= deg[r]


@njit(**_JIT)
def _sum_block(weighted, out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows):
    """Rows ``r0:r1`` through the IR gather variant their arrays call for: edges permuted (``perm``) or ids
    mapped (``rmap``), the sum weighted by ``w[:, 0]`` or not (see :mod:`._row_gather`)."""
    if perm.shape[0] > 0:
        if weighted:
            sum_weighted_permuted_rows(out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows)
        else:
            sum_permuted_rows(out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows)
    elif rmap.shape[0] > 0:
        if weighted:
            sum_weighted_mapped_rows(out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows)
        else:
            sum_mapped_rows(out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows)
    elif weighted:
        sum_weighted_rows(out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows)
    else:
        sum_rows(out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows)


@njit(**_PJIT)
def _gather_forward(weighted, src, edge, src_idx, dst_ptr, bounds, deg, out, rmap):
    """copy_src (``weighted`` False) or scalar-weighted sums, a block of rows per call into the IR gather."""
    if src.shape[1] != out.shape[1]:  # the IR gather reads as many columns of a source row as out has
        raise ValueError("spmm_sum: src and out widths differ")
    none = src_idx[:0]
    for b in prange(bounds.shape[0] - 1):
        r0, r1 = bounds[b], bounds[b + 1]
        _sum_block(weighted, out, src, src_idx, none, edge, dst_ptr, r0, r1, rmap, none)
        if deg.shape[0] > 0:
            for r in range(r0, r1):
                for k in range(out.shape[1]):
                    out[r, k] /= deg[r]


@njit(**_PJIT)
def spmm_arg(op, is_max, src, edge, dst, src_idx, dst_ptr, bounds, out, arg, rmap):
    """Per row and feature, the max (or min) message and its CSC position.

    Ties go to the smallest position, NaN beats every number (the first NaN
    wins); rows without edges are left as given (the caller passes
    ``out`` = 0 and ``arg`` = -1). Source rows as in :func:`spmm_sum`.
    """
    d = out.shape[1]
    has_map = rmap.shape[0] > 0
    nblocks = bounds.shape[0] - 1
    scratch = np.empty((nblocks, d), out.dtype)  # one message buffer per block
    for b in prange(nblocks):
        buf = scratch[b]
        for r in range(bounds[b], bounds[b + 1]):
            lo = dst_ptr[r]
            for e in range(lo, dst_ptr[r + 1]):
                _fill_msg(op, src, edge, dst, rmap[src_idx[e]] if has_map else src_idx[e], e, r, buf)
                if e == lo:
                    for k in range(d):
                        out[r, k] = buf[k]
                        arg[r, k] = e
                elif is_max:  # a NaN message wins and stays (first NaN position)
                    for k in range(d):
                        m, o = buf[k], out[r, k]
                        if m > o or (m != m and o == o):
                            out[r, k] = m
                            arg[r, k] = e
                else:
                    for k in range(d):
                        m, o = buf[k], out[r, k]
                        if m < o or (m != m and o == o):
                            out[r, k] = m
                            arg[r, k] = e


@njit(**_PJIT)
def sddmm(op, src, edge, dst, src_idx, dst_idx, bounds, out):
    """One message row per edge: ``out[e] = msg(e)`` (``[nnz, 1]`` for DOT_DST)."""
    for b in prange(bounds.shape[0] - 1):
        for e in range(bounds[b], bounds[b + 1]):
            s = src_idx[e]
            r = dst_idx[e]
            if op == DOT_DST:
                acc = out[e, 0]
                for k in range(src.shape[1]):
                    acc += src[s, k] * dst[r, k]
                out[e, 0] = acc
            else:
                _fill_msg(op, src, edge, dst, s, e, r, out[e])


@njit(**_PJIT)
def grad_src(op, mode, grad, arg, edge, dst, dst_idx, src_ptr, src_perm, bounds, out_rows, out):
    """Gradient of ``src``, source-major: each source row sums over its own edges.

    Adds source row ``s``'s gradient into ``out[out_rows[s]]`` (``out[s]`` if
    ``out_rows`` is empty): with unique ``out_rows`` the engine accumulates
    straight into its per-interval gradient, no scatter afterwards.
    """
    d = out.shape[1]
    zero = np.zeros(1, out.dtype)[0]
    # d msg / d src is 1 (or the scalar weight): a plain gather-sum of grad rows
    fast = mode == ROW and (op == COPY_SRC or op == ADD_DST or op == SUB_DST or op == ADD_EDGE or op == ADD_SCALAR or op == MUL_SCALAR)
    weighted = op == MUL_SCALAR and edge.shape[0] > 0
    mapped = out_rows.shape[0] > 0
    if fast:  # grad rows of the destinations (source-major ids: ``src_perm`` empty), through the IR gather
        if grad.shape[1] != d:
            raise ValueError("grad_src: grad and out widths differ")
        none = src_perm[:0]
        for b in prange(bounds.shape[0] - 1):
            _sum_block(weighted, out, grad, dst_idx, src_perm, edge, src_ptr, bounds[b], bounds[b + 1], none, out_rows)
        return
    for b in prange(bounds.shape[0] - 1):
        for s in range(bounds[b], bounds[b + 1]):
            if src_ptr[s] == src_ptr[s + 1]:
                continue
            o = out_rows[s] if mapped else s
            for p in range(src_ptr[s], src_ptr[s + 1]):
                e = src_perm[p]
                r = dst_idx[e]
                g = e if mode == EDGE else r
                if mode == ARG:  # selects, not branches, so the loops vectorise
                    if op == MUL_EDGE:
                        for k in range(d):
                            out[o, k] += (grad[r, k] if arg[r, k] == e else zero) * edge[e, k]
                    elif op == MUL_SCALAR:
                        w = edge[e, 0]
                        for k in range(d):
                            out[o, k] += (grad[r, k] if arg[r, k] == e else zero) * w
                    elif op == MUL_DST:
                        for k in range(d):
                            out[o, k] += (grad[r, k] if arg[r, k] == e else zero) * dst[r, k]
                    else:  # COPY_SRC, ADD_DST, SUB_DST, ADD_EDGE, ADD_SCALAR
                        for k in range(d):
                            out[o, k] += grad[r, k] if arg[r, k] == e else zero
                elif op == COPY_SRC or op == ADD_DST or op == SUB_DST or op == ADD_EDGE or op == ADD_SCALAR:
                    for k in range(d):
                        out[o, k] += grad[g, k]
                elif op == MUL_SCALAR:
                    w = edge[e, 0]
                    for k in range(d):
                        out[o, k] += grad[g, k] * w
                elif op == MUL_EDGE:
                    for k in range(d):
                        out[o, k] += grad[g, k] * edge[e, k]
                elif op == MUL_DST:
                    for k in range(d):
                        out[o, k] += grad[g, k] * dst[r, k]
                else:  # DOT_DST
                    c = grad[g, 0]
                    for k in range(d):
                        out[o, k] += c * dst[r, k]


@njit(**_PJIT)
def grad_dst(op, mode, grad, arg, src, src_idx, dst_ptr, bounds, out):
    """Gradient of ``dst``, destination-parallel (ops ADD/SUB/MUL/DOT_DST)."""
    d = out.shape[1]
    zero = np.zeros(1, out.dtype)[0]
    for b in prange(bounds.shape[0] - 1):
        for r in range(bounds[b], bounds[b + 1]):
            for e in range(dst_ptr[r], dst_ptr[r + 1]):
                s = src_idx[e]
                g = e if mode == EDGE else r
                if mode == ARG:
                    if op == ADD_DST:
                        for k in range(d):
                            out[r, k] += grad[r, k] if arg[r, k] == e else zero
                    elif op == SUB_DST:
                        for k in range(d):
                            out[r, k] -= grad[r, k] if arg[r, k] == e else zero
                    else:  # MUL_DST
                        for k in range(d):
                            out[r, k] += (grad[r, k] if arg[r, k] == e else zero) * src[s, k]
                elif op == ADD_DST:
                    for k in range(d):
                        out[r, k] += grad[g, k]
                elif op == SUB_DST:
                    for k in range(d):
                        out[r, k] -= grad[g, k]
                elif op == MUL_DST:
                    for k in range(d):
                        out[r, k] += grad[g, k] * src[s, k]
                else:  # DOT_DST
                    c = grad[g, 0]
                    for k in range(d):
                        out[r, k] += c * src[s, k]


@njit(**_PJIT)
def grad_edge(op, mode, grad, arg, src, src_idx, dst_idx, bounds, out):
    """Gradient of ``edge`` (ops COPY_EDGE, MUL_EDGE, MUL_SCALAR, ADD_EDGE, ADD_SCALAR), edge-parallel.

    ``out`` is ``[nnz, 1]`` for the scalar codes (summed over features),
    else ``[nnz, d]``; it starts at zero.
    """
    d = grad.shape[1]
    zero = np.zeros(1, out.dtype)[0]
    for b in prange(bounds.shape[0] - 1):
        for e in range(bounds[b], bounds[b + 1]):
            s = src_idx[e]
            r = dst_idx[e]
            g = e if mode == EDGE else r
            if mode == ARG:
                if op == COPY_EDGE or op == ADD_EDGE:
                    for k in range(d):
                        out[e, k] = grad[r, k] if arg[r, k] == e else zero
                elif op == MUL_EDGE:
                    for k in range(d):
                        out[e, k] = (grad[r, k] if arg[r, k] == e else zero) * src[s, k]
                elif op == ADD_SCALAR:
                    acc = zero
                    for k in range(d):
                        acc += grad[r, k] if arg[r, k] == e else zero
                    out[e, 0] = acc
                else:  # MUL_SCALAR
                    acc = zero
                    for k in range(d):
                        acc += (grad[r, k] if arg[r, k] == e else zero) * src[s, k]
                    out[e, 0] = acc
            elif op == COPY_EDGE or op == ADD_EDGE:
                for k in range(d):
                    out[e, k] = grad[g, k]
            elif op == MUL_EDGE:
                for k in range(d):
                    out[e, k] = grad[g, k] * src[s, k]
            elif op == ADD_SCALAR:
                acc = zero
                for k in range(d):
                    acc += grad[g, k]
                out[e, 0] = acc
            else:  # MUL_SCALAR
                acc = zero
                for k in range(d):
                    acc += grad[g, k] * src[s, k]
                out[e, 0] = acc
