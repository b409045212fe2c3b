"""The smallest P whose working set fits a budget, as NeuGraph picks it: the search the planner's rules start from."""
from __future__ import annotations

import warnings
from typing import Callable

from sagann.chunks.partition import GraphPartition
from sagann.scheduler.memory_model import LayerShape, WorkingSet, working_set
from sagann.units import format_bytes

MAX_CHUNKS = 1024
# a pass of this many sub-chunks, averaging fewer edges than FINE_EDGES, spends its epoch on per-step costs:
# a 2-layer GAT 256 wide under an 8 MB budget (150,000 vertices, 1.5M edges) cut 47,961 sub-chunks of 34 edges
# and ran its second epoch 13x slower than in memory (33.1 s against 2.57 s, unmetered)
FINE_SUB_CHUNKS = 10_000
FINE_EDGES = 64


class FinePartitionWarning(UserWarning):
    """A memory budget leaves so many, so small sub-chunks that fixed per-step costs rule the epoch."""


def warn_if_fine(partition: GraphPartition, budget: int | None) -> bool:
    """Warn (and return True) where ``partition``, chosen under ``budget``, has :data:`FINE_SUB_CHUNKS` sub-chunks or
    more averaging under :data:`FINE_EDGES` edges: a user should hear that a larger budget is the fix, not find it out."""
    subs = sum(len(s) for s in partition.chunks.values())
    if budget is None or subs < FINE_SUB_CHUNKS or partition.num_edges >= FINE_EDGES * subs:
        return False
    warnings.warn(
        f"a device memory budget of {format_bytes(budget)} leaves P = {partition.num_chunks} intervals and {subs:,} sub-chunks a pass, "
        f"{partition.num_edges / subs:.0f} edges each on average: fixed per-step costs will rule the epoch (many times slower than "
        f"in memory); raise the memory budget (sagann train prints how much faster a larger one runs) or narrow the layers",
        FinePartitionWarning, stacklevel=3)
    return True


class BudgetTooSmall(ValueError):
    """No partition of the graph fits the device's memory budget."""


class PassPlanTooLarge(BudgetTooSmall):
    """A pass's plan, dry-run, needs more than the budget on the partition chosen for it; a finer partition may fit.

    The partition is chosen from a model of each call's working set; the
    dry run of a pass's actual schedule can need more (a configured
    prefetch depth, rows held through the pass). A single device's pass
    then re-plans on a finer partition, as after an out-of-memory error.
    """


def choose_num_chunks(
    make_partition: Callable[[int], GraphPartition],
    num_vertices: int,
    shape: LayerShape,
    fused: bool,
    param_bytes: int,
    budget: int | None,
    start: int = 1,
    *,
    in_flight: int = 1,
    lower_bound: Callable[[int], int] | None = None,
    max_chunks: int = MAX_CHUNKS,
    also: Callable[[GraphPartition], bool] | None = None,
) -> tuple[GraphPartition, WorkingSet]:
    """Smallest P in [start, max_chunks] whose working set fits the budget, as NeuGraph picks it.

    Doubles P until the plan fits, then bisects back to the smallest fit.
    ``lower_bound(P)`` (e.g. :func:`resident_lower_bound` of P's bounds)
    rules a P out without partitioning when it already exceeds the budget;
    ``also(partition)`` is a further test a fit must pass (other calls).
    Raises BudgetTooSmall naming the smallest budget seen to work.
    """
    if budget is None or lower_bound is None or lower_bound(start) <= budget:
        first = make_partition(start)
        ws = working_set(first, shape, fused, param_bytes, in_flight, budget)
        if budget is None or (ws.peak_bytes <= budget and (also is None or also(first))):
            return first, ws
        first = None  # not held while larger P are cut: the search holds at most one partition
    else:
        ws = WorkingSet(int(lower_bound(start)), "resident vertex rows (lower bound)")
    limit = max(start, min(max(num_vertices, 1), MAX_CHUNKS, max_chunks))
    lo, hi, ok = start, start, False
    held: list = []  # the one partition the search holds: the last one cut, while it is the best fit

    def fits(p: int) -> tuple[bool, WorkingSet]:
        """Whether P = p fits, and the bytes it needs (a bound if not built).

        The partition held before is dropped before P = p is cut (host
        RSS: a caller may hold its current partition too); the best fit is
        cut again at the end if a later candidate replaced it.
        """
        if lower_bound is not None:
            bound = lower_bound(p)
            if bound > budget:
                return False, WorkingSet(int(bound), "resident vertex rows (lower bound)")
        held.clear()
        part = make_partition(p)
        w = working_set(part, shape, fused, param_bytes, in_flight, budget)
        if w.peak_bytes > budget or (also is not None and not also(part)):
            return False, w
        held.append((p, part))
        return True, w

    while hi < limit:
        lo, hi = hi, min(hi * 2, limit)
        ok, ws = fits(hi)
        if ok:
            break
    if not ok:
        # parameters and their gradients stay whole at any P: name them where they alone overrun the budget
        params = f"; the layer's parameters and their gradients alone take {2 * param_bytes:,} of them" if 2 * param_bytes > budget else ""
        raise BudgetTooSmall(
            f"no partition fits the memory budget of {budget:,} bytes: even {hi} chunks need "
            f"{ws.peak_bytes:,} bytes (in the {ws.phase}{params}); give the device at least {ws.peak_bytes:,} bytes"
        )
    best = ws
    while hi - lo > 1:  # smallest fitting P in (lo, hi]
        mid = (lo + hi) // 2
        ok, w = fits(mid)
        if ok:
            hi, best = mid, w
        else:
            lo = mid
    if held and held[0][0] == hi:
        return held[0][1], best
    held.clear()
    return make_partition(hi), best
