"""The CPU device's buffer pool: a buffer is reused only once nothing uses its storage; results never change."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sagann
from sagann.scheduler import pool as pool_mod
from sagann.scheduler.pool import BufferPool
from tests.engine.graphs import awkward_graph
from tests.engine.layers import GatedGCN
from tests.engine.test_out_of_core import assert_grads_close, assert_rel_close, outputs_and_grads

MB = 1 << 20


def test_a_buffer_is_reused_only_when_no_tensor_holds_it():
    p = BufferPool(64 * MB)
    a = p.empty((MB // 4,), torch.float32)
    a.fill_(1.0)
    view = a[10:20]
    del a
    b = p.empty((MB // 4,), torch.float32)
    assert b.untyped_storage().data_ptr() != view.untyped_storage().data_ptr(), "a live view keeps its buffer taken"
    assert torch.all(view == 1.0)
    ptr = b.untyped_storage().data_ptr()
    del b
    c = p.empty((MB // 4,), torch.float32)
    assert c.untyped_storage().data_ptr() == ptr, "a released buffer is reused"
    assert (p.hits, p.misses) == (1, 2)


def test_index_arrays_sent_packed_hold_their_pooled_buffer_while_any_lives():
    """The packed index copy is numpy views of one pooled buffer: each view keeps it taken, and the 16-bit one keeps the low bits."""
    from sagann.chunks.partition import partition_graph
    from sagann.kernels.graph import kernel_index

    n = 70_000  # ids past 2^16: the source ids cross in 16 bits only where a chunk's fit
    src = np.arange(n, dtype=np.int64) % 60_000
    chunk = next(iter(partition_graph(np.stack([src, (src * 7) % n]), n, 1).sub_chunks()))
    dev = sagann.CpuDevice(1 << 30, copy_transfers=True)

    def sent():
        ct = dev.chunk_index(chunk, backward=False, narrow=True, native=True)[0]
        return ct, kernel_index(ct, "src_idx")

    ct, ids = sent()
    assert ids.dtype == torch.int16, "ids below 2^16 cross in 16 bits"
    assert np.array_equal(ids.numpy().view(np.uint16), chunk.src_idx) and np.array_equal(ct.dst_ptr.numpy(), chunk.dst_ptr)
    first = ids.untyped_storage().data_ptr()
    del ct  # the 16-bit ids alone still hold the buffer
    other = sent()[1]
    assert other.untyped_storage().data_ptr() != first, "a live view keeps its buffer taken"
    assert np.array_equal(ids.numpy().view(np.uint16), chunk.src_idx), "its bytes were not overwritten"
    taken = {first, other.untyped_storage().data_ptr()}
    del ids, other
    assert sent()[1].untyped_storage().data_ptr() in taken, "a released buffer is reused"


def test_small_and_bool_tensors_are_not_pooled_and_the_limit_holds():
    p = BufferPool(3 * MB)
    assert p.empty((10,), torch.float32) is None
    assert p.empty((4 * MB,), torch.bool) is None
    held = [p.empty((MB // 4,), torch.float32) for _ in range(2)]
    del held
    for k in range(5):  # other sizes: the free 1 MiB buffers are dropped to stay under 3 MiB
        p.empty(((k + 2) * MB // 4,), torch.float32)
        assert sum(e[0].numel() for bucket in p._buffers.values() for e in bucket) <= 3 * MB + (k + 2) * MB


def test_a_free_larger_buffer_serves_a_request_up_to_half_its_size():
    """Loads come in many sizes: a free buffer of a larger class is reused rather than a new one made, within 2x."""
    p = BufferPool(64 * MB)
    big = p.empty((MB // 4,), torch.float32)  # 1 MiB
    ptr = big.untyped_storage().data_ptr()
    del big
    smaller = p.empty((3 * MB // 16,), torch.float32)  # 0.75 MiB: fits the free 1 MiB buffer
    assert smaller.untyped_storage().data_ptr() == ptr and smaller.shape == (3 * MB // 16,)
    assert (p.hits, p.misses) == (1, 1)
    del smaller
    tiny = p.empty((MB // 16,), torch.float32)  # 0.25 MiB: a 1 MiB buffer would waste three quarters
    assert tiny.untyped_storage().data_ptr() != ptr
    assert (p.hits, p.misses) == (1, 2)
    taken = p.empty((3 * MB // 16,), torch.float32)
    also = p.empty((3 * MB // 16,), torch.float32)  # the 1 MiB buffer is taken: a new one
    assert taken.untyped_storage().data_ptr() == ptr and also.untyped_storage().data_ptr() != ptr


def test_a_copying_devices_accumulators_reuse_its_buffers_and_are_filled():
    """Accumulators made per pass (``Scope.zeros``/``full``) come from the pool: no fresh pages each pass, still filled."""
    from sagann.scheduler.devices import Scope

    dev = sagann.CpuDevice(64 * MB, copy_transfers=True)
    first = Scope(dev)
    acc = first.zeros((1000, 64), torch.float32, "accumulator")
    assert torch.all(acc == 0) and dev.current_bytes == acc.numel() * 4
    ptr = acc.untyped_storage().data_ptr()
    acc.fill_(5.0)
    del acc
    first.close()
    second = Scope(dev)
    again = second.full((1000, 64), float("-inf"), torch.float32, "softmax max")
    assert again.untyped_storage().data_ptr() == ptr and (dev._pool.hits, dev._pool.misses) == (1, 1), "the released buffer is reused"
    assert torch.all(again == float("-inf")), "a reused buffer is filled like a fresh one"
    second.close()
    assert dev.current_bytes == 0
    plain = Scope(sagann.CpuDevice(64 * MB))  # no copies, no pool: a fresh tensor
    assert torch.all(plain.zeros((1000, 64), torch.float32, "accumulator") == 0)


def test_out_of_core_results_are_unchanged_with_every_copy_pooled(monkeypatch):
    monkeypatch.setattr(pool_mod, "MIN_POOLED_BYTES", 0)  # pool every copy and gather of this small graph
    rng = np.random.default_rng(0)
    n, ei = 500, awkward_graph(rng, 500, 6000)
    torch.manual_seed(0)
    layer = GatedGCN(16, 8)
    x = torch.randn(n, 16, requires_grad=True)
    free = sagann.ChunkedGraph(ei, n)
    ref_out, ref_grads = outputs_and_grads(layer, lambda a, b: layer(free, a), x, None)
    dev = sagann.CpuDevice(free.working_set.peak_bytes // 4, copy_transfers=True)
    g = sagann.ChunkedGraph(ei, n, device=dev, schedule=sagann.ScheduleConfig(prefetch="max"))
    for _ in range(3):  # later calls run on reused buffers
        out, grads = outputs_and_grads(layer, lambda a, b: layer(g, a), x, None)
        assert_rel_close(out, ref_out)
        assert_grads_close(grads, ref_grads)
    assert dev._pool.hits > 0 and g.num_chunks > 1
    assert dev.peak_bytes <= dev.memory_budget and dev.current_bytes == 0


def test_size_classes_waste_at_most_an_eighth_and_absorb_small_variations():
    from sagann.scheduler.pool import size_class

    rng = np.random.default_rng(0)
    for n in list(rng.integers(pool_mod.MIN_POOLED_BYTES, 1 << 30, 2000)) + [pool_mod.MIN_POOLED_BYTES, MB, MB + 1]:
        c = size_class(int(n))
        assert n <= c <= n * 1.125 + 4096 and c % 4096 == 0, (n, c)
    assert size_class(690_000) == size_class(700_000), "a selective load's size varies by sub-chunk: one class serves both"


def test_host_buffers_are_reused_at_their_exact_size_once_free():
    p = pool_mod.HostBuffers(MB)
    assert p.empty((10,), torch.float32) is None and p.empty((4 * MB,), torch.bool) is None
    a = p.empty((MB // 4, 2), torch.float32)
    assert a.shape == (MB // 4, 2) and a.untyped_storage().nbytes() == 2 * MB, "exact: a saved tensor carries no spare bytes"
    rows = a[5:9]
    ptr = a.untyped_storage().data_ptr()
    del a
    b = p.empty((MB // 4, 2), torch.float32)
    assert b.untyped_storage().data_ptr() != ptr, "a live view keeps its buffer taken"
    del rows
    c = p.empty((MB // 2,), torch.float32)  # the same bytes in another shape
    assert c.untyped_storage().data_ptr() == ptr and c.shape == (MB // 2,)
    assert (p.hits, p.misses) == (1, 2)


def test_host_buffers_hold_no_more_than_were_ever_in_use_at_once():
    p = pool_mod.HostBuffers(MB)
    held = [p.empty((MB // 4,), torch.float32) for _ in range(3)]  # 3 MiB in use at once
    del held
    for k in range(2, 9):  # one at a time, other sizes: the free ones make room
        t = p.empty((k * MB // 4,), torch.float32)
        total = sum(size * len(b) for size, b in p._buffers.items())
        assert total <= max(3 * MB, k * MB), (k, total)
        del t
    assert p.free_bytes <= 8 * MB


def test_host_memory_without_a_budget_reuses_freed_tensors_and_with_one_allocates_fresh():
    free = sagann.HostMemory()
    a = free.empty((MB,), torch.float32, "layer output")
    ptr = a.data_ptr()
    del a
    b = free.empty((MB,), torch.float32, "layer output")
    assert b.data_ptr() == ptr and free.resident_bytes == 4 * MB
    del b
    assert free.resident_bytes == 0, "the ledger counts tensors, not kept buffers"
    bounded = sagann.HostMemory("1GB")
    assert bounded._reused is None, "a budget bounds RSS: nothing is kept beyond what is alive"


@pytest.mark.parametrize("model,cache", [("gcn", True), ("gcn", False), ("sage", True), ("gin", False), ("gat", False)])
def test_kept_host_tensors_handed_out_full_of_nan_change_no_result(monkeypatch, model, cache):
    """Reused host tensors come back uninitialised, as ``torch.empty``'s do; a fresh mapping's zeros hid any reader
    of an unwritten row. Every reused tensor is poisoned here: three epochs in memory and out of core still match
    a run that reuses nothing."""
    from sagann.engine.models import build_model
    from sagann.scheduler import host as host_mod

    real = pool_mod.HostBuffers.empty

    def poisoned(self, shape, dtype):
        hits = self.hits
        t = real(self, shape, dtype)
        if t is not None and self.hits > hits and dtype.is_floating_point:
            t.fill_(float("nan"))
        return t

    rng = np.random.default_rng(1)
    n, ei = 600, awkward_graph(rng, 600, 7000)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 16, generator=gen), torch.randint(0, 5, (n,), generator=gen)
    schedule = sagann.ScheduleConfig(cache_gather=cache)

    def epochs(make_graph):
        torch.manual_seed(0)
        net = build_model(model, 16, 16, 5, dropout=0.0)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        g, seen = make_graph(), []
        for _ in range(3):
            opt.zero_grad()
            out = net(g, x)
            torch.nn.functional.cross_entropy(out, y).backward()
            seen.append((out.detach().clone(), [p.grad.clone() for p in net.parameters()]))
            opt.step()
        return g, seen

    plain = sagann.ChunkedGraph(ei, n, num_chunks=1, schedule=schedule)
    peak = epochs(lambda: plain)[0].device.peak_bytes
    _, ref = epochs(lambda: sagann.ChunkedGraph(ei, n, num_chunks=1, schedule=schedule))
    monkeypatch.setattr(host_mod, "REUSED_MIN_BYTES", 0)  # keep every engine host tensor of this small graph
    monkeypatch.setattr(pool_mod.HostBuffers, "empty", poisoned)
    whole, in_memory = epochs(lambda: sagann.ChunkedGraph(ei, n, num_chunks=1, schedule=schedule))
    dev = sagann.CpuDevice(max(1, peak // 8), copy_transfers=True)
    ooc, out_of_core = epochs(lambda: sagann.ChunkedGraph(ei, n, device=dev, schedule=schedule))
    assert ooc.num_chunks > 1 and ooc.host._reused.hits > 0 and whole.host._reused.hits > 0
    for run in (in_memory, out_of_core):
        for (out, grads), (ref_out, ref_grads) in zip(run, ref):
            assert_rel_close(out, ref_out)
            assert_grads_close(grads, ref_grads)
