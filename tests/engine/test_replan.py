"""Out of device memory during a pass: re-plan with more chunks, continue, equal a run at that P.

Faults are injected into a ``CpuDevice``: its ledger enforces less than the
budget the planner plans for (a device with less free memory than it was
told), or fails one chosen allocation once; a CUDA out-of-memory error is
raised from a transfer in the loader thread.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

import sagann
from sagann.engine.models import build_model
from sagann.engine.train import train_node_classifier
from sagann.scheduler.devices import BudgetExceeded
from tests.engine.graphs import awkward_graph
from tests.engine.layers import GatedGCN, HookLayer
from tests.engine.test_out_of_core import assert_grads_close, assert_rel_close, outputs_and_grads
from tests.engine.whole_graph import whole_graph_layer
from tests.measured import assert_measured_within

N, E, D = 240, 2400, 16


@pytest.fixture(scope="module")
def edges() -> np.ndarray:
    return awkward_graph(np.random.default_rng(5), N, E)


@pytest.fixture(autouse=True)
def _pipelined_cpu(monkeypatch):
    """Run these tests with the loader thread on, as on a GPU: out-of-memory errors must be
    handled when they come from a loader running ahead too (a plain CpuDevice loads in line)."""
    monkeypatch.setattr(sagann.CpuDevice, "overlaps_transfers", property(lambda self: True))


def _budget(ei, layer, fraction: float = 0.3) -> int:
    """A budget that makes the planner choose several chunks for ``layer``."""
    free = sagann.ChunkedGraph(ei, N)
    layer(free, torch.randn(N, D, requires_grad=True))  # the tests' calls need the input gradient: plan for it
    return int(free.working_set.peak_bytes * fraction)


def _x() -> torch.Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(3), requires_grad=True)


def _fail_once(device, match: str) -> dict:
    """Make the ledger refuse the first allocation whose description contains ``match``, once."""
    real, state = device.ledger.charge, {"failed": 0}

    def charge(nbytes, what):
        text = what() if callable(what) else what
        if not state["failed"] and match in text:
            state["failed"] = 1
            raise BudgetExceeded(f"{device.name}: injected out of memory allocating {nbytes} bytes for {text}")
        real(nbytes, what)

    device.ledger.charge = charge
    return state


def _assert_equals_a_run_on(g, layer, x, ei, budget) -> None:
    """Outputs and gradients equal a fresh graph that used g's final partition from the start, and in-memory."""
    ref_g = sagann.ChunkedGraph.from_partition(g.partition, device=sagann.CpuDevice(budget))
    out, grads = outputs_and_grads(layer, lambda a, b: layer(g, a, b), x, None)
    ref_out, ref_grads = outputs_and_grads(layer, lambda a, b: layer(ref_g, a, b), x, None)
    assert ref_g.num_chunks == g.num_chunks and not ref_g.replans
    assert_rel_close(out, ref_out, what="output vs the same P from the start")
    assert_grads_close(grads, ref_grads)
    mem_out, mem_grads = outputs_and_grads(layer, lambda a, b: whole_graph_layer(layer, ei, a, b), x, None)
    assert_rel_close(out, mem_out, what="output vs in-memory")
    assert_grads_close(grads, mem_grads)


