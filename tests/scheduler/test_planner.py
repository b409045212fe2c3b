"""The Planner on its own: partitions, refinement and pass plans for a LayerShape, without layers or a graph."""
from __future__ import annotations

import dataclasses
import gc
import pathlib
import re
import weakref

import numpy as np
import torch
import pytest

import sagann
from sagann.scheduler.memory_model import sub_chunk_nnz_for, vertex_weight
from sagann.scheduler.planner import DEFAULT_SUB_CHUNK_NNZ, LayerShape, Planner, working_set
from sagann.scheduler.policy import Order, Transfer, TransferPolicy
from sagann.scheduler.schedule import BACKWARD, FORWARD, dry_run

N, E, PARAMS = 4000, 20000, 1000
SHAPE = LayerShape(
    d_in=64, d_edge=0, d_src_term=0, d_dst_term=0, d_msg=64, d_out=32, gather="sum", builtin=None,
    uses_src=True, uses_dst=False, uses_src_term=False, uses_dst_term=False, uses_edge=False,
)


def _edges() -> np.ndarray:
    rng = np.random.default_rng(5)
    src = rng.integers(0, N, E)
    return np.stack([src, (src + rng.integers(0, 40, E)) % N])


EDGES = _edges()


def planner(budget=None, schedule=None, **kw) -> Planner:
    """A planner taking the smallest P that fits (the figures below are that rule's; tests/scheduler/test_cost_model.py tests the time rule)."""
    in_degree = np.bincount(EDGES[1], minlength=N).astype(np.int64)
    return Planner(lambda: EDGES, N, in_degree, [sagann.CpuDevice(budget)], schedule or sagann.ScheduleConfig(partition_rule="smallest"), **kw)


def widths(d: int) -> LayerShape:
    return dataclasses.replace(SHAPE, d_in=d, d_msg=d)


@pytest.mark.parametrize(
    "fraction,chunks,sub,bounds",
    [
        (20, 1, 448, [0, 4000]),
        (40, 2, 224, [0, 2000, 4000]),
        (80, 4, 112, [0, 999, 2000, 3000, 4000]),
    ],
)
def test_picks_the_partition_the_graph_picked(fraction, chunks, sub, bounds):
    """The smallest P that fits, then the widest sub-chunks at it: the figures ChunkedGraph.plan chose for this call."""
    free = planner()
    free.partition_for(SHAPE, False, PARAMS)
    assert free.working_set.peak_bytes == 46357532  # 20,000 edges: every index array but the edge ids
    budget = free.working_set.peak_bytes // fraction
    p = planner(budget)
    part = p.partition_for(SHAPE, False, PARAMS)
    assert (part.num_chunks, part.sub_chunk_nnz, [int(b) for b in part.bounds]) == (chunks, sub, bounds)
    assert p.partition is part and p.working_set.peak_bytes <= budget
    assert p.working_set == working_set(part, SHAPE, False, PARAMS, budget=budget)


@pytest.mark.parametrize("rule", ["time", "smallest"])
def test_a_search_groups_the_edges_once_per_p_and_picks_what_it_picked_without(rule, monkeypatch):
    """The kept grouping (``OrderCache``) saves work, not choices: the same partition, fewer groupings, none kept after."""
    from sagann.chunks import partition as partition_module

    schedule = sagann.ScheduleConfig(partition_rule=rule)
    budget = working_set(planner().partition_for(SHAPE, False, PARAMS), SHAPE, False, PARAMS).peak_bytes // 6
    grouped = []  # sorts of the edge list by destination: one a search with the cache, one a cut without
    real = partition_module.destination_major
    monkeypatch.setattr(partition_module, "destination_major", lambda *a: grouped.append(1) or real(*a))
    cached = planner(budget, schedule)
    part = cached.partition_for(SHAPE, False, PARAMS)
    with_cache = len(grouped)
    assert cached._orders._hit is None  # the grouping goes with the search
    monkeypatch.setattr(partition_module.OrderCache, "ordered", lambda self, *a: None)
    grouped.clear()
    plain = planner(budget, schedule).partition_for(SHAPE, False, PARAMS)
    assert np.array_equal(part.bounds, plain.bounds) and part.sub_chunk_nnz == plain.sub_chunk_nnz
    assert [c.nnz for c in part.sub_chunks()] == [c.nnz for c in plain.sub_chunks()]
    assert with_cache < len(grouped), f"grouped {with_cache} times with the cache, {len(grouped)} without"


