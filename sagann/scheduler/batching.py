"""Small chunks of one destination column carried by one forward step.

A budget sets P by the resident rows and the largest sub-chunk; on a skewed
graph (R-MAT) most chunks are far smaller than the largest, yet each costs a
step's fixed work: its index and row loads, a kernel call and the Python
around them, about 100 us on a CPU, more than a small chunk's kernel. A
forward step may carry several whole chunks of its column at once
(:func:`sagann.chunks.merge.merge_chunks`): their merged sub-chunk is priced
by the memory model like any other, and a batch grows only while that price
stays within the largest sub-chunk's, the unit the working set makes room for
``in_flight`` times. The peak stays within the plan; the step count falls.

Only where a merge cannot change what a pass computes: a forward pass of a
builtin message whose Gather is a sum (the kernel adds every edge into its
row; merged, the same edges are added), with no edge data (which arrive in
sub-chunk order) and no attention (its softmax merges per sub-chunk); only
selective steps (a block of V_i is per source interval); and only sub-chunks
whose arrays live in RAM (a merge copies them: not for a dataset read from
disk or a host budget's spill file). Backward passes run the chunks as cut.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from sagann.chunks.merge import merge_chunks, merged_id
from sagann.chunks.partition import GraphPartition
from sagann.chunks.sketch import SubChunkSizes
from sagann.chunks.types import EdgeChunk, memory_owner
from sagann.fn import SUM_GATHERS
from sagann.scheduler.memory_model import LayerShape, canonical, sub_chunk_bytes
from sagann.scheduler.policy import Transfer
from sagann.scheduler.schedule import FORWARD, ChunkStep, PassPlan

_MERGED = "_merged_chunks"  # a partition's merged sub-chunks, by the ids they merge (made once, reused every pass)


def batches(shape: LayerShape) -> bool:
    """May a forward pass of ``shape`` carry several chunks in one step (see the module docstring)?"""
    return shape.builtin is not None and shape.attention is None and shape.gather in SUM_GATHERS and not shape.uses_edge


def batch_forward_steps(plan: PassPlan, partition: GraphPartition, shape: LayerShape, fused: bool) -> PassPlan:
    """``plan`` with each run of consecutive small selective steps of one column carried by one step; ``plan`` itself
    where nothing merges."""
    if plan.phase != FORWARD or not batches(shape):
        return plan
    s = canonical(shape)
    cap = max((sub_chunk_bytes(c, s, fused, False) for c in plan.sub_chunks()), default=0)
    groups, changed = [], False
    for g, steps in plan.groups:
        batch_of: dict[int, list[ChunkStep]] = {}  # id of each mergeable step -> its batch
        for j in dict.fromkeys(step.key[1] for step in steps):
            run: list[ChunkStep] = []
            for step in sorted((t for t in steps if t.key[1] == j and _mergeable(t)), key=lambda t: t.key[0]):  # source order
                if run and _bytes([*run, step], s, fused) > cap:
                    run = []
                run.append(step)
                batch_of[id(step)] = run
        out, placed = [], set()
        for step in steps:  # each batch where its first member ran (a profiled order keeps its big chunks' places)
            run = batch_of.get(id(step))
            if run is None:
                out.append(step)
            elif id(run) not in placed:
                placed.add(id(run))
                out.extend(_carried(run, partition))
        changed = changed or len(out) < len(steps)
        groups.append((g, tuple(out)))
    return dataclasses.replace(plan, groups=tuple(groups)) if changed else plan


def _mergeable(step: ChunkStep) -> bool:
    """A selective step of one whole sub-chunk whose arrays live in RAM."""
    if step.transfer is not Transfer.SELECTIVE or len(step.subs) != 1:
        return False
    c = step.subs[0]
    return isinstance(c, EdgeChunk) and c.dst_rows is None and c.id.sub >= 0 and not isinstance(memory_owner(c.dst_ptr), (np.memmap, torch.Tensor))


def _bytes(run: list[ChunkStep], shape: LayerShape, fused: bool) -> int:
    """The memory model's bytes of ``run``'s sub-chunks merged, from their sizes (source rows of different intervals
    are disjoint; the destination rows span from the first to the last reached)."""
    subs = [step.subs[0] for step in run]
    lo, hi = min(c.dst_offset for c in subs), max(c.dst_offset + c.num_dst for c in subs)
    sizes = SubChunkSizes(merged_id(subs[0].id.i, subs[-1].id.i, subs[0].id.j), sum(c.nnz for c in subs), hi - lo, sum(c.num_src for c in subs))
    return sub_chunk_bytes(sizes, shape, fused, False)


def _carried(run: list[ChunkStep], partition: GraphPartition) -> list[ChunkStep]:
    """``run`` as one step carrying its chunks merged (the merge made once per partition), or as it was (one step)."""
    if len(run) < 2:
        return run
    made = partition.__dict__.setdefault(_MERGED, {})
    key = tuple(step.subs[0].id for step in run)
    if key not in made:
        made[key] = merge_chunks([step.subs[0] for step in run])
    sent = sum(step.selective_bytes for step in run)
    return [ChunkStep(run[0].key, (made[key],), Transfer.SELECTIVE, sent, sum(step.block_bytes for step in run), parts=tuple(run))]


def batched(job, plan: PassPlan, peak: int, budget: int | None, peak_of) -> tuple[PassPlan, int]:
    """``(plan, peak)`` of a planned pass (``job``: a :class:`~sagann.scheduler.planning_records.PassJob`), its small
    steps batched where the batched plan's dry run (``peak_of``) fits ``budget`` too; worked out once per plan."""
    known = plan.__dict__.get("_batched")
    if known is None:
        more = batch_forward_steps(plan, job.partition, job.shape, job.fused)
        known = (more, peak_of(more)) if more is not plan else (plan, peak)
        if budget is not None and known[1] > budget:
            known = (plan, peak)
        plan.__dict__["_batched"] = known
    return known
