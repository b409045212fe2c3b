"""How many numba threads the CPU kernels run on: one for a small chunk, and within a small pass no switching at all."""
from __future__ import annotations

import numba
import numpy as np
import pytest
import torch

import sagann
from sagann import kernels
from sagann.kernels import ChunkTensors
from sagann.kernels import _cpu_kernels as K
from sagann.kernels import cpu as cpu_kernels

pytestmark = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="one numba thread on this machine: nothing to switch")


def _chunk(nnz: int, rows: int, seed: int = 0) -> ChunkTensors:
    rng = np.random.default_rng(seed)
    return ChunkTensors.from_coo(rng.integers(0, rows, nnz), rng.integers(0, rows, nnz), rows, rows)[0]


@pytest.fixture
def watched(monkeypatch):
    """(the numba thread count each forward Gather kernel ran with, how often numba's count was set)."""
    seen, sets = [], []
    kernel, set_threads, before = K.spmm_sum, numba.set_num_threads, numba.get_num_threads()
    set_threads(2)

    def spmm_sum(*args):
        seen.append(numba.get_num_threads())
        return kernel(*args)

    monkeypatch.setattr(K, "spmm_sum", spmm_sum)
    monkeypatch.setattr(numba, "set_num_threads", lambda n: sets.append(n) or set_threads(n))
    yield seen, sets
    set_threads(before)


def _small_graph(n: int = 300) -> tuple[np.ndarray, int]:
    """A layer's graph whose sub-chunks at P = 4 are all below SERIAL_WORK at width 8."""
    return np.random.default_rng(1).integers(0, n, (2, 10 * n)), n


def _gather(g: ChunkTensors, d: int) -> torch.Tensor:
    return kernels.gspmm(g, "copy_src", "sum", src=torch.ones(g.num_src, d), backend="cpu")[0]


def test_a_small_chunk_runs_on_one_thread_and_a_large_one_on_all(watched):
    seen, _ = watched
    small, large = _chunk(50, 40), _chunk(40_000, 5_000)
    assert (small.nnz + 80) * 8 < cpu_kernels.SERIAL_WORK <= (large.nnz + 10_000) * 8
    _gather(small, 8)
    _gather(large, 8)
    assert seen == [1, 2] and numba.get_num_threads() == 2


def test_a_small_pass_switches_once_and_a_large_chunk_in_it_gets_the_threads_back(watched):
    seen, sets = watched
    small, large = _chunk(50, 40), _chunk(40_000, 5_000)
    expected = [_gather(small, 8), _gather(large, 8)]
    seen.clear()
    sets.clear()
    with cpu_kernels.serial_pass([small], 8):
        got = [_gather(small, 8) for _ in range(5)] + [_gather(large, 8), _gather(small, 8)]
        assert numba.get_num_threads() == 1
    assert seen == [1] * 5 + [2, 1] and numba.get_num_threads() == 2
    assert sets == [1, 2, 1, 2], "one switch into the pass and one out, two around the large chunk: none around a small one"
    assert all(torch.equal(a, b) for a, b in zip(got, expected[:1] * 5 + expected[1:] + expected[:1]))


def test_a_pass_of_large_chunks_changes_nothing(watched):
    seen, sets = watched
    large = _chunk(40_000, 5_000)
    with cpu_kernels.serial_pass([_chunk(50, 40), large], 8):
        _gather(large, 8)
    assert seen == [2] and sets == []


def test_a_streamed_layer_holds_numba_at_one_thread_through_its_small_passes(watched):
    seen, sets = watched
    ei, n = _small_graph()
    x = torch.randn(n, 8)
    torch.manual_seed(0)
    layer = sagann.nn.SAGEConv(8, 8)
    ref = layer(sagann.ChunkedGraph(ei, n, num_chunks=1), x)
    seen.clear()
    sets.clear()
    out = layer(sagann.ChunkedGraph(ei, n, num_chunks=4, device=sagann.CpuDevice(copy_transfers=True)), x)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert seen and set(seen) == {1} and numba.get_num_threads() == 2
    assert len(sets) <= 2 * 2, f"numba's thread count set {len(sets)} times for {len(seen)} kernel calls: once into and out of a pass"


def test_a_pass_that_fails_midway_gives_numba_its_threads_back(watched, monkeypatch):
    from sagann.engine import forward

    seen, _ = watched
    calls, chunk = [], forward._forward_chunk

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected")
        return chunk(*args, **kwargs)

    monkeypatch.setattr(forward, "_forward_chunk", failing)
    ei, n = _small_graph()
    g = sagann.ChunkedGraph(ei, n, num_chunks=4, device=sagann.CpuDevice(copy_transfers=True))
    with pytest.raises(RuntimeError, match="injected"):
        sagann.nn.SAGEConv(8, 8)(g, torch.randn(n, 8))
    assert seen and set(seen) == {1}, "the failed pass ran in one-thread mode"
    assert numba.get_num_threads() == 2
