"""The planner: how many chunks, how big the sub-chunks, and the schedule of every pass within the budget.

:class:`Planner` owns the search (P, the sub-chunk size, the prefetch depth, the loop tiling, the source
intervals held resident, the destination rows held through a backward pass) and all the state it memoises
between layer calls. It reads a graph's facts (edge list, N, in-degrees), its devices and the schedule
config; it never holds the graph. The device bytes it plans against come from the memory model
(``sagann.scheduler.memory_model``, re-exported here).
"""
from __future__ import annotations

import contextlib
import dataclasses
import weakref
from functools import partial
from typing import Callable, Sequence

import numpy as np

from sagann.chunks.partition import DEFAULT_SUB_CHUNK_NNZ, GraphPartition, OrderCache, balanced_bounds, pack_chunks, partition_graph
from sagann.chunks.sketch import is_sketch, sketch_partition
from sagann.chunks.recut import recut
from sagann.scheduler.batching import batched
from sagann.scheduler.config import MAX_PREFETCH, ScheduleConfig
from sagann.scheduler.cost_model import MARGIN, MAX_PICKS, faster_partitions, measure_partition, measure_step_costs
from sagann.scheduler.devices import Device, format_bytes
from sagann.scheduler.host import trim_freed_memory
from sagann.scheduler.memory_model import (  # noqa: F401  (re-exported: the planner's model)
    EDGE_SCRATCH, FLOAT, INDEX, UNBUDGETED_SUB_CHUNK_BYTES, VERTEX_SCRATCH, LayerShape, WorkingSet,
    apply_block_rows, backward_dst_row_bytes, canonical, direct_sum_backward, edge_scratch_bytes, edge_stage_bytes,
    hook_block_rows, merge_scratch_bytes, recompute_bytes, resident_bytes, resident_lower_bound, src_row_bytes,
    sub_chunk_bytes, sub_chunk_nnz_for, tile_candidates, tile_extra_bytes, tile_resident_bytes, vertex_block_rows,
    vertex_scratch_bytes, vertex_weight, working_set,
)
from sagann.scheduler.num_chunks import MAX_CHUNKS, BudgetTooSmall, PassPlanTooLarge, choose_num_chunks, warn_if_fine
from sagann.scheduler.pipeline import live_sub_chunks, pipelining, planned_in_flight
from sagann.scheduler.policy import Order, Transfer, TransferCosts, TransferPolicy
from sagann.scheduler.planning_records import DeviceScope, Measured, PassJob, largest_block, unmeasured
from sagann.scheduler.schedule import FORWARD, PassPlan, build_plan, choose_resident, dry_run, dst_rows_saving

WIDEN_STEPS = (4, 2, 1.5, 1.25)  # Planner._widen grows sub-chunks by the first factor while it fits, then by the next


