"""CudaDevice's stream protocol, checked without a GPU: the real engine, executor and pipeline over a recording runtime.

The stand-in (``recording_runtime.py``) logs every stream, event, copy and
launch and checks happens-before. The first tests run whole layers over it
(prefetch depths 1-4, selective and full transfers, a chain of two logical
devices on one GPU, a failure mid-pass) and find nothing; the ``bug_*``
tests put each known bug back (the old code, patched in) and show the
stand-in catches it, beside the fixed code passing.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sagann
import sagann.kernels._common as kernels_common
from sagann.scheduler import ScheduleConfig
from sagann.scheduler.cuda import MIN_MEASURE_BYTES, CudaDevice, StagingRing
from sagann.scheduler.executor import ChunkInputs
from tests.engine.graphs import awkward_graph
from tests.engine.test_out_of_core import assert_grads_close, assert_rel_close
from tests.scheduler.recording_runtime import Hub, RecordingRuntime

N, E, D = 240, 2400, 8


def _graph(seed=1):
    ei = awkward_graph(np.random.default_rng(seed), N, E)
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(seed + 1))
    return ei, x


LAYERS = {
    "gcn": lambda: sagann.nn.GCNConv(D, 6),
    "sage": lambda: sagann.nn.SAGEConv(D, 6),
    "gat": lambda: sagann.nn.GATConv(D, 3, heads=2),
}


def _run(make, device, ei, x, **graph):
    torch.manual_seed(0)
    layer = make()
    g = sagann.ChunkedGraph(ei, N, device=device, **graph)
    xx = x.clone().requires_grad_(True)
    out = layer(g, xx)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    leaves = [xx] + list(layer.parameters())
    grads = torch.autograd.grad((out * probe).sum(), leaves, allow_unused=True)
    return out.detach(), [torch.zeros_like(t) if gr is None else gr for t, gr in zip(leaves, grads)], g


def _fake(budget="1MB", hub=None, backend="reference", name=None, runtime=None):
    rt = runtime or RecordingRuntime(hub, kernel_backend=backend)
    return CudaDevice(budget, name=name, runtime=rt)


def _check_run(name, device, **graph):
    ei, x = _graph()
    ref_out, ref_grads, _ = _run(LAYERS[name], sagann.CpuDevice(), ei, x)
    out, grads, g = _run(LAYERS[name], device, ei, x, **graph)
    assert_rel_close(out, ref_out, what=f"{name} over the recording runtime")
    assert_grads_close(grads, ref_grads)
    return g


def _no_violations(hub: Hub):
    assert hub.violations == [], "\n".join(hub.violations[:10])


def test_the_stand_in_implements_the_whole_runtime_interface():
    from sagann.scheduler.cuda_runtime import Runtime, TorchRuntime

    wanted = {n for n in vars(Runtime) if not n.startswith("_")}
    assert wanted <= set(dir(RecordingRuntime)) and wanted <= set(dir(TorchRuntime))


# ---- the fixed code keeps the protocol -------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("transfer", ["selective", "full"])
def test_passes_keep_the_protocol_at_every_prefetch_depth(depth, transfer):
    dev = _fake()
    g = _check_run("gcn", dev, num_chunks=3, schedule=ScheduleConfig(prefetch=depth, transfer=transfer))
    hub = dev.runtime.hub
    _no_violations(hub)
    assert g.num_chunks > 1 and dev.current_bytes == 0
    assert hub.ops("launch") and hub.ops("copy") and hub.ops("host_wait")
    assert not hub.ops("device_synchronize") and not hub.ops("stream_synchronize")


@pytest.mark.parametrize("name", ["sage", "gat"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_other_layers_and_fused_kernels_keep_the_protocol(name, backend):
    dev = _fake(backend=backend)
    _check_run(name, dev, num_chunks=3, schedule=ScheduleConfig(prefetch=2, transfer="full"))
    _no_violations(dev.runtime.hub)


def test_a_chain_of_two_logical_devices_on_one_gpu_keeps_the_protocol():
    rt = RecordingRuntime()
    devs = [CudaDevice("1MB", name=f"gpu0.{k}", runtime=rt) for k in range(2)]
    assert devs[0].compute_stream is not devs[1].compute_stream  # neither waits for the other's kernels
    g = _check_run("gcn", devs, num_chunks=4, topology=[[0, 1]], schedule=ScheduleConfig(prefetch=2))
    _no_violations(rt.hub)
    assert g.link.peer_bytes > 0 and all(d.current_bytes == 0 for d in devs)


def test_a_failure_mid_pass_leaves_no_violation_and_nothing_held():
    dev = _fake()
    ei, x = _graph()
    _run(LAYERS["gcn"], dev, ei, x, num_chunks=3, schedule=ScheduleConfig(prefetch=3))  # measures transfer costs and steps first
    dev.runtime.fail_copy_at = dev.runtime._copies + 25  # a copy in the middle of the next run's passes
    with pytest.raises(Exception, match="injected failure"):
        _run(LAYERS["gcn"], dev, ei, x, num_chunks=3, schedule=ScheduleConfig(prefetch=3))
    _no_violations(dev.runtime.hub)
    assert dev.current_bytes == 0
    assert not any(s.busy for s in dev._ring._slots), "a staging block was left taken"
    dev.runtime.fail_copy_at = None
    _check_run("gcn", dev, num_chunks=3, schedule=ScheduleConfig(prefetch=3))  # the same device runs again
    _no_violations(dev.runtime.hub)


def test_staging_blocks_grow_geometrically_and_are_reused_after_their_event():
    rt = RecordingRuntime()
    ring = StagingRing(rt, 1)
    stream = rt.new_stream("copy")
    for mib in range(1, 65):  # transfers growing by 1 MiB: exact-size blocks would mean 64 allocations
        slot = ring.acquire((mib << 20) + 1)
        assert slot.block.numel() >= (mib << 20) + 1
        rt.host_fill(slot.block, lambda: None)
        rt.copy(torch.empty(0), slot.block[:0], stream)
        ring.release(slot, stream)
    assert ring.allocations <= 8
    assert len(rt.hub.ops("host_wait")) == 63  # every reuse waited for the copy that last read the block
    _no_violations(rt.hub)


def test_large_transfers_go_in_pieces_and_round_trip():
    dev = _fake("1GB")
    host = torch.randn(40 << 18, 1)  # 40 MiB: three pieces of at most 16 MiB
    with dev.loading():
        sent = dev.copy_in(host)
        picked = dev.gather_in(host, torch.arange(0, host.shape[0], 3))
    assert torch.equal(sent, host) and torch.equal(picked, host[::3])
    copies = [op for op in dev.runtime.hub.ops("copy") if "pinned->dev" in op.detail]
    assert len(copies) == 3 + 1
    back = torch.zeros_like(host)
    with dev.computing(dev.loads_ready(), [sent]):
        dev.copy_out(sent, back)
        dev.add_out(sent, back)
    assert torch.equal(back, 2 * host)
    assert dev.staging_bytes <= 4 * 32 << 20  # a few pieces pinned, not the whole block
    _no_violations(dev.runtime.hub)


@pytest.mark.parametrize("name", ["gcn", "gat"])
def test_sixteen_bit_transfers_keep_the_protocol(name):
    """Rows and index arrays cross in 16 bits and are widened on the copy stream: same results as float32 transfers within the rounding."""
    ei, x = _graph()
    ref_out, ref_grads, _ = _run(LAYERS[name], sagann.CpuDevice(), ei, x, num_chunks=3)
    dev = _fake()
    out, grads, g = _run(LAYERS[name], dev, ei, x, num_chunks=3, schedule=ScheduleConfig(prefetch=2, transfer_dtype=torch.bfloat16))
    _no_violations(dev.runtime.hub)
    assert float((out - ref_out).norm() / ref_out.norm()) < 2e-2
    for a, b in zip(grads, ref_grads):
        assert float((a - b).norm() / b.norm().clamp_min(1e-12)) < 2e-2
    short = [op for op in dev.runtime.hub.ops("copy") if "pinned->dev" in op.detail and "torch.uint8" in op.detail]
    assert short and dev.current_bytes == 0


@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("backward", [False, True])
def test_packed_streamed_arrays_equal_the_chunks(backward, narrow):
    """What a pass sends (16-bit where it fits) and what the GPU makes from it equal the chunk's arrays."""
    from sagann.chunks.partition import partition_graph
    from sagann.kernels.graph import ChunkTensors
    from sagann.scheduler.memory_model import forward_index_bytes

    ei, _ = _graph()
    dev = _fake()
    for c in list(partition_graph(ei, N, 3, sub_chunk_nnz=200).sub_chunks())[:6]:
        assert all(c.fits_16_bits(n) for n in ("dst_ptr", "src_idx", "src_ptr", "src_perm"))
        with dev.loading():
            ct, rows, nbytes = dev.chunk_index(c, source_major=backward, backward=backward, narrow=narrow)
        ready = dev.loads_ready()
        ref = ChunkTensors.from_chunk(c, "cpu", source_major=backward)
        with dev.scope() as later:
            ct.charge_later(later)  # arrays made after the load are charged as they are made
            with dev.computing(ready, ct.present() + [rows]):  # what is made on the device is made on the compute stream
                got = {name: getattr(ct, name) for name in ("dst_ptr", "dst_idx", "src_idx", "src_ptr", "src_perm", "src_dst")}
            dev.synchronize()
            made_later = dev.current_bytes
        for name, a in got.items():
            b = getattr(ref, name)
            assert (a is None) == (b is None) and (a is None or (a.dtype == torch.int32 and torch.equal(a, b))), name
        assert nbytes + made_later >= ref.nbytes
        if not backward:  # what the plan counts for a forward's index arrays covers what the GPU holds at the load
            assert nbytes <= forward_index_bytes(c, fused=True)
    _no_violations(dev.runtime.hub)


