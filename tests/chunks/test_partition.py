"""The 2D partition: every edge in exactly one sub-chunk, invariants hold, intervals balance in-edges."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from sagann.chunks.partition import CHUNK_ARRAYS, OrderCache, make_sub_chunk, sub_chunk_ranges, chunk_counts, as_edge_index, balanced_bounds, order_edges, partition_graph
from sagann.chunks.types import ChunkId
from tests.engine.graphs import graphs


@settings(max_examples=60, deadline=None)
@given(graph=graphs(max_vertices=60, max_edges=300), num_chunks=st.integers(1, 12), sub=st.sampled_from([1, 2, 7, 50, None]))
def test_partition_invariants(graph, num_chunks, sub):
    n, ei = graph
    p = partition_graph(ei, n, num_chunks, sub)
    seen = np.zeros(ei.shape[1], dtype=int)
    for (i, j), subs in p.chunks.items():
        assert subs, "empty chunks are not stored"
        for c in subs:
            c.validate()
            assert (c.id.i, c.id.j) == (i, j)
            assert c.nnz <= (sub or np.inf), "sub-chunks respect the bound, heavy rows included"
            src, dst = c.global_src(), c.global_dst()
            assert np.all((p.bounds[i] <= src) & (src < p.bounds[i + 1]))
            assert np.all((p.bounds[j] <= dst) & (dst < p.bounds[j + 1]))
            assert np.array_equal(src, ei[0, c.edge_ids]) and np.array_equal(dst, ei[1, c.edge_ids])
            assert np.all(np.diff(c.edge_ids)[np.diff(c.dst_idx) == 0] > 0), "a row keeps ascending edge order"
            seen[c.edge_ids] += 1
    assert np.all(seen == 1)
    assert np.array_equal(p.edge_index(), ei)


def _same_partition(a, b):
    assert np.array_equal(a.bounds, b.bounds) and a.chunks.keys() == b.chunks.keys() and a.sub_chunk_nnz == b.sub_chunk_nnz
    for key, subs in a.chunks.items():
        assert [c.id for c in subs] == [c.id for c in b.chunks[key]]
        for x, y in zip(subs, b.chunks[key]):
            for name in CHUNK_ARRAYS:
                u, v = getattr(x, name), getattr(y, name)
                assert u.dtype == v.dtype and np.array_equal(u, v), f"{x.id} {name}"


@settings(max_examples=40, deadline=None)
@given(graph=graphs(max_vertices=60, max_edges=300), num_chunks=st.integers(1, 9), weight=st.sampled_from([1.0, 3.5]),
       subs=st.lists(st.sampled_from([1, 2, 7, 50, None]), min_size=1, max_size=3))
def test_a_kept_chunk_order_cuts_the_same_partition(graph, num_chunks, weight, subs):
    """Edges grouped once for a P's bounds, then cut at several sub-chunk sizes: each cut equals a cut from scratch."""
    n, ei = graph
    cache = OrderCache()
    in_degree = np.bincount(ei[1], minlength=n).astype(np.int64)
    assert cache.ordered(lambda: ei, n, in_degree, num_chunks, weight) is None  # outside a search nothing is kept
    lists = []

    def edges():
        lists.append(1)
        return ei

    with cache.searching():
        first = cache.ordered(edges, n, in_degree, num_chunks, weight)
        for sub in subs:
            ordered = cache.ordered(lambda: ei, n, in_degree, num_chunks, weight)
            assert ordered is first  # the same bounds: grouped once
            _same_partition(partition_graph(ei, n, num_chunks, sub, vertex_weight=weight, ordered=ordered), partition_graph(ei, n, num_chunks, sub, vertex_weight=weight))
        if num_chunks > 1 and n > num_chunks:
            other = cache.ordered(edges, n, in_degree, num_chunks - 1, weight)
            assert np.array_equal(other.bounds, balanced_bounds(in_degree, num_chunks - 1, weight))
            assert np.array_equal(other.edge_ids, order_edges(ei, n, other.bounds).edge_ids)
        assert len(lists) == 1  # the list is read once a search: other bounds regroup its destination order
    assert cache._hit is None and cache._csc is None  # dropped with the search
    assert np.array_equal(order_edges(ei, n, first.bounds).edge_ids, first.edge_ids)
    assert np.array_equal(partition_graph(None, n, num_chunks, 7, ordered=first).edge_index(), partition_graph(ei, n, num_chunks, 7, vertex_weight=weight).edge_index())


