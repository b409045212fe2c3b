"""Loop tiling: a tile's accumulators share each V_i block; backward rows share theirs; nothing changes but the bytes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import sagann
from sagann.chunks import partition_graph
from sagann.engine.layer import probe_layer
from sagann.scheduler import ScheduleConfig
from sagann.scheduler.planner import tile_candidates, tile_extra_bytes
from sagann.scheduler.policy import Transfer, TransferPolicy
from sagann.scheduler.schedule import ScheduleError, PassPlan, build_plan, dry_run, validate
from tests.engine.graphs import awkward_graph, graphs
from tests.engine.layers import Builtin, HookLayer
from tests.engine.test_out_of_core import assert_grads_close, assert_rel_close, outputs_and_grads
from tests.measured import assert_measured_within


def _dense_four(seed: int = 0, d: int = 8):
    """400 vertices in 4 intervals with every chunk non-empty, and an 8-wide copy_src sum."""
    n, ei = 400, awkward_graph(np.random.default_rng(seed), 400, 6000)
    part = partition_graph(ei, n, 4)
    shape = probe_layer(Builtin("copy_src", "sum", d), d, None, torch.device("cpu"))
    assert len(part.chunks) == 16
    return n, part, shape


@pytest.mark.parametrize("tile", [1, 2, 3, 4])
def test_a_tile_sends_each_block_once_per_tile(tile):
    n, part, shape = _dense_four()
    plan = build_plan(part, shape, "forward", 0, TransferPolicy.FULL, tile=tile)
    validate(plan, part)
    tiles = -(-4 // tile)
    assert plan.tile == tile and len(plan.groups) == tiles
    assert [list(plan.members(g)) for g, _ in plan.groups] == [list(range(g, min(g + tile, 4))) for g in range(0, 4, tile)]
    text = plan.format()
    assert text.count("load_block") == text.count("evict_block") == 4 * tiles
    assert text.count("load_dst") == text.count("apply_vertex") == 4
    # every V_i once per tile: the bytes fall with the tile, down to V once at tile P
    v = sum(part.interval_size(i) for i in range(4)) * 8 * 4
    assert plan.bytes_moved == tiles * v and plan.bytes_full == 4 * v
    assert plan.bytes_lower_bound <= plan.bytes_moved
    # a tile's steps run source by source, each source's chunks together
    for g, steps in plan.groups:
        sources = [s.key[0] for s in steps]
        assert sources == sorted(sources)
        assert all(s.shares_block == (k > 0 and steps[k - 1].key[0] == s.key[0]) for k, s in enumerate(steps))


def test_a_tile_holds_its_accumulators_in_the_dry_run():
    n, part, shape = _dense_four()
    peaks = [dry_run(build_plan(part, shape, "forward", 0, TransferPolicy.SELECTIVE, tile=t), part, shape, True) for t in (1, 2, 4)]
    assert peaks[0] < peaks[1] < peaks[2]
    assert tile_extra_bytes(part, shape, 1) == 0 < tile_extra_bytes(part, shape, 2) < tile_extra_bytes(part, shape, 4)
    assert tile_candidates(1) == [1] and tile_candidates(4) == [1, 2, 4] and tile_candidates(6) == [1, 2, 4, 6]


def test_backward_rows_share_their_block():
    n, part, shape = _dense_four()
    shape = shape.with_grads(True, True, False)
    plan = build_plan(part, shape, "backward", 0, TransferPolicy.FULL, tile=3)
    validate(plan, part)
    assert plan.tile == 1, "the backward pass is never tiled: a row already holds its block"
    text = plan.format()
    assert text.count("load_block") == 4, "one block per source row"
    unshared = build_plan(part, shape, "backward", 0, TransferPolicy.FULL, share_blocks=False)
    assert unshared.format().count("load_block") == 16 and plan.bytes_moved * 4 == unshared.bytes_moved


def test_auto_weighs_a_run_as_one_block():
    """A chunk using few rows goes selective alone; four of them on one source share a block cheaper than their rows."""
    n = 400
    rng = np.random.default_rng(1)
    src = rng.integers(0, 100, 2000)  # every edge leaves V_0: 60-70 of its 100 rows used per chunk
    ei = np.stack([src, rng.integers(0, n, 2000)])
    part = partition_graph(ei, n, 4, bounds=np.array([0, 100, 200, 300, 400]))
    shape = probe_layer(Builtin("copy_src", "sum", 8), 8, None, torch.device("cpu"))
    alone = build_plan(part, shape, "forward", 0, TransferPolicy.AUTO, tile=1)
    together = build_plan(part, shape, "forward", 0, TransferPolicy.AUTO, tile=4)
    assert all(s.transfer is Transfer.SELECTIVE for s in alone.steps())
    assert all(s.transfer is Transfer.FULL for s in together.steps())
    assert together.bytes_moved == 100 * 8 * 4 < alone.bytes_moved


def test_validate_catches_a_step_outside_its_tile_and_a_stray_shared_block():
    n, part, shape = _dense_four()
    plan = build_plan(part, shape, "forward", 0, TransferPolicy.FULL, tile=2)
    (g0, s0), (g1, s1) = plan.groups
    swapped = PassPlan(plan.phase, ((g0, s0 + s1[:1]), (g1, s1[1:])), 0, tile=2, num_intervals=4)
    with pytest.raises(ScheduleError, match="placed in forward group 0"):
        validate(swapped, part)
    import dataclasses

    stray = dataclasses.replace(s0[0], shares_block=True)
    with pytest.raises(ScheduleError, match="shares a block"):
        validate(dataclasses.replace(plan, groups=((g0, (stray,) + s0[1:]), (g1, s1))), part)
    with pytest.raises(ValueError, match="tile must be an int >= 1"):
        build_plan(part, shape, "forward", 0, tile=0)
    with pytest.raises(ValueError, match="tile must be None or an int"):
        ScheduleConfig(tile=0)


@pytest.mark.parametrize("layer_kind", ["max", "fused_sum"])
def test_a_tiled_pass_adds_in_the_same_order(layer_kind):
    """Bit for bit: within V_j the sources still arrive in order, whatever the tile."""
    rng = np.random.default_rng(2)
    n, ei = 500, awkward_graph(rng, 500, 5000)
    torch.manual_seed(0)
    layer = HookLayer(6, 5, 2, "max") if layer_kind == "max" else Builtin("src_mul_edge", "sum", 6)
    x = torch.randn(n, 6, requires_grad=True)
    ed = torch.randn(ei.shape[1], 2) if layer_kind == "max" else torch.randn(ei.shape[1])
    ed.requires_grad_(True)
    results, moved = [], {}
    for tile in (1, 2, 5):
        g = sagann.ChunkedGraph(ei, n, num_chunks=5, sub_chunk_nnz=300, device=sagann.CpuDevice(copy_transfers=True), schedule=ScheduleConfig(transfer="full", order="natural", tile=tile))
        results.append(outputs_and_grads(layer, lambda a, b: layer(g, a, b), x, ed))
        moved[tile] = next(r for r in g.pass_log if r.phase == "forward").bytes_moved
        assert g.device.current_bytes == 0
    if layer_kind == "fused_sum":  # 6-wide source rows: each V_i once per tile instead of once per chunk (5 x 5, none empty)
        assert len(g.partition.chunks) == 25
        assert [moved[1] - moved[t] for t in (2, 5)] == [(5 - 3) * n * 6 * 4, (5 - 1) * n * 6 * 4]
    (ref, ref_grads), *rest = results
    for out, grads in rest:
        assert torch.equal(out, ref)
        for a, b in zip(grads, ref_grads):
            assert (a is None and b is None) or torch.equal(a, b)


def test_the_planner_tiles_when_the_budget_has_room_and_counts_the_bytes():
    """A budget with room for a second accumulator but not for V: the forward plan tiles, and moves fewer bytes for it."""
    rng = np.random.default_rng(3)
    n, ei, d = 800, awkward_graph(rng, 800, 24000), 16
    torch.manual_seed(0)
    layer = Builtin("copy_src", "sum", d)
    x = torch.randn(n, d, requires_grad=True)
    free = sagann.ChunkedGraph(ei, n, num_chunks=8)
    ref_out, ref_grads = outputs_and_grads(layer, lambda a, b: layer(free, a), x, None)
    logs = {}
    for tile in (1, None):
        dev = sagann.CpuDevice(free.working_set.peak_bytes + n * d * 4 // 3, copy_transfers=True, meter=True)
        g = sagann.ChunkedGraph(ei, n, num_chunks=8, device=dev, schedule=ScheduleConfig(transfer="full", order="natural", tile=tile))
        out, grads = outputs_and_grads(layer, lambda a, b: layer(g, a), x, None)
        assert_rel_close(out, ref_out)
        assert_grads_close(grads, ref_grads)
        assert dev.current_bytes == 0
        assert_measured_within(dev)
        logs[tile] = next(r for r in g.pass_log if r.phase == "forward")
        plan = g.pass_plan(g.partition, probe_layer(layer, d, None, torch.device("cpu")), True, 0, "forward")
        assert (plan.tile > 1) == (tile is None)
    assert logs[None].bytes_moved < logs[1].bytes_moved, "bytes counted by the pass, not the plan"
    assert logs[None].bytes_full == logs[1].bytes_full


@settings(max_examples=25, deadline=None)
@given(
    graph=graphs(),
    num_chunks=st.integers(1, 6),
    tile=st.sampled_from([None, 1, 2, 3, 6]),
    transfer=st.sampled_from(["full", "auto", "selective"]),
    order=st.sampled_from(["natural", "profile"]),
    room=st.sampled_from([0.0, 0.5, 2.0]),
)
def test_property_tiled_schedules_equal_untiled(graph, num_chunks, tile, transfer, order, room):
    """room: budget beyond the working set, in accumulators of the biggest interval: tiles that fit, or none."""
    n, ei = graph
    torch.manual_seed(0)
    layer = HookLayer(3, 4, 2, "sum")
    x = torch.randn(n, 3, requires_grad=True)
    ed = torch.randn(ei.shape[1], 2, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    free = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, backend="reference")
    ref_out, ref_grads = outputs_and_grads(layer, lambda a, b: layer(free, a, b), x, ed)
    budget = free.working_set.peak_bytes + int(room * n * 64) + (1 << 20) * (tile is not None)
    dev = sagann.CpuDevice(budget, copy_transfers=True, meter=True)
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, device=dev, backend="reference", schedule=ScheduleConfig(transfer=transfer, order=order, tile=tile))
    for _ in range(2):  # the second call orders by measured costs
        out, grads = outputs_and_grads(layer, lambda a, b: layer(g, a, b), x, ed)
    assert_rel_close(out, ref_out, what="output")
    assert_grads_close(grads, ref_grads)
    assert dev.current_bytes == 0
    assert_measured_within(dev, budget)