@pytest.mark.parametrize("source_major", [False, True])
def test_packed_index_arrays_equal_the_chunks(source_major):
    from sagann.chunks.partition import partition_graph
    from sagann.kernels.graph import ChunkTensors, rows_bound

    ei, _ = _graph()
    dev = _fake()
    for c in list(partition_graph(ei, N, 3, sub_chunk_nnz=200).sub_chunks())[:6]:
        with dev.loading():
            ct, rows, nbytes = dev.chunk_index(c, source_major=source_major)
        on_device = ct.nbytes + rows.nbytes  # the arrays sent, widened, and the source rows; dst_idx is made (and charged) when read
        ref = ChunkTensors.from_chunk(c, "cpu", source_major=source_major)
        for name in ("dst_ptr", "dst_idx", "src_idx", "src_ptr", "src_perm", "src_dst"):
            a, b = getattr(ct, name), getattr(ref, name)
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), name
        assert torch.equal(rows.long(), torch.from_numpy(c.src_rows.astype(np.int64)))
        assert rows_bound(rows) == int(c.src_rows.max()) + 1 and nbytes >= on_device and ct.nbytes == ref.nbytes
    _no_violations(dev.runtime.hub)


# ---- each bug, put back, is caught ------------------------------------------------------------------
def _old_synchronize(self):
    self.runtime.device_synchronize()  # the old CudaDevice.synchronize: torch.cuda.synchronize(device)


