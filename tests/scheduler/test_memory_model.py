"""The memory model prices what the passes run: compacted backward sub-chunks, attention merged in place."""
from __future__ import annotations

import dataclasses

import numpy as np

from sagann.chunks.partition import partition_graph
from sagann.engine.run import _with_backend_bytes
from sagann.fn import AttentionFn
from sagann.scheduler.memory_model import COMPACT_FRACTION, _sub_chunk_bytes, backward_chunk, backward_dst_row_bytes, sub_chunk_bytes
from sagann.scheduler.planner import LayerShape

SUM = LayerShape(
    d_in=8, d_edge=0, d_src_term=0, d_dst_term=0, d_msg=8, d_out=4, gather="sum", builtin=None,
    uses_src=True, uses_dst=True, uses_src_term=False, uses_dst_term=False, uses_edge=False, compact_dst_rows=True,
)
VIEWS = dataclasses.replace(SUM, compact_dst_rows=False)
GAT = dataclasses.replace(SUM, d_src_term=10, d_dst_term=2, d_msg=8, gather="softmax", d_score=2, uses_src=False, uses_dst=False,
                          uses_src_term=True, uses_dst_term=True, attention=AttentionFn())


def test_backward_runs_a_sub_chunk_compacted_only_where_few_of_its_rows_have_edges():
    rng = np.random.default_rng(0)
    sparse, dense = rng.integers(0, 300, (2, 100)), rng.integers(0, 30, (2, 3000))
    seen = set()
    for edges, n in ((sparse, 300), (dense, 30)):
        for c in partition_graph(edges, n, 3, 10**6).sub_chunks():
            b = backward_chunk(c)
            few = c.rows_with_edges * COMPACT_FRACTION <= c.num_dst
            assert (b is not c) == few and b.nnz == c.nnz
            whole = _sub_chunk_bytes(c, SUM, False, True, compact=False)
            if few:  # fewer rows, fewer bytes
                assert b.num_dst == c.rows_with_edges < c.num_dst
                assert sub_chunk_bytes(c, SUM, False, True) < whole
            else:
                assert sub_chunk_bytes(c, SUM, False, True) == whole
            # with every destination row held, a sub-chunk runs whole (its rows are slices of the held ones), as on a
            # device whose loads are views of host memory
            assert sub_chunk_bytes(c, SUM, False, True, dst_held=True) == whole - c.num_dst * backward_dst_row_bytes(SUM)
            assert sub_chunk_bytes(c, VIEWS, False, True) == _sub_chunk_bytes(c, VIEWS, False, True, compact=False)
            seen.add(few)
    assert seen == {True, False}


def test_only_the_cpu_attention_is_priced_as_merging_in_place():
    cpu, reference = _with_backend_bytes(GAT, "cpu"), _with_backend_bytes(GAT, "reference")
    assert cpu.merges_in_place and not reference.merges_in_place
    c = next(partition_graph(np.random.default_rng(1).integers(0, 200, (2, 400)), 200, 2, 10**6).sub_chunks())
    # no partial rows or merge temporaries over the sub-chunk's rows: less by at least one float row a destination
    assert sub_chunk_bytes(c, cpu, True, False) + 4 * c.num_dst * GAT.d_msg <= sub_chunk_bytes(c, reference, True, False)