class Planner:
    """Chooses a graph's partition per layer call and the plan of each pass, within the devices' budgets.

    Args:
        edges: returns the graph's ``[2, E]`` edge list, or a partition of
            it when the list is not kept in RAM (called only to cut a new partition).
        num_vertices, in_degree: N; in-edges per vertex (bounds a P's resident rows before it is cut).
        devices: the devices sharing the partition: P fits the smallest budget; a pass is planned for the first.
        schedule: the schedule config (prefetch, transfers, order, tile).
        host_spills: host tensors may live in spill files (disk reads overlap compute like a link: prefetch by default).
        partition: a given partition (a dataset's): kept, never re-cut coarser.
        num_chunks, sub_chunk_nnz: P and the sub-chunk bound fixed by the caller.
    """

    def __init__(
        self,
        edges: Callable[[], np.ndarray],
        num_vertices: int,
        in_degree: np.ndarray,
        devices: Sequence[Device],
        schedule: ScheduleConfig,
        *,
        host_spills: bool = False,
        partition: GraphPartition | None = None,
        num_chunks: int | None = None,
        sub_chunk_nnz: int | None = None,
        place: Callable[[list], list] | None = None,
    ):
        self._edges, self._num_vertices, self._in_degree = edges, int(num_vertices), in_degree
        self._place = place  # where the arrays of each chunk the planner cuts go (the host budget's spill files)
        self._orders = OrderCache()  # during a search, the edges grouped for the last P cut (not under a host budget)
        self._devices, self._schedule, self._host_spills = tuple(devices), schedule, bool(host_spills)
        self._partition = partition
        self._given_partition = partition is not None  # the caller's (a dataset's): never re-cut coarser
        self._fixed_chunks = None if num_chunks is None else int(num_chunks)
        self._fixed_sub_nnz = None if sub_chunk_nnz is None else int(sub_chunk_nnz)
        self._scope: DeviceScope | None = None  # set on a device's view (for_device)
        self._working_set: WorkingSet | None = None
        self._planned_peak = 0  # largest dry-run peak of the pass plans so far
        self._resident_ok = True  # may a pass hold source intervals resident or tile its columns (off after an out-of-memory re-plan)
        self._may_coarsen = False  # the call that set P no longer streams here: the next call may pick a smaller P
        # (shape, fused, param_bytes) of the calls planned so far -> the owner of the last (its layer and inputs): a wider sub-chunk,
        # or a coarser P, must fit them all, or another layer's next call re-plans (settling late re-cuts the graph mid-training)
        self._calls: dict[tuple, object] = {}
        self._refined = False  # refine() made the partition finer: the model's plan is not trusted to coarsen
        self._warned_fine = False  # warn_if_fine has told the user once
        self._prefetch_cache: dict = {}
        self._plan_choices: dict[tuple, tuple] = {}  # pass key -> (partition ref, tile, resident intervals, spare room, dst rows, the plan itself where its order is fixed)

    # ---- read-only state ----------------------------------------------------------------------
    @property
    def partition(self) -> GraphPartition | None:
        """The partition layer calls use now (None before the first call chose it)."""
        return self._partition

    schedule = property(lambda self: self._schedule)

    @property
    def working_set(self) -> WorkingSet | None:
        """The largest working set planned on a chosen partition so far."""
        return self._working_set

    @property
    def planned_peak_bytes(self) -> int:
        """The plans' own prediction of the device peak: working set or dry-run, whichever is larger."""
        return max(self._planned_peak, 0 if self._working_set is None else self._working_set.peak_bytes)

    @property
    def fixed_chunks(self) -> int | None:
        """P fixed by the caller (``num_chunks=``), or None."""
        return self._fixed_chunks

    @property
    def fixed_sub_chunk_nnz(self) -> int | None:
        """The sub-chunk bound fixed by the caller (``sub_chunk_nnz=``), or None."""
        return self._fixed_sub_nnz

    @property
    def budget(self) -> int | None:
        """The smallest budget of the devices (all share one partition), None if all are unlimited."""
        return min((d.memory_budget for d in self._devices if d.memory_budget is not None), default=None)

    # ---- the partition ------------------------------------------------------------------------
    def partition_for(self, shape: LayerShape, fused: bool, param_bytes: int, owner: object = None) -> GraphPartition:
        """The partition for a layer call: the current one if it fits, else a finer one (:meth:`_choose_partition`)."""
        with self._orders.searching():  # the search re-cuts one P with growing sub-chunks: its grouping is kept meanwhile
            return self._choose_partition(shape, fused, param_bytes, owner)

    def _choose_partition(self, shape: LayerShape, fused: bool, param_bytes: int, owner: object) -> GraphPartition:
        """The partition for a layer call: the current one if it fits, else a finer one; ``owner``: what the call belongs to
        (its layer and inputs), so that :meth:`allow_coarser` can forget the calls that stopped streaming.

        P only ever grows, and at a given P the sub-chunks only narrow, so a model whose layers have different widths
        settles on one partition after its first pass. The first partition is the smallest P that fits (as NeuGraph),
        widened (:meth:`_widen`), or a faster fit the time model finds (:meth:`_by_time`).
        """
        budget = self.budget
        self._calls[(shape, fused, param_bytes)] = owner
        if budget is not None and self._partition is None:
            measure_step_costs(self._devices[0])  # once per kind of device, before any pass runs (the pass log's predictions read it)
        # a fixed depth is planned for; "as deep as fits" needs room for one. Not for disk reads: the
        # partition (and so every float sum) must not depend on whether a host budget is set
        in_flight = planned_in_flight(self._schedule.prefetch, self._devices[0].overlaps_transfers)
        if self._may_coarsen:
            self._may_coarsen = False
            coarser = self._coarser(shape, fused, param_bytes, in_flight)
            if coarser is not None:
                return self._settle(*coarser)
        current = self._partition
        if current is not None and self._fixed_sub_nnz is None and budget is not None:
            ws = working_set(current, shape, fused, param_bytes, in_flight=in_flight, budget=budget)
            if ws.peak_bytes <= budget:  # this layer fits the partition the others use: keep it
                return self._settle(current, ws)
        sub = self._fixed_sub_nnz or sub_chunk_nnz_for(budget, shape, fused, DEFAULT_SUB_CHUNK_NNZ)
        if current is not None:
            sub = min(sub, current.sub_chunk_nnz)
        if self._fixed_chunks is not None:
            return self._settle(*self._fixed(shape, fused, param_bytes, sub, current))
        start = 1 if current is None else current.num_chunks
        try:  # room for one sub-chunk loading while one computes, if any P allows it
            part, ws = self._smallest_fit(shape, fused, param_bytes, sub, start, in_flight)
        except BudgetTooSmall:
            in_flight = 1
            part, ws = self._smallest_fit(shape, fused, param_bytes, sub, start, 1)
        if budget is not None and self._fixed_sub_nnz is None:  # a re-plan too
            # at the current P, sub-chunks no wider than the current ones (the plan only grows finer); a larger P's
            # chunks are smaller, so its sub-chunks are widened afresh (else one layer's P caps another's sub-chunks)
            cap = DEFAULT_SUB_CHUNK_NNZ if current is None or part.num_chunks > current.num_chunks else current.sub_chunk_nnz
            fit, part = [part, ws], None  # only ``fit`` holds the partition: tuning may drop it while it cuts another
            part, ws = self._tune(fit, shape, fused, param_bytes, in_flight, cap)
        return self._settle(part, ws)

    def _fixed(self, shape: LayerShape, fused: bool, param_bytes: int, sub: int, current: GraphPartition | None) -> tuple[GraphPartition, WorkingSet]:
        """The caller's P, intervals balanced by edges or, where that does not fit, by resident bytes as sagann cuts a P it
        chooses (else the P it chose and printed, passed back as ``num_chunks``, could be refused); widest sub-chunks that fit."""
        weight, budget = vertex_weight(shape, fused), self.budget
        for w in (1.0, weight) if weight != 1.0 and budget is not None else (1.0,):
            part = None  # the first cut is not held while the second is made; cut by this call's rows, it must hold the others
            part = self._cut(self._fixed_chunks, sub, w)
            ws = working_set(part, shape, fused, param_bytes, budget=budget)
            if budget is None or ws.peak_bytes <= budget and (w == 1.0 or self._fits_the_others(part, shape, fused, param_bytes, 1)):
                break
        else:
            why = f"needs {ws.peak_bytes:,} device bytes (in the {ws.phase})" if ws.peak_bytes > budget else "fits this layer only in intervals another layer does not fit"
            raise BudgetTooSmall(f"num_chunks={self._fixed_chunks} {why} under {self._devices[0].name}'s budget of {budget:,} ({format_bytes(budget)}); pass num_chunks=None to let sagann choose, or raise the budget")
        if budget is not None and self._fixed_sub_nnz is None:
            # the first size charges a new source row per edge: at a fixed P too, the widest sub-chunks that fit (up to the
            # current ones: at a given P they only narrow), else a dense graph's fixed P took 70x the steps
            fit, part = [part, ws], None
            self._widen(fit, shape, fused, param_bytes, 1, DEFAULT_SUB_CHUNK_NNZ if current is None else current.sub_chunk_nnz, weight=w)
            part, ws = fit
        return part, ws

    def allow_coarser(self, owner: object = None) -> None:
        """The next call may re-choose P from 1 (the layer whose calls set P stopped streaming: its Gather is cached).

        ``owner``: the calls that stopped (``partition_for``'s owner); the
        other calls planned so far still stream, and a coarser P must fit
        them too: a dropout's fresh input each epoch keeps a layer's
        training calls streaming while its evaluation calls are cached.
        None: every call registers again.
        """
        self._may_coarsen = True
        self._calls = {} if owner is None else {k: o for k, o in self._calls.items() if o != owner}
        # the passes' choices (tile, resident set, held rows, spare room) are made again, as on a re-cut partition:
        # kept from before the Gather was cached, the passes after it peaked 50 MiB higher in host RSS (measured
        # from outside on tests/test_ooc_rss.py's graph); re-making them costs each pass one re-plan
        self._plan_choices = {}

    def refine(self, shape: LayerShape, fused: bool) -> GraphPartition | None:
        """A strictly finer partition after the device ran out of memory, or None if there is none.

        P doubles (up to min(N, MAX_CHUNKS)) and the sub-chunk edge bound
        halves (from the largest sub-chunk there really is), so the resident
        vertex rows and the sub-chunks in flight both shrink: the working set
        roughly halves per re-plan, whatever the planner got wrong. The finer
        partition becomes the current one, and later layer calls start from
        it (P only grows). None when P was fixed by the caller
        (``num_chunks=``) or nothing can get finer.
        """
        old = self._partition
        self._resident_ok = False  # the device had less memory than planned: spare room is not to be trusted
        if self._fixed_chunks is not None or old is None:
            return None
        p = old.num_chunks
        biggest = max((c.nnz for c in old.sub_chunks()), default=0)
        new_p = min(2 * p, max(p, min(max(self._num_vertices, 1), MAX_CHUNKS)))
        new_sub = max(1, min(old.sub_chunk_nnz, biggest) // 2) if biggest > 1 else old.sub_chunk_nnz
        if new_p == p and new_sub == old.sub_chunk_nnz:
            return None
        self._partition = self._cut(new_p, new_sub, vertex_weight(shape, fused))
        self._refined = True
        return self._partition

    @contextlib.contextmanager
    def one_off_partition(self):
        """Calls inside plan as usual, but the partition they refine to is not kept (a pass that runs once)."""
        kept = self._partition
        try:
            yield
        finally:
            if kept is not None:
                self._partition = kept

    def note_recompute_peak(self, nbytes: int) -> None:
        """A pass chose to recompute a kept graph in backward: its ``nbytes`` peak joins the planned peak."""
        self._planned_peak = max(self._planned_peak, int(nbytes))

    def _cut(self, num_chunks: int, sub_nnz: int, weight: float = 1.0) -> GraphPartition:
        p = self._partition
        if p is not None and p.num_chunks == num_chunks and p.sub_chunk_nnz == sub_nnz:
            return p
        ordered = None if self._place is not None else self._orders.ordered(self._edges, self._num_vertices, self._in_degree, num_chunks, weight)
        if ordered is not None:  # a search's candidate: its sizes judge it; the one settled on is cut (_settle)
            return sketch_partition(ordered, self._num_vertices, sub_nnz)
        edges = self._edges() if self._orders.in_search else None
        if isinstance(edges, GraphPartition):  # a dataset's candidate: sized from its chunks a row at a time, cut when settled on
            return recut(edges, num_chunks, sub_nnz, vertex_weight=weight, sketch=True)
        return self._cut_edges(num_chunks, sub_nnz, weight, edges=edges)

    def _cut_edges(self, num_chunks: int, sub_nnz: int, weight: float = 1.0, bounds: np.ndarray | None = None, edges=None) -> GraphPartition:
        """A partition with its arrays, each chunk placed as it is cut (a search holds the current partition and at most
        the one it settles on); ``bounds``: those intervals (else balanced); ``edges``: ``self._edges()`` if already made."""
        ordered = None if self._place is not None or bounds is None else self._orders.for_bounds(bounds)
        edges = None if ordered is not None else edges if edges is not None else self._edges()
        place = self._place or pack_chunks
        if isinstance(edges, GraphPartition):  # the list is not in RAM: re-cut the chunks a row at a time
            part = recut(edges, num_chunks, sub_nnz, bounds=bounds, vertex_weight=weight, place=place)
        else:
            part = partition_graph(edges, self._num_vertices, num_chunks, sub_nnz, bounds=None if ordered is not None else bounds, vertex_weight=weight, place=place, ordered=ordered)
        # its chunk buffers are malloc heap blocks (below HEAP_BLOCK_MAX): freed, they would stay resident until the
        # next pass's end; a dropped candidate or one-off partition (50 MB at 1.5M edges) hands them back at once
        weakref.finalize(part, trim_freed_memory)
        return part

    def _coarser(self, shape: LayerShape, fused: bool, param_bytes: int, in_flight: int):
        """(partition, working set) of the smallest P below the current one that fits this call, trained; None if there is none.

        Planned for a call with a backward (its input needing a gradient)
        even when this one has none: an evaluation call must not coarsen
        the graph below what the next training call needs.
        """
        p, budget = self._partition, self.budget
        if p is None or p.num_chunks == 1 or budget is None or self._fixed_chunks is not None or self._fixed_sub_nnz is not None:
            return None
        if self._given_partition or self._refined:  # a dataset's partition stays; after running out of memory the plan is not trusted
            return None
        if not shape.backward:
            shape = shape.with_grads(True, True, False)
        sub = sub_chunk_nnz_for(budget, shape, fused, DEFAULT_SUB_CHUNK_NNZ)
        others = lambda part: self._fits_the_others(part, shape, fused, param_bytes, in_flight)  # noqa: E731
        # a call still streaming that P - 1 does not hold: no smaller P does (the probe is dropped before the search)
        if self._calls.keys() - {(shape, fused, param_bytes)} and not others(self._cut(p.num_chunks - 1, sub, vertex_weight(shape, fused))):
            return None
        try:
            part, ws = self._smallest_fit(shape, fused, param_bytes, sub, 1, in_flight, max_chunks=p.num_chunks - 1, also=others)
        except BudgetTooSmall:
            return None
        fit, part = [part, ws], None  # only ``fit`` holds the partition: tuning may drop it while it cuts another
        return self._tune(fit, shape, fused, param_bytes, in_flight)

    def _tune(self, fit: list, shape: LayerShape, fused: bool, param_bytes: int, in_flight: int, cap: int = DEFAULT_SUB_CHUNK_NNZ):
        """(partition, working set): the smallest fit ``fit`` = [partition, working set] widened (:meth:`_widen`), or a faster fit (:meth:`_by_time`).

        ``fit`` is emptied: with the caller's reference gone, tuning holds one candidate partition besides the current
        one (host RSS), and cuts a dropped one again when it is the answer after all.
        """
        self._widen(fit, shape, fused, param_bytes, in_flight, cap)
        self._by_time(fit, shape, fused, param_bytes, in_flight, cap)
        return fit.pop(0), fit.pop(0)

    def _by_time(self, fit: list, shape: LayerShape, fused: bool, param_bytes: int, in_flight: int, cap: int):
        """Replace ``fit`` (the smallest P that fits, widened) by a faster fit (``faster_partition``: wider sub-chunks, up to ``cap``, or larger P).
        A pick's sub-chunks narrow down to a 64th until they fit once cut: the estimate counts no destination rows, and a
        dense graph's picks fit at a 16th (stopping at a quarter kept a Reddit-shaped GIN at P = 3, 1,770 steps)."""
        if self._schedule.partition_rule != "time":
            return
        part, ws = fit
        job = {"shape": shape, "fused": fused, "param_bytes": param_bytes, "budget": self.budget, "in_flight": in_flight, "default": cap}
        costs = measure_step_costs(self._devices[0])
        picks = faster_partitions(self._edges(), self._in_degree, part, job, costs, min(max(self._num_vertices, 1), MAX_CHUNKS))
        if not picks:  # the smallest P, widened, is predicted fastest
            return
        p0, sub0, weight, old = part.num_chunks, part.sub_chunk_nnz, vertex_weight(shape, fused), measure_partition(part, shape)
        fit.clear()
        part, best = None, (None, p0, sub0)  # (predicted seconds, P, widened sub-chunk size): one candidate partition lives at a time
        for p, sub in picks[:MAX_PICKS]:  # each pick that fits, widened, then the fastest of them
            for sub in (s for s in (sub, sub // 2, sub // 4, sub // 16, sub // 64) if s >= 1):  # the estimate's may not fit once cut: narrower
                fit[:] = [self._cut(p, sub, weight), None]
                fit[1] = w = working_set(fit[0], shape, fused, param_bytes, in_flight=in_flight, budget=self.budget)
                if w.peak_bytes <= self.budget and self._fits_the_others(fit[0], shape, fused, param_bytes, in_flight):
                    # the estimate's sub-chunks (a model of their rows) may split chunks that fit whole: widened, then
                    # kept if, counted, it takes fewer steps and is still predicted faster (and faster than other picks)
                    self._widen(fit, shape, fused, param_bytes, in_flight, cap)
                    new = measure_partition(fit[0], shape)
                    if new.steps < old.steps and new.seconds(costs) < (1 - MARGIN) * old.seconds(costs) and (best[0] is None or new.seconds(costs) < best[0]):
                        best = (new.seconds(costs), p, fit[0].sub_chunk_nnz)
                    break
            fit.clear()
        part = self._cut(best[1], best[2], weight)
        fit[:] = [part, ws if best[0] is None else working_set(part, shape, fused, param_bytes, in_flight=in_flight, budget=self.budget)]

    def _smallest_fit(self, shape: LayerShape, fused: bool, param_bytes: int, sub: int, start: int, in_flight: int, max_chunks: int = MAX_CHUNKS,
                      also: Callable[[GraphPartition], bool] | None = None):
        """``choose_num_chunks`` over this graph's partitions: P ruled out by its intervals' resident rows before it is cut; ``also``: a further test a fit passes."""
        weight = vertex_weight(shape, fused)
        make = lambda P: self._cut(P, sub, weight)  # noqa: E731
        bound = lambda P: resident_lower_bound(balanced_bounds(self._in_degree, P, weight), shape, param_bytes)  # noqa: E731
        return choose_num_chunks(make, self._num_vertices, shape, fused, param_bytes, self.budget, start, in_flight=in_flight, lower_bound=bound, max_chunks=max_chunks, also=also)

    def _fits_the_others(self, part: GraphPartition, shape: LayerShape, fused: bool, param_bytes: int, in_flight: int) -> bool:
        """``part`` also holds every other call planned so far (their working sets within the budget)."""
        return all(
            working_set(part, s, f, b, in_flight=in_flight, budget=self.budget).peak_bytes <= self.budget
            for s, f, b in self._calls
            if (s, f, b) != (shape, fused, param_bytes)
        )

    def _widen(self, fit: list, shape: LayerShape, fused: bool, param_bytes: int, in_flight: int, cap: int = DEFAULT_SUB_CHUNK_NNZ, weight: float | None = None) -> None:
        """Replace ``fit`` = [partition, working set] by the same P with the largest sub-chunks (up to ``cap``) that still fit.

        The starting sub-chunk size assumes one new source row per edge; real
        chunks reuse rows, so bigger sub-chunks usually fit, and they re-send
        fewer shared rows (selective bytes) and take fewer steps. Grows by
        each of :data:`WIDEN_STEPS` in turn while it fits (where 2x does not,
        1.25x may still save a step a chunk). The last fit is dropped while
        a wider one is cut, and cut again if needed. ``weight``: the vertex
        weight the partition's intervals were cut with (else this call's).
        """
        budget, weight = self.budget, vertex_weight(shape, fused) if weight is None else weight
        part, ws = fit
        p, sub, largest = part.num_chunks, part.sub_chunk_nnz, max((c.nnz for c in part.sub_chunks()), default=0)
        growth = next(steps := iter(WIDEN_STEPS))
        while growth is not None and sub < cap and largest >= sub:
            fit.clear()
            part = None
            wider = self._cut(p, min(max(sub + 1, int(growth * sub)), cap), weight)
            w = working_set(wider, shape, fused, param_bytes, in_flight=in_flight, budget=budget)
            if w.peak_bytes > budget or not self._fits_the_others(wider, shape, fused, param_bytes, in_flight):
                wider = None
                growth = next(steps, None)  # this growth does not fit: a smaller one may
                continue
            part, ws, sub, largest = wider, w, wider.sub_chunk_nnz, max((c.nnz for c in wider.sub_chunks()), default=0)
            fit[:] = [part, ws]
            wider = None
        if not fit:
            fit[:] = [self._cut(p, sub, weight), ws]

    def _settle(self, part: GraphPartition, ws: WorkingSet) -> GraphPartition:
        """Make ``part`` the current partition and remember the largest working set planned on it."""
        if part is not self._partition:
            self._plan_choices = {}
        if is_sketch(part):  # a search's candidate, sizes only: cut now, into the same sub-chunks
            part = self._cut_edges(part.num_chunks, part.sub_chunk_nnz, bounds=part.bounds)
        if part is not self._partition and not self._warned_fine:
            self._warned_fine = warn_if_fine(part, self.budget)
        self._partition = part
        if self._working_set is None or ws.peak_bytes > self._working_set.peak_bytes:
            self._working_set = ws
        return part

    # ---- the passes ---------------------------------------------------------------------------
    def _pipelined(self, disk: bool = True) -> bool | None:
        """False: no prefetching; True: a fixed depth > 0; None: as deep as the budget allows (disk reads wait on I/O, beside compute, like a link)."""
        return pipelining(self._schedule.prefetch, self._devices[0].overlaps_transfers or (disk and self._host_spills))

    def prefetch_depth(self, partition: GraphPartition, shape: LayerShape, fused: bool, param_bytes: int) -> int:
        """The configured depth, 0 where transfers cannot overlap compute, or the deepest (up to MAX_PREFETCH) that fits."""
        pipelined = self._pipelined()
        if pipelined is False:
            return 0
        if pipelined is True:
            return self._schedule.prefetch
        budget = self.budget
        if budget is None:
            return MAX_PREFETCH
        key = (id(partition), shape, fused, param_bytes)
        if key not in self._prefetch_cache:
            depth = 0
            for k in range(1, MAX_PREFETCH + 1):
                if working_set(partition, shape, fused, param_bytes, in_flight=live_sub_chunks(k), budget=budget).peak_bytes > budget:
                    break
                depth = k
            self._prefetch_cache[key] = depth
        return self._prefetch_cache[key]

    def plan_pass(self, partition: GraphPartition, shape: LayerShape, fused: bool, param_bytes: int, phase: str, measured: Measured = unmeasured) -> PassPlan:
        """The schedule of one edge stage, checked against the budget before it runs.

        Forward, the loop tiling is the planner's too: of the tiles that fit
        (``tile_candidates``), the one whose plan moves the fewest bytes, the
        smallest on ties. On a device's view (:meth:`for_device`), the pass
        covers the device's owned columns.
        """
        shallower = (id(partition), shape, fused, param_bytes, phase)  # this phase's depth, where its dry run needed less than the model's
        depth = self._prefetch_cache.get(shallower, self.prefetch_depth(partition, shape, fused, param_bytes))
        costs, budget = self._plan_costs(phase, fused, largest_block(partition, shape)), self._devices[0].memory_budget
        while True:
            job = PassJob(partition, shape, fused, param_bytes, phase, measured, depth, costs, self.budget)
            plan, peak = self._plan_owned(job) if self._scope is not None else self._best_plan(job)
            if budget is None or peak <= budget or depth == 0 or self._pipelined() is not None:
                break
            depth = self._prefetch_cache[shallower] = depth - 1  # the model's depth missed the dry run: one sub-chunk fewer in flight
        if self._scope is None and (budget is None or peak <= budget):  # a column's small chunks carried by one step
            plan, peak = batched(job, plan, peak, budget, partial(self._peak, job))
        self._planned_peak = max(self._planned_peak, peak)
        if budget is not None and peak > budget:
            device, chained = self._devices[0], self._scope is not None and self._scope.chained
            raise PassPlanTooLarge(
                f"the {phase} plan{f' of {device.name}' if self._scope is not None else ''} with prefetch {job.depth}{f' and tile {plan.tile}' if plan.tile > 1 else ''} "
                f"needs {peak:,} device bytes{' (with two blocks of V_i in the chain relay)' if chained else ''} but {device.name} has {budget:,} ({format_bytes(budget)}); "
                f"use more chunks (num_chunks=...), a smaller prefetch (ScheduleConfig(prefetch=...)){' or tile' if plan.tile > 1 else ''}, or raise the budget"
            )
        return plan

    def _best_plan(self, job: PassJob) -> tuple[PassPlan, int]:
        """The plan of ``job`` and its dry-run peak: over the budget only when nothing at this depth fits."""
        partition, shape, fused, param_bytes, phase = job.partition, job.shape, job.fused, job.param_bytes, job.phase
        cfg, budget = self._schedule, self._devices[0].memory_budget
        # room for resident intervals: what this edge stage leaves, not the whole call's peak (its other phases are over)
        spare = self._spare(job)
        # the tile and resident intervals depend on sizes, not on measured times: choose them once per
        # partition and shape, then rebuild only the order (and check the dry run) on later passes
        key = (id(partition), canonical(shape), fused, param_bytes, phase, job.depth, spare, self._resident_ok, cfg, job.costs)
        best, known = None, self._plan_choices.get(key)
        if known is not None and known[0]() is partition:  # (not a dead partition whose id was reused)
            _, tile, held, room, dst_rows, whole = known
            if whole is not None:  # an order no measured time changes: the same plan, built and dry-run once
                best = whole
            else:
                plan = dataclasses.replace(self._build(job, room, resident=held, tile=tile), dst_rows_bytes=dst_rows)
                peak = self._peak(job, plan)
                if budget is None or peak <= budget:
                    best = (plan, peak, room)
        if best is None:
            # after an out-of-memory re-plan the spare room is not to be trusted: no tile fills it either
            tiles = [cfg.tile or 1] if phase != FORWARD or cfg.tile is not None or budget is None or not self._resident_ok else tile_candidates(partition.num_chunks)
            for tile in tiles:
                room = None if spare is None else spare - tile_extra_bytes(partition, shape, tile)
                if best is not None and room < 0:
                    break  # bigger tiles need more room still
                plan, peak, used = self._plan_for_tile(job, room, tile)
                fits = budget is None or peak <= budget
                if best is None or (fits and (best[1] > budget or plan.bytes_moved < best[0].bytes_moved)):
                    best = (plan, peak, used)
            if phase != FORWARD and budget is not None and best[1] <= budget:
                best = self._with_dst_rows_held(job, best)
            fixed = self._order(job) is Order.NATURAL and (budget is None or best[1] <= budget)
            self._plan_choices[key] = (weakref.ref(partition), best[0].tile, best[0].resident, best[2], best[0].dst_rows_bytes, best if fixed else None)
        return best[0], best[1]

    def _spare(self, job: PassJob) -> int | None:
        """Budget left beside the edge stage's working set (None: no budget)."""
        budget = self._devices[0].memory_budget
        return None if budget is None else budget - edge_stage_bytes(job.partition, job.shape, job.fused, job.param_bytes, job.phase, in_flight=live_sub_chunks(job.depth), budget=budget)

    def _order(self, job: PassJob) -> Order:
        """The configured order, natural without prefetching: loads and compute then run one after the other, so
        Johnson's order (which overlaps them best) cannot shorten the pass, and a plan that never changes is built once."""
        return self._schedule.order if job.depth > 0 else Order.NATURAL

    def _build(self, job: PassJob, room: int | None, resident=(), tile: int = 1, share_blocks: bool = True) -> PassPlan:
        cfg = self._schedule
        return build_plan(
            job.partition, job.shape, job.phase, job.depth, cfg.transfer,
            costs=job.costs, spare_bytes=room, order=self._order(job), measured=job.measured, resident=resident, tile=tile, share_blocks=share_blocks,
        )

    @staticmethod
    def _peak(job: PassJob, plan: PassPlan) -> int:
        """The plan's dry-run device peak, parameters and their gradients included; ApplyVertex in the working set's blocks."""
        apply_rows = apply_block_rows(job.partition, job.shape, job.fused, job.param_bytes, job.budget, live_sub_chunks(job.depth)) if job.phase == FORWARD else None
        return dry_run(plan, job.partition, job.shape, job.fused, apply_rows) + 2 * job.param_bytes

    def _plan_for_tile(self, job: PassJob, spare: int | None, tile: int) -> tuple[PassPlan, int, int | None]:
        """The plan with ``tile`` destination intervals per group, its dry-run peak and the spare room it was built with; resident intervals where they pay."""
        room = max(spare or 0, 0) if spare is not None else None
        plan = self._build(job, room, tile=tile)
        peak = self._peak(job, plan)
        if self._resident_ok and spare is not None and self._schedule.transfer is TransferPolicy.AUTO and spare > 0:
            return self._with_resident_intervals(job, (plan, peak, room), spare)
        return plan, peak, room

    def _with_resident_intervals(self, job: PassJob, streamed: tuple, spare: int) -> tuple[PassPlan, int, int | None]:
        """``streamed`` (plan, peak, room) with the source intervals worth holding through the pass held (a cache of V's chunks), if any fit.

        Sends each held V_i once instead of once per chunk; the rest of the
        budget's spare room still carries the streamed chunks' blocks. Drops
        the least worthwhile interval until the dry run fits.
        """
        plan = streamed[0]
        held = list(choose_resident(plan, spare))
        while held:
            room = spare - sum(job.partition.interval_size(i) for i in held) * src_row_bytes(job.shape)
            cached = self._build(job, room, resident=held, tile=plan.tile)
            cached_peak = self._peak(job, cached)
            if cached_peak <= self._devices[0].memory_budget:
                return (cached, cached_peak, room) if cached.bytes_moved < plan.bytes_moved else streamed
            held.pop()  # the least worthwhile (choose_resident lists them best first); re-plan
        return streamed

    def _with_dst_rows_held(self, job: PassJob, best: tuple) -> tuple:
        """A backward plan that sends every destination row once and holds it, where that fits and moves fewer bytes."""
        plan, peak, room = best
        held, saved = dst_rows_saving(plan, job.partition, job.shape)
        if not self._resident_ok or self._schedule.transfer is not TransferPolicy.AUTO or saved < held:  # worth a pass-long hold: at least halves them
            return best
        candidate = dataclasses.replace(plan, dst_rows_bytes=held)
        candidate_peak = self._peak(job, candidate)
        return (candidate, candidate_peak, room) if candidate_peak <= self._devices[0].memory_budget else best

    def _plan_costs(self, phase: str, fused: bool, block_bytes: int) -> TransferCosts | None:
        """The device's transfer costs measured at the plan's block size, for the selective-or-full choice (None: by bytes).

        A fused forward reads a full block of V_i in place (``gspmm(src_rows=)``):
        no rows are picked on the device, so a full transfer costs the block alone.
        """
        if self._schedule.transfer is not TransferPolicy.AUTO or self._devices[0].transfers_cost_alike:
            return None  # None: by bytes
        costs = self._devices[0].transfer_costs(block_bytes)
        return dataclasses.replace(costs, compact=0.0) if phase == FORWARD and fused else costs

    # ---- several devices ----------------------------------------------------------------------
    def for_device(self, device: Device, owned: Sequence[int], chained: bool) -> "Planner":
        """The planner of one device of a multi-device graph: same partition, its budget, passes over its owned columns.

        A chained device takes whole blocks of V_i from a relay, in one order
        for the whole chain: it plans full transfers in natural order, one
        block per chunk (no run shares one), and budgets two extra blocks (one
        waiting in the relay's inbox, one being forwarded). No loop tiling or
        resident intervals across devices. Its prefetch depth follows its own
        device (its graph view keeps no host memory budget).
        """
        schedule = self._schedule
        if chained:  # the rest of the user's schedule stands (16-bit rows and ids, replans, the partition rule)
            schedule = dataclasses.replace(schedule, transfer=TransferPolicy.FULL, order="natural", tile=None)
        view = Planner(self._edges, self._num_vertices, self._in_degree, [device], schedule, partition=self._partition)
        view._scope = DeviceScope(frozenset(owned), bool(chained))
        return view

    def _plan_owned(self, job: PassJob) -> tuple[PassPlan, int]:
        """As :meth:`_best_plan`, over the owned columns, with the chain's extra blocks budgeted.

        The room for full blocks is what the edge stage leaves (as on one
        device), not what the whole call's working set leaves: the call's
        other phases have given their memory back when its edge stage runs.
        """
        device, chained = self._devices[0], self._scope.chained
        budget, spare = device.memory_budget, self._spare(job)  # as one device: the room this edge stage leaves
        if spare is not None and chained:
            spare -= 2 * largest_block(job.partition, job.shape)
        plan = self._build(job, max(spare or 0, 0) if budget is not None else None, share_blocks=not chained)
        if job.phase == FORWARD:
            plan = dataclasses.replace(plan, groups=tuple((j, steps) for j, steps in plan.groups if j in self._scope.owned))
        peak = self._peak(job, plan)
        if chained:  # one block waiting in the relay's inbox, one being forwarded
            peak += 2 * max((s.block_bytes for s in plan.steps() if s.transfer is Transfer.FULL), default=0)
        return plan, peak
