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


# Rows with at least this many edges sum through :func:`_sum_rows` (eight at a time); shorter ones in a plain loop.
# Measured (one thread, widths 16-128, rows of one length over 8k and 262k source rows): the eight-wide path is
# 2-8x slower a row of 1-4 edges, about even at 8-16, and up to 1.5x faster from 16 at widths 64-128 (latency-bound
# rows); a 2-D chunk of a sparse graph holds mostly rows of 1-4 edges, the Reddit shape's rows hundreds.
UNROLLED_EDGES = 16


@njit(**_JIT)  # not inlined in numba's IR: each kernel compiled in half the time, and LLVM runs it as fast
def _sum_rows(out, o, x, idx, perm, w, lo, hi, rmap):
    """``out[o] += sum of x[rmap[idx[q]]] (* w[q, 0])`` over ``q = perm[p]`` (``= p`` if perm is empty), p in [lo, hi).

    ``rmap`` empty means no map (``x[idx[q]]``); the forward passes a
    sub-chunk's ``src_rows`` there to read V_i's block in place.

    The gather-sum behind copy_src / scalar-weighted src_mul_edge (forward,
    one destination row) and their source-major backward (one source row).
    Edges go eight at a time: one read-modify-write of ``out[o]`` per eight
    rows of ``x`` instead of per row, and eight independent row streams in
    flight (the loop is bound by the latency of the random ``x`` rows).
    ``w`` empty means unit weights. Only for rows of at least
    :data:`UNROLLED_EDGES` edges: a shorter row costs more here than in a
    plain loop (the callers' own).
    """
    d = out.shape[1]
    has_perm = perm.shape[0] > 0
    has_map = rmap.shape[0] > 0
    p = lo
    if w.shape[0] == 0:
        while p + 8 <= hi:
            if has_perm:
                s0, s1, s2, s3 = idx[perm[p]], idx[perm[p + 1]], idx[perm[p + 2]], idx[perm[p + 3]]
                s4, s5, s6, s7 = idx[perm[p + 4]], idx[perm[p + 5]], idx[perm[p + 6]], idx[perm[p + 7]]
            else:
                s0, s1, s2, s3 = idx[p], idx[p + 1], idx[p + 2], idx[p + 3]
                s4, s5, s6, s7 = idx[p + 4], idx[p + 5], idx[p + 6], idx[p + 7]
            if has_map:
                s0, s1, s2, s3, s4, s5, s6, s7 = rmap[s0], rmap[s1], rmap[s2], rmap[s3], rmap[s4], rmap[s5], rmap[s6], rmap[s7]
            for k in range(d):
                out[o, k] += ((x[s0, k] + x[s1, k]) + (x[s2, k] + x[s3, k])) + ((x[s4, k] + x[s5, k]) + (x[s6, k] + x[s7, k]))
            p += 8
        if p + 4 <= hi:
            if has_perm:
                s0, s1, s2, s3 = idx[perm[p]], idx[perm[p + 1]], idx[perm[p + 2]], idx[perm[p + 3]]
            else:
                s0, s1, s2, s3 = idx[p], idx[p + 1], idx[p + 2], idx[p + 3]
            if has_map:
                s0, s1, s2, s3 = rmap[s0], rmap[s1], rmap[s2], rmap[s3]
            for k in range(d):
                out[o, k] += (x[s0, k] + x[s1, k]) + (x[s2, k] + x[s3, k])
            p += 4
        while p < hi:
            s0 = idx[perm[p]] if has_perm else idx[p]
            if has_map:
                s0 = rmap[s0]
            for k in range(d):
                out[o, k] += x[s0, k]
            p += 1
    else:
        while p + 8 <= hi:
            if has_perm:
                q0, q1, q2, q3 = perm[p], perm[p + 1], perm[p + 2], perm[p + 3]
                q4, q5, q6, q7 = perm[p + 4], perm[p + 5], perm[p + 6], perm[p + 7]
            else:
                q0, q1, q2, q3, q4, q5, q6, q7 = p, p + 1, p + 2, p + 3, p + 4, p + 5, p + 6, p + 7
            s0, s1, s2, s3, s4, s5, s6, s7 = idx[q0], idx[q1], idx[q2], idx[q3], idx[q4], idx[q5], idx[q6], idx[q7]
            if has_map:
                s0, s1, s2, s3, s4, s5, s6, s7 = rmap[s0], rmap[s1], rmap[s2], rmap[s3], rmap[s4], rmap[s5], rmap[s6], rmap[s7]
            w0, w1, w2, w3, w4, w5, w6, w7 = w[q0, 0], w[q1, 0], w[q2, 0], w[q3, 0], w[q4, 0], w[q5, 0], w[q6, 0], w[q7, 0]
            for k in range(d):
                out[o, k] += ((x[s0, k] * w0 + x[s1, k] * w1) + (x[s2, k] * w2 + x[s3, k] * w3)) + (
                    (x[s4, k] * w4 + x[s5, k] * w5) + (x[s6, k] * w6 + x[s7, k] * w7)
                )
            p += 8
        if p + 4 <= hi:
            if has_perm:
                q0, q1, q2, q3 = perm[p], perm[p + 1], perm[p + 2], perm[p + 3]
            else:
                q0, q1, q2, q3 = p, p + 1, p + 2, p + 3
            s0, s1, s2, s3 = idx[q0], idx[q1], idx[q2], idx[q3]
            if has_map:
                s0, s1, s2, s3 = rmap[s0], rmap[s1], rmap[s2], rmap[s3]
            w0, w1, w2, w3 = w[q0, 0], w[q1, 0], w[q2, 0], w[q3, 0]
            for k in range(d):
                out[o, k] += (x[s0, k] * w0 + x[s1, k] * w1) + (x[s2, k] * w2 + x[s3, k] * w3)
            p += 4
        while p < hi:
            q0 = perm[p] if has_perm else p
            s0, w0 = idx[q0], w[q0, 0]
            if has_map:
                s0 = rmap[s0]
            for k in range(d):
                out[o, k] += x[s0, k] * w0
            p += 1


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
    """
    d = out.shape[1]
    identity = src_idx[:0]  # an empty permutation: edges in CSC order
    has_map = rmap.shape[0] > 0
    for b in prange(bounds.shape[0] - 1):
        for r in range(bounds[b], bounds[b + 1]):
            lo, hi = dst_ptr[r], dst_ptr[r + 1]
            if hi == lo:  # most rows of a small chunk: skip before the call (~40 ns a row otherwise)
                pass
            elif op == COPY_SRC:
                if hi - lo >= UNROLLED_EDGES:
                    _sum_rows(out, r, src, src_idx, identity, edge[:0], lo, hi, rmap)
                else:  # its own loop: inside the one below (every op's branch) it ran 2x slower
                    for e in range(lo, hi):
                        s = rmap[src_idx[e]] if has_map else src_idx[e]
                        for k in range(d):
                            out[r, k] += src[s, k]
            elif op == MUL_SCALAR:
                if hi - lo >= UNROLLED_EDGES:
                    _sum_rows(out, r, src, src_idx, identity, edge, lo, hi, rmap)
                else:
                    for e in range(lo, hi):
                        s = rmap[src_idx[e]] if has_map else src_idx[e]
                        w = edge[e, 0]
                        for k in range(d):
                            out[r, k] += src[s, k] * w
            else:
                for e in range(lo, hi):
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
    weights = edge if op == MUL_SCALAR else edge[:0]
    weighted, permuted = weights.shape[0] > 0, src_perm.shape[0] > 0
    mapped = out_rows.shape[0] > 0
    for b in prange(bounds.shape[0] - 1):
        for s in range(bounds[b], bounds[b + 1]):
            if src_ptr[s] == src_ptr[s + 1]:
                continue
            o = out_rows[s] if mapped else s
            if fast:  # grad rows of the destinations (source-major ids: ``src_perm`` empty), eight edges at a time
                lo, hi = src_ptr[s], src_ptr[s + 1]
                if hi - lo >= UNROLLED_EDGES:
                    _sum_rows(out, o, grad, dst_idx, src_perm, weights, lo, hi, src_perm[:0])
                elif weighted:
                    for p in range(lo, hi):
                        q = src_perm[p] if permuted else p
                        r = dst_idx[q]
                        w = weights[q, 0]
                        for k in range(d):
                            out[o, k] += grad[r, k] * w
                else:
                    for p in range(lo, hi):
                        r = dst_idx[src_perm[p] if permuted else p]
                        for k in range(d):
                            out[o, k] += grad[r, k]
                continue
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
