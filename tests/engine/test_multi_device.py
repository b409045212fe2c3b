"""Several logical devices (with and without chains) equal one device: outputs, gradients, training, host-link bytes."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings

import sagann
from sagann import nn as snn
from sagann.engine.models import GCN, GAT
from sagann.engine.train import train_node_classifier
from tests.engine.graphs import awkward_graph, graphs
from tests.engine.layers import GatedGCN, HookLayer
from tests.engine.test_out_of_core import assert_grads_close, assert_rel_close
from tests.measured import assert_measured_within


def cpus(n: int, **kw) -> list[sagann.CpuDevice]:
    return [sagann.CpuDevice(name=f"cpu{k}", **kw) for k in range(n)]


LAYERS = {
    "gcn": (lambda d, o: snn.GCNConv(d, o), False),
    "ggcn": (lambda d, o: GatedGCN(d, o), False),  # user apply_edge (hoisted), recomputed in backward
    "hook-max": (lambda d, o: HookLayer(d, o, 3, "max"), True),  # hooks, edge features, winners
    "gat": (lambda d, o: snn.GATConv(d, o, heads=2), False),  # online softmax across chunks
}

# (number of devices, chains): no chains, one chain, a chain next to a lone device, two chains, one chain of 4
CONFIGS = [(1, None), (2, None), (2, [[0, 1]]), (3, [[0], [1, 2]]), (3, [[0, 1, 2]]), (4, [[0, 1], [2, 3]]), (4, [[0, 1, 2, 3]])]


def outputs_and_grads(make_layer, with_edges, ei, n, x, ed, device, topology=None, num_chunks=5, sub_chunk_nnz=16, schedule=None):
    torch.manual_seed(0)
    layer = make_layer()
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, device=device, sub_chunk_nnz=sub_chunk_nnz, topology=topology, schedule=schedule)
    xx = x.clone().requires_grad_(True)
    ee = ed.clone().requires_grad_(True) if with_edges else None
    torch.manual_seed(3)
    out = layer(g, xx, ee) if with_edges else layer(g, xx)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    inputs = [xx] + ([ee] if with_edges else []) + list(layer.parameters())
    grads = torch.autograd.grad((out * probe).sum(), inputs, allow_unused=True)
    return out.detach(), [torch.zeros_like(t) if gr is None else gr for t, gr in zip(inputs, grads)], g


@pytest.mark.parametrize("name", list(LAYERS))
def test_devices_and_chains_equal_one_device(name):
    make, with_edges = LAYERS[name]
    rng = np.random.default_rng(7)
    n, e = 70, 420
    ei = awkward_graph(rng, n, e)  # self loops, a multi-edge, isolated vertices
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(2))
    ed = torch.randn(e, 3, generator=torch.Generator().manual_seed(4))
    ref_out, ref_grads, _ = outputs_and_grads(lambda: make(6, 4), with_edges, ei, n, x, ed, sagann.CpuDevice())
    for num_devices, chains in CONFIGS:
        devices = cpus(num_devices)
        out, grads, g = outputs_and_grads(lambda: make(6, 4), with_edges, ei, n, x, ed, devices, chains)  # a list, even of one, takes the multi-device path
        assert_rel_close(out, ref_out, what=f"{name} output on {num_devices} devices, chains {chains}")
        assert_grads_close(grads, ref_grads)
        assert len(g.step_log) > 0 and sum(r.edge_stage for r in g.call_log) == 2 * num_devices
        if num_devices > 1:  # every device computed something
            assert all(d.bytes_in > 0 for d in devices), [d.bytes_in for d in devices]
            chained = chains is not None and any(len(c) > 1 for c in chains)
            assert (g.link.peer_bytes > 0) == chained, g.link


@settings(max_examples=12, deadline=None)
@given(graphs(max_vertices=30, max_edges=120))
def test_random_graphs_on_three_chained_devices(graph):
    n, ei = graph
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    ed = torch.randn(ei.shape[1], 3, generator=torch.Generator().manual_seed(1))
    for name in ("gcn", "hook-max"):
        make, with_edges = LAYERS[name]
        ref_out, ref_grads, _ = outputs_and_grads(lambda: make(4, 3), with_edges, ei, n, x, ed, sagann.CpuDevice(), num_chunks=4, sub_chunk_nnz=7)
        out, grads, _ = outputs_and_grads(lambda: make(4, 3), with_edges, ei, n, x, ed, cpus(3), [[0, 1, 2]], num_chunks=4, sub_chunk_nnz=7)
        assert_rel_close(out, ref_out, what=f"{name} output")
        assert_grads_close(grads, ref_grads)


def test_more_devices_than_intervals_and_a_budget():
    rng = np.random.default_rng(3)
    n = 40
    ei = awkward_graph(rng, n, 200)
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(0))
    make, _ = LAYERS["ggcn"]
    ref_out, ref_grads, _ = outputs_and_grads(lambda: make(5, 3), False, ei, n, x, None, sagann.CpuDevice(), num_chunks=2)
    out, grads, _ = outputs_and_grads(lambda: make(5, 3), False, ei, n, x, None, cpus(4), [[0, 1, 2, 3]], num_chunks=2)  # two devices own nothing
    assert_rel_close(out, ref_out, what="output")
    assert_grads_close(grads, ref_grads)
    devices = cpus(2, memory_budget="60KB", copy_transfers=True, meter=True)
    out, grads, _ = outputs_and_grads(lambda: make(5, 3), False, ei, n, x, None, devices, [[0, 1]], num_chunks=None, sub_chunk_nnz=None)
    assert_rel_close(out, ref_out, what="budgeted output")
    assert_grads_close(grads, ref_grads)
    for d in devices:
        assert d.peak_bytes > 0
        assert_measured_within(d)


def test_a_hook_pass_on_several_devices_stays_within_each_budget_measured():
    """GCN's apply_src runs interval by interval on each device: one interval's rows at a time, as measured.

    Found by a randomized check from outside: the previous interval's loaded rows stayed alive beside the next
    one's, 1.3 times each device's budget (an R-MAT graph of 1,024 vertices, three devices, 1/16 of the peak).
    """
    from sagann.chunks.synthetic import rmat

    ei = np.asarray(rmat(2**10, 16 * 2**10, seed=0))
    n, width = 2**10, 33
    x = torch.randn(n, width, generator=torch.Generator().manual_seed(145))
    y = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(146))
    schedule = sagann.ScheduleConfig(cache_gather=False, prefetch=2, tile=1, order="natural")
    torch.manual_seed(145)
    model = GCN(width, width, 2, num_layers=1, dropout=0.0)
    free = sagann.ChunkedGraph(ei, n, num_chunks=1, schedule=schedule)
    torch.nn.functional.cross_entropy(model(free, x), y).backward()
    devices = cpus(3, memory_budget=free.device.peak_bytes // 16, copy_transfers=True, meter=True)
    g = sagann.ChunkedGraph(ei, n, device=devices, schedule=schedule)
    torch.nn.functional.cross_entropy(model(g, x), y).backward()
    assert g.num_chunks > 3
    for d in devices:
        assert_measured_within(d)


def _learnable(n=90, classes=3, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=gen)
    src = torch.randint(0, n, (n * 6,), generator=gen)
    same = y[src]
    dst = torch.stack([torch.nonzero(y == c).flatten()[torch.randint(0, int((y == c).sum()), (1,), generator=gen)] for c in same.tolist()]).flatten()
    x = torch.randn(n, d, generator=gen) + torch.nn.functional.one_hot(y, classes).float().repeat(1, 3)[:, :d]
    masks = [torch.zeros(n, dtype=torch.bool) for _ in range(3)]
    for k in range(n):
        masks[k % 3][k] = True
    return np.stack([src.numpy(), dst.numpy()]), x, y, masks


@pytest.mark.parametrize("model_cls", [GCN, GAT])
def test_training_curve_matches_one_device(model_cls):
    ei, x, y, masks = _learnable()
    n = x.shape[0]

    def losses(device, topology):
        torch.manual_seed(0)
        model = model_cls(x.shape[1], 8, 3, dropout=0.5)
        g = sagann.ChunkedGraph(ei, n, num_chunks=4, device=device, topology=topology, sub_chunk_nnz=32)
        hist = train_node_classifier(model, g, x, y, *masks, epochs=3, progress=False)
        return torch.tensor([h.loss for h in hist])

    ref = losses(sagann.CpuDevice(), None)
    for num_devices, chains in [(2, None), (3, [[0], [1, 2]]), (4, [[0, 1], [2, 3]])]:
        got = losses(cpus(num_devices), chains)
        assert torch.allclose(got, ref, rtol=1e-5, atol=0), (num_devices, chains, got, ref)


def _uniform_graph(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Every vertex has in-degree k (sources random): equal intervals, every chunk non-empty."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n, n * k), np.repeat(np.arange(n), k)])


@pytest.mark.parametrize("num_devices,chains,rounds", [(2, [[0, 1]], 1), (4, [[0, 1, 2, 3]], 1), (4, [[0, 1], [2, 3]], 2)])
def test_chains_cut_host_link_bytes_by_the_chain_length(num_devices, chains, rounds):
    n = 64
    P = num_devices * rounds
    ei = _uniform_graph(n, 12)
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    full = sagann.ScheduleConfig(transfer="full", order="natural")

    def epoch(topology):
        devices = cpus(num_devices)
        torch.manual_seed(0)
        layer = GatedGCN(16, 4)  # reads V_i's rows in forward and backward
        g = sagann.ChunkedGraph(ei, n, num_chunks=P, device=devices, topology=topology, schedule=full)
        layer(g, x).sum().backward()
        assert [len(c) for c in g._layouts[id(g.partition)][1].owned] == [rounds] * num_devices
        return g.link, sum(d.bytes_in for d in devices)

    plain, plain_total = epoch(None)
    chained, chained_total = epoch(chains)
    length = len(chains[0])
    assert plain.peer_bytes == 0 and chained.host_bytes > 0
    # each chain fetches V_i once instead of once per device (in backward, chained or not, a device
    # keeps V_i across its several columns: a block per row, not per chunk)
    assert plain.host_bytes == length * chained.host_bytes
    assert chained.peer_bytes == (length - 1) * chained.host_bytes  # and forwards it down the chain
    assert plain_total - chained_total == plain.host_bytes - chained.host_bytes  # nothing else on the host link changed
    assert chained_total < plain_total


def test_chain_hops_are_profiled_as_d2d():
    ei = _uniform_graph(32, 4)
    x = torch.randn(32, 4)
    layer = GatedGCN(4, 2)
    g = sagann.ChunkedGraph(ei, 32, num_chunks=4, device=cpus(2), topology=[["cpu0", "cpu1"]])
    with sagann.profile() as prof:
        layer(g, x)
    hops = [s for s in prof.spans() if s.kind == "d2d"]
    assert hops and all(s.device == "cpu1" and s.nbytes > 0 for s in hops)
    assert sum(s.nbytes for s in hops) == g.link.peer_bytes


class Boom(sagann.Layer):
    """Fails in forward on the edges into a marked vertex (one device owns it)."""

    gather = "sum"
    hoist = False

    def apply_edge(self, e):
        if bool((e.dst == 1234.0).any()):
            raise ValueError("boom on this device")
        return e.src * e.dst


@pytest.mark.parametrize("chains", [None, [[0, 1, 2]]])
def test_a_failure_on_one_device_surfaces_without_hanging(chains):
    n = 60
    ei = _uniform_graph(n, 5)
    x = torch.randn(n, 3)
    x[35] = 1234.0  # in the second device's intervals
    result = {}

    def go():
        g = sagann.ChunkedGraph(ei, n, num_chunks=6, device=cpus(3), topology=chains, sub_chunk_nnz=7)
        try:
            Boom()(g, x)
        except Exception as exc:  # noqa: BLE001
            result["error"], result["g"] = exc, g

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "multi-device pass hung after a device failed"
    err = result.get("error")
    assert isinstance(err, ValueError) and "boom" in str(err), repr(err)
    assert any("on device cpu1" in note for note in getattr(err, "__notes__", [])), err.__notes__
    for d in result["g"].devices:  # everything loaded was released
        assert d.current_bytes == 0, (d.name, d.current_bytes)


def test_bad_device_lists_and_chains():
    ei = np.array([[0, 1], [1, 2]])
    d0, d1 = sagann.CpuDevice(name="a"), sagann.CpuDevice(name="b")
    with pytest.raises(ValueError, match="same device object"):
        sagann.ChunkedGraph(ei, 3, device=[d0, d0])
    with pytest.raises(ValueError, match="named 'x'"):  # names the user gave are kept, so two equal ones are refused
        sagann.ChunkedGraph(ei, 3, device=[sagann.CpuDevice(name="x"), sagann.CpuDevice(name="x")])
    with pytest.raises(ValueError, match="no device"):
        sagann.ChunkedGraph(ei, 3, device=[])
    with pytest.raises(TypeError, match=r"device\[1\]"):
        sagann.ChunkedGraph(ei, 3, device=[d0, "cuda"])
    with pytest.raises(ValueError, match="names device 'c'"):
        sagann.ChunkedGraph(ei, 3, device=[d0, d1], topology=[["a", "c"]])
    with pytest.raises(ValueError, match="in no chain"):
        sagann.ChunkedGraph(ei, 3, device=[d0, d1], topology=[["a"]])
    with pytest.raises(ValueError, match="two chains"):
        sagann.ChunkedGraph(ei, 3, device=[d0, d1], topology=[["a", "b"], ["b"]])


def test_parallel_numba_kernels_use_a_thread_safe_layer_and_partitions_wrap():
    import numba

    ei = _uniform_graph(40, 4)
    x = torch.randn(40, 4)
    g = sagann.ChunkedGraph(ei, 40, num_chunks=4, device=cpus(2), backend="cpu")
    ref = snn.GCNConv(4, 3, add_self_loops=False)  # runs on g itself, so g.partition is set
    out = ref(g, x)
    assert numba.threading_layer() in ("omp", "tbb")  # workqueue would abort on concurrent launches
    g2 = sagann.ChunkedGraph.from_partition(g.partition, device=cpus(2), topology=[[1, 0]])
    assert g2.chains == [[1, 0]]
    assert_rel_close(ref(g2, x), out, what="from_partition on a chain")


def _in_memory_peak(ei, n, x, y, masks) -> int:
    """The device peak of one epoch of GCN training with no budget (what the budgets below are fractions of)."""
    torch.manual_seed(0)
    dev = sagann.CpuDevice()
    g = sagann.ChunkedGraph(ei, n, device=dev)
    train_node_classifier(GCN(x.shape[1], 32, 3), g, x, y, *masks, epochs=1, progress=False)
    return dev.peak_bytes


@pytest.mark.parametrize("num_devices,chains", [(1, None), (2, None), (4, [[0, 1, 2, 3]])])
def test_device_lists_and_chains_stream_out_of_core_like_one_device(num_devices, chains):
    """At 1/8 of the in-memory peak per device, a device list and a chain train at P >= 2 with one device's losses."""
    n, gen = 20000, torch.Generator().manual_seed(1)
    ei = torch.randint(0, n, (2, 200000), generator=gen).numpy()
    x, y = torch.randn(n, 32, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    masks = [torch.arange(n) % 3 == k for k in range(3)]
    budget = _in_memory_peak(ei, n, x, y, masks) // 8

    def losses(device, topology=None):
        torch.manual_seed(0)
        g = sagann.ChunkedGraph(ei, n, device=device, topology=topology)
        hist = train_node_classifier(GCN(x.shape[1], 32, 3), g, x, y, *masks, epochs=3, progress=False)
        return torch.tensor([h.loss for h in hist]), g

    ref, g1 = losses(sagann.CpuDevice(budget))
    got, g = losses(cpus(num_devices, memory_budget=budget), chains)
    assert g.num_chunks >= 2 and g.num_chunks == g1.num_chunks, (g.num_chunks, g1.num_chunks)
    assert not g.replans
    assert torch.allclose(got, ref, rtol=1e-5, atol=0), (got, ref)
    assert all(0 < d.peak_bytes for d in g.devices)


def test_unnamed_devices_in_a_list_are_numbered():
    ei = np.array([[0, 1, 2], [1, 2, 0]])
    g = sagann.ChunkedGraph(ei, 3, device=[sagann.CpuDevice("1MB"), sagann.CpuDevice("1MB", name="cpu1"), sagann.CpuDevice("1MB")])
    assert [d.name for d in g.devices] == ["cpu0", "cpu1", "cpu2"]
    assert "cpu2" in str(g.devices[2].ledger.owner)  # errors name the device by its number
    x, layer = torch.randn(3, 4), sagann.nn.GCNConv(4, 2)
    assert torch.allclose(layer(g, x), layer(sagann.ChunkedGraph(ei, 3), x), atol=1e-6)  # and they run as one device does


@pytest.mark.parametrize("chains", [None, [[0, 1]]])
def test_a_device_whose_dry_run_misses_the_models_depth_runs_shallower(monkeypatch, chains):
    """Each device plans its owned columns; where the dry run needs more than the working-set model said, it prefetches less."""
    from sagann.scheduler.planner import Planner

    rng = np.random.default_rng(7)
    n, e = 70, 420
    ei = awkward_graph(rng, n, e)
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(2))
    make, with_edges = LAYERS["gcn"]
    ref_out, ref_grads, _ = outputs_and_grads(lambda: make(6, 4), with_edges, ei, n, x, None, sagann.CpuDevice())
    peak, depths = Planner._peak, []

    def deeper_than_one_misses(job, plan):
        depths.append(job.depth)
        return peak(job, plan) + (1 << 40 if job.depth > 1 else 0)

    monkeypatch.setattr(Planner, "_peak", staticmethod(deeper_than_one_misses))
    devices = cpus(2, memory_budget="1MB")
    out, grads, g = outputs_and_grads(lambda: make(6, 4), with_edges, ei, n, x, None, devices, topology=chains, schedule=sagann.ScheduleConfig(prefetch="max"))
    assert max(depths) > 1 and 1 in depths, "the deepest pipeline was tried, then one that fits"
    assert_rel_close(out, ref_out, what="output")
    assert_grads_close(grads, ref_grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_chain_sends_16_bit_rows_over_the_host_link_and_forwards_them_widened(dtype):
    """transfer_dtype holds on chained devices as on lone ones: half the host-link row bytes, the lone devices' results."""
    n = 64
    ei = _uniform_graph(n, 12)
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(0))

    def run(topology, transfer_dtype):
        schedule = sagann.ScheduleConfig(transfer="full", order="natural", transfer_dtype=transfer_dtype, max_replans=1)
        out, grads, g = outputs_and_grads(lambda: GatedGCN(16, 4), False, ei, n, x, None, cpus(2, copy_transfers=True), topology, num_chunks=4, schedule=schedule)
        return out, grads, g

    out32, _, g32 = run([[0, 1]], None)
    out16, grads16, g16 = run([[0, 1]], dtype)
    lone16, lone_grads16, _ = run(None, dtype)
    assert g16.link.peer_bytes > 0, "the chain forwarded blocks"
    assert g16.link.host_bytes * 2 == g32.link.host_bytes, "the blocks crossed the host link in 16 bits"
    assert g16.link.peer_bytes == g32.link.peer_bytes, "and went down the chain widened, as float32"
    assert not torch.equal(out16, out32), "the rows were rounded"
    assert_rel_close(out16, lone16, 1e-5)
    assert_grads_close(grads16, lone_grads16)
