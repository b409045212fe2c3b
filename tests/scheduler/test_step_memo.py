"""What a step no longer remakes: index arrays, global source rows and kernel row blocks, made once per sub-chunk."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import sagann
from sagann.chunks.partition import partition_graph
from sagann.chunks.types import EdgeChunk
from sagann.kernels import cpu as kcpu
from sagann.kernels.graph import DERIVED, ChunkTensors, rows_bound
from sagann.scheduler.executor import src_row_gather


def _chunks(seed: int, p: int, sub: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 200))
    edges = rng.integers(0, n, (2, int(rng.integers(0, 6 * n))))
    return n, list(partition_graph(edges, n, p, sub).sub_chunks())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("source_major", [False, True])
def test_cpu_chunk_index_is_made_once_and_equals_a_fresh_one(seed, source_major):
    _, subs = _chunks(seed, 1 + seed, 7)
    dev = sagann.CpuDevice("1MB")
    for c in subs:
        ct, rows, nbytes = dev.chunk_index(c, source_major)
        again = dev.chunk_index(c, source_major)
        assert again[0] is ct and again[2] == nbytes
        assert again[1] is not rows, "int64 rows are made per step: kept, a fine partition's would cost host memory"
        fresh = ChunkTensors.from_chunk(c, "cpu", source_major=source_major)
        for f in dataclasses.fields(ChunkTensors):
            a, b = getattr(ct, f.name), getattr(fresh, f.name)
            assert (a is None and b is None) or (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), f.name
        assert torch.equal(rows, torch.from_numpy(c.src_rows.astype(np.int64)))
        assert rows_bound(rows) == (int(c.src_rows[-1]) + 1 if c.num_src else 0)
        # a backward holds every array, but a source-major one only what it reads: the pointers and src_dst
        assert nbytes == (c.dst_ptr.nbytes + c.src_ptr.nbytes + 4 * c.nnz if source_major else fresh.nbytes)
        assert dev.chunk_index(c, source_major, backward=False)[2] == c.dst_ptr.nbytes + c.src_idx.nbytes  # a forward reads no more
    other = dev.chunk_index(subs[0], not source_major)[0]
    assert other is not dev.chunk_index(subs[0], source_major)[0]  # the two layouts are kept apart


def _memmapped(c: EdgeChunk, tmp_path) -> EdgeChunk:
    np.save(tmp_path / "rows.npy", c.src_rows)
    return dataclasses.replace(c, src_rows=np.load(tmp_path / "rows.npy", mmap_mode="r"))


def test_memory_mapped_chunks_are_not_kept(tmp_path):
    _, subs = _chunks(1, 2, 50)
    c = _memmapped(next(s for s in subs if s.num_src), tmp_path)
    dev = sagann.CpuDevice()
    assert dev.chunk_index(c)[0] is not dev.chunk_index(c)[0]
    copying = sagann.CpuDevice("1MB", copy_transfers=True)  # copies are device memory: made per step, as on a GPU
    assert copying.chunk_index(subs[0])[0] is not copying.chunk_index(subs[0])[0]
    host = torch.randn(c.src_start + int(c.src_rows[-1]) + 1, 3)
    view, rows = src_row_gather(host, c)  # a file's rows are read into RAM for the gather
    assert torch.equal(view.index_select(0, rows), host[c.src_start + np.asarray(c.src_rows).astype(np.int64)])


@pytest.mark.parametrize("seed", range(4))
def test_a_selective_gather_reads_the_sub_chunks_host_rows(seed):
    n, subs = _chunks(seed, 3, 5)
    host = torch.randn(n, 4)
    for c in subs:
        view, rows = src_row_gather(host, c)
        assert rows.dtype == torch.int32 and view.data_ptr() == host[c.src_start :].data_ptr()  # no host copy, no int64 ids
        assert torch.equal(view.index_select(0, rows), host[torch.from_numpy(c.src_start + c.src_rows.astype(np.int64))])


@pytest.mark.parametrize("seed", range(4))
def test_kept_row_blocks_equal_fresh_ones_at_every_thread_count(seed):
    import numba

    _, subs = _chunks(seed, 2, 64)
    n = numba.get_num_threads()
    for c in subs:
        g = ChunkTensors.from_chunk(c)
        for threads in sorted({1, n}):
            numba.set_num_threads(threads)
            try:
                for ptr in ("dst_ptr", "src_ptr"):
                    kept = kcpu.bounds_of(g, ptr)
                    assert kcpu.bounds_of(g, ptr) is kept
                    assert np.array_equal(kept, kcpu.row_bounds(getattr(g, ptr).numpy()))
            finally:
                numba.set_num_threads(n)
        assert DERIVED not in dataclasses.replace(g).__dict__  # a replaced copy starts afresh
        again = ChunkTensors.from_chunk(c)  # a fresh copy of the chunk (a copying device's next step)
        assert kcpu.bounds_of(again, "dst_ptr") is kcpu.bounds_of(g, "dst_ptr")


def test_layer_shape_hash_is_kept_and_agrees_with_equality():
    import pickle

    from sagann.scheduler.memory_model import LayerShape

    base = LayerShape(d_in=8, d_edge=1, d_src_term=0, d_dst_term=0, d_msg=8, d_out=4, gather="sum", builtin=None,
                      uses_src=True, uses_dst=False, uses_src_term=False, uses_dst_term=False, uses_edge=True)
    same = dataclasses.replace(base)
    wider = dataclasses.replace(base, d_msg=base.d_msg + 1)
    assert "_hash" not in same.__dict__
    assert hash(base) == hash(same) and base == same and {base: 1}[same] == 1
    assert hash(base) == hash(base) and "_hash" in base.__dict__  # kept after the first
    assert wider != base and wider not in {base: 1} and dataclasses.replace(base, uses_dst=True) not in {base: 1}
    back = pickle.loads(pickle.dumps(base))
    assert "_hash" not in back.__dict__ and back == base and hash(back) == hash(base)


def test_a_spill_files_chunks_are_not_kept(tmp_path):
    from sagann.scheduler.host import HostMemory

    _, subs = _chunks(2, 2, 50)
    HostMemory(spill_dir=tmp_path).map_chunks(subs)
    c = next(s for s in subs if s.num_src)
    dev = sagann.CpuDevice()
    assert dev.chunk_index(c)[0] is not dev.chunk_index(c)[0]


def test_at_most_so_many_sub_chunks_are_kept(monkeypatch):
    from sagann.scheduler import devices

    monkeypatch.setattr(devices, "INDEX_MEMO_SUB_CHUNKS", 2)
    _, subs = _chunks(3, 3, 5)
    subs = [s for s in subs if s.num_src]
    assert len(subs) > 2
    dev = sagann.CpuDevice()
    kept = [dev.chunk_index(c)[0] is dev.chunk_index(c)[0] for c in subs]
    assert kept[:2] == [True, True] and not any(kept[2:])
