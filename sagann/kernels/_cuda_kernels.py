"""numba.cuda kernels behind :mod:`sagann.kernels.cuda` (device arrays in, device arrays out).

Operands are the CPU kernels' triple ``(S, E, D)`` (src rows, edge rows,
dst rows; 2-D, C-contiguous, one float dtype; an unused one is any dummy).
Kernels are built lazily by the factories below, one per (op, reducer or
mode, dtype, block shape) and cached: the op is a compile-time constant, so
each kernel holds only its own branch.

**Thread layout.** 2-D blocks of ``(tx, ty)`` threads: ``threadIdx.x``
walks the features (``tx`` a power of two <= 32, so one item's lanes share
a warp and read a feature row with coalesced loads), ``threadIdx.y`` walks
``ty`` work items; ``blockIdx.x`` walks groups of items and ``blockIdx.y``
feature tiles of width ``tx``. The two kernels that reduce over features
(``src_dot_dst`` and the gradient of the one edge value of
``src_mul_edge`` / ``src_add_edge`` broadcast over the features) use a single tile, stride over the features and finish
with a shared-memory tree (``cuda.syncthreads``, which the simulator has;
it has no warp shuffles).

**Segments (load balance).** Row-parallel kernels (forward and grad of
``dst`` over ``dst_ptr``, grad of ``src`` over ``src_ptr`` / ``src_perm``)
do not give a heavy R-MAT row to one thread: row ``r`` is cut into
``ceil(deg(r) / seg)`` *segments* of at most ``seg`` consecutive positions.
``seg_ptr`` (``[rows + 1]``) is the exclusive scan of those counts; work
item ``w`` belongs to the row ``r`` with ``seg_ptr[r] <= w < seg_ptr[r+1]``
(binary search, the same for a warp's lanes). Items are launched for an
upper bound on the count, so no device-to-host sync is needed; those past
``seg_ptr[rows]`` exit. A row with one segment -- most rows -- stores its
result; a row with several:

* sum, mean and every gradient: each segment atomically adds its partial
  sum (so heavy rows are not bitwise reproducible run to run);
* max / min: each segment writes its (value, position) partial to scratch
  at ``part_ptr[r] + j``, then :func:`combine_arg`, one thread per (row,
  feature), scans the row's partials in segment order with the same strict
  comparison: the smallest-position tie rule holds exactly, no atomics.
"""
from __future__ import annotations

import functools

from numba import cuda

