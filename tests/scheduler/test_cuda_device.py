"""CudaDevice: a clear refusal without a GPU; on a GPU, the same results as the CPU device under a budget.

The GPU tests skip on machines without CUDA (a CPU build of torch); on a GPU
machine ``benchmarks/gpu_check.py`` runs them.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sagann
from sagann import profiler
from sagann.scheduler.cuda import CudaDevice, cuda_available
from tests.engine.graphs import awkward_graph
from tests.engine.layers import HookLayer
from tests.engine.test_out_of_core import assert_grads_close, assert_rel_close
from tests.measured import assert_measured_within

gpu = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.py runs these on a GPU machine)")

N, E, D = 300, 3000, 16
# The GPU's out-of-core runs: a graph whose budgets are megabytes. torch's caching allocator hands out
# 512-byte blocks, so under a budget of a few kilobytes (1/12 of a 300-vertex layer's peak) the rounding
# of a few dozen live tensors alone is more than the 5% margin of tests/measured.py.
GPU_N, GPU_E = 40_000, 400_000


@pytest.mark.skipif(cuda_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_the_error_names_the_cpu_device():
    assert not cuda_available()
    with pytest.raises(RuntimeError, match="CpuDevice"):
        CudaDevice()


def test_cpu_device_keeps_its_kernel_backend():
    assert sagann.CpuDevice().kernel_backend in ("cpu", "reference")


def _layers():
    return {
        "gcn": lambda: sagann.nn.GCNConv(D, 8),
        "sage-mean": lambda: sagann.nn.SAGEConv(D, 8),
        "gat": lambda: sagann.nn.GATConv(D, 4, heads=2),
        "hook-max": lambda: HookLayer(D, 8, 2, "max"),
    }


def _run(make, device, ei, x, ed, budget_fraction=None):
    torch.manual_seed(0)
    layer = make().to(device.torch_device)
    g = sagann.ChunkedGraph(ei, x.shape[0], device=device)
    xx = x.clone().requires_grad_(True)
    args = (g, xx) if ed is None else (g, xx, ed)
    out = layer(*args)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    leaves = [xx] + list(layer.parameters())
    grads = torch.autograd.grad((out * probe).sum(), leaves, allow_unused=True)
    return out.detach(), [torch.zeros_like(t).cpu() if gr is None else gr.cpu() for t, gr in zip(leaves, grads)], g


def _budget_forcing_chunks(device) -> int:
    """A twelfth of an in-memory run's ledger peak on ``device``: out of core for every layer here.

    Not a third: without a budget a layer keeps what it could recompute (the
    hook layer's per-edge messages), so its in-memory peak is far above what
    one chunk needs.
    """
    return max(1, device.peak_bytes // 12)


@gpu
@pytest.mark.parametrize("name", list(_layers()))
@pytest.mark.parametrize("out_of_core", [False, True])
def test_layers_on_a_gpu_equal_the_cpu_device(name, out_of_core):
    n, e = (GPU_N, GPU_E) if out_of_core else (N, E)
    ei = awkward_graph(np.random.default_rng(1), n, e)
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(2))
    ed = torch.randn(e, 2, generator=torch.Generator().manual_seed(3)) if name == "hook-max" else None
    make = _layers()[name]
    ref_out, ref_grads, _ = _run(make, sagann.CpuDevice(), ei, x, ed)
    dev = CudaDevice()
    if out_of_core:
        _run(make, dev, ei, x, ed)
        dev = CudaDevice(_budget_forcing_chunks(dev))
    out, grads, g = _run(make, dev, ei, x, ed)
    assert out.device.type == "cpu", "layers return host tensors"
    assert_rel_close(out, ref_out, what=f"{name} output on {dev.name}")
    assert_grads_close(grads, ref_grads)
    assert dev.current_bytes == 0 and dev.bytes_in > 0
    assert dev.measured_peak_bytes > 0, "torch's allocator peak, measured around every pass"
    if out_of_core:  # the budget forced an out-of-core run, and held as torch's allocator measured it
        ran_on = g.with_remaining_self_loops()[0] if name in ("gcn", "gat") else g
        assert ran_on.num_chunks > 1
        assert_measured_within(dev)


def test_the_gpu_tests_budget_forces_chunks_on_the_cpu_device_too():
    """The GPU test's budget rule, where it can run everywhere: every layer of it goes out of core and still fits."""
    ei = awkward_graph(np.random.default_rng(1), N, E)
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(2))
    ed = torch.randn(E, 2, generator=torch.Generator().manual_seed(3))
    for name, make in _layers().items():
        edata = ed if name == "hook-max" else None
        ref_out, _, _ = _run(make, sagann.CpuDevice(), ei, x, edata)
        probe = sagann.CpuDevice()
        _run(make, probe, ei, x, edata)
        dev = sagann.CpuDevice(_budget_forcing_chunks(probe), meter=True)
        out, _, g = _run(make, dev, ei, x, edata)
        ran_on = g.with_remaining_self_loops()[0] if name in ("gcn", "gat") else g
        assert ran_on.num_chunks > 1, name
        assert_measured_within(dev)
        assert_rel_close(out, ref_out, what=f"{name} output out of core")