def test_a_search_cuts_only_the_partition_it_settles_on(monkeypatch):
    """Candidates are judged by their sub-chunks' sizes (``sketch_partition``); only the chosen one is cut, packed:
    each chunk's arrays sit in one buffer."""
    from sagann.chunks import partition as partition_module
    from sagann.scheduler import planner as planner_module

    cuts, sketches = [], []
    real_cut, real_sketch = planner_module.partition_graph, planner_module.sketch_partition
    monkeypatch.setattr(planner_module, "partition_graph", lambda *a, **k: cuts.append(1) or real_cut(*a, **k))
    monkeypatch.setattr(planner_module, "sketch_partition", lambda *a, **k: sketches.append(1) or real_sketch(*a, **k))
    budget = working_set(planner().partition_for(SHAPE, False, PARAMS), SHAPE, False, PARAMS).peak_bytes // 6
    cuts.clear()
    part = planner(budget, sagann.ScheduleConfig()).partition_for(SHAPE, False, PARAMS)
    assert len(list(part.sub_chunks())) > 1 and len(sketches) > 1 and len(cuts) == 1, (len(sketches), len(cuts))

    def root(a):
        while isinstance(a.base, np.ndarray):
            a = a.base
        return a

    for subs in part.chunks.values():
        roots = {id(root(getattr(c, name))) for c in subs for name in partition_module.CHUNK_ARRAYS if getattr(c, name).size}
        assert len(roots) == 1, "a chunk's arrays share one buffer"


def test_p_only_grows_until_allowed_to_coarsen():
    p = planner(1162938)
    seen = [(p.partition_for(widths(d), False, PARAMS).num_chunks, p.partition.sub_chunk_nnz) for d in (16, 64, 128, 32)]
    assert seen == [(1, 1312), (2, 225), (4, 113), (4, 113)], "a narrower call keeps the finer partition"
    p.allow_coarser()
    assert (p.partition_for(widths(16), False, PARAMS).num_chunks, p.partition.sub_chunk_nnz) == (1, 1312)
    assert p.partition_for(widths(16), False, PARAMS).num_chunks == 1, "coarsening is once per allow_coarser"


def test_a_coarser_p_must_hold_the_calls_that_still_stream():
    """Only the calls whose Gather got cached stop streaming: the training calls of the same layer on a fresh
    (dropout) input still need the finer P, so the graph does not coarsen below them and re-cut next epoch."""
    p = planner(1162938)
    assert p.partition_for(widths(128), False, PARAMS, owner="training").num_chunks == 4
    p.partition_for(widths(64), False, PARAMS, owner="evaluation")
    p.allow_coarser("evaluation")
    assert p.partition_for(widths(16), False, PARAMS, owner="next layer").num_chunks == 4, "the training call still needs P = 4"
    p.allow_coarser("training")  # now the wide calls are all over
    assert p.partition_for(widths(16), False, PARAMS, owner="next layer").num_chunks == 1


def test_refine_doubles_p_and_halves_sub_chunks_then_never_coarsens():
    p = planner(1162938)
    p.partition_for(widths(16), False, PARAMS)
    finer = p.refine(widths(16), False)
    assert (finer.num_chunks, finer.sub_chunk_nnz) == (2, 656) and p.partition is finer
    p.allow_coarser()
    assert p.partition_for(widths(16), False, PARAMS) is finer, "after running out of memory the model is not trusted to coarsen"


def test_refine_gives_nothing_when_p_is_fixed():
    p = planner(10**9, num_chunks=3)
    assert p.fixed_chunks == 3 and p.partition_for(SHAPE, False, PARAMS).num_chunks == 3
    assert p.refine(SHAPE, False) is None and p.partition.num_chunks == 3


def test_a_fixed_p_gets_the_widest_sub_chunks_that_fit():
    """``num_chunks=`` fixes P, not the sub-chunks: on a dense graph (sources shared by many edges) they widen from the
    one-new-row-per-edge start as a chosen P's do (a dense graph's fixed P took 70x the steps), and still fit."""
    n, e, budget = 1000, 200_000, 4_000_000
    rng = np.random.default_rng(1)
    edges = np.stack([rng.integers(0, n, e), rng.integers(0, n, e)])
    fixed = Planner(lambda: edges, n, np.bincount(edges[1], minlength=n), [sagann.CpuDevice(budget)], sagann.ScheduleConfig(), num_chunks=2)
    part = fixed.partition_for(widths(128), False, PARAMS)
    start = sub_chunk_nnz_for(budget, widths(128), False, DEFAULT_SUB_CHUNK_NNZ)
    assert part.num_chunks == 2 and part.sub_chunk_nnz >= 2 * start
    assert fixed.working_set.peak_bytes <= budget
    wider = fixed._cut(2, int(1.25 * part.sub_chunk_nnz) + 1)
    assert working_set(wider, widths(128), False, PARAMS, budget=budget).peak_bytes > budget, "as wide as the room allows"
    assert fixed.partition_for(widths(16), False, PARAMS) is part, "a call the partition holds keeps it"


