"""Counting sorts behind partitioning (numba): O(E) where ``np.argsort(kind="stable")`` is O(E log E).

Partitioning sorts every edge by (chunk, destination) and every sub-chunk's
edges by source; these keys are small integers, so counting sorts do it in
linear passes and give exactly the stable order the argsorts gave (ties
keep ascending positions). The edges are sorted by destination once
(:func:`destination_major`); each set of interval bounds then splits
that order by source interval (:func:`regroup`), as a planner's search
does for every P it tries.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

_JIT = dict(nogil=True, cache=True)


@njit(**_JIT)
def _interval_table(bounds, n):
    table = np.empty(n, np.int32)
    for p in range(bounds.shape[0] - 1):
        for v in range(bounds[p], bounds[p + 1]):
            table[v] = p
    return table


@njit(**_JIT)
def _destination_major(src, dst, ptr, ids, src_out):
    """Every edge by destination, stable (a counting sort): its position and source at each CSC position."""
    fill = ptr[:-1].copy()
    for k in range(dst.shape[0]):
        t = fill[dst[k]]
        fill[dst[k]] += 1
        ids[t] = k
        src_out[t] = src[k]


def destination_major(src: np.ndarray, dst: np.ndarray, num_vertices: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ptr, ids, src)``: the edges (ids below ``num_vertices``) in CSC order, by destination, ties by position, for :func:`regroup`.

    ``ptr`` (int64, ``[N + 1]``) is the CSC pointer, counted here (the sort
    writes where it says); ``ids`` and ``src`` (``dtype``) each CSC
    position's edge and source.
    """
    ptr = np.zeros(int(num_vertices) + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=int(num_vertices)), out=ptr[1:])
    n = dst.shape[0]
    ids, src_out = np.empty(n, dtype), np.empty(n, dtype)
    _destination_major(np.ascontiguousarray(src), np.ascontiguousarray(dst), ptr, ids, src_out)
    return ptr, ids, src_out


# up to this many intervals a source's interval is counted from the bounds (no branch, no memory read);
# above, it is looked up in a per-vertex table: on R-MAT 2^21 the count was 49 ms at P = 5 against 86 from the table
COMPARE_INTERVALS = 32


@njit(inline="always")
def _interval_of(s, bounds, table, num_chunks):
    if num_chunks > COMPARE_INTERVALS:
        return table[s]
    i = 0
    for q in range(1, num_chunks):
        i += s >= bounds[q]
    return i


@njit(parallel=True, **_JIT)
def _regroup_counts(src_csc, ptr, bounds, table, num_chunks, counts):
    for j in prange(num_chunks):
        local = np.zeros(num_chunks, np.int64)  # a column per thread: neighbouring columns share cache lines
        for t in range(ptr[bounds[j]], ptr[bounds[j + 1]]):
            local[_interval_of(src_csc[t], bounds, table, num_chunks)] += 1
        for i in range(num_chunks):
            counts[i, j] = local[i]


@njit(parallel=True, **_JIT)
def _regroup(ids_csc, src_csc, ptr, bounds, table, num_chunks, starts, ids, src, dst):
    for j in prange(num_chunks):
        fill = np.empty(num_chunks, np.int64)
        for i in range(num_chunks):
            fill[i] = starts[i * num_chunks + j]
        for r in range(bounds[j], bounds[j + 1]):
            for t in range(ptr[r], ptr[r + 1]):
                s = src_csc[t]
                i = _interval_of(s, bounds, table, num_chunks)
                k = fill[i]
                fill[i] = k + 1
                ids[k] = ids_csc[t]
                src[k] = s
                dst[k] = r