@pytest.mark.parametrize("bug", [False, True])
def test_bug_synchronize_waited_for_the_whole_device(monkeypatch, bug):
    if bug:
        monkeypatch.setattr(CudaDevice, "synchronize", _old_synchronize)
    rt = RecordingRuntime()
    devs = [CudaDevice("1MB", name=f"gpu0.{k}", runtime=rt) for k in range(2)]
    _check_run("gcn", devs, num_chunks=4, schedule=ScheduleConfig(prefetch=3))
    found = [v for v in rt.hub.violations if "every stream of gpu0" in v]
    assert bool(found) == bug, rt.hub.violations[:5]
    # the compute threads' waits: the old one drained every prefetched copy (lockstep), the fixed one leaves them running
    waits = [op for op in rt.hub.log if op.kind in ("host_wait", "device_synchronize") and not op.thread.startswith("sagann-loader")]
    syncs = [op for op in waits if op.kind == "device_synchronize"] if bug else waits
    assert syncs and (max(op.in_flight for op in syncs) == 0) == bug
    if not bug:
        _no_violations(rt.hub)


def _old_send_staged(self, shape, dtype, fill, split=True):
    """The old path: one pinned buffer behind one lock; host copy, DMA, then wait for the copy stream."""
    rt, stream = self.runtime, self.runtime.current_stream()
    nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
    if not hasattr(self, "_old_lock"):
        import threading

        self._old_lock, self._old_buf = threading.Lock(), None
    with self._old_lock:
        if self._old_buf is None or self._old_buf.numel() < nbytes:
            self._old_buf = rt.pinned(max(nbytes, 1 << 20))
        view = self._old_buf[:nbytes].view(dtype).view(shape)
        rt.host_fill(self._old_buf, lambda: fill(view, 0, shape[0]))
        out = rt.empty(shape, dtype, stream)
        rt.copy(out, view, stream)
        rt.stream_synchronize(stream)
    self._loaded(out, stream)
    self._count_in(nbytes)
    return out


