"""What a sub-chunk keeps beside its arrays depends on where those arrays live."""
from __future__ import annotations

import numpy as np
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