def regroup(ptr: np.ndarray, ids_csc: np.ndarray, src_csc: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The edges grouped by chunk ``i * P + j`` of ``bounds`` and by destination within each, ties by position, from
    :func:`destination_major`'s CSC order: ``(starts, ids, src, dst)``, the chunks' first positions and each grouped
    edge's position, source and destination (the ids' dtype). Equal to ``np.argsort((pi * P + pj) * N + dst, kind="stable")``.

    Each destination interval is already in (destination, position) order
    in CSC, so grouping it by source interval keeps that order within each
    chunk: one parallel pass over the edges per set of bounds, with no sort
    and no read of the original list (a search groups several).
    """
    p = int(bounds.shape[0] - 1)
    bounds = np.asarray(bounds, np.int64)
    table = _interval_table(bounds, int(bounds[-1])) if p > COMPARE_INTERVALS else np.empty(0, np.int32)
    counts = np.zeros((p, p), np.int64)
    _regroup_counts(src_csc, ptr, bounds, table, p, counts)
    starts = np.zeros(p * p + 1, np.int64)
    np.cumsum(counts.ravel(), out=starts[1:])
    n = ids_csc.shape[0]
    ids, src, dst = np.empty(n, ids_csc.dtype), np.empty(n, ids_csc.dtype), np.empty(n, ids_csc.dtype)
    _regroup(ids_csc, src_csc, ptr, bounds, table, p, starts, ids, src, dst)
    return starts, ids, src, dst


@njit(parallel=True, **_JIT)
def _chunk_counts(src, dst, bounds, table, num_chunks, blocks):
    e = dst.shape[0]
    per_block = np.zeros((blocks, num_chunks * num_chunks), np.int64)  # a row per block: no shared cache lines
    for b in prange(blocks):
        for k in range(b * e // blocks, (b + 1) * e // blocks):
            i = _interval_of(src[k], bounds, table, num_chunks)
            per_block[b, i * num_chunks + _interval_of(dst[k], bounds, table, num_chunks)] += 1
    return per_block.sum(axis=0)


def chunk_counts(src: np.ndarray, dst: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """``[P, P]`` edges of each chunk for interval ``bounds`` (ids below ``bounds[-1]``): one parallel pass, no sort."""
    bounds = np.asarray(bounds, np.int64)
    p = int(bounds.shape[0] - 1)
    table = _interval_table(bounds, int(bounds[-1])) if p > COMPARE_INTERVALS else np.empty(0, np.int32)
    blocks = max(1, min(4 * numba.get_num_threads(), int(dst.shape[0]) // (1 << 16)))
    return _chunk_counts(np.ascontiguousarray(src), np.ascontiguousarray(dst), bounds, table, p, blocks).reshape(p, p)


def compact_sources(src_local: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(src_rows, src_idx, src_ptr, src_perm)`` of one sub-chunk's sources (all int32).

    ``src_rows`` = ``np.unique(src_local)``, ``src_idx`` its inverse,
    ``src_perm`` = ``np.argsort(src_idx, kind="stable")``, ``src_ptr`` the
    CSR pointer: :func:`sub_chunk_arrays`'s compaction of a sub-chunk of
    these edges (their destinations do not enter it).
    """
    n = int(src_local.shape[0])
    if n == 0:
        empty = np.empty(0, np.int32)
        return empty, empty, np.zeros(1, np.int32), empty
    _, _, _, idx, rows, ptr, perm = _sub_chunks(np.zeros(n, np.int32), np.ascontiguousarray(src_local), int(num_rows), n)
    return rows, idx, ptr, perm