@pytest.mark.parametrize("bug", [False, True])
def test_bug_one_staging_buffer_with_a_stream_sync_per_copy(monkeypatch, bug):
    if bug:
        monkeypatch.setattr(CudaDevice, "_send_staged", _old_send_staged)
    dev = _fake()
    _check_run("gcn", dev, num_chunks=3, schedule=ScheduleConfig(prefetch=2))
    assert any("waits for all of gpu0.copy" in v for v in dev.runtime.hub.violations) == bug
    if not bug:
        _no_violations(dev.runtime.hub)


def _acquire_without_waiting(self, nbytes):
    with self._cond:
        slot = self._free_slot()
        slot.busy = True
    if slot.block is None or slot.block.numel() < nbytes:
        slot.block = self.runtime.pinned(max(nbytes, 1 << 20))
    return slot


@pytest.mark.parametrize("bug", [False, True])
def test_bug_staging_reuse_without_waiting_for_the_copy(monkeypatch, bug):
    if bug:  # double buffering done wrong: a block refilled before the DMA that read it finished
        monkeypatch.setattr(StagingRing, "acquire", _acquire_without_waiting)
    dev = CudaDevice("1MB", runtime=RecordingRuntime(), staging_buffers=2)
    _check_run("gcn", dev, num_chunks=3, schedule=ScheduleConfig(prefetch=2, transfer="selective"))
    assert any(v.startswith("reuse before read") and "pinned" in v for v in dev.runtime.hub.violations) == bug


def _old_chunk_index(self, chunk, source_major=False, backward=True, narrow=False, native=False):
    """The old path: each index array its own copy, the source rows a pageable copy later."""
    from sagann.kernels.graph import ChunkTensors

    host = ChunkTensors.from_chunk(chunk, "cpu", source_major=source_major)
    move = lambda t: None if t is None else self.copy_in(t)  # noqa: E731
    ct = ChunkTensors(
        dst_ptr=move(host.dst_ptr), dst_idx=move(host.dst_idx), src_idx=move(host.src_idx),
        src_ptr=move(host.src_ptr), src_perm=move(host.src_perm),
        num_src=host.num_src, num_dst=host.num_dst, src_dst=move(host.src_dst),
    )
    return ct, self.copy_in(torch.from_numpy(chunk.src_rows.astype(np.int64))), ct.nbytes


@pytest.mark.parametrize("bug", [False, True])
def test_bug_one_copy_per_index_array(monkeypatch, bug):
    if bug:
        monkeypatch.setattr(CudaDevice, "chunk_index", _old_chunk_index)
    dev = _fake()
    _check_run("gcn", dev, num_chunks=3, schedule=ScheduleConfig(prefetch=2))
    copies = [op for op in dev.runtime.hub.ops("copy") if "pinned->dev" in op.detail and "copy" in op.detail.split(" on ")[1]]
    index_copies = [op for op in copies if "torch.int32" in op.detail or "torch.int64" in op.detail]
    packed = [op for op in copies if "torch.uint8" in op.detail]
    if bug:  # slow, not wrong: the count is what shows it
        assert len(index_copies) >= 5 * max(1, len(packed))
    else:
        assert packed and not index_copies  # one packed block per sub-chunk, nothing else int-typed
        _no_violations(dev.runtime.hub)


def _old_src_local_rows(self):
    """The old path: the source rows moved to the device lazily, from pageable memory, in the compute thread."""
    return torch.from_numpy(self.c.src_rows.astype(np.int64)).to(self.device.torch_device)


@pytest.mark.parametrize("bug", [False, True])
def test_bug_pageable_copy_of_the_source_rows_in_backward(monkeypatch, bug):
    if bug:
        monkeypatch.setattr(ChunkInputs, "src_local_rows", _old_src_local_rows)
    dev = _fake(backend="cpu")
    _check_run("gcn", dev, num_chunks=3, schedule=ScheduleConfig(prefetch=2, transfer="full"))
    assert any(v.startswith("pageable copy in a kernel") for v in dev.runtime.hub.violations) == bug
    if not bug:
        _no_violations(dev.runtime.hub)