@pytest.mark.parametrize(
    "where, phase",
    [("rows of E[", "forward"), ("accumulator V_", "forward"), ("apply_vertex backward", "backward"), ("gradient temporaries of E[", "backward")],
    ids=["forward-loader", "forward-compute", "backward-vertex", "backward-edges"],
)
def test_one_oom_replans_once_and_equals_that_p_from_the_start(edges, caplog, where, phase):
    torch.manual_seed(0)
    layer = GatedGCN(D, 8)
    budget = _budget(edges, layer)
    dev = sagann.CpuDevice(budget)
    g = sagann.ChunkedGraph(edges, N, device=dev, schedule=sagann.ScheduleConfig(transfer="selective"))
    layer(g, torch.randn(N, D))  # plans P; the warm-up pass is not injected
    p0, sub0 = g.partition.num_chunks, g.partition.sub_chunk_nnz
    assert p0 > 1
    state = _fail_once(dev, where)
    x = _x()
    with caplog.at_level(logging.WARNING, logger="sagann"):
        out = layer(g, x)
        out.sum().backward()
    assert state["failed"] == 1
    assert [(r.phase, r.chunks[0]) for r in g.replans] == [(phase, p0)]
    assert g.partition.num_chunks == min(2 * p0, N) and g.partition.sub_chunk_nnz < sub0  # P doubles, sub-chunks halve
    warnings = [r.getMessage() for r in caplog.records if r.name == "sagann"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert f"ran out of memory in the {phase} of GatedGCN with P={p0}" in warnings[0] and f"re-planning with P={g.partition.num_chunks}" in warnings[0]
    assert dev.current_bytes == 0, "the failed attempt released everything it held"
    del dev.ledger.charge  # the injection off again
    _assert_equals_a_run_on(g, layer, x, edges, budget)


def test_a_device_with_less_memory_than_planned_for(edges):
    """The ledger enforces 60% of the peak the plan really reaches: passes re-plan until they fit, then stay fitted."""
    torch.manual_seed(0)
    layer = GatedGCN(D, 8)
    budget = _budget(edges, layer, 0.5)
    honest = sagann.ChunkedGraph(edges, N, device=sagann.CpuDevice(budget))
    layer(honest, torch.randn(N, D)).sum().backward()
    dev = sagann.CpuDevice(budget)
    g = sagann.ChunkedGraph(edges, N, device=dev)
    real = int(0.6 * honest.device.peak_bytes)
    dev.ledger.budget = real
    x = _x()
    out, grads = outputs_and_grads(layer, lambda a, b: layer(g, a, b), x, None)
    assert 1 <= len(g.replans) <= 3 and dev.peak_bytes <= real and dev.current_bytes == 0
    replans = len(g.replans)
    outputs_and_grads(layer, lambda a, b: layer(g, a, b), x, None)
    assert len(g.replans) == replans, "the next pass starts from the finer partition"
    dev.ledger.budget = budget
    _assert_equals_a_run_on(g, layer, x, edges, budget)


def _sage_training():
    """Three epochs of a GraphSAGE node classifier on fixed random data, from one seed: its losses on a given graph."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((N, D)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, N))
    masks = [torch.from_numpy(rng.random(N) < 0.5) for _ in range(3)]

    def train(g):
        torch.manual_seed(0)
        model = build_model("sage", D, 8, 3)
        return [s.loss for s in train_node_classifier(model, g, x, y, *masks, epochs=3, progress=False)]

    return train


def test_training_continues_and_equals_a_run_at_the_final_p(edges):
    cfg, train = sagann.ScheduleConfig(order="natural"), _sage_training()
    budget = _budget(edges, sagann.nn.SAGEConv(D, 8), 0.5)
    honest = sagann.ChunkedGraph(edges, N, device=sagann.CpuDevice(budget), schedule=cfg)
    train(honest)
    dev = sagann.CpuDevice(budget)
    dev.ledger.budget = int(0.6 * honest.device.peak_bytes)  # less memory than the planner was told
    g = sagann.ChunkedGraph(edges, N, device=dev, schedule=cfg)
    losses = train(g)
    assert g.replans, "the injected shortage made training re-plan"
    ref = sagann.ChunkedGraph.from_partition(g.partition, device=sagann.CpuDevice(budget), schedule=cfg)
    ref_losses = train(ref)
    assert not ref.replans and ref.num_chunks == g.num_chunks
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)


def test_gives_up_after_a_bounded_number_of_replans(edges):
    torch.manual_seed(0)
    layer = GatedGCN(D, 8)
    budget = _budget(edges, layer)
    dev = sagann.CpuDevice(budget)
    g = sagann.ChunkedGraph(edges, N, device=dev, schedule=sagann.ScheduleConfig(max_replans=2))
    dev.ledger.budget = 64  # nothing fits, however fine
    t0 = time.perf_counter()
    with pytest.raises(sagann.BudgetTooSmall, match=r"ran out of memory in the forward of GatedGCN even after 2 re-plans \(P \d+ -> \d+.*raise the memory budget") as info:
        layer(g, _x())
    assert "\n" not in str(info.value) and isinstance(info.value.__cause__, BudgetExceeded)
    assert len(g.replans) == 2 and time.perf_counter() - t0 < 30
    assert dev.current_bytes == 0, "no budget leaked by the failed attempts"


def test_no_replans_without_leave(edges):
    """max_replans=0 and a fixed num_chunks raise the out-of-memory error itself, saying why."""
    layer = GatedGCN(D, 8)
    budget = _budget(edges, layer)
    off = sagann.ChunkedGraph(edges, N, device=sagann.CpuDevice(budget), schedule=sagann.ScheduleConfig(max_replans=0))
    layer(off, torch.randn(N, D))
    _fail_once(off.device, "accumulator V_")
    with pytest.raises(BudgetExceeded, match="injected"):
        layer(off, torch.randn(N, D))
    assert not off.replans and off.device.current_bytes == 0
    fixed = sagann.ChunkedGraph(edges, N, num_chunks=4, device=sagann.CpuDevice(budget * 4))
    _fail_once(fixed.device, "accumulator V_")
    with pytest.raises(BudgetExceeded) as info:
        layer(fixed, torch.randn(N, D))
    assert any("num_chunks is fixed; pass num_chunks=None" in n for n in info.value.__notes__)


def test_cuda_out_of_memory_in_the_loader_is_replanned(edges, monkeypatch):
    """A GPU's OOM (torch.cuda.OutOfMemoryError), raised in the loader thread, re-plans like the budget check."""
    torch.manual_seed(0)
    layer = sagann.nn.SAGEConv(D, 8)
    budget = _budget(edges, layer)
    dev = sagann.CpuDevice(budget)
    g = sagann.ChunkedGraph(edges, N, device=dev, schedule=sagann.ScheduleConfig(transfer="selective", prefetch=2))
    layer(g, torch.randn(N, D))
    real, calls = dev.gather_in, {"n": 0}

    def gather_in(host, index):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB (injected)")
        return real(host, index)

    monkeypatch.setattr(dev, "gather_in", gather_in)
    x = _x()
    layer(g, x).sum().backward()
    assert len(g.replans) == 1 and "CUDA out of memory" in g.replans[0].reason
    assert dev.current_bytes == 0
    _assert_equals_a_run_on(g, layer, x, edges, budget)


def test_out_of_memory_on_a_full_block_chunk_leaks_nothing(edges):
    """A sub-chunk that fails to load after its chunk's V_i block was sent gives the block back."""
    layer = GatedGCN(D, 8)
    g = sagann.ChunkedGraph(edges, N, num_chunks=3, device=sagann.CpuDevice("50MB"), schedule=sagann.ScheduleConfig(transfer="full", prefetch=1))
    _fail_once(g.device, "index arrays of E[")
    with pytest.raises(Exception) as info:
        layer(g, torch.randn(N, D))
    assert "injected out of memory" in str(info.value)
    assert g.device.current_bytes == 0


def _edge_data_layer(edges):
    """A layer with edge data (needing their gradient) and a budget of 30% of its in-memory peak: P > 1."""
    layer = HookLayer(D, 8, 2, "sum")
    ed = torch.randn(edges.shape[1], 2, generator=torch.Generator().manual_seed(4), requires_grad=True)
    free = sagann.ChunkedGraph(edges, N)
    layer(free, torch.randn(N, D), ed.detach())
    return layer, ed, int(free.working_set.peak_bytes * 0.3)


@pytest.mark.parametrize("where", ["edge rows of E[", "gradient temporaries of E["], ids=["forward", "backward"])
def test_edge_data_follow_a_replan(edges, where):
    """Edge data arrive in the first partition's sub-chunk order; a re-plan reads (and returns the
    gradient of) each edge row at its place in the finer partition."""
    torch.manual_seed(0)
    layer, ed, budget = _edge_data_layer(edges)
    dev = sagann.CpuDevice(budget)
    g = sagann.ChunkedGraph(edges, N, device=dev, schedule=sagann.ScheduleConfig(transfer="selective"))
    state = _fail_once(dev, where)
    x = _x()
    out, grads = outputs_and_grads(layer, lambda a, b: layer(g, a, b), x, ed)
    assert state["failed"] == 1 and len(g.replans) == 1
    ref_out, ref_grads = outputs_and_grads(layer, lambda a, b: whole_graph_layer(layer, edges, a, b), x, ed)
    assert_rel_close(out, ref_out, what="output vs in-memory")
    assert_grads_close(grads, ref_grads)
    assert dev.current_bytes == 0


def test_edge_data_of_a_replan_are_permuted_under_the_host_budget(edges, monkeypatch):
    """The permutation and the permuted edge data (and gradient) are edge-sized: placed by the host
    budget, spilled past it, and made a block at a time; results as in memory."""
    import sagann.engine.call as call_module
    from sagann.scheduler.host import is_spilled

    monkeypatch.setattr(call_module, "PERMUTE_BLOCK", 7)
    made = []
    real = call_module._data_permutation
    monkeypatch.setattr(call_module, "_data_permutation", lambda *a: made.append(real(*a)) or made[-1])
    torch.manual_seed(0)
    layer, ed, budget = _edge_data_layer(edges)
    dev = sagann.CpuDevice(budget)
    g = sagann.ChunkedGraph(edges, N, device=dev, schedule=sagann.ScheduleConfig(transfer="selective"), host_memory=1)  # everything spills
    state = _fail_once(dev, "edge rows of E[")
    x = _x()
    out, grads = outputs_and_grads(layer, lambda a, b: layer(g, a, b), x, ed)
    assert state["failed"] == 1 and len(g.replans) == 1 and made and all(is_spilled(p) for p in made)
    ref_out, ref_grads = outputs_and_grads(layer, lambda a, b: whole_graph_layer(layer, edges, a, b), x, ed)
    assert_rel_close(out, ref_out, what="output vs in-memory")
    assert_grads_close(grads, ref_grads)


def test_a_pass_plan_over_the_budget_replans_finer_and_equals_that_p(edges, monkeypatch, caplog):
    """The partition comes from a model; where a pass's dry run needs more, the pass re-plans as after an out-of-memory error."""
    from sagann.scheduler.planner import Planner

    torch.manual_seed(0)
    layer = GatedGCN(D, 8)
    budget = _budget(edges, layer)
    g = sagann.ChunkedGraph(edges, N, device=sagann.CpuDevice(budget), schedule=sagann.ScheduleConfig(prefetch=1))
    layer(g, torch.randn(N, D))
    p0 = g.partition.num_chunks
    assert p0 > 1
    peak = Planner._peak

    def backward_on_the_first_partition_misses(job, plan):
        return peak(job, plan) + (budget if job.phase == "backward" and job.partition.num_chunks == p0 else 0)

    monkeypatch.setattr(Planner, "_peak", staticmethod(backward_on_the_first_partition_misses))
    x = _x()
    with caplog.at_level(logging.WARNING, logger="sagann"):
        out = layer(g, x)
        out.sum().backward()
    assert [(r.phase, r.chunks[0]) for r in g.replans] == [("backward", p0)] and g.partition.num_chunks > p0
    assert "backward plan with prefetch 1 needs" in g.replans[0].reason
    monkeypatch.setattr(Planner, "_peak", staticmethod(peak))
    _assert_equals_a_run_on(g, layer, x, edges, budget)


@pytest.mark.parametrize("chains", [None, [[0, 1]]], ids=["device-list", "chain"])
@pytest.mark.parametrize("where, phase", [("accumulator V_", "forward"), ("gradient temporaries of E[", "backward")], ids=["forward", "backward"])
def test_several_devices_replan_like_one(edges, caplog, chains, where, phase):
    """A device of a list (or a chain) that runs out of memory, in its own thread, re-plans the whole
    call: every device's columns are laid out again on the finer partition, edge data follow, and
    the results are those of memory."""
    torch.manual_seed(0)
    layer, ed, budget = _edge_data_layer(edges)
    devices = [sagann.CpuDevice(budget, name=f"cpu{k}") for k in range(2)]
    g = sagann.ChunkedGraph(edges, N, device=devices, topology=chains)
    layer(g, torch.randn(N, D), ed.detach())  # plans P; not injected
    p0 = g.partition.num_chunks
    state = _fail_once(devices[1], where)  # the second device runs in a thread of its own
    x = _x()
    with caplog.at_level(logging.WARNING, logger="sagann"):
        out, grads = outputs_and_grads(layer, lambda a, b: layer(g, a, b), x, ed)
    assert state["failed"] == 1
    assert [(r.phase, r.chunks[0]) for r in g.replans] == [(phase, p0)] and g.partition.num_chunks > p0
    warnings = [r.getMessage() for r in caplog.records if r.name == "sagann"]
    assert len(warnings) == 1 and warnings[0].startswith("sagann: cpu1 ran out of memory"), warnings
    assert all(d.current_bytes == 0 for d in devices), "every device released what the failed attempt held"
    ref_out, ref_grads = outputs_and_grads(layer, lambda a, b: whole_graph_layer(layer, edges, a, b), x, ed)
    assert_rel_close(out, ref_out, what="output vs in-memory")
    assert_grads_close(grads, ref_grads)


def test_several_devices_with_less_memory_than_planned_train_on(edges):
    """Both devices of a list enforce 60% of the peak the plan reaches: training re-plans, stays within
    the real memory, and its losses are those of one device on the final partition."""
    cfg, train = sagann.ScheduleConfig(order="natural"), _sage_training()
    budget = _budget(edges, sagann.nn.SAGEConv(D, 8), 0.5)
    honest = sagann.ChunkedGraph(edges, N, device=[sagann.CpuDevice(budget, name=f"cpu{k}") for k in range(2)], schedule=cfg)
    train(honest)
    devices = [sagann.CpuDevice(budget, name=f"cpu{k}", meter=True) for k in range(2)]
    real = int(0.6 * min(d.peak_bytes for d in honest.devices))
    for d in devices:
        d.ledger.budget = real
    g = sagann.ChunkedGraph(edges, N, device=devices, schedule=cfg)
    losses = train(g)
    assert g.replans and all(d.current_bytes == 0 for d in devices)
    for d in devices:  # as allocated, not as the ledger that enforces it counts
        assert_measured_within(d, real)
    ref = sagann.ChunkedGraph.from_partition(g.partition, device=sagann.CpuDevice(budget), schedule=cfg)
    np.testing.assert_allclose(losses, train(ref), rtol=1e-5)


def test_a_replan_on_a_derived_graph_is_the_users(edges):
    """GATConv runs on the graph with self loops sagann derives: its re-plans are in the user's graph's log."""
    torch.manual_seed(0)
    layer = sagann.nn.GATConv(D, 8, heads=2)
    free = sagann.ChunkedGraph(edges, N)
    layer(free, torch.randn(N, D))
    dev = sagann.CpuDevice(int(free.working_set.peak_bytes * 0.15))
    g = sagann.ChunkedGraph(edges, N, device=dev)
    layer(g, torch.randn(N, D))
    state = _fail_once(dev, "index arrays of E[")
    x = _x()
    out, grads = outputs_and_grads(layer, lambda a, b: layer(g, a, b), x, None)
    assert state["failed"] == 1 and len(g.replans) == 1 and g.replans[0].layer == "GATConv"
    ref_out, ref_grads = outputs_and_grads(layer, lambda a, b: layer(free, a, b), x, None)
    assert_rel_close(out, ref_out, what="output vs in-memory")
    assert_grads_close(grads, ref_grads)