@njit(**_JIT)
def _sub_chunks(dst_local, src_local, rows_i, max_nnz):
    """Every sub-chunk of one chunk, its arrays concatenated sub-chunk after sub-chunk (see :func:`sub_chunk_arrays`).

    ``dst_local`` ascending (CSC order). The sources of a sub-chunk are
    compacted with per-chunk scratch that only the sub-chunk's rows touch,
    their sorted list read off the interval or, for a few edges of a big
    interval, sorted from the rows seen.
    """
    nnz = dst_local.shape[0]
    n_sub = (nnz + max_nnz - 1) // max_nnz
    meta = np.empty((n_sub, 3), np.int64)  # first destination row, destination rows, source rows
    ptr_len = 0
    for k in range(n_sub):
        e0, e1 = k * max_nnz, min((k + 1) * max_nnz, nnz)
        meta[k, 0] = dst_local[e0]
        meta[k, 1] = dst_local[e1 - 1] + 1 - dst_local[e0]
        ptr_len += meta[k, 1] + 1
    dst_ptr = np.empty(ptr_len, np.int32)
    dst_idx = np.empty(nnz, np.int32)
    src_idx = np.empty(nnz, np.int32)
    src_perm = np.empty(nnz, np.int32)
    src_rows = np.empty(nnz, np.int32)
    src_ptr = np.empty(nnz + n_sub, np.int32)
    count = np.zeros(rows_i, np.int32)  # edges per source row of the current sub-chunk (reset after it)
    remap = np.empty(rows_i, np.int32)
    seen = np.empty(min(max_nnz, nnz), np.int32)
    fill = np.empty(min(max_nnz, nnz), np.int32)
    p, rows_at, ptr_at = 0, 0, 0
    for k in range(n_sub):
        e0, e1 = k * max_nnz, min((k + 1) * max_nnz, nnz)
        r0, nd = meta[k, 0], meta[k, 1]
        for t in range(nd + 1):
            dst_ptr[p + t] = -1
        dst_ptr[p] = 0
        for e in range(e0, e1):  # each row's end: where its last edge leaves off
            r = dst_local[e] - r0
            dst_idx[e] = r
            dst_ptr[p + r + 1] = e - e0 + 1
        for t in range(1, nd + 1):  # a row without edges ends where the row before it does
            if dst_ptr[p + t] < 0:
                dst_ptr[p + t] = dst_ptr[p + t - 1]
        p += nd + 1
        m = 0
        for e in range(e0, e1):
            s = src_local[e]
            if count[s] == 0:
                seen[m] = s
                m += 1
            count[s] += 1
        rows = src_rows[rows_at : rows_at + m]
        if rows_i <= 8 * (e1 - e0) + 1024:  # reading the interval's rows off beats sorting the few seen
            q = 0
            for r in range(rows_i):
                if count[r] > 0:
                    rows[q] = r
                    q += 1
        else:
            rows[:] = np.sort(seen[:m])
        ptr = src_ptr[ptr_at : ptr_at + m + 1]
        ptr[0] = 0
        for q in range(m):
            r = rows[q]
            ptr[q + 1] = ptr[q] + count[r]
            fill[q] = ptr[q]  # the row's next slot in the source-major order
            remap[r] = q
            count[r] = 0  # clean for the next sub-chunk
        for e in range(e0, e1):
            q = remap[src_local[e]]
            src_idx[e] = q
            src_perm[e0 + fill[q]] = e - e0
            fill[q] += 1
        meta[k, 2] = m
        rows_at += m
        ptr_at += m + 1
    return meta, dst_ptr, dst_idx, src_idx, src_rows[:rows_at], src_ptr[:ptr_at], src_perm


def sub_chunk_arrays(dst_local: np.ndarray, src_local: np.ndarray, rows_i: int, max_nnz: int) -> tuple:
    """One chunk's sub-chunks of ``max_nnz`` edges (the last shorter), built in one pass.

    ``dst_local``/``src_local``: the chunk's edges, local to their
    intervals, ascending by destination. Returns ``(meta, dst_ptr, dst_idx,
    src_idx, src_rows, src_ptr, src_perm)`` (int32): ``meta[k]`` is
    sub-chunk k's first destination row, destination rows and source rows;
    the arrays hold every sub-chunk's in turn (``dst_ptr`` and ``src_ptr``
    one entry longer each), as ``partition.make_sub_chunk`` makes them one
    at a time.
    """
    return _sub_chunks(np.ascontiguousarray(dst_local), np.ascontiguousarray(src_local), int(rows_i), int(max_nnz))


