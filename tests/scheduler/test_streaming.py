"""The streamed schedule: every option equals in-memory; faults surface fast and leak nothing."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import sagann
from sagann.scheduler import ScheduleConfig
from sagann.chunks import partition_graph
from sagann.engine.layer import probe_layer
from sagann.scheduler.pipeline import LoaderError
from sagann.scheduler.policy import Transfer, TransferPolicy
from sagann.scheduler.planner import backward_dst_row_bytes
from sagann.scheduler.schedule import ScheduleError, build_plan, choose_resident, dry_run, dst_rows_saving, validate
from tests.engine.graphs import awkward_graph, graphs
from tests.engine.layers import Builtin, GatedGCN, HookLayer, edge_data_for
from tests.engine.test_out_of_core import assert_grads_close, assert_rel_close, outputs_and_grads
from tests.engine.whole_graph import whole_graph_layer
from tests.measured import assert_measured_within


def run_twice(layer, g, x, ed):
    """Two calls: the second runs with measured costs, so profile ordering is exercised."""
    outputs_and_grads(layer, lambda a, b: layer(g, a, b), x, ed)
    return outputs_and_grads(layer, lambda a, b: layer(g, a, b), x, ed)


@settings(max_examples=30, deadline=None)
@given(
    graph=graphs(),
    num_chunks=st.integers(1, 6),
    sub=st.sampled_from([2, 9, None]),
    prefetch=st.sampled_from([0, 1, 3]),
    transfer=st.sampled_from(["selective", "full", "auto"]),
    order=st.sampled_from(["natural", "profile"]),
    which=st.sampled_from(["hooks", "gated", "builtin"]),
    gather=st.sampled_from(["sum", "mean", "max"]),
)
def test_every_schedule_equals_in_memory(graph, num_chunks, sub, prefetch, transfer, order, which, gather):
    n, ei = graph
    torch.manual_seed(0)
    layer = {"hooks": lambda: HookLayer(3, 4, 2, gather), "gated": lambda: GatedGCN(3, 4), "builtin": lambda: Builtin("src_mul_edge", gather, 3)}[which]()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=gen, requires_grad=True)
    ed = None if which == "gated" else (torch.randn(ei.shape[1], 2, generator=gen) if which == "hooks" else torch.randn(ei.shape[1], generator=gen))
    if ed is not None:
        ed.requires_grad_(True)
    cfg = ScheduleConfig(prefetch=prefetch, transfer=transfer, order=order)
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, sub_chunk_nnz=sub, schedule=cfg, backend="reference")
    ref_out, ref_grads = outputs_and_grads(layer, lambda a, b: whole_graph_layer(layer, ei, a, b), x, ed)
    out, grads = run_twice(layer, g, x, ed)
    assert_rel_close(out, ref_out, what="output")
    assert_grads_close(grads, ref_grads)
    assert g.device.current_bytes == 0, "every device allocation was released"


@pytest.mark.parametrize("transfer", ["selective", "full"])
def test_budgeted_schedules_fit(transfer):
    rng = np.random.default_rng(0)
    n, ei = 2000, awkward_graph(rng, 2000, 12000)
    torch.manual_seed(0)
    layer = sagann.nn.SAGEConv(32, 16)
    x = torch.randn(n, 32, requires_grad=True)
    free = sagann.ChunkedGraph(ei, n)
    ref = layer(free, x)
    budget = free.working_set.peak_bytes // 6
    dev = sagann.CpuDevice(budget, meter=True)
    g = sagann.ChunkedGraph(ei, n, device=dev, schedule=ScheduleConfig(transfer=transfer, prefetch="max"))
    out, _ = run_twice(layer, g, x, None)
    assert_rel_close(out, ref.detach())
    assert g.num_chunks > 1
    assert_measured_within(dev, budget)
    assert all(r.prefetch >= 1 for r in g.pass_log), "the budget leaves room to prefetch"


@pytest.mark.parametrize("link", [None, "4GB"])
def test_default_prefetch_only_where_transfers_overlap_compute(link):
    """A plain CPU device copies on the cores that compute: no loader thread by default, and
    P sized for one sub-chunk in flight; an emulated link (a wait beside compute) prefetches."""
    rng = np.random.default_rng(0)
    n, ei = 2000, awkward_graph(rng, 2000, 12000)
    torch.manual_seed(0)
    layer = sagann.nn.SAGEConv(32, 16)
    x = torch.randn(n, 32, requires_grad=True)
    free = sagann.ChunkedGraph(ei, n)
    ref = layer(free, x)
    budget = free.working_set.peak_bytes // 6
    dev = sagann.CpuDevice(budget, link_bandwidth=link)
    assert dev.overlaps_transfers is (link is not None)
    g = sagann.ChunkedGraph(ei, n, device=dev)
    out, _ = run_twice(layer, g, x, None)
    assert_rel_close(out, ref.detach())
    depths = {r.prefetch for r in g.pass_log}
    assert depths == {0} if link is None else min(depths) >= 1
    pipelined = sagann.ChunkedGraph(ei, n, device=sagann.CpuDevice(budget), schedule=ScheduleConfig(prefetch="max"))
    layer(pipelined, x)
    if link is None:  # room for sub-chunks in flight costs intervals
        assert g.num_chunks <= pipelined.num_chunks


def test_prefetch_option_is_validated():
    for bad in ("deep", -1, True, 2.0):
        with pytest.raises(ValueError, match="prefetch must be None, 'max' or an int"):
            ScheduleConfig(prefetch=bad)


class FailingLayer(sagann.Layer):
    gather = "sum"
    hoist = False  # a traced apply_edge would run its Python side effects (the call counter) only once

    def __init__(self, fail_on_call: int):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.calls, self.fail_on_call = 0, fail_on_call

    def apply_edge(self, e):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("injected compute fault")
        return self.lin(e.src)


def fault_graph(prefetch=2):
    rng = np.random.default_rng(0)
    n, ei = 50, awkward_graph(rng, 50, 400)
    return n, sagann.ChunkedGraph(ei, n, num_chunks=4, sub_chunk_nnz=10, device=sagann.CpuDevice("10MB"), schedule=ScheduleConfig(prefetch=prefetch, transfer="selective"), backend="reference")


@pytest.mark.parametrize("prefetch", [0, 2])
def test_compute_fault_names_the_chunk_and_leaks_nothing(prefetch):
    n, g = fault_graph(prefetch)
    layer = FailingLayer(fail_on_call=9)  # the probe is calls 1-5 (its shape; temporaries on 32 and 64 edges, forward and backward)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="injected compute fault") as info:
        layer(g, torch.randn(n, 4))
    assert time.perf_counter() - t0 < 5
    assert any("while computing sub-chunk E[" in note for note in info.value.__notes__)
    assert g.device.current_bytes == 0


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_loader_fault_surfaces_with_chunk_id(prefetch, monkeypatch):
    n, g = fault_graph(prefetch)
    layer = sagann.nn.SAGEConv(4, 4)
    layer(g, torch.randn(n, 4))  # plan and warm up
    calls = {"n": 0}
    real = g.device.gather_in

    def flaky(host, index):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("injected transfer fault")
        return real(host, index)

    monkeypatch.setattr(g.device, "gather_in", flaky)
    with pytest.raises(LoaderError, match=r"loading E\[\d+,\d+\]\.\d+ failed: injected transfer fault"):
        layer(g, torch.randn(n, 4))
    assert g.device.current_bytes == 0
    monkeypatch.setattr(g.device, "gather_in", real)
    assert layer(g, torch.randn(n, 4)).shape == (n, 4), "the graph stays usable after a fault"


def test_plan_validates_and_dry_run_bounds_the_peak():
    rng = np.random.default_rng(1)
    n, ei = 300, awkward_graph(rng, 300, 3000)
    torch.manual_seed(0)
    layer = HookLayer(8, 8, 2, "max")
    dev = sagann.CpuDevice("2MB")
    g = sagann.ChunkedGraph(ei, n, device=dev, schedule=ScheduleConfig(transfer="full"), backend="reference")
    x = torch.randn(n, 8, requires_grad=True)
    ed = torch.randn(ei.shape[1], 2)
    layer(g, x, ed).sum().backward()
    shape = probe_layer(layer, 8, ed, torch.device("cpu"))
    for phase in ("forward", "backward"):
        plan = g.pass_plan(g.partition, shape, False, 0, phase)
        validate(plan, g.partition)
        assert dry_run(plan, g.partition, shape, False) <= dev.memory_budget
        text = plan.format()
        assert "compute E[" in text and ("load_block" in text or "load_rows" in text)


def test_validate_catches_a_missing_and_a_duplicated_sub_chunk():
    rng = np.random.default_rng(2)
    n, ei = 40, awkward_graph(rng, 40, 300)
    g = sagann.ChunkedGraph(ei, n, num_chunks=3, sub_chunk_nnz=10)
    layer = sagann.nn.SAGEConv(4, 4)
    layer(g, torch.randn(n, 4))
    from sagann.scheduler.schedule import PassPlan

    shape = probe_layer(layer, 4, None, torch.device("cpu"))
    plan = build_plan(g.partition, shape, "forward", 1)
    g0, steps = plan.groups[0]
    broken = PassPlan(plan.phase, ((g0, steps[1:]),) + plan.groups[1:], 1)
    with pytest.raises(ScheduleError, match="never computed"):
        validate(broken, g.partition)
    doubled = PassPlan(plan.phase, ((g0, steps + steps[:1]),) + plan.groups[1:], 1)
    with pytest.raises(ScheduleError, match="computed twice"):
        validate(doubled, g.partition)


def test_schedule_config_validates():
    with pytest.raises(ValueError, match="known: auto, selective, full"):
        ScheduleConfig(transfer="sometimes")
    with pytest.raises(ValueError, match="prefetch"):
        ScheduleConfig(prefetch=-1)
    assert ScheduleConfig(order="natural").order.value == "natural"


def test_measuring_transfer_costs_leaves_the_callers_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    sagann.CpuDevice().transfer_costs()
    assert torch.equal(torch.rand(3), expected)


def test_a_resident_copy_of_v_is_sent_once_and_changes_nothing():
    rng = np.random.default_rng(3)
    n, ei = 600, awkward_graph(rng, 600, 6000)
    torch.manual_seed(0)
    layer = sagann.nn.GCNConv(4, 3)  # rows 3 wide after the matmul: all of V fits beside the working set
    x = torch.randn(n, 4, requires_grad=True)
    free = sagann.ChunkedGraph(ei, n)
    ref_out, ref_grads = outputs_and_grads(layer, lambda x_, e_: layer(free, x_), x, None)
    # sub-chunks held at 512 edges: the planner would otherwise widen them into the room the resident rows take
    budget = free.working_set.peak_bytes // 5  # P = 5, with room for most of V's 7.2 kB
    dev = sagann.CpuDevice(budget, copy_transfers=True, meter=True)
    g = sagann.ChunkedGraph(ei, n, device=dev, sub_chunk_nnz=512, schedule=ScheduleConfig(order="natural"))
    out, grads = outputs_and_grads(layer, lambda x_, e_: layer(g, x_), x, None)
    assert_rel_close(out, ref_out)
    assert_grads_close(grads, ref_grads)
    assert g.num_chunks > 1 and dev.current_bytes == 0
    assert_measured_within(dev, budget)
    fwd = next((r for r in g.pass_log if r.resident_bytes and r.phase == "forward"), None)
    assert fwd is not None, g.pass_log
    # whole intervals of V's rows (3 columns) went over once; a per-chunk schedule would send V_i once per chunk
    assert fwd.resident_bytes % (3 * 4) == 0 and fwd.bytes_full > fwd.resident_bytes
    assert fwd.bytes_moved < fwd.bytes_full


def test_the_room_for_resident_rows_is_what_the_edge_stage_leaves():
    # 64-wide inputs, 2-wide rows after the matmul: the hook pre-pass over the inputs sets the
    # call's working set; the edge stage, which runs after it, has room for all of V's rows
    rng = np.random.default_rng(3)
    n, ei = 600, awkward_graph(rng, 600, 6000)
    torch.manual_seed(0)
    layer = sagann.nn.GCNConv(64, 2)
    x = torch.randn(n, 64, requires_grad=True)
    free = sagann.ChunkedGraph(ei, n)
    ref_out, ref_grads = outputs_and_grads(layer, lambda x_, e_: layer(free, x_), x, None)
    sized = sagann.ChunkedGraph(ei, n, num_chunks=4, device=sagann.CpuDevice(10**9))
    outputs_and_grads(layer, lambda x_, e_: layer(sized, x_), x, None)
    assert sized.working_set.phase == "hook pre-pass"
    budget = sized.working_set.peak_bytes  # no room beside the call's peak
    dev = sagann.CpuDevice(budget, copy_transfers=True, meter=True)
    g = sagann.ChunkedGraph(ei, n, num_chunks=4, device=dev, schedule=ScheduleConfig(order="natural"))
    out, grads = outputs_and_grads(layer, lambda x_, e_: layer(g, x_), x, None)
    assert_rel_close(out, ref_out)
    assert_grads_close(grads, ref_grads)
    fwd = next(r for r in g.pass_log if r.phase == "forward")
    assert fwd.resident_bytes == n * 2 * 4 and fwd.bytes_moved < fwd.bytes_full
    assert dev.current_bytes == 0
    assert_measured_within(dev, budget)


@pytest.mark.parametrize("which", ["gcn", "gated", "hooks_max", "gat"])
def test_a_backward_pass_sends_each_destination_row_once_where_they_fit(which):
    # autograd leaves (gated, hooks), winners (max) and softmax state (gat) among the held rows
    rng = np.random.default_rng(3)
    n, ei = 600, awkward_graph(rng, 600, 6000)
    torch.manual_seed(0)
    layer = {"gcn": lambda: sagann.nn.GCNConv(3, 3), "gated": lambda: GatedGCN(3, 4), "hooks_max": lambda: HookLayer(3, 4, 2, "max"), "gat": lambda: sagann.nn.GATConv(3, 4, heads=2)}[which]()
    x = torch.randn(n, 3, requires_grad=True)
    ed = torch.randn(ei.shape[1], 2, requires_grad=True) if which == "hooks_max" else None
    call = lambda g: (lambda a, b: layer(g, a, b)) if ed is not None else (lambda a, b: layer(g, a))  # noqa: E731
    free = sagann.ChunkedGraph(ei, n)
    ref_out, ref_grads = outputs_and_grads(layer, call(free), x, ed)
    dev = sagann.CpuDevice(10 * free.working_set.peak_bytes, copy_transfers=True, meter=True)
    g = sagann.ChunkedGraph(ei, n, num_chunks=4, device=dev)
    out, grads = outputs_and_grads(layer, call(g), x, ed)
    assert_rel_close(out, ref_out)
    assert_grads_close(grads, ref_grads)
    bwd = [r for r in g.pass_log if r.phase == "backward" and r.chunks]
    assert bwd and all(r.dst_rows_bytes > 0 for r in bwd), g.pass_log
    assert dev.current_bytes == 0
    assert_measured_within(dev)


def test_destination_rows_held_plan_as_data():
    rng = np.random.default_rng(1)
    n, ei = 300, awkward_graph(rng, 300, 3000)
    part = partition_graph(ei, n, 4, 200)
    shape = probe_layer(Builtin("src_mul_edge", "sum", 3), 3, torch.randn(ei.shape[1]), torch.device("cpu"))
    plan = build_plan(part, shape, "backward", 0)
    held, saved = dst_rows_saving(plan, part, shape)
    read = {s.key[1] for s in plan.steps()}
    assert held == sum(part.interval_size(j) for j in read) * backward_dst_row_bytes(shape) > 0
    assert saved == sum(c.num_dst for c in plan.sub_chunks()) * backward_dst_row_bytes(shape) - held > held
    holding = dataclasses.replace(plan, dst_rows_bytes=held)
    validate(holding, part)
    text = holding.format()
    assert "destination rows held" in text and "load_resident 'destination rows'" in text and "evict_resident 'destination rows'" in text
    # each sub-chunk brings no destination rows of its own; the held copy counts once
    assert held <= dry_run(holding, part, shape, True) < dry_run(plan, part, shape, True) + held
    assert dst_rows_saving(build_plan(part, shape, "forward", 0), part, shape) == (0, 0)


def test_resident_plan_as_data():
    rng = np.random.default_rng(4)
    n, ei = 300, awkward_graph(rng, 300, 3000)
    part = partition_graph(ei, n, 4)
    layer = Builtin("copy_src", "sum", 5)
    shape = probe_layer(layer, 5, None, torch.device("cpu"))
    streamed = build_plan(part, shape, "forward", 0, TransferPolicy.FULL)
    plan = build_plan(part, shape, "forward", 0, resident=True)
    validate(plan, part)
    assert all(s.transfer is Transfer.RESIDENT for s in plan.steps())
    assert plan.bytes_moved == plan.resident_bytes == n * 5 * 4 < streamed.bytes_moved
    assert plan.bytes_lower_bound <= plan.bytes_moved
    # the copy is held through the pass; full blocks are not
    assert dry_run(plan, part, shape, True) - plan.resident_bytes < dry_run(streamed, part, shape, True)
    text = plan.format()
    assert text.count("load_resident") == 1 and "evict_resident" in text and "load_block" not in text


def _four_intervals(seed: int):
    """A 400-vertex graph in 4 intervals, an 8-wide copy_src sum, and its forward plan with full blocks."""
    n, ei = 400, awkward_graph(np.random.default_rng(seed), 400, 4000)
    part = partition_graph(ei, n, 4)
    shape = probe_layer(Builtin("copy_src", "sum", 8), 8, None, torch.device("cpu"))
    return n, part, shape, build_plan(part, shape, "forward", 0, TransferPolicy.FULL)


def test_a_plan_holds_some_intervals_resident():
    n, part, shape, streamed = _four_intervals(5)
    plan = build_plan(part, shape, "forward", 0, TransferPolicy.FULL, resident={2, 0})
    validate(plan, part)
    assert plan.resident == (0, 2) and plan.resident_bytes == (part.interval_size(0) + part.interval_size(2)) * 8 * 4
    assert {s.key[0] for s in plan.steps() if s.transfer is Transfer.RESIDENT} == {0, 2}
    assert all(s.transfer is Transfer.FULL for s in plan.steps() if s.key[0] in (1, 3))
    # V_0 and V_2 go over once instead of once per chunk (4 columns)
    assert plan.bytes_moved == streamed.bytes_moved - 3 * plan.resident_bytes
    assert plan.bytes_lower_bound <= plan.bytes_moved
    text = plan.format()
    assert "load_resident 'V_0'" in text and "load_resident 'V_2'" in text and "evict_resident 'V_2'" in text
    assert "load_resident 'V'" not in text and text.count("load_block") == 8
    assert dry_run(plan, part, shape, True) >= plan.resident_bytes


def test_choose_resident_holds_what_saves_most_per_byte_within_the_room():
    n, part, shape, full = _four_intervals(6)
    size = {i: part.interval_size(i) * 8 * 4 for i in range(4)}
    assert choose_resident(full, 0) == ()
    assert sorted(choose_resident(full, sum(size.values()))) == [0, 1, 2, 3]
    one = choose_resident(full, max(size.values()))
    assert len(one) == 1
    best = max(range(4), key=lambda i: (sum(s.moved_bytes for s in full.steps() if s.key[0] == i) - size[i]) / size[i])
    assert one[0] == best or size[best] > max(size.values())
    # chunks that send less than their interval (selective rows of a sparse row) are never worth holding
    sparse = partition_graph(np.array([[0, 150], [10, 390]]), n, 4)
    sel = build_plan(sparse, shape, "forward", 0, TransferPolicy.SELECTIVE)
    assert choose_resident(sel, 10**9) == ()


def test_budget_room_holds_some_intervals_and_changes_nothing():
    rng = np.random.default_rng(3)
    n, ei, d, P = 400, awkward_graph(rng, 400, 8000), 16, 4
    torch.manual_seed(0)
    layer = Builtin("copy_src", "sum", d)
    x = torch.randn(n, d, requires_grad=True)
    free = sagann.ChunkedGraph(ei, n, num_chunks=P)
    ref_out, ref_grads = outputs_and_grads(layer, lambda x_, e_: layer(free, x_), x, None)
    interval = n // P * d * 4
    partial = []
    for k in range(4):  # the room of 0 to 1.5 intervals beside the working set (tile 1: the room would rather tile)
        dev = sagann.CpuDevice(free.working_set.peak_bytes + k * interval // 2, copy_transfers=True, meter=True)
        g = sagann.ChunkedGraph(ei, n, num_chunks=P, device=dev, schedule=ScheduleConfig(order="natural", tile=1))
        out, grads = outputs_and_grads(layer, lambda x_, e_: layer(g, x_), x, None)
        assert_rel_close(out, ref_out)
        assert_grads_close(grads, ref_grads)
        assert dev.current_bytes == 0
        assert_measured_within(dev)
        partial += [r for r in g.pass_log if 0 < r.resident_bytes < n * d * 4]
    assert partial, "some budget held part of V"
    assert all(r.bytes_moved < r.bytes_full for r in partial if r.phase == "forward")


@settings(max_examples=20, deadline=None)
@given(graph=graphs(), num_chunks=st.integers(2, 6), room=st.sampled_from([None, 0.3, 0.6, 1.0]))
def test_property_resident_plans_equal_streamed_ones(graph, num_chunks, room):
    """room: budget beyond the working set, as a fraction of V's rows (None: plenty); some or all of V may be held."""
    n, ei = graph
    torch.manual_seed(0)
    layer = Builtin("src_mul_edge", "sum", 3)
    x = torch.randn(n, 3, requires_grad=True)
    ed = edge_data_for("src_mul_edge", ei.shape[1], 3, torch.Generator().manual_seed(1)).requires_grad_(True)
    budget = 10**7
    if room is not None:
        probe = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks)
        layer(probe, x, ed)
        budget = probe.working_set.peak_bytes + int(room * n * 3 * 4)
    results = []
    for transfer in ("auto", "selective"):  # auto may hold V resident; selective never does
        g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, device=sagann.CpuDevice(budget, copy_transfers=True), schedule=ScheduleConfig(transfer=transfer))
        results.append(outputs_and_grads(layer, lambda x_, e_: layer(g, x_, e_), x, ed))
        assert g.device.current_bytes == 0
        if transfer == "selective":
            assert not any(r.resident_bytes for r in g.pass_log)
    (a, ga), (b, gb) = results
    assert_rel_close(a, b)
    assert_grads_close(ga, gb)


def test_a_pass_record_sums_its_sub_chunks_loads_and_compute():
    """What the sweep splits an epoch's extra time by: the measured loads and compute of a pass's steps, within its wall time."""
    torch.manual_seed(0)
    g = sagann.ChunkedGraph(torch.randint(0, 400, (2, 6000)), 400, device=sagann.CpuDevice("60KB", copy_transfers=True))
    sagann.nn.GCNConv(16, 16)(g, torch.randn(400, 16, requires_grad=True)).sum().backward()
    assert g.num_chunks > 1 and {r.phase for r in g.pass_log} == {"forward", "backward"}
    for r in g.pass_log:
        assert r.steps > 1 and r.load_seconds > 0 and r.compute_seconds > 0
        assert r.load_seconds + r.compute_seconds <= r.seconds, "loads in line and compute, one after the other, inside the pass"
