"""Whole sub-chunks of one destination interval merged into one: the same edges, a valid sub-chunk."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagann.chunks.merge import merge_chunks, merge_row_chunks
from sagann.chunks.partition import partition_graph


def _triples(chunks):
    """Each edge as (global source, global destination, edge id), sorted."""
    src = np.concatenate([c.global_src() for c in chunks])
    dst = np.concatenate([c.global_dst() for c in chunks])
    ids = np.concatenate([c.edge_ids for c in chunks])
    return sorted(zip(src.tolist(), dst.tolist(), ids.tolist()))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), e=st.integers(0, 400), p=st.integers(1, 6), seed=st.integers(0, 2**16), self_loops=st.booleans())
def test_a_merged_column_holds_its_chunks_edges_as_a_valid_sub_chunk(n, e, p, seed, self_loops):
    """Random multigraphs (repeated edges, isolated vertices, empty chunks, self loops): a column's whole sub-chunks,
    merged, validate, hold the same (source, destination, id) edges, and list each row's edges in edge order."""
    rng = np.random.default_rng(seed)
    edges = rng.integers(0, n, size=(2, e))
    if self_loops:
        edges = np.concatenate([edges, np.stack([np.arange(n), np.arange(n)])], axis=1)
    part = partition_graph(edges, n, min(p, n), 10**6)  # one sub-chunk a chunk
    for j in range(part.num_chunks):
        column = [c for c in part.column(j) if c.nnz]
        if not column:
            continue
        m = merge_chunks(column[::-1])  # any order in: taken in source order
        m.validate()
        assert m.id.i == column[0].id.i and m.id.j == j and m.nnz == sum(c.nnz for c in column)
        assert _triples([m]) == _triples(column)
        rows = np.repeat(np.arange(m.num_dst), np.diff(m.dst_ptr))
        assert np.all((np.diff(rows) > 0) | (np.diff(m.edge_ids) > 0))  # within a row, ascending edge ids
        assert repr(m.id) == f"E[{column[0].id.i}:{column[-1].id.i + 1},{j}]"


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), e=st.integers(0, 400), p=st.integers(1, 6), seed=st.integers(0, 2**16), self_loops=st.booleans())
def test_a_merged_source_row_holds_its_chunks_edges_over_their_rows_with_an_edge(n, e, p, seed, self_loops):
    """A source interval's whole sub-chunks into several destination intervals, merged: a valid sub-chunk over the
    destination rows with an edge (listed from the first interval's start), the same edges, each row's in edge order."""
    rng = np.random.default_rng(seed)
    edges = rng.integers(0, n, size=(2, e))
    if self_loops:
        edges = np.concatenate([edges, np.stack([np.arange(n), np.arange(n)])], axis=1)
    part = partition_graph(edges, n, min(p, n), 10**6)
    for i in range(part.num_chunks):
        row = [c for j in range(part.num_chunks) for c in part.chunks.get((i, j), ()) if c.nnz]
        if not row:
            continue
        m = merge_row_chunks(row[::-1])
        m.validate()
        assert m.id.i == i and m.id.j == row[0].id.j and m.nnz == sum(c.nnz for c in row)
        assert _triples([m]) == _triples(row)
        assert m.num_dst == sum(c.rows_with_edges for c in row) and np.all(np.diff(m.dst_ptr) > 0)
        np.testing.assert_array_equal(m.src_rows, np.unique(np.concatenate([c.src_rows for c in row])))
        rows = np.repeat(np.arange(m.num_dst), np.diff(m.dst_ptr))
        assert np.all((np.diff(rows) > 0) | (np.diff(m.edge_ids) > 0))
        assert repr(m.id) == f"E[{i},{row[0].id.j}:{row[-1].id.j + 1}]"


def test_merging_refuses_chunks_it_cannot_merge():
    edges = np.random.default_rng(0).integers(0, 40, size=(2, 400))
    part = partition_graph(edges, 40, 2, 10**6)
    a, b = part.chunks[(0, 0)][0], part.chunks[(1, 1)][0]
    with pytest.raises(ValueError, match="one destination interval"):
        merge_chunks([a, b])
    with pytest.raises(ValueError, match="one sub-chunk per source interval"):
        merge_chunks([a, a])
    with pytest.raises(ValueError, match="one destination interval"):
        merge_chunks([a, part.chunks[(1, 0)][0].compacted()])  # a compacted one: its rows are not a span
    with pytest.raises(ValueError, match="at least one"):
        merge_chunks([])
    with pytest.raises(ValueError, match="one source interval"):
        merge_row_chunks([a, b])
    with pytest.raises(ValueError, match="one sub-chunk per destination interval"):
        merge_row_chunks([a, a])
    with pytest.raises(ValueError, match="at least one"):
        merge_row_chunks([])
