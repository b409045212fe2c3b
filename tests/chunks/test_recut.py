"""Partitions made from partitions equal the ones cut from the rebuilt edge list, array for array."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sagann.chunks.partition import CHUNK_ARRAYS, balanced_bounds, pack_chunks, partition_graph
from sagann.chunks import recut as recut_mod
from sagann.chunks.recut import chunk_nnz_of, edges_at, recut, remaining_self_loops
from sagann.chunks.sketch import is_sketch
from tests.engine.graphs import graphs


def assert_same_partition(a, b):
    assert a.num_vertices == b.num_vertices and a.num_edges == b.num_edges and a.sub_chunk_nnz == b.sub_chunk_nnz
    assert np.array_equal(a.bounds, b.bounds) and np.array_equal(a.in_degree, b.in_degree)
    assert sorted(a.chunks) == sorted(b.chunks)
    for key in a.chunks:
        assert len(a.chunks[key]) == len(b.chunks[key])
        for x, y in zip(a.chunks[key], b.chunks[key]):
            assert x.id == y.id and (x.src_start, x.dst_start, x.dst_offset) == (y.src_start, y.dst_start, y.dst_offset)
            for name in CHUNK_ARRAYS:
                assert np.array_equal(getattr(x, name), getattr(y, name)), (key, name)
                assert getattr(x, name).dtype == getattr(y, name).dtype, (key, name)


def with_self_loops(ei: np.ndarray, n: int) -> np.ndarray:
    loops = np.arange(n)
    return np.concatenate([ei[:, ei[0] != ei[1]], np.stack([loops, loops])], axis=1)


@pytest.fixture(params=["direct", "windowed"])
def windowed(request, monkeypatch):
    """Both ways of building a chunk: whole (small runs), and a sub-chunk at a time (large ones)."""
    if request.param == "windowed":
        monkeypatch.setattr(recut_mod, "DIRECT_EDGES", 0)
    return request.param


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # the fixture only sets a constant
@given(graph=graphs(max_vertices=60, max_edges=300), p_from=st.integers(1, 9), p_to=st.integers(1, 12), sub=st.sampled_from([1, 3, 50, None]), weight=st.sampled_from([1.0, 4.0]))
def test_recut_equals_cutting_the_edge_list(windowed, graph, p_from, p_to, sub, weight):
    n, ei = graph
    old = partition_graph(ei, n, p_from, 5)
    assert_same_partition(recut(old, p_to, sub, vertex_weight=weight), partition_graph(ei, n, p_to, sub, vertex_weight=weight))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs(max_vertices=60, max_edges=300), p_from=st.integers(1, 9), p_to=st.integers(1, 12), sub=st.sampled_from([1, 3, 50, None]), weight=st.sampled_from([1.0, 4.0]))
def test_a_sketched_recut_has_the_sizes_of_the_real_one(windowed, graph, p_from, p_to, sub, weight):
    """A planner's search judges a dataset's candidates by their sizes: the same sub-chunks, edges, destination and source rows."""
    n, ei = graph
    old = partition_graph(ei, n, p_from, 5)
    real, sketch = recut(old, p_to, sub, vertex_weight=weight), recut(old, p_to, sub, vertex_weight=weight, sketch=True)
    assert np.array_equal(real.bounds, sketch.bounds) and real.num_edges == sketch.num_edges and real.sub_chunk_nnz == sketch.sub_chunk_nnz
    sizes = lambda part: {key: [(c.id, c.nnz, c.num_dst, c.num_src, c.nbytes) for c in subs] for key, subs in part.chunks.items()}  # noqa: E731
    assert sizes(sketch) == sizes(real)
    assert real is old or is_sketch(sketch) or not sketch.chunks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs(max_vertices=60, max_edges=300), p=st.integers(1, 9), sub=st.sampled_from([1, 3, 50, None]), packed=st.booleans())
def test_self_loops_equal_cutting_the_edge_list(windowed, graph, p, sub, packed):
    n, ei = graph
    part = partition_graph(ei, n, p, sub)
    got, loop_ids, loop_vertices = remaining_self_loops(part, place=pack_chunks if packed else None)
    want = partition_graph(with_self_loops(ei, n), n, p, sub, bounds=part.bounds)
    assert_same_partition(got, want)
    is_loop = ei[0] == ei[1]
    assert np.array_equal(loop_ids, np.flatnonzero(is_loop)) and np.array_equal(loop_vertices, ei[0, is_loop])


def test_self_loops_share_off_diagonal_chunks_when_there_are_no_loops():
    ei = np.array([[0, 1, 2, 3], [1, 2, 3, 0]])
    part = partition_graph(ei, 4, 2)
    got, loop_ids, _ = remaining_self_loops(part)
    assert loop_ids.size == 0
    off = [k for k in part.chunks if k[0] != k[1]]
    assert off and all(got.chunks[k] is part.chunks[k] for k in off), "nothing to shift: the same chunks, not copies"


@settings(max_examples=40, deadline=None)
@given(graph=graphs(max_vertices=60, max_edges=300), p=st.integers(1, 9), q=st.integers(1, 12), seed=st.integers(0, 3))
def test_edges_at_and_chunk_counts_read_the_chunks(graph, p, q, seed):
    n, ei = graph
    part = partition_graph(ei, n, p, 7)
    e = ei.shape[1]
    ids = np.sort(np.random.default_rng(seed).choice(e, size=min(e, 11), replace=False)) if e else np.zeros(0, dtype=np.int64)
    assert np.array_equal(edges_at(part, ids), ei[:, ids])
    bounds = balanced_bounds(part.in_degree, q)
    i, j = np.searchsorted(bounds, ei[0], "right") - 1, np.searchsorted(bounds, ei[1], "right") - 1
    want = np.bincount(i * q + j, minlength=q * q).reshape(q, q)
    assert np.array_equal(chunk_nnz_of(part, bounds), want)
