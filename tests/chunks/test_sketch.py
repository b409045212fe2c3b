"""A partition's sub-chunk sizes (the planner's candidates) equal those of the partition cut with its arrays."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagann import fn
from sagann.chunks.partition import balanced_bounds, order_edges, partition_graph
from sagann.chunks.sketch import is_sketch, sketch_partition
from sagann.scheduler.cost_model import measure_partition
from sagann.scheduler.memory_model import edge_stage_bytes, working_set
from sagann.scheduler.planner import LayerShape
from tests.engine.graphs import graphs

SUM = LayerShape(
    d_in=8, d_edge=0, d_src_term=0, d_dst_term=0, d_msg=8, d_out=4, gather="sum", builtin=None,
    uses_src=True, uses_dst=False, uses_src_term=False, uses_dst_term=False, uses_edge=False,
)
SHAPES = [
    SUM,
    dataclasses.replace(SUM, gather="max", d_edge=3, uses_edge=True, uses_dst=True),  # winners, edge rows, destination rows
    dataclasses.replace(SUM, builtin=fn.copy_src, sum_backward_edge=8, narrow_src_ids=True, narrow_dst_ids=True),  # a direct sum backward, 16-bit ids
]


@settings(max_examples=60, deadline=None)
@given(graph=graphs(max_vertices=80, max_edges=400), num_chunks=st.integers(1, 6), sub=st.sampled_from([1, 3, 7, 50, 10**6]))
def test_sizes_equal_the_cut_partitions_and_so_do_the_plans(graph, num_chunks, sub):
    n, ei = graph
    indeg = np.bincount(ei[1], minlength=n).astype(np.int64)
    ordered = order_edges(ei, n, balanced_bounds(indeg, num_chunks, 2.0), indeg)
    sketch, cut = sketch_partition(ordered, n, sub), partition_graph(None, n, num_chunks, sub, ordered=ordered)
    assert is_sketch(sketch) == bool(cut.chunks) and not is_sketch(cut)
    assert np.array_equal(sketch.bounds, cut.bounds) and sketch.chunks.keys() == cut.chunks.keys() and sketch.num_edges == cut.num_edges
    for key, subs in cut.chunks.items():
        sizes = [(c.id, c.nnz, c.num_dst, c.num_src, c.rows_with_edges, c.nbytes, c.src_rows.nbytes, c.edge_ids.nbytes) for c in subs]
        assert [(c.id, c.nnz, c.num_dst, c.num_src, c.rows_with_edges, c.nbytes, c.src_rows.nbytes, c.edge_ids.nbytes) for c in sketch.chunks[key]] == sizes
        for a, b in zip(sketch.chunks[key], subs):
            for backward in (False, True):
                assert a.sent_index_bytes(backward, narrow=True) == b.sent_index_bytes(backward, narrow=True)
    for shape in SHAPES:
        for budget in (None, 1 << 14):
            assert working_set(sketch, shape, False, 64, in_flight=2, budget=budget) == working_set(cut, shape, False, 64, in_flight=2, budget=budget)
        assert edge_stage_bytes(sketch, shape, True, 64, "backward") == edge_stage_bytes(cut, shape, True, 64, "backward")
        assert measure_partition(sketch, shape) == measure_partition(cut, shape)


def test_a_sketch_holds_no_arrays():
    """Only sizes: reading an index array's values fails rather than returning made-up ones."""
    ei = np.array([[0, 1, 2, 3], [1, 2, 3, 0]])
    ordered = order_edges(ei, 4, balanced_bounds(np.bincount(ei[1], minlength=4), 2, 1.0))
    c = next(sketch_partition(ordered, 4, 2).sub_chunks())
    assert c.src_rows.nbytes == 4 * c.num_src
    with pytest.raises(AttributeError):
        c.dst_ptr  # noqa: B018
    with pytest.raises(TypeError):
        c.src_rows[0]  # noqa: B018
