"""Counting sorts behind partitioning (numba): O(E) where ``np.argsort(kind="stable")`` is O(E log E).

Partitioning sorts every edge by (chunk, destination) and every sub-chunk's
edges by source; these keys are small integers, so counting sorts do it in
two linear passes and give exactly the stable order the argsorts gave (ties
keep ascending positions). The planner partitions a graph once per P it
tries, which made the sorts the bulk of an out-of-core run's first epoch.
"""
from __future__ import annotations

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
def _by_chunk(src, dst, table, num_chunks):
    """Pass 1: edge positions grouped by chunk ``i * P + j`` (stable), and the chunk starts."""
    e = dst.shape[0]
    start = np.zeros(num_chunks * num_chunks + 1, np.int64)
    key = np.empty(e, np.int32)
    for k in range(e):
        c = table[src[k]] * num_chunks + table[dst[k]]
        key[k] = c
        start[c + 1] += 1
    for c in range(num_chunks * num_chunks):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    order = np.empty(e, np.int64)
    for k in range(e):
        c = key[k]
        order[fill[c]] = k
        fill[c] += 1
    return order, start


@njit(parallel=True, **_JIT)
def _by_destination(order, start, dst, bounds, num_chunks):
    """Pass 2: within each chunk, positions sorted by destination (stable: ties keep their order)."""
    out = np.empty_like(order)
    for c in prange(num_chunks * num_chunks):
        a, b = start[c], start[c + 1]
        if b == a:
            continue
        j = c % num_chunks
        lo = bounds[j]
        rows = bounds[j + 1] - lo
        fill = np.zeros(rows + 1, np.int64)
        for t in range(a, b):
            fill[dst[order[t]] - lo + 1] += 1
        fill[0] = a
        for r in range(rows):
            fill[r + 1] += fill[r]
        for t in range(a, b):
            k = order[t]
            r = dst[k] - lo
            out[fill[r]] = k
            fill[r] += 1
    return out


def chunk_order(src: np.ndarray, dst: np.ndarray, bounds: np.ndarray, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, starts)``: edges grouped by chunk ``(i, j)`` (row-major), each chunk by destination, ties by position.

    ``order[starts[i * P + j] : starts[i * P + j + 1]]`` are the positions of
    E_ij's edges. Equal to ``np.argsort((pi * P + pj) * N + dst, kind="stable")``.
    """
    p = int(bounds.shape[0] - 1)
    bounds = np.asarray(bounds, np.int64)
    src, dst = np.ascontiguousarray(src), np.ascontiguousarray(dst)
    order, starts = _by_chunk(src, dst, _interval_table(bounds, int(num_vertices)), p)
    return _by_destination(order, starts, dst, bounds, p), starts


@njit(parallel=True, **_JIT)
def _gather_ids(order, src, dst, ids, src_out, dst_out):
    for t in prange(order.shape[0]):
        k = order[t]
        ids[t] = k
        src_out[t] = src[k]
        dst_out[t] = dst[k]


def ordered_ids(order: np.ndarray, src: np.ndarray, dst: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, src[order], dst[order])`` as ``dtype``, in one parallel pass."""
    n = order.shape[0]
    ids, s, d = np.empty(n, dtype), np.empty(n, dtype), np.empty(n, dtype)
    _gather_ids(order, np.ascontiguousarray(src), np.ascontiguousarray(dst), ids, s, d)
    return ids, s, d


@njit(**_JIT)
def _chunk_counts(src, dst, table, num_chunks):
    count = np.zeros(num_chunks * num_chunks, np.int64)
    for k in range(dst.shape[0]):
        count[table[src[k]] * num_chunks + table[dst[k]]] += 1
    return count


def chunk_counts(src: np.ndarray, dst: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """``[P, P]`` edges of each chunk for interval ``bounds`` (ids below ``bounds[-1]``): one pass, no sort."""
    bounds = np.asarray(bounds, np.int64)
    p = int(bounds.shape[0] - 1)
    table = _interval_table(bounds, int(bounds[-1]))
    return _chunk_counts(np.ascontiguousarray(src), np.ascontiguousarray(dst), table, p).reshape(p, p)


@njit(**_JIT)
def _compact_sources(src_local, num_rows):
    """Sorted unique sources, each edge's index into them, and the source-major CSR (pointer, stable permutation)."""
    n = src_local.shape[0]
    count = np.zeros(num_rows, np.int32)
    for e in range(n):
        count[src_local[e]] += 1
    m = 0
    for r in range(num_rows):
        if count[r] > 0:
            m += 1
    rows = np.empty(m, np.int32)
    ptr = np.zeros(m + 1, np.int32)
    remap = count  # reused: row -> compact index (only rows with edges are read back)
    k = 0
    for r in range(num_rows):
        c = count[r]
        if c > 0:
            rows[k] = r
            ptr[k + 1] = ptr[k] + c
            remap[r] = k
            k += 1
    idx = np.empty(n, np.int32)
    perm = np.empty(n, np.int32)
    fill = ptr[:-1].copy()
    for e in range(n):
        s = remap[src_local[e]]
        idx[e] = s
        perm[fill[s]] = e
        fill[s] += 1
    return rows, idx, ptr, perm


def compact_sources(src_local: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(src_rows, src_idx, src_ptr, src_perm)`` of a sub-chunk's sources (all int32).

    ``src_rows`` = ``np.unique(src_local)``, ``src_idx`` its inverse,
    ``src_perm`` = ``np.argsort(src_idx, kind="stable")``, ``src_ptr`` the
    CSR pointer. Counting (linear in edges + ``num_rows``, the interval's
    size) where that is cheaper than sorting the edges; sorting otherwise.
    """
    n = int(src_local.shape[0])
    if num_rows > 8 * n + 1024:  # a few edges of a big interval: sort them instead of scanning every row
        rows, idx = np.unique(src_local, return_inverse=True)
        idx = idx.astype(np.int32)
        perm = np.argsort(idx, kind="stable").astype(np.int32)
        ptr = np.zeros(rows.shape[0] + 1, dtype=np.int32)
        np.cumsum(np.bincount(idx, minlength=rows.shape[0]), out=ptr[1:])
        return rows.astype(np.int32), idx, ptr, perm
    return _compact_sources(np.ascontiguousarray(src_local), int(num_rows))