def test_one_off_partition_is_not_kept():
    p = planner(1162938)
    kept = p.partition_for(widths(16), False, PARAMS)
    with p.one_off_partition():
        assert p.partition_for(widths(128), False, PARAMS).num_chunks > kept.num_chunks
    assert p.partition is kept


@pytest.mark.parametrize("transfer", ["auto", "selective", "full"])
def test_pass_plans_fit_the_budget(transfer):
    budget = 1162938
    p = planner(budget, sagann.ScheduleConfig(transfer=transfer))
    part = p.partition_for(SHAPE, False, PARAMS)
    for phase in (FORWARD, BACKWARD):
        plan = p.plan_pass(part, SHAPE, False, PARAMS, phase)
        assert plan.phase == phase and plan.num_steps == sum(1 for subs in part.chunks.values() if subs)
        assert dry_run(plan, part, SHAPE, False) + 2 * PARAMS <= budget
        assert p.plan_pass(part, SHAPE, False, PARAMS, phase) == plan, "the memoised choice gives the same plan"
    assert p.working_set.peak_bytes <= p.planned_peak_bytes <= budget


def test_without_prefetch_a_pass_keeps_its_plan_and_ignores_measured_times():
    """Loads and compute run one after the other: no order shortens the pass, so the plan is built once, in natural order."""
    # full transfers and tile 1: no choice rests on transfer costs each device measures for itself
    p = planner(1162938, sagann.ScheduleConfig(prefetch=0, order="profile", transfer="full", tile=1))
    natural = planner(1162938, sagann.ScheduleConfig(prefetch=0, order="natural", transfer="full", tile=1))
    part = p.partition_for(SHAPE, False, PARAMS)
    assert natural.partition_for(SHAPE, False, PARAMS).num_chunks == part.num_chunks > 1
    times = {k: (1.0 / (n + 1), 1.0) for n, k in enumerate(sorted(part.chunks))}  # Johnson's rule would reorder these
    for phase in (FORWARD, BACKWARD):
        plan = p.plan_pass(part, SHAPE, False, PARAMS, phase, measured=times.get)
        assert p.plan_pass(part, SHAPE, False, PARAMS, phase, measured=times.get) is plan, "the second pass reuses the plan, not a rebuild"
        assert [s.key for s in plan.steps()] == [s.key for s in natural.plan_pass(part, SHAPE, False, PARAMS, phase).steps()]


def test_with_prefetch_a_pass_orders_by_measured_times():
    p = planner(1162938, sagann.ScheduleConfig(prefetch=1, order="profile", tile=1))
    part = p.partition_for(SHAPE, False, PARAMS)
    keys = [k for k, subs in sorted(part.chunks.items()) if subs and k[1] == 0]
    assert len(keys) > 1
    times = {k: (1.0 / (n + 1), 1.0) for n, k in enumerate(keys)}  # loads shorter than compute: shortest load first
    plan = p.plan_pass(part, SHAPE, False, PARAMS, FORWARD, measured=lambda k: times.get(k, (1.0, 1.0)))
    first = [s.key for s in plan.steps() if s.key[1] == 0]
    assert first == sorted(keys, key=lambda k: times[k][0])


def test_recompute_peak_joins_the_planned_peak():
    p = planner(1162938)
    p.partition_for(SHAPE, False, PARAMS)
    ws = p.working_set.peak_bytes
    assert p.planned_peak_bytes == ws
    p.note_recompute_peak(ws - 1)
    assert p.planned_peak_bytes == ws
    p.note_recompute_peak(ws + 7)
    assert p.planned_peak_bytes == ws + 7