from sagann.kernels._common import (  # noqa: F401  (codes re-exported for the launcher)
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

# ---------------------------------------------------------------- device functions


@cuda.jit(device=True)
def _row_of(seg_ptr, seg_row, w):
    """The row ``r`` with ``seg_ptr[r] <= w < seg_ptr[r + 1]``: read from ``seg_row`` where it was filled, else a binary search."""
    if seg_row.shape[0] > 0:
        return seg_row[w]
    lo = 0
    hi = seg_ptr.shape[0] - 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if seg_ptr[mid] <= w:
            lo = mid
        else:
            hi = mid - 1
    return lo


@cuda.jit
def segment_rows(seg_ptr, seg_row):
    """``seg_row[w] = r`` for every segment ``w`` of row ``r``: the kernels then find a work item's row with one load.

    A binary search over ``seg_ptr`` costs each work item about log2(rows)
    dependent loads (20 on a million rows) before its first edge; on a
    sub-chunk of a few thousand rows this kernel's launch costs more.
    """
    r = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    if cuda.threadIdx.x != 0 or r >= seg_ptr.shape[0] - 1:
        return
    for w in range(seg_ptr[r], seg_ptr[r + 1]):
        seg_row[w] = r


@cuda.jit(device=True)
def _segment_end(lo, seg, row_end):
    """``min(lo + seg, row_end)`` (spelled out: the built-in CUDA target cannot type ``min`` on mixed ints)."""
    hi = lo + seg
    if row_end < hi:
        hi = row_end
    return hi


@cuda.jit(device=True)
def _message(op, S, E, D, s, e, r, k):
    """Feature ``k`` of the message of edge ``e`` (source ``s``, destination row ``r``)."""
    if op == COPY_SRC:
        return S[s, k]
    if op == COPY_EDGE:
        return E[e, k]
    if op == MUL_EDGE:
        return S[s, k] * E[e, k]
    if op == MUL_SCALAR:
        return S[s, k] * E[e, 0]
    if op == ADD_EDGE:
        return S[s, k] + E[e, k]
    if op == ADD_SCALAR:
        return S[s, k] + E[e, 0]
    if op == ADD_DST:
        return S[s, k] + D[r, k]
    if op == SUB_DST:
        return S[s, k] - D[r, k]
    return S[s, k] * D[r, k]  # MUL_DST


@cuda.jit(device=True)
def _beats(is_max, m, best):
    """``m`` replaces ``best``: strictly better (ties keep the earlier position); a NaN beats numbers."""
    if m != m:
        return best == best
    if is_max:
        return m > best
    return m < best


@cuda.jit(device=True)
def _coef(mode, G, A, e, r, k, zero):
    """What multiplies d msg(e)[k] / d input: grad of the row, of the winner only, or of the edge."""
    if mode == EDGE:
        return G[e, k]
    if mode == ROW:
        return G[r, k]
    if A[r, k] == e:  # ARG
        return G[r, k]
    return zero


# ---------------------------------------------------------------- forward


@functools.cache
def spmm_sum(op: int, mean: bool, dt):
    """``out[r] (+)= sum of msg(e)`` over a segment of row ``r``; ``/ max(deg, 1)`` for mean.

    Args: ``(S, E, D, src_idx, dst_ptr, seg_ptr, seg_row, seg, out)``; ``out`` starts at zero.
    """

    @cuda.jit
    def kernel(S, E, D, src_idx, dst_ptr, seg_ptr, seg_row, seg, out):
        k = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        w = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if k >= out.shape[1] or w >= seg_ptr[seg_ptr.shape[0] - 1]:
            return
        r = _row_of(seg_ptr, seg_row, w)
        lo = dst_ptr[r] + (w - seg_ptr[r]) * seg
        hi = _segment_end(lo, seg, dst_ptr[r + 1])
        acc = dt(0)
        for e in range(lo, hi):
            acc += _message(op, S, E, D, src_idx[e], e, r, k)
        if mean:
            acc = acc / dt(dst_ptr[r + 1] - dst_ptr[r])
        if seg_ptr[r + 1] - seg_ptr[r] == 1:
            out[r, k] = acc
        else:
            cuda.atomic.add(out, (r, k), acc)

    return kernel


@functools.cache
def spmm_arg(op: int, is_max: bool):
    """Per segment and feature, the max (min) message and its CSC position.

    One-segment rows write ``out`` / ``arg``; the others write partial
    ``j`` of row ``r`` to ``part_val`` / ``part_arg`` row ``part_ptr[r] + j``.

    Args: ``(S, E, D, src_idx, dst_ptr, seg_ptr, seg_row, seg, part_ptr, part_val, part_arg, out, arg)``.
    """

    @cuda.jit
    def kernel(S, E, D, src_idx, dst_ptr, seg_ptr, seg_row, seg, part_ptr, part_val, part_arg, out, arg):
        k = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        w = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if k >= out.shape[1] or w >= seg_ptr[seg_ptr.shape[0] - 1]:
            return
        r = _row_of(seg_ptr, seg_row, w)
        j = w - seg_ptr[r]
        lo = dst_ptr[r] + j * seg
        hi = _segment_end(lo, seg, dst_ptr[r + 1])
        best = _message(op, S, E, D, src_idx[lo], lo, r, k)
        at = lo
        for e in range(lo + 1, hi):
            m = _message(op, S, E, D, src_idx[e], e, r, k)
            if _beats(is_max, m, best):
                best = m
                at = e
        if seg_ptr[r + 1] - seg_ptr[r] == 1:
            out[r, k] = best
            arg[r, k] = at
        else:
            p = part_ptr[r] + j
            part_val[p, k] = best
            part_arg[p, k] = at

    return kernel


@functools.cache
def combine_arg(is_max: bool):
    """Fold the partials of rows with several segments, in segment order (one thread per row, feature).

    Args: ``(part_ptr, part_val, part_arg, out, arg)``.
    """

    @cuda.jit
    def kernel(part_ptr, part_val, part_arg, out, arg):
        k = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        r = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if k >= out.shape[1] or r >= out.shape[0]:
            return
        a = part_ptr[r]
        b = part_ptr[r + 1]
        if a == b:
            return
        best = part_val[a, k]
        at = part_arg[a, k]
        for p in range(a + 1, b):
            m = part_val[p, k]
            if _beats(is_max, m, best):
                best = m
                at = part_arg[p, k]
        out[r, k] = best
        arg[r, k] = at

    return kernel


@functools.cache
def sddmm(op: int):
    """``out[e, k] = msg(e)[k]``, one thread per (edge, feature). Args: ``(S, E, D, src_idx, dst_idx, out)``."""

    @cuda.jit
    def kernel(S, E, D, src_idx, dst_idx, out):
        k = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        e = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if k >= out.shape[1] or e >= out.shape[0]:
            return
        out[e, k] = _message(op, S, E, D, src_idx[e], e, dst_idx[e], k)

    return kernel


@functools.cache
def edge_reduce(op: int, mode: int, dt, tx: int, ty: int):
    """``out[e, 0] = sum over k`` of a per-feature product, ``tx`` lanes per edge.

    ``DOT_DST``: ``S[src] . D[dst]`` (gSDDMM forward). ``MUL_SCALAR``:
    ``coef(e, k) * S[src, k]``, the gradient of the one weight of edge ``e``;
    ``ADD_SCALAR``: ``coef(e, k)``, that of its one added value.
    Launched with a ``(tx, ty)`` block and one feature tile.

    Args: ``(S, D, G, A, src_idx, dst_idx, out)``.
    """
    slots = tx * ty

    @cuda.jit
    def kernel(S, D, G, A, src_idx, dst_idx, out):
        shared = cuda.shared.array(slots, dt)
        lane = cuda.threadIdx.x
        slot = cuda.threadIdx.y * tx + lane
        e = cuda.blockIdx.x * ty + cuda.threadIdx.y
        zero = dt(0)
        acc = zero
        if e < out.shape[0]:
            s = src_idx[e]
            r = dst_idx[e]
            for k in range(lane, S.shape[1], tx):
                if op == DOT_DST:
                    acc += S[s, k] * D[r, k]
                elif op == ADD_SCALAR:
                    acc += _coef(mode, G, A, e, r, k, zero)
                else:
                    acc += _coef(mode, G, A, e, r, k, zero) * S[s, k]
        shared[slot] = acc
        cuda.syncthreads()  # every thread reaches each barrier: no early return above
        step = tx // 2
        while step > 0:
            if lane < step:
                shared[slot] += shared[slot + step]
            cuda.syncthreads()
            step //= 2
        if lane == 0 and e < out.shape[0]:
            out[e, 0] = shared[slot]

    return kernel


# ---------------------------------------------------------------- backward


@functools.cache
def grad_src(op: int, mode: int, dt):
    """Gradient of ``src``, source-major over segments of ``src_ptr`` (edges via ``src_perm``).

    ``out`` starts at zero. Args: ``(G, A, E, D, dst_idx, src_ptr, src_perm, seg_ptr, seg_row, seg, out)``.
    """

    @cuda.jit
    def kernel(G, A, E, D, dst_idx, src_ptr, src_perm, seg_ptr, seg_row, seg, out):
        k = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        w = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if k >= out.shape[1] or w >= seg_ptr[seg_ptr.shape[0] - 1]:
            return
        s = _row_of(seg_ptr, seg_row, w)
        lo = src_ptr[s] + (w - seg_ptr[s]) * seg
        hi = _segment_end(lo, seg, src_ptr[s + 1])
        zero = dt(0)
        acc = zero
        for p in range(lo, hi):
            e = src_perm[p]
            r = dst_idx[e]
            if op == DOT_DST:
                if mode == EDGE:
                    acc += G[e, 0] * D[r, k]
                else:
                    acc += G[r, 0] * D[r, k]
            else:
                c = _coef(mode, G, A, e, r, k, zero)
                if op == MUL_EDGE:
                    c *= E[e, k]
                elif op == MUL_SCALAR:
                    c *= E[e, 0]
                elif op == MUL_DST:
                    c *= D[r, k]
                acc += c  # COPY_SRC, ADD_DST, SUB_DST, ADD_EDGE, ADD_SCALAR: d msg / d src = 1
        if seg_ptr[s + 1] - seg_ptr[s] == 1:
            out[s, k] = acc
        else:
            cuda.atomic.add(out, (s, k), acc)

    return kernel


@functools.cache
def grad_dst(op: int, mode: int, dt):
    """Gradient of ``dst`` (ADD/SUB/MUL/DOT_DST), destination-parallel over segments of ``dst_ptr``.

    ``out`` starts at zero. Args: ``(G, A, S, src_idx, dst_ptr, seg_ptr, seg_row, seg, out)``.
    """

    @cuda.jit
    def kernel(G, A, S, src_idx, dst_ptr, seg_ptr, seg_row, seg, out):
        k = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        w = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if k >= out.shape[1] or w >= seg_ptr[seg_ptr.shape[0] - 1]:
            return
        r = _row_of(seg_ptr, seg_row, w)
        lo = dst_ptr[r] + (w - seg_ptr[r]) * seg
        hi = _segment_end(lo, seg, dst_ptr[r + 1])
        zero = dt(0)
        acc = zero
        for e in range(lo, hi):
            if op == DOT_DST:
                if mode == EDGE:
                    acc += G[e, 0] * S[src_idx[e], k]
                else:
                    acc += G[r, 0] * S[src_idx[e], k]
            else:
                c = _coef(mode, G, A, e, r, k, zero)
                if op == SUB_DST:
                    acc -= c
                elif op == MUL_DST:
                    acc += c * S[src_idx[e], k]
                else:  # ADD_DST
                    acc += c
        if seg_ptr[r + 1] - seg_ptr[r] == 1:
            out[r, k] = acc
        else:
            cuda.atomic.add(out, (r, k), acc)

    return kernel


@functools.cache
def grad_edge(op: int, mode: int, dt):
    """Gradient of ``edge`` for COPY_EDGE, MUL_EDGE and ADD_EDGE, one thread per (edge, feature).

    (MUL_SCALAR and ADD_SCALAR sum over features: :func:`edge_reduce`.) Args: ``(G, A, S, src_idx, dst_idx, out)``.
    """

    @cuda.jit
    def kernel(G, A, S, src_idx, dst_idx, out):
        k = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        e = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if k >= out.shape[1] or e >= out.shape[0]:
            return
        c = _coef(mode, G, A, e, dst_idx[e], k, dt(0))
        if op == MUL_EDGE:
            c *= S[src_idx[e], k]
        out[e, k] = c  # COPY_EDGE, ADD_EDGE: d msg / d edge = 1

    return kernel
