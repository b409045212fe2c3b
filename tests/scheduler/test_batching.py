"""A forward step carrying a column's small chunks: fewer steps, the same work and bytes, no more memory than planned."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sagann.chunks import partition_graph
from sagann.chunks.synthetic import rmat
from sagann.engine.layer import probe_layer
from sagann.scheduler.batching import batch_steps, batches
from sagann.scheduler.memory_model import canonical, sub_chunk_bytes, vertex_weight, working_set
from sagann.scheduler.pipeline import live_sub_chunks
from sagann.scheduler.policy import Transfer, TransferPolicy
from sagann.scheduler.schedule import build_plan, dry_run, validate
from tests.engine.layers import Builtin, HookLayer


def _skewed(p: int = 6, d: int = 8):
    """An R-MAT graph cut as the planner cuts it (intervals balanced by their rows' bytes), whose low-id chunks then hold
    most edges, into whole chunks (one sub-chunk each); and a sum."""
    n = 1024
    shape = probe_layer(Builtin("copy_src", "sum", d), d, None, torch.device("cpu"))
    return partition_graph(rmat(n, 12_000, seed=0), n, p, 10**6, vertex_weight=vertex_weight(shape, True)), shape


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_small_chunks_ride_one_step_within_the_largest_sub_chunk(prefetch):
    part, shape = _skewed()
    plan = build_plan(part, shape, "forward", prefetch, TransferPolicy.SELECTIVE)
    batched = batch_steps(plan, part, shape, True)
    validate(batched, part)  # every sub-chunk computed once, in its column's group
    assert batched.num_steps < plan.num_steps / 2, (batched.num_steps, plan.num_steps)
    s = canonical(shape)
    cap = max(sub_chunk_bytes(c, s, True, False) for c in plan.sub_chunks())
    assert all(sub_chunk_bytes(c, s, True, False) <= cap for c in batched.sub_chunks())
    merged = [step for step in batched.steps() if step.parts]
    assert merged and all(len({p.key[1] for p in step.parts}) == 1 and step.key[1] == step.parts[0].key[1] for step in merged)
    assert all(step.subs[0].nnz == sum(p.subs[0].nnz for p in step.parts) for step in merged)
    # the same rows cross, and the per-interval accounting reads the chunks as cut
    assert (batched.bytes_moved, batched.bytes_full, batched.bytes_lower_bound) == (plan.bytes_moved, plan.bytes_full, plan.bytes_lower_bound)
    # within what the planner checked the partition against: the resident column and the in-flight sub-chunks
    bound = working_set(part, shape, True, 0, in_flight=live_sub_chunks(prefetch)).peak_bytes
    assert dry_run(batched, part, shape, True) <= bound


def test_a_merged_step_runs_where_its_first_chunk_ran():
    part, shape = _skewed()
    plan = build_plan(part, shape, "forward", 0, TransferPolicy.SELECTIVE)
    batched = batch_steps(plan, part, shape, True)
    for (_, before), (_, after) in zip(plan.groups, batched.groups):
        first = {id(step.parts[0]) if step.parts else id(step) for step in after}
        order = [k for k, step in enumerate(before) if id(step) in first]
        assert order == sorted(order)  # batches keep the plan's order of their first members


def test_what_may_not_merge_is_left_as_planned():
    part, shape = _skewed()
    d = 8
    backward = build_plan(part, shape, "backward", 0, TransferPolicy.SELECTIVE)
    assert batch_steps(backward, part, shape, True) is backward  # a view device's backward reads its rows in place: as cut
    compacting = dataclasses.replace(shape, compact_dst_rows=True)
    held = dataclasses.replace(build_plan(part, compacting, "backward", 0, TransferPolicy.SELECTIVE), dst_rows_bytes=1)
    assert batch_steps(held, part, compacting, True) is held  # held destination rows are sliced per interval
    full = build_plan(part, shape, "forward", 0, TransferPolicy.FULL)
    assert batch_steps(full, part, shape, True) is full  # a block of V_i is per source interval
    for layer, edge in ((Builtin("copy_src", "max", d), None), (Builtin("src_mul_edge", "sum", d), torch.randn(5)), (HookLayer(d, d, 3, gather="sum"), torch.randn(5, 3))):
        other = probe_layer(layer, d, edge, torch.device("cpu"))
        assert not batches(other), layer
        plan = build_plan(part, other, "forward", 0, TransferPolicy.SELECTIVE)
        assert batch_steps(plan, part, other, True) is plan
    assert batches(probe_layer(Builtin("copy_src", "mean", d), d, None, torch.device("cpu")))


def test_sub_chunks_split_from_one_chunk_stay_as_cut():
    n = 1024
    _, shape = _skewed()
    part = partition_graph(rmat(n, 12_000, seed=0), n, 4, 64, vertex_weight=vertex_weight(shape, True))  # every large chunk split
    plan = build_plan(part, shape, "forward", 0, TransferPolicy.SELECTIVE)
    batched = batch_steps(plan, part, shape, True)
    validate(batched, part)
    assert all(len(p.subs) == 1 for step in batched.steps() for p in step.parts)
    assert sum(len(step.subs) for step in batched.steps() if not step.parts and len(step.subs) > 1) == sum(len(step.subs) for step in plan.steps() if len(step.subs) > 1)
    assert {step.transfer for step in batched.steps()} == {Transfer.SELECTIVE}
    np.testing.assert_equal(sum(c.nnz for c in batched.sub_chunks()), part.num_edges)


@pytest.mark.parametrize("prefetch", [0, 1])
def test_a_source_rows_small_chunks_ride_one_backward_step_over_their_rows_with_edges(prefetch):
    """Backward, where the pass gathers destination rows (a copying device): a row's chunks into several intervals
    merged over their rows with an edge, within the largest backward sub-chunk's bytes."""
    part, shape = _skewed()
    shape = dataclasses.replace(shape, compact_dst_rows=True)
    plan = build_plan(part, shape, "backward", prefetch, TransferPolicy.SELECTIVE)
    batched = batch_steps(plan, part, shape, True)
    validate(batched, part)
    assert batched.num_steps < plan.num_steps / 2, (batched.num_steps, plan.num_steps)
    s = canonical(shape)
    cap = max(sub_chunk_bytes(c, s, True, True) for c in plan.sub_chunks())
    merged = [step for step in batched.steps() if step.parts]
    assert merged and all(sub_chunk_bytes(step.subs[0], s, True, True) <= cap for step in merged)
    for step in merged:
        m, parts = step.subs[0], [p.subs[0] for p in step.parts]
        assert {p.key[0] for p in step.parts} == {step.key[0]} and m.num_dst == sum(c.rows_with_edges for c in parts)
    bound = working_set(part, shape, True, 0, in_flight=live_sub_chunks(prefetch)).peak_bytes
    assert dry_run(batched, part, shape, True) <= bound