@gpu
def test_loads_are_complete_and_spans_come_from_events():
    dev = CudaDevice("2MB")
    host = torch.randn(4096, 64)
    with profiler.profile() as prof:
        moved = dev.copy_in(host)
        rows = dev.gather_in(host, torch.arange(0, 4096, 3))
        with dev.span("kernel", "compute", chunk=(0, 0, 0)):
            (moved @ moved.T).sum()
        dev.flush_spans()
    assert torch.equal(moved.cpu(), host) and torch.equal(rows.cpu(), host[::3])
    kinds = [s.kind for s in prof.spans()]
    assert "kernel" in kinds
    span = next(s for s in prof.spans() if s.kind == "kernel")
    assert span.t1 >= span.t0 and span.device == dev.name


@gpu
def test_two_logical_devices_on_one_gpu_form_a_chain():
    ei = awkward_graph(np.random.default_rng(4), N, E)
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(5))
    ref_out, ref_grads, _ = _run(_layers()["gcn"], sagann.CpuDevice(), ei, x, None)
    devs = [CudaDevice("4MB", name=f"gpu0.{k}") for k in range(2)]
    torch.manual_seed(0)
    layer = sagann.nn.GCNConv(D, 8).to(devs[0].torch_device)
    g = sagann.ChunkedGraph(ei, N, num_chunks=4, device=devs, topology=[[0, 1]])
    xx = x.clone().requires_grad_(True)
    out = layer(g, xx)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * probe).sum(), [xx] + list(layer.parameters()))
    assert_rel_close(out.detach(), ref_out, what="chained output")
    assert_grads_close([t.cpu() for t in grads], ref_grads)
    assert g.link.peer_bytes > 0


def test_a_device_over_another_runtime_needs_a_budget():
    from tests.scheduler.recording_runtime import RecordingRuntime

    with pytest.raises(ValueError, match="memory_budget"):
        CudaDevice(runtime=RecordingRuntime())
    with pytest.raises(ValueError, match="at least one buffer"):
        CudaDevice("1MB", runtime=RecordingRuntime(), staging_buffers=0)


def test_a_stand_in_runtime_makes_no_calibration_twin():
    """The engine-timed step calibration needs real kernels: over a recording runtime it is skipped (the bare loop's figure stands)."""
    from tests.scheduler.recording_runtime import RecordingRuntime

    assert CudaDevice("1MB", runtime=RecordingRuntime()).calibration_twin() is None


@gpu
def test_the_engine_timed_step_calibration_runs_on_a_gpu_twin():
    from sagann.engine.calibrate import engine_step_seconds

    dev = CudaDevice("2GB")
    twin = dev.calibration_twin()
    assert twin is not None and twin is not dev and twin.torch_device == dev.torch_device
    seconds = engine_step_seconds(dev, repeats=2)
    assert seconds is not None and 0 < seconds < 0.1, seconds
    assert dev.bytes_in == 0 and dev.peak_bytes == 0  # the twin ran the passes, not the device


@gpu
def test_staged_pieces_index_blocks_and_write_backs_on_a_gpu():
    from sagann.chunks.partition import partition_graph
    from sagann.kernels.graph import ChunkTensors

    dev = CudaDevice("2GB")
    host = torch.randn(40 << 18, 1)  # 40 MiB: three pieces through the ring
    with dev.loading():
        sent = dev.copy_in(host)
        picked = dev.gather_in(host, torch.arange(0, host.shape[0], 3))
        ready = dev.loads_ready()
    with dev.computing(ready, [sent, picked]):
        doubled = sent * 2
        back = torch.zeros_like(host)
        dev.copy_out(doubled, back)
        dev.add_out(picked, back[::3])
    dev.synchronize()
    expected = 2 * host
    expected[::3] += host[::3]
    assert torch.equal(back, expected)
    ei = awkward_graph(np.random.default_rng(6), N, E)
    for c in list(partition_graph(ei, N, 3, sub_chunk_nnz=300).sub_chunks())[:4]:
        with dev.loading():
            ct, rows, _ = dev.chunk_index(c, source_major=True)
        dev.runtime.host_wait(dev.loads_ready())
        ref = ChunkTensors.from_chunk(c, "cpu", source_major=True)
        for name in ("dst_ptr", "dst_idx", "src_idx", "src_ptr", "src_perm", "src_dst"):
            assert torch.equal(getattr(ct, name).cpu(), getattr(ref, name)), name
        assert torch.equal(rows.cpu().long(), torch.from_numpy(c.src_rows.astype(np.int64)))


@gpu
@pytest.mark.parametrize("depth", [1, 3])
def test_prefetch_depths_and_transfers_on_a_gpu_equal_the_cpu_device(depth):
    ei = awkward_graph(np.random.default_rng(1), N, E)
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(2))
    ref_out, ref_grads, _ = _run(_layers()["gcn"], sagann.CpuDevice(), ei, x, None)
    for transfer in ("selective", "full"):
        dev = CudaDevice("2MB")
        torch.manual_seed(0)
        layer = _layers()["gcn"]().to(dev.torch_device)
        g = sagann.ChunkedGraph(ei, N, num_chunks=3, device=dev, schedule=sagann.ScheduleConfig(prefetch=depth, transfer=transfer))
        xx = x.clone().requires_grad_(True)
        out = layer(g, xx)
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad((out * probe).sum(), [xx] + list(layer.parameters()))
        assert_rel_close(out.detach(), ref_out, what=f"depth {depth}, {transfer}")
        assert_grads_close([t.cpu() for t in grads], ref_grads)
        assert dev.current_bytes == 0
