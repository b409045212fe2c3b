"""The planner: how many chunks, how big the sub-chunks, and what that costs in device bytes.

A plan must fit the device budget before anything runs. The working-set
model below counts every buffer the dataflow (``sagann.engine.dataflow``)
allocates on the device, phase by phase, and takes the largest phase:

* forward, per destination interval V_j (n_j rows): the input rows and
  destination terms of V_j, the accumulator (plus int64 winner ids for
  max/min), the output rows, and ApplyVertex scratch; plus one sub-chunk in
  flight: its index arrays, its compact source rows, its edge rows, the
  per-chunk partial result, and per-edge scratch;
* backward, per destination interval (ApplyVertex recomputed under autograd:
  inputs, their gradients, the output gradient) and per source interval V_i
  (gradient accumulators of V_i, plus one sub-chunk recomputed with its
  gradients, roughly twice the forward per-edge bytes);
* the source/destination hook pre-pass, per interval;
* parameters and their gradients, always resident.

Scratch inside user functions cannot be seen from outside, so it is
modelled: ``EDGE_SCRATCH`` message-sized per-edge tensors for a user
``apply_edge`` (none for a fused builtin), ``VERTEX_SCRATCH`` row-sized
tensors for ApplyVertex. The ledger then charges what the dataflow really
allocates, so a mis-estimate surfaces as a clear BudgetExceeded, never as a
silent overrun.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from sagann.fn import MessageFn
from sagann.chunks.partition import GraphPartition

FLOAT = 4  # bytes per fp32 element
INDEX = 8  # bytes per int64 winner id
EDGE_SCRATCH = 3  # message-sized per-edge temporaries of a user apply_edge
VERTEX_SCRATCH = 2  # row-sized temporaries of ApplyVertex / hooks
MAX_CHUNKS = 1024


class BudgetTooSmall(ValueError):
    """No partition of the graph fits the device's memory budget."""


@dataclass(frozen=True)
class LayerShape:
    """What a layer call reads and writes, learned by a probe on one fake edge.

    Widths are feature columns; the ``uses_*`` flags say which inputs the
    edge stage must bring to the device.
    """

    d_in: int
    d_edge: int  # 0 without edge data
    d_src_term: int  # 0 without apply_src
    d_dst_term: int  # 0 without apply_dst
    d_msg: int
    d_out: int
    gather: str
    builtin: MessageFn | None
    uses_src: bool  # raw input rows at sources
    uses_dst: bool  # raw input rows at destinations
    uses_src_term: bool
    uses_dst_term: bool
    uses_edge: bool

    @property
    def d_src_side(self) -> int:
        """Columns of source-side rows an edge stage transfers."""
        return self.d_in * self.uses_src + self.d_src_term * self.uses_src_term

    @property
    def d_dst_side(self) -> int:
        return self.d_in * self.uses_dst + self.d_dst_term * self.uses_dst_term

    @property
    def winners(self) -> bool:
        return self.gather in ("max", "min")


@dataclass(frozen=True)
class WorkingSet:
    """Peak device bytes of one layer call under a partition, and which phase sets it."""

    peak_bytes: int
    phase: str


def _edge_bytes(shape: LayerShape, fused: bool) -> float:
    """Device bytes per edge of a sub-chunk in the forward edge stage, beyond index arrays."""
    per_edge = shape.d_edge * FLOAT
    if not fused:
        gathered = shape.d_src_side + shape.d_dst_side  # e.src / e.dst rows per edge
        per_edge += gathered * FLOAT + EDGE_SCRATCH * shape.d_msg * FLOAT
        if shape.winners:
            per_edge += shape.d_msg * (INDEX + INDEX + 1 + FLOAT)  # reference max/min temporaries
    return per_edge


def _row_bytes(shape: LayerShape) -> dict[str, int]:
    """Device bytes per vertex row held by each phase (see the module docstring)."""
    win = INDEX * shape.d_msg if shape.winners else 0
    av_width = max(shape.d_in, shape.d_msg, shape.d_out)
    hook_width = max(shape.d_src_term, shape.d_dst_term)
    return {
        "forward": FLOAT * (shape.d_in + shape.d_dst_term + shape.d_msg + shape.d_out + VERTEX_SCRATCH * av_width) + win,
        "backward": FLOAT * (shape.d_in * shape.uses_src + shape.d_src_term * shape.uses_src_term),
        "backward apply_vertex": 2 * FLOAT * (shape.d_in + shape.d_msg + shape.d_out + VERTEX_SCRATCH * av_width),
        "hook pre-pass": 2 * FLOAT * (shape.d_in + hook_width + VERTEX_SCRATCH * hook_width) if hook_width else 0,
    }