@njit(parallel=True, **_JIT)
def _sub_chunk_sizes(starts, src, dst, bounds, num_chunks, max_nnz, blocks):
    chunks = num_chunks * num_chunks
    first = np.zeros(chunks + 1, np.int64)  # each chunk's first sub-chunk
    for c in range(chunks):
        first[c + 1] = first[c] + (starts[c + 1] - starts[c] + max_nnz - 1) // max_nnz
    widest = 0
    for p in range(num_chunks):
        widest = max(widest, bounds[p + 1] - bounds[p])
    out = np.empty((first[chunks], 5), np.int64)
    for b in prange(blocks):  # chunks in blocks of about equal edges, each block with its own stamps
        stamp = np.full(max(widest, 1), -1, np.int64)  # the last sub-chunk that saw each source row
        begin = np.searchsorted(starts[:chunks], b * starts[chunks] // blocks) if b else 0  # first chunk starting at or after
        end = np.searchsorted(starts[:chunks], (b + 1) * starts[chunks] // blocks) if b + 1 < blocks else chunks
        for c in range(begin, end):
            _size_chunk(c, starts[c], starts[c + 1], src, dst, bounds[c // num_chunks], max_nnz, stamp, out, first[c])
    return out


@njit(**_JIT)
def _size_chunk(c, start, end, src, dst, lo, max_nnz, stamp, out, k):
    """Rows ``k, k + 1, ...`` of ``out``: chunk ``c``'s sub-chunks (its edges ``start:end``, sources from ``lo``); the next ``k``."""
    for e0 in range(start, end, max_nnz):
        e1 = min(e0 + max_nnz, end)
        rows = 0
        reached = 1  # destination rows with an edge: the edges go by destination
        for e in range(e0, e1):
            s = src[e] - lo
            if stamp[s] != k:  # the last sub-chunk that saw each source row
                stamp[s] = k
                rows += 1
            if e > e0 and dst[e] != dst[e - 1]:
                reached += 1
        out[k, 0], out[k, 1], out[k, 2], out[k, 3], out[k, 4] = c, e1 - e0, dst[e1 - 1] - dst[e0] + 1, rows, reached
        k += 1
    return k


def sub_chunk_sizes(starts: np.ndarray, src: np.ndarray, dst: np.ndarray, bounds: np.ndarray, max_nnz: int, blocks: int | None = None) -> np.ndarray:
    """``[S, 5]`` int64: each sub-chunk's chunk ``i * P + j``, edges, destination rows, source rows and destination rows
    with an edge, in the order
    ``partition_graph`` cuts them, from edges grouped by chunk and destination (``src``/``dst`` global ids in that
    order, ``starts`` the chunks' first positions): the sizes alone, no arrays built.

    The chunks are counted in ``blocks`` runs of about equal edges, in
    parallel (default: a few per thread, none under 64K edges).
    """
    bounds = np.asarray(bounds, np.int64)
    p = int(bounds.shape[0] - 1)
    if blocks is None:
        blocks = min(p * p, 4 * numba.get_num_threads(), int(src.shape[0]) // (1 << 16))
    return _sub_chunk_sizes(np.asarray(starts, np.int64), np.ascontiguousarray(src), np.ascontiguousarray(dst), bounds, p, int(max_nnz), max(1, int(blocks)))


@njit(**_JIT)
def _run_sizes(starts, src, dst, lo, width, max_nnz):
    subs = 0
    for c in range(starts.shape[0] - 1):
        subs += (starts[c + 1] - starts[c] + max_nnz - 1) // max_nnz
    out = np.empty((subs, 5), np.int64)
    stamp = np.full(max(width, 1), -1, np.int64)
    k = 0
    for c in range(starts.shape[0] - 1):
        k = _size_chunk(c, starts[c], starts[c + 1], src, dst, lo, max_nnz, stamp, out, k)
    return out


def run_sub_chunk_sizes(starts: np.ndarray, src: np.ndarray, dst: np.ndarray, lo: int, width: int, max_nnz: int) -> np.ndarray:
    """``[S, 5]`` int64 as :func:`sub_chunk_sizes` gives, for the chunks of one source interval (``[lo, lo + width)``)
    alone: each sub-chunk's chunk (its place in ``starts``), edges, destination rows, source rows and rows with an edge."""
    return _run_sizes(np.asarray(starts, np.int64), np.ascontiguousarray(src), np.ascontiguousarray(dst), int(lo), int(width), int(max_nnz))