@pytest.mark.parametrize("bug", [False, True])
def test_bug_host_reads_of_src_rows_min_and_max(monkeypatch, bug):
    if bug:  # the old range check: int(src_rows.min()), int(src_rows.max()) on every call
        monkeypatch.setattr(kernels_common, "rows_bound", lambda rows: None)
    dev = _fake(backend="cpu")
    _check_run("gcn", dev, num_chunks=3, schedule=ScheduleConfig(prefetch=2, transfer="full"))
    found = [v for v in dev.runtime.hub.violations if v.startswith("host sync in a kernel") and "__int__" in v]
    assert bool(found) == bug, dev.runtime.hub.violations[:5]
    if not bug:
        _no_violations(dev.runtime.hub)


def _old_producer_event(self, t, source):
    """The old wait: on the calling thread's current stream of the source GPU, not where the block was written."""
    event = source.runtime.new_event()
    source.runtime.record(event, source.runtime.current_stream())
    return event


@pytest.mark.parametrize("bug", [False, True])
def test_bug_chain_hop_waited_on_the_wrong_stream(monkeypatch, bug):
    if bug:
        monkeypatch.setattr(CudaDevice, "_producer_event", _old_producer_event)
    rt = RecordingRuntime()
    devs = [CudaDevice("1MB", name=f"gpu0.{k}", runtime=rt) for k in range(2)]
    _check_run("gcn", devs, num_chunks=4, topology=[[0, 1]], schedule=ScheduleConfig(prefetch=2))
    found = [v for v in rt.hub.violations if v.startswith("read before write") and "dev->dev" in v]
    assert bool(found) == bug, rt.hub.violations[:5]
    if not bug:
        _no_violations(rt.hub)


@pytest.mark.parametrize("bug", [False, True])
def test_bug_loaded_blocks_not_kept_alive_for_the_compute_stream(monkeypatch, bug):
    if bug:  # no record_stream: the allocator may hand a block to the next load while compute reads it
        monkeypatch.setattr(CudaDevice, "_keep_for_compute", lambda self, tensors: None)
    dev = _fake()
    _check_run("gcn", dev, num_chunks=3, schedule=ScheduleConfig(prefetch=3, transfer="full"))
    assert any(v.startswith("reuse before read") and "launch" in v for v in dev.runtime.hub.violations) == bug


@pytest.mark.parametrize("bug", [False, True])
def test_bug_waiting_on_an_event_never_recorded(monkeypatch, bug):
    if bug:
        monkeypatch.setattr(CudaDevice, "loads_ready", lambda self: self.runtime.new_event())
    dev = _fake()
    _check_run("gcn", dev, num_chunks=3, schedule=ScheduleConfig(prefetch=2))
    assert any(v.startswith("wait on an unrecorded event") for v in dev.runtime.hub.violations) == bug


@pytest.mark.parametrize("bug", [False, True])
def test_bug_transfer_costs_measured_on_a_512_kib_payload(monkeypatch, bug):
    dev = _fake("64MB")
    if bug:  # the old measurement: one fixed 512 KiB payload, whatever the plan sends
        monkeypatch.setattr(dev, "min_measure_bytes", 0)
        monkeypatch.setattr(dev, "max_measure_bytes", 512 << 10)
    dev.transfer_costs(24 << 20)  # the plan's blocks: 24 MiB
    sent = [op for op in dev.runtime.hub.ops("copy") if "pinned->dev torch.float32" in op.detail]
    biggest = max(int(op.detail.split()[2][:-1]) for op in sent)
    assert (biggest < MIN_MEASURE_BYTES) == bug
    _no_violations(dev.runtime.hub)


def test_the_planner_measures_costs_at_its_block_size():
    dev = _fake("64MB")
    _check_run("gcn", dev, num_chunks=2, schedule=ScheduleConfig(transfer="auto"))
    assert dev._measured and min(dev._measured) >= MIN_MEASURE_BYTES


class _BusyGpu(RecordingRuntime):
    """A stand-in whose GPU is always behind: an event completes only when the host waits for it."""

    def query(self, event) -> bool:
        return False