def test_a_chained_device_plans_full_blocks_over_its_columns():
    budget = 1162938
    p = planner(budget)
    part = p.partition_for(SHAPE, False, PARAMS)
    owned = [0, 1]
    view = p.for_device(sagann.CpuDevice(4 * budget), owned, chained=True)  # room for its blocks beside the relay's two
    assert view.partition is part and view.schedule.transfer is TransferPolicy.FULL and view.schedule.order is Order.NATURAL
    plan = view.plan_pass(part, SHAPE, False, PARAMS, FORWARD)
    assert {j for j, _ in plan.groups} == set(owned)
    assert all(s.transfer is Transfer.FULL and not s.shares_block for s in plan.steps())
    assert 0 < view.planned_peak_bytes <= 4 * budget and p.planned_peak_bytes == p.working_set.peak_bytes, "a view's plans are its own"


def test_a_chained_device_keeps_the_rest_of_the_users_schedule():
    user = sagann.ScheduleConfig(partition_rule="smallest", transfer_dtype=torch.bfloat16, narrow_index=False, max_replans=1, tile=2, cache_gather=False)
    view = planner(1162938, user).for_device(sagann.CpuDevice(4 * 1162938), [0, 1], chained=True)
    kept = view.schedule
    assert (kept.transfer, kept.order, kept.tile) == (TransferPolicy.FULL, Order.NATURAL, None), "what a chain's relay needs"
    assert (kept.transfer_dtype, kept.narrow_index, kept.max_replans, kept.partition_rule, kept.cache_gather) == (torch.bfloat16, False, 1, "smallest", False)


def test_state_is_read_only_and_written_by_the_planner_alone():
    p = planner(1162938)
    for name in ("partition", "working_set", "planned_peak_bytes", "fixed_chunks", "fixed_sub_chunk_nnz", "schedule", "budget"):
        with pytest.raises(AttributeError):
            setattr(p, name, None)
    g = sagann.ChunkedGraph(EDGES, N, device=sagann.CpuDevice(1162938))
    with pytest.raises(AttributeError):
        g.partition = None
    root = pathlib.Path(sagann.__file__).parent
    writes = re.compile(r"\.(planner\._\w+|_planned_peak|_working_set|_fixed_chunks|_fixed_sub_nnz|_plan_choices|_prefetch_cache|_resident_ok|_may_coarsen)\b")
    outside = [f"{path.relative_to(root)}: {line.strip()}" for path in root.rglob("*.py") if path.name != "planner.py" for line in path.read_text().splitlines() if writes.search(line)]
    assert not outside, "planner state touched outside the planner:\n" + "\n".join(outside)


@pytest.mark.parametrize("rule", ["smallest", "time"])
def test_planning_holds_one_candidate_partition_besides_the_current_one(monkeypatch, rule):
    """Host RSS: searching, widening and the time rule's pick never keep two candidates alive while a third is cut."""
    alive: list[weakref.ref] = []
    cut = Planner._cut

    def counted(self, num_chunks, sub_nnz, weight=1.0):
        gc.collect()
        held = [r() for r in alive if r() is not None and r() is not self._partition]
        assert len(held) <= 1, f"{len(held)} candidate partitions held while P = {num_chunks} is cut"
        part = cut(self, num_chunks, sub_nnz, weight)
        alive.append(weakref.ref(part))
        return part

    monkeypatch.setattr(Planner, "_cut", counted)
    p = planner(1162938, sagann.ScheduleConfig(partition_rule=rule))
    for d in (16, 64, 128):
        p.partition_for(widths(d), False, PARAMS)
    p.allow_coarser()
    p.partition_for(widths(16), False, PARAMS)
    assert len(alive) >= 4 and p.working_set.peak_bytes <= 1162938


@pytest.mark.parametrize("rule", ["smallest", "time"])
def test_a_replan_to_a_larger_p_widens_its_sub_chunks_afresh(rule):
    """A layer that needs more intervals than the one before gets sub-chunks as wide as the room of every layer
    allows, not the narrow ones the other layer's smaller P left it; the plan settles at once."""
    n, e = 1000, 200_000
    rng = np.random.default_rng(1)
    edges = np.stack([rng.integers(0, n, e), rng.integers(0, n, e)])
    budget = 4_000_000
    p = Planner(lambda: edges, n, np.bincount(edges[1], minlength=n), [sagann.CpuDevice(budget)], sagann.ScheduleConfig(partition_rule=rule))
    wide_messages = dataclasses.replace(SHAPE, d_in=256, d_msg=256, d_out=16)
    wide_output = dataclasses.replace(SHAPE, d_in=4096, d_msg=16, d_out=16, vertex_reads_x=True)  # its held input rows need a larger P
    first = p.partition_for(wide_messages, False, PARAMS)
    second = p.partition_for(wide_output, False, PARAMS)
    assert second.num_chunks > first.num_chunks
    assert working_set(second, wide_output, False, PARAMS, budget=budget).peak_bytes <= budget
    twice = p._cut(second.num_chunks, 2 * second.sub_chunk_nnz, vertex_weight(wide_output, False))
    assert any(working_set(twice, s, False, PARAMS, budget=budget).peak_bytes > budget for s in (wide_messages, wide_output)), "as wide as the room allows"
    assert working_set(second, wide_messages, False, PARAMS, budget=budget).peak_bytes <= budget, "wider sub-chunks must fit the first layer too"
    assert p.partition_for(wide_messages, False, PARAMS) is second and p.partition_for(wide_output, False, PARAMS) is second, "settled in one pass"


