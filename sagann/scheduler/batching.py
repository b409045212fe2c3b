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
only selective steps (a block of V_i is per source interval); only
sub-chunks whose arrays live in RAM (a merge copies them: not for a dataset read from disk or a host
budget's spill file). Backward, only where the pass gathers destination rows
anyway (``LayerShape.compact_dst_rows``: devices that copy what they load)
and holds none (``PassPlan.dst_rows_bytes``).
"""
from __future__ import annotations

import dataclasses
import heapq

import numpy as np
import torch

from sagann.chunks.merge import merge_chunks, merge_row_chunks, merged_id, row_merged_id
from sagann.chunks.partition import GraphPartition
from sagann.chunks.sketch import SubChunkSizes
from sagann.chunks.types import ChunkId, EdgeChunk, memory_owner
from sagann.fn import SUM_GATHERS
from sagann.scheduler.memory_model import INT32, LayerShape, canonical, src_row_bytes, sub_chunk_bytes
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
            sizes = None
            for step in sorted((t for t in steps if t.key[along] == shared and _mergeable(t)), key=lambda t: t.key[across]):
                grown = _Sizes.of(step.subs[0], forward) if sizes is None else sizes.plus(step.subs[0])
                if run and grown.bytes(s, fused) > cap:
                    run, grown = [], _Sizes.of(step.subs[0], forward)
                run.append(step)
                sizes = grown
                batch_of[id(step)] = run
        out, placed = [], set()
        for step in steps:  # each batch where its first member ran (a profiled order keeps its big chunks' places)
            run = batch_of.get(id(step))
            if run is None:
                out.append(step)
            elif id(run) not in placed:
                placed.add(id(run))
                out.extend(_carried(run, partition, forward, src_row_bytes(shape)))
        changed = changed or len(out) < len(steps)
        groups.append((g, tuple(out)))
    return dataclasses.replace(plan, groups=tuple(groups)) if changed else plan


def _mergeable(step: ChunkStep) -> bool:
    """A selective step of one whole sub-chunk whose arrays live in RAM."""
    if step.transfer is not Transfer.SELECTIVE or len(step.subs) != 1:
        return False
    c = step.subs[0]
    return isinstance(c, EdgeChunk) and c.dst_rows is None and c.id.sub >= 0 and not isinstance(memory_owner(c.dst_ptr), (np.memmap, torch.Tensor))


@dataclasses.dataclass(frozen=True)
class _Sizes:
    """The sizes of a batch's merged sub-chunk, grown a chunk at a time, without its arrays. Forward: source rows of
    different intervals are disjoint, the destination rows span from the first to the last reached. Backward: the
    source rows are one interval's (their union), the destination rows those with an edge (each interval's own)."""

    forward: bool
    first: ChunkId
    last: ChunkId
    nnz: int
    lo: int  # forward: the destination rows' span
    hi: int
    with_edges: int  # backward: destination rows with an edge
    sources: int | np.ndarray  # forward: how many source rows; backward: which

    @classmethod
    def of(cls, c: EdgeChunk, forward: bool) -> "_Sizes":
        return cls(forward, c.id, c.id, c.nnz, c.dst_offset, c.dst_offset + c.num_dst, c.rows_with_edges, c.num_src if forward else c.src_rows)

    def plus(self, c: EdgeChunk) -> "_Sizes":
        sources = self.sources + c.num_src if self.forward else np.union1d(self.sources, c.src_rows)
        return dataclasses.replace(self, last=c.id, nnz=self.nnz + c.nnz, lo=min(self.lo, c.dst_offset), hi=max(self.hi, c.dst_offset + c.num_dst),
                                   with_edges=self.with_edges + c.rows_with_edges, sources=sources)

    def bytes(self, shape: LayerShape, fused: bool) -> int:
        """The memory model's bytes of the merged sub-chunk (``shape``: :func:`canonical`)."""
        if self.forward:
            sizes = SubChunkSizes(merged_id(self.first.i, self.last.i, self.first.j), self.nnz, self.hi - self.lo, self.sources)
        else:
            k = self.with_edges
            sizes = SubChunkSizes(row_merged_id(self.first.i, self.first.j, self.last.j), self.nnz, k, self.sources.shape[0], dst_rows_bytes=INT32 * k, with_edges=k)
        return sub_chunk_bytes(sizes, shape, fused, not self.forward)


def _carried(run: list[ChunkStep], partition: GraphPartition, forward: bool, row_bytes: int) -> list[ChunkStep]:
    """``run`` as one step carrying its chunks merged (the merge made once per partition), or as it was (one step).
    Its source rows are sent once each (``row_bytes`` a row), as ``build_plan`` counts a step's: a backward merge's
    chunks share some."""
    if len(run) < 2:
        return run
    made = partition.__dict__.setdefault(_MERGED, {})
    key = tuple(step.subs[0].id for step in run)
    if key not in made:
        made[key] = (merge_chunks if forward else merge_row_chunks)([step.subs[0] for step in run])
    merged = made[key]
    return [ChunkStep(run[0].key, (merged,), Transfer.SELECTIVE, merged.num_src * row_bytes, sum(step.block_bytes for step in run), parts=tuple(run))]


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
