"""The time model: measured rates, a partition's predicted steps and bytes, and the plan it picks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sagann
from sagann.chunks.partition import balanced_bounds, partition_graph
from sagann.chunks.synthetic import rmat
from sagann.engine import calibrate
from sagann.scheduler import cost_model, planner as planner_module
from sagann.scheduler.cost_model import StepCosts, chunk_nnz, estimate_partition, faster_partition, measure_step_costs, predict_seconds
from sagann.scheduler.memory_model import LayerShape, src_row_bytes, vertex_weight
from sagann.scheduler.planner import Planner

SHAPE = LayerShape(
    d_in=64, d_edge=0, d_src_term=0, d_dst_term=0, d_msg=64, d_out=32, gather="sum", builtin=None,
    uses_src=True, uses_dst=False, uses_src_term=False, uses_dst_term=False, uses_edge=False,
)
FORWARD_ONLY = SHAPE.with_grads(False, False, False)
N, E = 4096, 65536
EDGES = rmat(N, E, seed=1)


def test_measured_rates_are_positive_and_kept_per_kind_of_device():
    a, b = sagann.CpuDevice(copy_transfers=True), sagann.CpuDevice(copy_transfers=True, memory_budget="1MB")
    costs = measure_step_costs(a)
    assert costs.seconds_per_byte > 0 and costs.seconds_per_step > 0
    assert measure_step_costs(b).seconds_per_step == costs.seconds_per_step  # one measurement per kind of device
    assert a.bytes_in == 0 and a.current_bytes == 0 and b.current_bytes == 0  # a measurement is neither traffic nor a ledger charge
    assert predict_seconds(costs, 1000, 10, 0) == pytest.approx(1000 * costs.seconds_per_byte + 10 * costs.seconds_per_step)


@pytest.mark.parametrize("p,sub", [(4, 256), (8, 1024), (16, 4096)])
def test_estimate_counts_the_steps_exactly_and_bounds_the_rows_from_above(p, sub):
    part = partition_graph(EDGES, N, p, sub)
    est = estimate_partition(chunk_nnz(EDGES, part.bounds), part.bounds, sub, FORWARD_ONLY)
    subs = list(part.sub_chunks())
    assert est.steps == len(subs)
    rows = sum(c.num_src for c in subs) * src_row_bytes(SHAPE) + cost_model.INDEX_BYTES_PER_EDGE * E
    assert rows <= est.bytes <= 2 * rows  # uniform draws: R-MAT's skewed rows repeat more than that
    assert np.array_equal(chunk_nnz(EDGES, part.bounds).sum(axis=0), [sum(c.nnz for c in part.sub_chunks() if c.id[1] == j) for j in range(p)])


def _planner(budget: int, rule: str) -> Planner:
    in_degree = np.bincount(EDGES[1], minlength=N).astype(np.int64)
    return Planner(lambda: EDGES, N, in_degree, [sagann.CpuDevice(budget)], sagann.ScheduleConfig(partition_rule=rule))


def _job(budget: int) -> dict:
    return {"shape": SHAPE, "fused": False, "param_bytes": 1000, "budget": budget, "in_flight": 1, "default": 1 << 20}


def test_a_larger_p_is_picked_only_where_the_model_predicts_it_faster():
    free = _planner(None, "smallest")
    free.partition_for(SHAPE, False, 1000)
    budget = free.working_set.peak_bytes // 24  # here the smallest P (1) fits sub-chunks of 1,689 edges, P = 3 of 2,127
    smallest = _planner(budget, "smallest").partition_for(SHAPE, False, 1000)
    in_degree = np.bincount(EDGES[1], minlength=N)
    base = estimate_partition(chunk_nnz(EDGES, smallest.bounds), smallest.bounds, smallest.sub_chunk_nnz, SHAPE)
    pick = faster_partition(EDGES, in_degree, smallest, _job(budget), StepCosts(1e-15, 1.0, 0.0), 1024)
    assert pick is not None and pick[0] > smallest.num_chunks
    bounds = balanced_bounds(in_degree, pick[0], vertex_weight(SHAPE, False))
    assert estimate_partition(chunk_nnz(EDGES, bounds), bounds, pick[1], SHAPE).steps < base.steps
    costly_bytes = StepCosts(1.0, 0.0, 0.0)  # a larger P may still send fewer bytes (its wider sub-chunks re-send fewer shared rows)
    pick = faster_partition(EDGES, in_degree, smallest, _job(budget), costly_bytes, 1024)
    if pick is not None:
        bounds = balanced_bounds(in_degree, pick[0], vertex_weight(SHAPE, False))
        assert estimate_partition(chunk_nnz(EDGES, bounds), bounds, pick[1], SHAPE).bytes < (1 - cost_model.MARGIN) * base.bytes
    same = faster_partition(EDGES, in_degree, smallest, _job(budget), StepCosts(1.0, 0.0, 0.0), smallest.num_chunks)
    assert same is None or same[0] == smallest.num_chunks  # no larger P allowed (wider sub-chunks at the same P may be)


def test_the_next_few_p_above_the_smallest_are_candidates(monkeypatch):
    """Where a whole chunk just fits a sub-chunk at P + 1, the growth factors alone (1.25 P, ...) would skip it for small P."""
    free = _planner(None, "smallest")
    free.partition_for(SHAPE, False, 1000)
    budget = free.working_set.peak_bytes // 16
    smallest = _planner(budget, "smallest").partition_for(SHAPE, False, 1000)
    tried = []
    estimate = cost_model.estimate_partition
    monkeypatch.setattr(cost_model, "estimate_partition", lambda nnz, bounds, *a: tried.append(len(bounds) - 1) or estimate(nnz, bounds, *a))
    faster_partition(EDGES, np.bincount(EDGES[1], minlength=N), smallest, _job(budget), StepCosts(1e-15, 1.0, 0.0), 1024)
    p0 = smallest.num_chunks
    assert {p0 + k for k in range(1, cost_model.NEXT_P + 1)} <= set(tried)


def test_the_planner_takes_the_faster_p_when_it_fits(monkeypatch):
    free = _planner(None, "smallest")
    free.partition_for(SHAPE, False, 1000)
    budget = free.working_set.peak_bytes // 24  # where a larger P is faster (see the test above)
    smallest = _planner(budget, "smallest").partition_for(SHAPE, False, 1000)
    monkeypatch.setattr(planner_module, "measure_step_costs", lambda device: StepCosts(1e-15, 1.0, 0.0))
    timed = _planner(budget, "time")
    part = timed.partition_for(SHAPE, False, 1000)
    assert part.num_chunks > smallest.num_chunks and timed.working_set.peak_bytes <= budget
    real = cost_model.faster_partitions
    picks = real(EDGES, np.bincount(EDGES[1], minlength=N), smallest, _job(budget), StepCosts(1e-15, 1.0, 0.0), 1024)
    # the fastest predicted does not fit once cut, even with its sub-chunks halved twice: the next is cut instead
    unfit = (smallest.num_chunks, 64 * smallest.sub_chunk_nnz)
    monkeypatch.setattr(planner_module, "faster_partitions", lambda *args: [unfit, *picks])
    assert _planner(budget, "time").partition_for(SHAPE, False, 1000).num_chunks == part.num_chunks
    monkeypatch.setattr(planner_module, "faster_partitions", lambda *args: [])  # the model sees nothing faster: the smallest P stays
    assert _planner(budget, "time").partition_for(SHAPE, False, 1000).num_chunks == smallest.num_chunks


def test_a_pick_that_fits_only_far_narrower_than_estimated_is_still_taken(monkeypatch):
    """The estimate counts no destination rows, so on a dense graph a pick's sub-chunks may fit only at a 16th of the
    estimate's size: the pick is narrowed until it fits and then widened, not dropped for the smallest P (which kept a
    Reddit-shaped GIN at 1,770 steps an epoch where P = 5 takes 100)."""
    free = _planner(None, "smallest")
    free.partition_for(SHAPE, False, 1000)
    budget = free.working_set.peak_bytes // 24
    smallest = _planner(budget, "smallest").partition_for(SHAPE, False, 1000)
    monkeypatch.setattr(planner_module, "measure_step_costs", lambda device: StepCosts(1e-15, 1.0, 0.0))
    timed = _planner(budget, "time").partition_for(SHAPE, False, 1000)
    assert timed.num_chunks > smallest.num_chunks
    monkeypatch.setattr(planner_module, "faster_partitions", lambda *args: [(timed.num_chunks, 16 * timed.sub_chunk_nnz)])
    planner = _planner(budget, "time")
    part = planner.partition_for(SHAPE, False, 1000)
    assert part.num_chunks == timed.num_chunks and part.sub_chunk_nnz >= timed.sub_chunk_nnz
    assert planner.working_set.peak_bytes <= budget


def test_the_planner_compares_picks_after_widening_them(monkeypatch):
    """The estimate's sub-chunks may split chunks that fit whole once cut: each pick is widened before the fastest is
    kept, so the order the estimate gave them in does not decide."""
    free = _planner(None, "smallest")
    free.partition_for(SHAPE, False, 1000)
    budget = free.working_set.peak_bytes // 24
    smallest = _planner(budget, "smallest").partition_for(SHAPE, False, 1000)
    costs = StepCosts(1e-15, 1.0, 0.0)  # steps decide
    monkeypatch.setattr(planner_module, "measure_step_costs", lambda device: costs)
    p0 = smallest.num_chunks
    picks = [(p0 + 2, 64), (p0 + 1, 64)]  # sub-chunks far below what fits (more steps than the smallest P): widening sets them
    alone = []
    for pick in picks:
        monkeypatch.setattr(planner_module, "faster_partitions", lambda *args, pick=pick: [pick])
        part = _planner(budget, "time").partition_for(SHAPE, False, 1000)
        alone.append((cost_model.measure_partition(part, SHAPE).seconds(costs), part.num_chunks, part.sub_chunk_nnz))
        assert part.num_chunks == pick[0] and part.sub_chunk_nnz > 64  # taken, widened
    want = min(alone)
    for order in (picks, picks[::-1]):
        monkeypatch.setattr(planner_module, "faster_partitions", lambda *args, order=order: list(order))
        part = _planner(budget, "time").partition_for(SHAPE, False, 1000)
        assert (part.num_chunks, part.sub_chunk_nnz) == want[1:]


def test_unknown_partition_rule_is_an_error():
    with pytest.raises(ValueError, match="partition_rule"):
        sagann.ScheduleConfig(partition_rule="fastest")


class _TwoLayers(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.a, self.b = sagann.nn.GCNConv(d, d), sagann.nn.SAGEConv(d, 8)

    def forward(self, g, x):
        return self.b(g, torch.relu(self.a(g, x)))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), fraction=st.sampled_from([4, 8, 16]), step_cost=st.sampled_from([0.0, 1.0]))
def test_out_of_core_under_either_rule_equals_in_memory(seed, fraction, step_cost):
    """Whatever P the time model picks, the epoch's outputs and gradients are the in-memory ones (fp32, 1e-5 relative)."""
    n = 300
    gen = np.random.default_rng(seed)
    ei = gen.integers(0, n, (2, 3000))
    x = torch.from_numpy(gen.standard_normal((n, 16), dtype=np.float32))
    torch.manual_seed(seed)
    model = _TwoLayers(16)

    def run(g):
        model.zero_grad()
        out = model(g, x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    ref_g = sagann.ChunkedGraph(ei, n, num_chunks=1)
    ref = run(ref_g)
    budget = ref_g.device.peak_bytes // fraction
    original = planner_module.measure_step_costs
    planner_module.measure_step_costs = lambda device: StepCosts(1e-12, step_cost, 0.0) if step_cost else original(device)
    try:
        g = sagann.ChunkedGraph(ei, n, device=sagann.CpuDevice(budget, copy_transfers=True))
        got = run(g)
    finally:
        planner_module.measure_step_costs = original
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_cut_partition_is_counted_as_the_estimate_predicts_its_steps():
    part = partition_graph(EDGES, N, 8, 1024)
    counted = cost_model.measure_partition(part, SHAPE)
    assert counted.steps == 2 * len(list(part.sub_chunks()))  # forward and backward
    assert counted.steps == estimate_partition(chunk_nnz(EDGES, part.bounds), part.bounds, 1024, SHAPE).steps
    assert cost_model.measure_partition(part, FORWARD_ONLY).bytes < counted.bytes


def test_a_device_that_cannot_run_the_calibration_plans_by_bytes(caplog):
    class Broken(sagann.CpuDevice):
        @property
        def kernel_backend(self) -> str:
            return "no such backend"

    costs = measure_step_costs(Broken(copy_transfers=True))
    assert costs.seconds_per_step == 0 and costs.seconds_per_byte > 0
    assert "fixed cost per step" in caplog.text


def test_the_pass_log_learns_what_a_step_costs_inside_a_pass_and_the_planner_does_not():
    dev = sagann.CpuDevice("1MB")
    kind = cost_model._kind(dev)
    saved = cost_model._IN_PASS.pop(kind, None)
    try:
        assert cost_model.in_pass_step_seconds(dev) == 0.0
        cost_model.learn_in_pass_step(dev, float("nan"), 1.0, 10)  # nothing predicted: nothing learned
        assert cost_model.in_pass_step_seconds(dev) == 0.0
        cost_model.learn_in_pass_step(dev, 1.0, 2.0, 100)  # 1 s beyond the prediction over 100 steps
        assert cost_model.in_pass_step_seconds(dev) == pytest.approx(0.01)
        cost_model.learn_in_pass_step(dev, 1.0, 1.0, 100)  # an exact pass halves it
        assert cost_model.in_pass_step_seconds(dev) == pytest.approx(0.005)
        before = cost_model.measure_step_costs(dev)
        assert cost_model.measure_step_costs(dev) == before, "the planner's calibration is not what the log learns"
    finally:
        cost_model._IN_PASS.pop(kind, None)
        if saved is not None:
            cost_model._IN_PASS[kind] = saved



def test_a_pass_is_predicted_from_its_own_earlier_runs_not_the_devices_other_passes():
    """What a step costs beyond the model is learned per pass, from its second run (its first settled one) on: another
    graph's passes (here an absurd 1 s a step) never reach its predictions, which start at its third run."""
    rng = np.random.default_rng(0)
    n, e = 2000, 12000
    ei = torch.from_numpy(np.stack([rng.integers(0, n, e), rng.integers(0, n, e)]))
    torch.manual_seed(0)
    layer = sagann.nn.GCNConv(16, 8)
    x = torch.randn(n, 16, requires_grad=True)
    free = sagann.ChunkedGraph(ei, n)
    layer(free, x)
    dev = sagann.CpuDevice(free.working_set.peak_bytes // 6, copy_transfers=True)
    kind = cost_model._kind(dev)
    saved = cost_model._IN_PASS.get(kind)
    try:
        g = sagann.ChunkedGraph(ei, n, device=dev)
        runs = []
        for _ in range(4):
            cost_model._IN_PASS[kind] = 1.0  # what the device's other passes left behind
            start = len(g.pass_log)
            layer(g, x).sum().backward()
            runs.append(g.pass_log[start:])
        assert g.num_chunks > 1
        second, third, fourth = runs[1:]
        assert all(r.model_seconds != r.model_seconds for r in second)  # its chunks' times are the warm-up's: no prediction
        assert all(0 < r.model_seconds < 0.1 * r.steps for r in third + fourth)  # its own runs' residual, not the device's guess
    finally:
        cost_model._IN_PASS.pop(kind, None)
        if saved is not None:
            cost_model._IN_PASS[kind] = saved

def test_sub_chunks_sized_in_a_room_pay_each_source_row_once():
    from sagann.scheduler.memory_model import FLOAT, edge_scratch_bytes, sub_chunk_nnz_for, sub_chunk_nnz_in_room

    row, edge = 2 * FLOAT * SHAPE.d_src_side, 2 * (edge_scratch_bytes(1, SHAPE, False) + FLOAT * SHAPE.d_edge) + 24
    room = 1 << 20
    few_rows = sub_chunk_nnz_in_room(room, 100, SHAPE, False, 1 << 30)
    assert few_rows > sub_chunk_nnz_for(2 * room, SHAPE, False, 1 << 30)  # the per-edge rule charges a row per edge
    assert 100 * row + few_rows * edge <= room < 100 * row + (few_rows + 1) * edge
    many_rows = sub_chunk_nnz_in_room(room, 10**6, SHAPE, False, 1 << 30)  # more rows than fit: a row per edge again
    assert many_rows == room // (row + edge)
    sizes = [sub_chunk_nnz_in_room(r, 500, SHAPE, False, 1 << 30) for r in range(1 << 16, 1 << 22, 1 << 16)]
    assert sizes == sorted(sizes)
    assert sub_chunk_nnz_in_room(room, 100, SHAPE, False, few_rows // 2) == few_rows // 2  # never past the default


def test_a_later_layer_that_needs_a_finer_partition_keeps_wide_sub_chunks():
    """Re-planned for a wider layer, the sub-chunks are widened again (past the per-edge rule); at the same P never past the first layer's."""
    wide = LayerShape(
        d_in=128, d_edge=0, d_src_term=0, d_dst_term=0, d_msg=128, d_out=32, gather="sum", builtin=None,
        uses_src=True, uses_dst=False, uses_src_term=False, uses_dst_term=False, uses_edge=False,
    )
    free = _planner(None, "smallest")
    free.partition_for(SHAPE, False, 1000)
    planner = _planner(free.working_set.peak_bytes // 8, "time")
    first = planner.partition_for(SHAPE, False, 1000)
    second = planner.partition_for(wide, False, 1000)
    assert second is not first  # the wide layer does not fit the first partition
    assert sub_chunk_nnz_conservative(planner.budget, wide) < second.sub_chunk_nnz
    assert second.num_chunks > first.num_chunks or second.sub_chunk_nnz <= first.sub_chunk_nnz


def sub_chunk_nnz_conservative(budget: int, shape: LayerShape) -> int:
    from sagann.chunks.partition import DEFAULT_SUB_CHUNK_NNZ
    from sagann.scheduler.memory_model import sub_chunk_nnz_for

    return sub_chunk_nnz_for(budget, shape, False, DEFAULT_SUB_CHUNK_NNZ)


def test_a_layer_with_no_backward_edge_stage_sizes_its_sub_chunks_for_the_forward():
    """A first layer whose input needs no gradient never streams its edges backward: its sub-chunks need not fit a backward's bytes."""
    from sagann.chunks.partition import DEFAULT_SUB_CHUNK_NNZ
    from sagann.scheduler.memory_model import sub_chunk_nnz_for, sub_chunk_nnz_in_room, working_set

    trained = SHAPE.with_grads(True, True, False)
    assert trained.backward_edges and not FORWARD_ONLY.backward_edges
    budget = 1 << 20
    assert sub_chunk_nnz_for(budget, FORWARD_ONLY, False, 1 << 30) > 1.5 * sub_chunk_nnz_for(budget, trained, False, 1 << 30)
    assert sub_chunk_nnz_in_room(budget, 500, FORWARD_ONLY, False, 1 << 30) > 1.5 * sub_chunk_nnz_in_room(budget, 500, trained, False, 1 << 30)
    free = _planner(None, "smallest")
    free.partition_for(trained, False, 1000)
    limit = free.working_set.peak_bytes // 32  # tight enough that neither takes whole chunks
    fwd, bwd = _planner(limit, "smallest"), _planner(limit, "smallest")
    a, b = fwd.partition_for(FORWARD_ONLY, False, 1000), bwd.partition_for(trained, False, 1000)
    assert a.num_sub_chunks < b.num_sub_chunks  # fewer steps for the layer that only streams forward
    assert working_set(a, FORWARD_ONLY, False, 1000, budget=limit).peak_bytes <= limit  # and what it plans still fits
    assert DEFAULT_SUB_CHUNK_NNZ >= a.sub_chunk_nnz


def test_the_step_calibration_times_the_engines_own_passes_on_a_twin():
    """The bare loop misses what a pass's step does besides (loader, ledger, hand-over, front-end): the engine's
    passes are timed too, on a twin of the same kind, leaving no trace, no learned residual and no ledger charge."""
    dev = sagann.CpuDevice("1MB", copy_transfers=True)
    twin = dev.calibration_twin()
    assert cost_model._kind(twin) == cost_model._kind(dev) and twin.memory_budget is not None and twin.meter is None
    kind = cost_model._kind(dev)
    saved = cost_model._IN_PASS.pop(kind, None)
    try:
        with sagann.profiler.profile(nvtx=False) as rec:
            seconds = calibrate.engine_step_seconds(dev, repeats=2)
        assert seconds > 0
        assert not rec.spans(), "the calibration's passes are not the user's trace"
        assert kind not in cost_model._IN_PASS, "the calibration's passes teach the pass log nothing"
        assert dev.bytes_in == 0 and dev.current_bytes == 0
    finally:
        cost_model._IN_PASS.pop(kind, None)
        if saved is not None:
            cost_model._IN_PASS[kind] = saved


def test_the_engines_step_cost_replaces_the_bare_loops_where_it_is_more(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("SAGANN_CACHE_DIR", str(tmp_path))
    dev = sagann.CpuDevice(copy_transfers=True, link_bandwidth="50GB")  # a kind no other test measures
    kind = cost_model._kind(dev)
    monkeypatch.delitem(cost_model._MEASURED, kind, raising=False)
    monkeypatch.setattr(cost_model, "_ENGINE_STEP_TIMER", lambda device, repeats: 1.0)
    monkeypatch.setattr(cost_model, "_ENGINE_VERTEX_TIMER", lambda device, repeats: 2.0)
    costs = measure_step_costs(dev)
    assert (costs.seconds_per_step, costs.seconds_per_vertex_step) == (1.0, 2.0)

    def broken(device, repeats):
        raise RuntimeError("no twin today")

    monkeypatch.setattr(cost_model, "_ENGINE_STEP_TIMER", broken)
    monkeypatch.setattr(cost_model, "_ENGINE_VERTEX_TIMER", broken)
    monkeypatch.delitem(cost_model._MEASURED, kind)
    monkeypatch.setenv("SAGANN_CALIBRATE", "1")
    costs = measure_step_costs(dev)
    assert 0 < costs.seconds_per_step < 1.0, "the bare loop's figure stands"
    assert 0 < costs.seconds_per_vertex_step < 2.0, "the bare loop's figure stands"
    assert "could not time the engine's steps" in caplog.text and "could not time the engine's vertex steps" in caplog.text


def test_the_vertex_step_calibration_times_the_engine_on_a_twin_and_leaves_no_trace():
    """A vertex step (ApplyVertex on an interval or block) costs more in the engine than the bare loop of a
    Linear-ReLU: measured on a twin, outside the user's trace, the device untouched."""
    dev = sagann.CpuDevice("1MB", copy_transfers=True)
    with sagann.profiler.profile(nvtx=False) as rec:
        seconds = calibrate.engine_vertex_step_seconds(dev, repeats=2)
    assert seconds > 0
    assert not rec.spans()
    assert dev.bytes_in == 0 and dev.current_bytes == 0


def test_measuring_the_step_costs_leaves_the_callers_random_stream_where_it_was(monkeypatch, tmp_path):
    """The first call that plans under a budget measures the rates: were the default generator to move, its dropout
    masks (drawn from a seed each call takes from the stream) would differ from every later call's."""
    monkeypatch.setenv("SAGANN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SAGANN_CALIBRATE", "1")
    dev = sagann.CpuDevice(copy_transfers=True, link_bandwidth="40GB")  # a kind no other test measures
    monkeypatch.delitem(cost_model._MEASURED, cost_model._kind(dev), raising=False)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    measure_step_costs(dev)
    assert torch.equal(torch.get_rng_state(), before)
