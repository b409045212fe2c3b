"""What a sub-chunk keeps beside its arrays depends on where those arrays live."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sagann.chunks.partition import pack_chunks, partition_graph
from sagann.chunks.types import memory_owner


def _chunks(tmp_path=None):
    rng = np.random.default_rng(0)
    edges = rng.integers(0, 300, size=(2, 4000))
    return [c for c in partition_graph(edges, 300, 3, 500).sub_chunks() if c.nnz]


def test_a_chunk_in_ram_keeps_its_source_major_destinations():
    c = _chunks()[0]
    first = c.src_major_dst()
    np.testing.assert_array_equal(first, c.dst_idx[c.src_perm])
    assert c.src_major_dst() is first and c.keeps_src_major_dst()


def test_a_chunk_in_a_tensors_memory_makes_them_afresh():
    # a host budget's spill files reach numpy through their tensors: a kept copy would be RAM beyond the budget
    subs = pack_chunks(_chunks(), lambda n: torch.empty(n, dtype=torch.uint8).numpy())
    assert all(isinstance(memory_owner(c.src_perm), torch.Tensor) for c in subs)
    for c in subs:
        np.testing.assert_array_equal(c.src_major_dst(), c.dst_idx[c.src_perm])
        assert "_src_major_dst" not in c.__dict__
        assert c.src_major_dst() is not c.src_major_dst()
        assert c.keeps_src_major_dst()  # asked without making one


def test_a_memory_mapped_chunk_has_none(tmp_path):
    def mapped(n):
        return np.memmap(tmp_path / f"slab{n}", dtype=np.uint8, mode="w+", shape=(n,))

    subs = pack_chunks(_chunks(), mapped)
    assert all(isinstance(memory_owner(c.src_perm), np.memmap) for c in subs)
    assert all(c.src_major_dst() is None and not c.keeps_src_major_dst() for c in subs)


def test_a_compacted_sub_chunk_keeps_its_edges_over_its_rows_with_one():
    rng = np.random.default_rng(1)
    edges = rng.integers(0, 400, size=(2, 300))  # sparse: a sub-chunk reaches few of its interval's rows
    compacted = 0
    for c in partition_graph(edges, 400, 4, 40).sub_chunks():
        k = c.compacted()
        k.validate()
        assert k.id == c.id and k.nnz == c.nnz and k.num_dst == k.rows_with_edges == c.rows_with_edges
        assert np.all(np.diff(k.dst_ptr) > 0) and k.compacted() is k
        for name in ("global_src", "global_dst"):
            np.testing.assert_array_equal(getattr(k, name)(), getattr(c, name)())
        np.testing.assert_array_equal(k.edge_ids, c.edge_ids)
        np.testing.assert_array_equal(k.dst_rows[k.src_major_dst()], c.src_major_dst())  # the source-major order agrees
        compacted += k.num_dst < c.num_dst
    assert compacted > 0


def test_a_compacted_sub_chunk_must_list_rows_with_edges():
    c = next(c for c in partition_graph(np.array([[0, 1, 2], [0, 3, 3]]), 8, 1, 10).sub_chunks())
    k = c.compacted()
    np.testing.assert_array_equal(k.dst_rows, [0, 3])
    bad = dataclasses.replace(k, dst_rows=np.array([3, 0], dtype=np.int32))
    with pytest.raises(ValueError, match="dst_rows"):
        bad.validate()