def resident_bytes(rows: int, shape: LayerShape, phase: str) -> int:
    """Bytes a destination column (forward) or source row (backward) keeps on the device."""
    return rows * _row_bytes(shape)[phase]


def src_row_bytes(shape: LayerShape) -> int:
    """Bytes of one source row an edge stage transfers."""
    return FLOAT * shape.d_src_side


def sub_chunk_bytes(c, shape: LayerShape, fused: bool, backward: bool) -> int:
    """Device bytes of one sub-chunk in flight: index arrays, inputs, partial result, scratch."""
    win = INDEX * shape.d_msg if shape.winners else 0
    k = 2 if backward else 1  # leaves + their gradients
    b = c.nbytes + k * FLOAT * (c.num_src * shape.d_src_side + c.nnz * shape.d_edge)
    b += c.num_dst * (FLOAT * shape.d_msg * 2 + 2 * win)  # partial/grad rows (+ arg, winners)
    b += k * c.nnz * _edge_bytes(shape, fused) + (c.nnz * INDEX if shape.winners else 0)
    if backward:
        b += 2 * FLOAT * c.num_dst * shape.d_dst_side
    return int(b)


def working_set(partition: GraphPartition, shape: LayerShape, fused: bool, param_bytes: int, in_flight: int = 1) -> WorkingSet:
    """Largest device footprint of one forward + backward layer call (see module docstring).

    ``in_flight`` sub-chunks are counted at once: 1 without prefetching,
    ``prefetch + 1`` with it (bounded by the largest sub-chunks).
    """
    sizes = np.diff(partition.bounds)
    fwd_sub = sorted((sub_chunk_bytes(c, shape, fused, False) for c in partition.sub_chunks()), reverse=True)
    bwd_sub = sorted((sub_chunk_bytes(c, shape, fused, True) for c in partition.sub_chunks()), reverse=True)
    biggest = int(sizes.max()) if sizes.size else 0
    phases = {
        "forward edge stage": resident_bytes(biggest, shape, "forward") + sum(fwd_sub[:in_flight]),
        "forward apply_vertex": resident_bytes(biggest, shape, "forward"),
        "backward edge stage": resident_bytes(biggest, shape, "backward") + sum(bwd_sub[:in_flight]),
        "backward apply_vertex": resident_bytes(biggest, shape, "backward apply_vertex"),
        "hook pre-pass": resident_bytes(biggest, shape, "hook pre-pass"),
    }
    phase = max(phases, key=phases.get)
    return WorkingSet(int(phases[phase] + 2 * param_bytes), phase)


def sub_chunk_nnz_for(budget: int | None, shape: LayerShape, fused: bool, default: int) -> int:
    """Edges per sub-chunk: a backward sub-chunk's per-edge bytes within half the budget.

    The rest is left to the vertex-resident state; ``choose_num_chunks``
    then raises P until the whole working set fits.
    """
    if budget is None:
        return default
    per_edge = 2 * (_edge_bytes(shape, fused) + FLOAT * (shape.d_src_side + shape.d_edge)) + 24
    return int(min(default, max(64, budget // (2 * per_edge))))


def choose_num_chunks(
    make_partition: Callable[[int], GraphPartition],
    num_vertices: int,
    shape: LayerShape,
    fused: bool,
    param_bytes: int,
    budget: int | None,
    start: int = 1,
    in_flight: int = 1,
) -> tuple[GraphPartition, WorkingSet]:
    """Smallest P >= start whose working set fits the budget, as NeuGraph picks it.

    Doubles P until the plan fits, then bisects back to the smallest fit.
    Raises BudgetTooSmall naming the smallest budget seen to work.
    """
    first = make_partition(start)
    ws = working_set(first, shape, fused, param_bytes, in_flight)
    if budget is None or ws.peak_bytes <= budget:
        return first, ws
    limit = max(start, min(max(num_vertices, 1), MAX_CHUNKS))
    lo, hi, best = start, start, None
    while hi < limit:
        lo, hi = hi, min(hi * 2, limit)
        part = make_partition(hi)
        ws = working_set(part, shape, fused, param_bytes, in_flight)
        if ws.peak_bytes <= budget:
            best = (part, ws)
            break
    if best is None:
        raise BudgetTooSmall(
            f"no partition fits the memory budget of {budget:,} bytes: even {hi} chunks need "
            f"{ws.peak_bytes:,} bytes (in the {ws.phase}); give the device at least {ws.peak_bytes:,} bytes"
        )
    while hi - lo > 1:  # smallest fitting P in (lo, hi]
        mid = (lo + hi) // 2
        part = make_partition(mid)
        ws = working_set(part, shape, fused, param_bytes, in_flight)
        if ws.peak_bytes <= budget:
            hi, best = mid, (part, ws)
        else:
            lo = mid
    return best
