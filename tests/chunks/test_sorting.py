"""The partition's numba sorts and compactions equal their numpy definitions."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sagann.chunks._sorting import COMPARE_INTERVALS, compact_sources, destination_major, regroup, sub_chunk_sizes
from sagann.chunks.partition import balanced_bounds, order_edges


@settings(max_examples=80, deadline=None)
@given(num_rows=st.integers(1, 5000), sources=st.lists(st.integers(0, 10**6), max_size=300))
def test_compact_sources_is_unique_inverse_and_a_stable_source_major_order(num_rows, sources):
    """Both ways of listing the rows (read off the interval, or sorted from the few seen) give numpy's answer."""
    src = np.asarray([s % num_rows for s in sources], np.int64)
    rows, idx, ptr, perm = compact_sources(src, num_rows)
    want_rows, want_idx = np.unique(src, return_inverse=True)
    assert np.array_equal(rows, want_rows) and np.array_equal(idx, want_idx.reshape(-1))
    assert np.array_equal(perm, np.argsort(want_idx.reshape(-1), kind="stable"))
    assert np.array_equal(ptr, np.concatenate([[0], np.cumsum(np.bincount(want_idx.reshape(-1), minlength=len(want_rows)))]))
    assert all(a.dtype == np.int32 for a in (rows, idx, ptr, perm))


@settings(max_examples=60, deadline=None)
@given(
    num_vertices=st.integers(1, 120),
    pairs=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=400),
    num_chunks=st.integers(1, 2 * COMPARE_INTERVALS + 8),
)
def test_regrouping_the_destination_order_is_the_stable_sort_by_chunk_and_destination(num_vertices, pairs, num_chunks):
    """Every cut groups the edges by regrouping one CSC order: it must be numpy's stable argsort by (chunk,
    destination), with empty intervals, multi-edges and self loops, on both sides of the per-vertex table's threshold."""
    n = num_vertices
    edges = np.asarray([(s % n, d % n if d % 3 else s % n) for s, d in pairs], np.int64).reshape(-1, 2).T  # a third self loops
    in_degree = np.bincount(edges[1], minlength=n)
    bounds = balanced_bounds(in_degree, num_chunks)  # more intervals than vertices: some empty
    interval = np.searchsorted(bounds, np.arange(n), side="right") - 1  # each vertex's interval (empty ones skipped)
    chunk = interval[edges[0]] * num_chunks + interval[edges[1]]
    want = np.argsort(chunk * n + edges[1], kind="stable")  # by chunk, then destination, ties by position
    starts, ids, src, dst = regroup(*destination_major(edges[0], edges[1], n, np.int32), bounds)
    assert np.array_equal(starts, np.concatenate([[0], np.cumsum(np.bincount(chunk, minlength=num_chunks * num_chunks))]))
    for got, expected in ((ids, want), (src, edges[0, want]), (dst, edges[1, want])):
        assert got.dtype == np.int32 and np.array_equal(got, expected)
    ordered = order_edges(edges, n, bounds, in_degree)
    assert np.array_equal(ordered.edge_ids, want) and np.array_equal(ordered.starts, starts)


@settings(max_examples=40, deadline=None)
@given(
    num_vertices=st.integers(1, 80),
    pairs=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=300),
    num_chunks=st.integers(1, 7),
    max_nnz=st.sampled_from([1, 2, 5, 40, 10**6]),
    blocks=st.integers(2, 9),
)
def test_sub_chunk_sizes_counted_in_parallel_runs_equal_one_run(num_vertices, pairs, num_chunks, max_nnz, blocks):
    """Runs of chunks split anywhere (empty chunks at the seams, more runs than chunks) count what one run counts."""
    n = num_vertices
    edges = np.asarray([(s % n, d % n) for s, d in pairs], np.int64).reshape(-1, 2).T
    order = order_edges(edges, n, balanced_bounds(np.bincount(edges[1], minlength=n), num_chunks))
    one = sub_chunk_sizes(order.starts, order.src, order.dst, order.bounds, max_nnz, blocks=1)
    assert one.shape[0] == sum(-(-int(m) // max_nnz) for m in np.diff(order.starts))
    assert np.array_equal(sub_chunk_sizes(order.starts, order.src, order.dst, order.bounds, max_nnz, blocks=blocks), one)