@settings(max_examples=80, deadline=None)
@given(graph=graphs(max_vertices=80, max_edges=400), num_chunks=st.integers(1, 6), sub=st.sampled_from([1, 2, 3, 7, 50, 10**6]))
def test_sub_chunks_built_in_one_pass_equal_those_built_one_at_a_time(graph, num_chunks, sub):
    """``split_chunk`` builds a chunk's sub-chunks in one numba pass: the same arrays, dtypes and ids as
    ``make_sub_chunk`` over ``sub_chunk_ranges`` (sparse and dense sub-chunks alike: both ways of compacting sources)."""
    n, ei = graph
    p = partition_graph(ei, n, num_chunks, sub)
    for (i, j), subs in p.chunks.items():
        edges = np.concatenate([c.edge_ids for c in subs])
        rows_j = int(p.bounds[j + 1] - p.bounds[j])
        dst_local, src_local = ei[1, edges] - p.bounds[j], ei[0, edges] - p.bounds[i]
        ptr = np.zeros(rows_j + 1, np.int64)
        np.cumsum(np.bincount(dst_local, minlength=rows_j), out=ptr[1:])
        want = [make_sub_chunk(ChunkId(i, j, k), int(p.bounds[i]), int(p.bounds[j]), r0, np.clip(ptr[r0 : r1 + 1] - e0, 0, e1 - e0),
                               src_local[e0:e1], edges[e0:e1], int(p.bounds[i + 1] - p.bounds[i]))
                for k, (e0, e1, r0, r1) in enumerate(sub_chunk_ranges(ptr, sub))]
        assert [c.id for c in subs] == [c.id for c in want]
        for got, ref in zip(subs, want):
            assert (got.src_start, got.dst_start, got.dst_offset) == (ref.src_start, ref.dst_start, ref.dst_offset)
            for name in CHUNK_ARRAYS:
                u, v = getattr(got, name), getattr(ref, name)
                assert u.dtype == v.dtype and np.array_equal(u, v), f"{got.id} {name}"


@settings(max_examples=40, deadline=None)
@given(graph=graphs(max_vertices=60, max_edges=300), num_chunks=st.integers(1, 40))
def test_chunk_counts_are_each_chunks_edges(graph, num_chunks):
    """Counted from the bounds up to 32 intervals, from a per-vertex table above: the chunks' own sizes either way."""
    n, ei = graph
    bounds = balanced_bounds(np.bincount(ei[1], minlength=n), num_chunks)
    p = partition_graph(ei, n, num_chunks)
    want = np.zeros((num_chunks, num_chunks), dtype=np.int64)
    for (i, j), subs in p.chunks.items():
        want[i, j] = sum(c.nnz for c in subs)
    assert np.array_equal(chunk_counts(ei[0], ei[1], bounds), want)


def test_bounds_balance_in_edges():
    rng = np.random.default_rng(0)
    dst = np.minimum(rng.zipf(1.5, 20000), 999) - 1  # skewed in-degrees
    ei = np.stack([rng.integers(0, 1000, dst.size), dst])
    p = partition_graph(ei, 1000, 4)
    per_column = [sum(c.nnz for c in p.column(j)) for j in range(4)]
    weight = [int(p.in_degree[p.bounds[j] : p.bounds[j + 1]].sum() + p.bounds[j + 1] - p.bounds[j]) for j in range(4)]
    heaviest_vertex = int(p.in_degree.max()) + 1
    assert max(weight) - min(weight) <= 2 * heaviest_vertex
    assert sum(per_column) == ei.shape[1]


def test_a_heavy_vertex_leaves_no_interval_empty():
    in_degree = np.array([1000] + [1] * 20)
    b = balanced_bounds(in_degree, 6)
    assert np.all(np.diff(b) >= 1) and b[0] == 0 and b[-1] == 21


def test_more_chunks_than_vertices_gives_empty_intervals():
    b = balanced_bounds(np.array([1, 0, 2]), 5)
    assert b[0] == 0 and b[-1] == 3 and np.all(np.diff(b) >= 0) and len(b) == 6


def test_accepts_torch_and_rejects_bad_input():
    assert as_edge_index(torch.tensor([[0, 1], [1, 0]]), 2).dtype == np.int64
    with pytest.raises(ValueError, match="num_chunks"):
        partition_graph(np.array([[0], [1]]), 2, 0)
    with pytest.raises(ValueError, match="sub_chunk_nnz"):
        partition_graph(np.array([[0], [1]]), 2, 1, 0)
    with pytest.raises(ValueError, match="num_vertices"):
        as_edge_index(np.array([[0], [1]]), -1)


def test_heavy_row_is_spread_over_sub_chunks():
    n = 50
    ei = np.stack([np.arange(n).repeat(4) % n, np.zeros(4 * n, dtype=np.int64)])  # vertex 0 has 200 in-edges
    p = partition_graph(ei, n, 1, sub_chunk_nnz=30)
    subs = p.chunks[(0, 0)]
    assert [c.nnz for c in subs] == [30] * 6 + [20]
    assert all(c.dst_offset == 0 and c.num_dst == 1 for c in subs)
    assert np.array_equal(np.concatenate([c.edge_ids for c in subs]), np.arange(4 * n))
