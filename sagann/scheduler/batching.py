"""Small chunks carried by one step: a forward column's, a backward source row's.

A budget sets P by the resident rows and the largest sub-chunk; on a skewed
graph (R-MAT) most chunks are far smaller than the largest, yet each costs a
step's fixed work: its index and row loads, a kernel call and the Python
around them, about 100 us on a CPU, more than a small chunk's kernel. A step
may carry several whole chunks of its group at once (:mod:`sagann.chunks.merge`):
forward, chunks of its column from several source intervals; backward,
chunks of its source row into several destination intervals, over their
rows with an edge. The merged sub-chunk is priced by the memory model like
any other, and a batch grows only while that price stays within the
smallest of the ``in_flight`` largest sub-chunks the working set makes room
for: any ``in_flight`` in flight then fit where those did. The peak stays
within the plan; the step count falls.

Only where a merge cannot change what a pass computes: a builtin message
whose Gather is a sum (every edge is added into its row; merged, the same
edges are added) or a builtin attention (a sub-chunk's softmax terms merge
into its rows' running maxima and sums, whichever edges it holds; backward
reads those per row), with no edge data (which arrive in sub-chunk order);
only selective steps (a
block of V_i is per source interval); only sub-chunks whose arrays live in
RAM (a merge copies them: not for a dataset read from disk or a host
budget's spill file). Backward, only where the pass gathers destination rows
anyway (``LayerShape.compact_dst_rows``: devices that copy what they load)
and holds none (``PassPlan.dst_rows_bytes``).
"""
from __future__ import annotations

import dataclasses
import heapq
from functools import reduce

import numpy as np
import torch

from sagann.chunks.merge import merge_chunks, merge_row_chunks, merged_id, row_merged_id
from sagann.chunks.partition import GraphPartition
from sagann.chunks.sketch import SubChunkSizes
from sagann.chunks.types import EdgeChunk, memory_owner
from sagann.fn import SUM_GATHERS
from sagann.scheduler.memory_model import INT32, LayerShape, canonical, sub_chunk_bytes
from sagann.scheduler.pipeline import live_sub_chunks
from sagann.scheduler.policy import Transfer
from sagann.scheduler.schedule import FORWARD, ChunkStep, PassPlan

_MERGED = "_merged_chunks"  # a partition's merged sub-chunks, by the ids they merge (made once, reused every pass)


def batches(shape: LayerShape) -> bool:
    """May a pass of ``shape`` carry several chunks in one step (see the module docstring)?"""
    sums = shape.builtin is not None and shape.attention is None and shape.gather in SUM_GATHERS
    return (sums or (shape.attention is not None and shape.softmax)) and not shape.uses_edge


def batch_steps(plan: PassPlan, partition: GraphPartition, shape: LayerShape, fused: bool) -> PassPlan:
    """``plan`` with the small selective steps of each forward column (backward source row) carried by as few steps as
    fit within the largest sub-chunk's bytes; ``plan`` itself where nothing merges."""
    forward = plan.phase == FORWARD
    if not batches(shape) or not (forward or (shape.compact_dst_rows and not plan.dst_rows_bytes)):
        return plan
    s = canonical(shape)
    # the working set holds the ``live`` largest sub-chunks at once: batches no larger than the live-th largest keep
    # any ``live`` in flight within them
    live = live_sub_chunks(plan.prefetch)
    cap = (heapq.nlargest(live, (sub_chunk_bytes(c, s, fused, not forward) for c in plan.sub_chunks())) or [0])[-1]
    along, across = (1, 0) if forward else (0, 1)  # what a batch shares (its column / row), and what it spans
    groups, changed = [], False
    for g, steps in plan.groups:
        batch_of: dict[int, list[ChunkStep]] = {}  # id of each mergeable step -> its batch
        for shared in dict.fromkeys(step.key[along] for step in steps):
            run: list[ChunkStep] = []
            for step in sorted((t for t in steps if t.key[along] == shared and _mergeable(t)), key=lambda t: t.key[across]):
                if run and _bytes([*run, step], s, fused, forward) > cap:
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
                out.extend(_carried(run, partition, forward))
        changed = changed or len(out) < len(steps)
        groups.append((g, tuple(out)))
    return dataclasses.replace(plan, groups=tuple(groups)) if changed else plan


def _mergeable(step: ChunkStep) -> bool:
    """A selective step of one whole sub-chunk whose arrays live in RAM."""
    if step.transfer is not Transfer.SELECTIVE or len(step.subs) != 1:
        return False
    c = step.subs[0]
    return isinstance(c, EdgeChunk) and c.dst_rows is None and c.id.sub >= 0 and not isinstance(memory_owner(c.dst_ptr), (np.memmap, torch.Tensor))


def _bytes(run: list[ChunkStep], shape: LayerShape, fused: bool, forward: bool) -> int:
    """The memory model's bytes of ``run``'s sub-chunks merged, from their sizes. Forward: source rows of different
    intervals are disjoint, the destination rows span from the first to the last reached. Backward: the source rows
    are one interval's (their union), the destination rows those with an edge (each interval's own)."""
    subs = [step.subs[0] for step in run]
    nnz = sum(c.nnz for c in subs)
    if forward:
        lo, hi = min(c.dst_offset for c in subs), max(c.dst_offset + c.num_dst for c in subs)
        sizes = SubChunkSizes(merged_id(subs[0].id.i, subs[-1].id.i, subs[0].id.j), nnz, hi - lo, sum(c.num_src for c in subs))
    else:
        k = sum(c.rows_with_edges for c in subs)
        num_src = reduce(np.union1d, (c.src_rows for c in subs)).shape[0]
        sizes = SubChunkSizes(row_merged_id(subs[0].id.i, subs[0].id.j, subs[-1].id.j), nnz, k, num_src, dst_rows_bytes=INT32 * k, with_edges=k)
    return sub_chunk_bytes(sizes, shape, fused, not forward)


def _carried(run: list[ChunkStep], partition: GraphPartition, forward: bool) -> list[ChunkStep]:
    """``run`` as one step carrying its chunks merged (the merge made once per partition), or as it was (one step)."""
    if len(run) < 2:
        return run
    made = partition.__dict__.setdefault(_MERGED, {})
    key = tuple(step.subs[0].id for step in run)
    if key not in made:
        made[key] = (merge_chunks if forward else merge_row_chunks)([step.subs[0] for step in run])
    sent = sum(step.selective_bytes for step in run)
    return [ChunkStep(run[0].key, (made[key],), Transfer.SELECTIVE, sent, sum(step.block_bytes for step in run), parts=tuple(run))]


def batched(job, plan: PassPlan, peak: int, budget: int | None, peak_of) -> tuple[PassPlan, int]:
    """``(plan, peak)`` of a planned pass (``job``: a :class:`~sagann.scheduler.planning_records.PassJob`), its small
    steps batched where the batched plan's dry run (``peak_of``) fits ``budget`` too; worked out once per plan."""
    known = plan.__dict__.get("_batched")
    if known is None:
        more = batch_steps(plan, job.partition, job.shape, job.fused)
        known = (more, peak_of(more)) if more is not plan else (plan, peak)
        if budget is not None and known[1] > budget:
            known = (plan, peak)
        plan.__dict__["_batched"] = known
    return known