def test_a_pipeline_too_deep_for_its_dry_run_runs_one_sub_chunk_shallower(monkeypatch):
    """The working-set model picks the depth; where one phase's dry run needs a little more, that phase runs shallower, not out of memory."""
    p = planner(1162938, sagann.ScheduleConfig(prefetch="max", partition_rule="smallest"))
    part = p.partition_for(SHAPE, False, PARAMS)
    deepest = p.prefetch_depth(part, SHAPE, False, PARAMS)
    assert deepest >= 1
    peak, tried = Planner._peak, []

    def dry_run_over_at_the_deepest(job, plan):
        tried.append(job.depth)
        return peak(job, plan) + (p.budget if job.depth == deepest else 0)

    monkeypatch.setattr(Planner, "_peak", staticmethod(dry_run_over_at_the_deepest))
    plan = p.plan_pass(part, SHAPE, False, PARAMS, BACKWARD)
    assert plan.prefetch == deepest - 1 and deepest in tried
    tried.clear()
    assert p.plan_pass(part, SHAPE, False, PARAMS, BACKWARD).prefetch == deepest - 1
    assert deepest not in tried, "the shallower depth is remembered for this phase"


def test_a_configured_depth_that_does_not_fit_is_an_error_naming_it(monkeypatch):
    p = planner(1162938, sagann.ScheduleConfig(prefetch=2, partition_rule="smallest"))
    part = p.partition_for(SHAPE, False, PARAMS)
    peak = Planner._peak
    monkeypatch.setattr(Planner, "_peak", staticmethod(lambda job, plan: peak(job, plan) + p.budget))
    with pytest.raises(sagann.BudgetTooSmall, match=r"backward plan with prefetch 2 .*ScheduleConfig\(prefetch=\.\.\.\)"):
        p.plan_pass(part, SHAPE, False, PARAMS, BACKWARD)


def test_the_p_it_chose_is_accepted_back_as_num_chunks():
    """On a graph whose in-edges crowd into a few hubs, intervals balanced by edges leave one interval nearly all the
    vertices; the P sagann chose (intervals balanced by resident bytes), passed back as ``num_chunks``, fits all the same."""
    n, e, budget = 4000, 40_000, 2_000_000
    rng = np.random.default_rng(2)
    edges = np.stack([rng.integers(0, n, e), rng.integers(0, 40, e)])  # every edge into one of 40 hubs
    in_degree = np.bincount(edges[1], minlength=n)

    def hub_planner(**kw) -> Planner:
        return Planner(lambda: edges, n, in_degree, [sagann.CpuDevice(budget)], sagann.ScheduleConfig(partition_rule="smallest"), **kw)

    p = hub_planner().partition_for(SHAPE, False, PARAMS).num_chunks
    by_edges = hub_planner()._cut(p, sub_chunk_nnz_for(budget, SHAPE, False, DEFAULT_SUB_CHUNK_NNZ))
    assert p > 1 and working_set(by_edges, SHAPE, False, PARAMS, budget=budget).peak_bytes > budget, "the edge-balanced cut does not fit"
    fixed = hub_planner(num_chunks=p)
    assert fixed.partition_for(SHAPE, False, PARAMS).num_chunks == p and fixed.working_set.peak_bytes <= budget
    even = Planner(lambda: EDGES, N, np.bincount(EDGES[1], minlength=N), [sagann.CpuDevice(10**9)], sagann.ScheduleConfig(), num_chunks=4)
    cut = list(even.partition_for(SHAPE, False, PARAMS).bounds)
    assert cut == list(planner()._cut(4, DEFAULT_SUB_CHUNK_NNZ).bounds), "where the edge-balanced cut fits, it is the cut"