def test_released_bytes_stay_charged_until_the_gpu_has_run_past_them():
    dev = CudaDevice("1MB", runtime=_BusyGpu())
    with dev.scope() as s:
        s.charge(600_000, "a step's loads")
    assert dev.current_bytes == 600_000, "refunded before the kernels reading them have run"
    waits = sum(op.kind == "host_wait" for op in dev.runtime.hub.log)
    with dev.scope() as s:
        s.charge(600_000, "the next step's loads")  # over the budget with the first still pending: waits for it
        assert dev.current_bytes == 600_000
    assert sum(op.kind == "host_wait" for op in dev.runtime.hub.log) == waits + 1
    assert dev.peak_bytes == 600_000
    dev.synchronize()  # every event has completed once the compute stream is waited for
    assert dev.current_bytes == 0 and not dev._pending
    _no_violations(dev.runtime.hub)


def test_a_charge_over_the_budget_with_nothing_pending_still_fails():
    dev = CudaDevice("1MB", runtime=_BusyGpu())
    with dev.scope() as s:
        s.charge(600_000, "a step's loads")
        with pytest.raises(sagann.BudgetExceeded, match="the next step's loads"):
            s.charge(600_000, "the next step's loads")


def test_a_layer_runs_with_releases_that_complete_late():
    dev = CudaDevice("1MB", runtime=_BusyGpu(kernel_backend="reference"))
    _check_run("gcn", dev, num_chunks=3, schedule=ScheduleConfig(prefetch=2))
    _no_violations(dev.runtime.hub)
    assert any(op.kind == "host_wait" for op in dev.runtime.hub.log)
    dev.synchronize()
    assert dev.current_bytes == 0 and not dev._pending, "every release is refunded once the GPU has caught up"


def _live_peak(name: str, runtime: RecordingRuntime, fraction: int = 12, **graph) -> tuple[int, int, object]:
    """(device bytes alive at once over a second layer call, budget, graph) on a CudaDevice over ``runtime``, under a
    ``fraction`` of the layer's in-memory peak; the first call takes the planner's calibrations, which allocate their own."""
    ei, x = _graph()
    probe = sagann.CpuDevice()
    _run(LAYERS[name], probe, ei, x)
    budget = probe.peak_bytes // fraction
    dev = CudaDevice(budget, runtime=runtime)
    _run(LAYERS[name], dev, ei, x, **graph)
    hub = runtime.hub
    hub.reset_peak()
    base = hub.live_bytes
    _, _, g = _run(LAYERS[name], dev, ei, x, **graph)
    return hub.peak_bytes - base, budget, g


@pytest.mark.parametrize("name", ["gcn", "sage", "gat"])
@pytest.mark.parametrize("busy,depth,fraction", [(False, 0, 12), (True, 2, 4)])
def test_device_memory_alive_at_once_stays_within_the_budget(name, busy, depth, fraction):
    """What torch's allocator holds on a GPU (loaded blocks and tensors computed from them, each until the host drops
    it), measured on the stand-in, stays within the budget the ledger enforces; also with a GPU that is always behind."""
    runtime = (_BusyGpu if busy else RecordingRuntime)(kernel_backend="cpu")
    peak, budget, g = _live_peak(name, runtime, fraction, schedule=ScheduleConfig(prefetch=depth))
    ran_on = g.with_remaining_self_loops()[0] if name in ("gcn", "gat") else g
    assert ran_on.num_chunks > 1
    assert 0 < peak <= budget, f"{peak:,} device bytes alive at once under a {budget:,}-byte budget"


@pytest.mark.parametrize("bug", [False, True])
def test_bug_loads_held_past_their_step(monkeypatch, bug):
    if bug:  # the device keeps every load it made (a list that is never emptied): the ledger refunds, the memory stays
        held = []
        real = CudaDevice._loaded
        monkeypatch.setattr(CudaDevice, "_loaded", lambda self, out, stream: (held.append(out), real(self, out, stream))[1])
    peak, budget, _ = _live_peak("gcn", RecordingRuntime(kernel_backend="cpu"), 4, schedule=ScheduleConfig(prefetch=2))
    assert (peak > budget) == bug, f"{peak:,} device bytes alive at once under a {budget:,}-byte budget"
