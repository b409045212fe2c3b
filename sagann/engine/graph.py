"""ChunkedGraph: a graph, the device it is trained on, and the partition that fits it."""
from __future__ import annotations

import contextlib
import dataclasses
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch

from sagann.chunks.partition import DEFAULT_SUB_CHUNK_NNZ, GraphPartition, as_edge_index, balanced_bounds, partition_graph
from sagann.kernels import backend_names
from sagann.scheduler.chains import LinkCounter, resolve_chains, resolve_devices
from sagann.scheduler.config import MAX_PREFETCH, ScheduleConfig
from sagann.scheduler.costs import CostTable
from sagann.scheduler.devices import Device, format_bytes
from sagann.scheduler.host import HostMemory
from sagann.scheduler.pipeline import live_sub_chunks
from sagann.scheduler.planner import (
    MAX_CHUNKS,
    BudgetTooSmall,
    canonical,
    LayerShape,
    WorkingSet,
    choose_num_chunks,
    edge_stage_bytes,
    resident_lower_bound,
    src_row_bytes,
    sub_chunk_nnz_for,
    tile_candidates,
    tile_extra_bytes,
    vertex_weight,
    working_set,
)
from sagann.scheduler.policy import TransferCosts, TransferPolicy
from sagann.scheduler.schedule import FORWARD, PassPlan, build_plan, choose_resident, dry_run, dst_rows_saving

BACKENDS = backend_names("auto")  # "auto" and every registered kernel backend, read at each check


@dataclass(frozen=True)
class Replan:
    """One re-plan after the device ran out of memory: the partition before and after."""

    layer: str
    phase: str
    chunks: tuple[int, int]  # P before, after
    sub_chunk_nnz: tuple[int, int]  # sub-chunk edge bound before, after
    reason: str  # the out-of-memory error, first line


@dataclass(frozen=True)
class PassRecord:
    """One streamed edge stage as it ran: the plan's prediction next to what happened."""

    layer: str
    phase: str
    chunks: int
    prefetch: int
    seconds: float  # wall time of the edge stage
    predicted_seconds: float  # two-stage makespan of the measured chunk times in plan order
    bytes_moved: int  # host -> device bytes of the edge stage
    bytes_full: int  # what a non-selective schedule would have moved
    resident_bytes: int = 0  # source rows of the intervals held on the device through the pass (0: streamed per chunk)
    tile: int = 1  # destination intervals whose accumulators the pass held together (loop tiling)
    dst_rows_bytes: int = 0  # backward: destination rows sent once and held through the pass (0: sent per chunk)


class ChunkedGraph:
    """A graph split 2D into vertex intervals and edge chunks for out-of-core layers.

    Args:
        edge_index: ``[2, E]`` int ids, row 0 = source, row 1 = destination
            (PyG's convention); numpy or torch. The graph keeps its own
            (int32 where N allows) copy: drop yours to save memory.
        num_vertices: N.
        num_chunks: P, or None to pick the smallest P whose working set fits
            the device's memory budget (decided at the first layer call,
            when the feature widths are known, and grown if a later layer
            needs more).
        device: a :class:`~sagann.CpuDevice` (default: unlimited budget), or
            a list of devices: each then owns destination intervals balanced
            by edges, and parameter gradients are summed over them
            (``sagann.engine.multi``).
        sub_chunk_nnz: edges per sub-chunk, or None to derive it from the budget.
        backend: kernel backend for builtin messages: ``"auto"`` (fused numba
            kernels on the CPU), ``"cpu"`` or ``"reference"``.
        schedule: a :class:`~sagann.ScheduleConfig` (prefetch depth,
            selective transfers, ordering); default: all automatic.
        host_memory: RAM budget for the engine's host tensors (bytes, a
            string such as ``"2GB"``, or a :class:`~sagann.HostMemory` with
            its spill directory); beyond it they live in memory-mapped spill
            files (the disk tier). None: unlimited.
        topology: with several devices, which of them form **chains**
            (V_i crosses the host link once per chain and is forwarded
            device to device): None (no chains: every device reads the
            host), a list of chains (lists of device names or positions),
            or a topology (a ``sagann.scheduler.topology.Topology``, a spec
            dict, a JSON path or a shipped spec's name) whose devices are
            matched to the given devices by name.
        distributed: False, True (torch.distributed's default group) or a
            process group: this process is one rank; ranks own destination
            intervals balanced by edges, all-gather layer outputs and
            all-reduce gradients (launch with torchrun, one device per rank;
            every rank runs the same model on the same inputs and seed).

    Example:
        >>> import sagann, torch
        >>> g = sagann.ChunkedGraph(torch.tensor([[0, 1], [1, 2]]), 3, device=sagann.CpuDevice("1MB"))
    """

    def __init__(
        self,
        edge_index,
        num_vertices: int,
        num_chunks: int | None = None,
        device: Device | None = None,
        sub_chunk_nnz: int | None = None,
        backend: str = "auto",
        schedule: ScheduleConfig | None = None,
        *,
        topology=None,
        distributed=False,
        host_memory: "int | str | HostMemory | None" = None,
        _partition: GraphPartition | None = None,
    ):
        self.devices = resolve_devices(device)
        self._device_list = isinstance(device, (list, tuple))  # a list, even of one, runs the multi-device path
        self.chains = resolve_chains(self.devices, topology)
        self._topology = topology
        self.process_group = _process_group(distributed, self.devices)
        if num_chunks is not None and (isinstance(num_chunks, bool) or not isinstance(num_chunks, (int, np.integer)) or num_chunks < 1):
            raise ValueError(f"num_chunks must be None (choose automatically) or an int >= 1, got {num_chunks!r}")
        if sub_chunk_nnz is not None and (not isinstance(sub_chunk_nnz, (int, np.integer)) or sub_chunk_nnz < 1):
            raise ValueError(f"sub_chunk_nnz must be None or an int >= 1, got {sub_chunk_nnz!r}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
        if schedule is not None and not isinstance(schedule, ScheduleConfig):
            raise TypeError(f"schedule must be a sagann.ScheduleConfig, got {schedule!r}")
        self.schedule = schedule or ScheduleConfig()
        self.host = host_memory if isinstance(host_memory, HostMemory) else HostMemory(host_memory)
        self.costs = CostTable()
        self.pass_log: list[PassRecord] = []
        self.replans: list[Replan] = []  # re-plans after running out of device memory, oldest first
        self._prefetch_cache: dict = {}
        self._given_partition = _partition is not None  # the caller's (a dataset's): never re-cut coarser
        if _partition is not None:
            self._edge_index = None
            self.num_vertices, self.num_edges = _partition.num_vertices, _partition.num_edges
            self.in_degree = _partition.in_degree
        else:
            self._edge_index = compact_ids(as_edge_index(edge_index, num_vertices), num_vertices)
            self.num_vertices, self.num_edges = int(num_vertices), int(self._edge_index.shape[1])
            self.in_degree = np.bincount(self._edge_index[1], minlength=self.num_vertices).astype(np.int64)
        self._derived_edges = None  # a graph the engine derived (e.g. with self loops): how to rebuild its edge list
        self.device = self.devices[0]  # the only device; with several, the first (see ``devices``)
        self._layouts: dict = {}  # sagann.engine.multi: per-partition device layouts
        self.link = LinkCounter()  # V_i blocks of multi-device passes: host-link and device-to-device bytes
        self.step_log: list = []  # multi-device passes: one engine.multi.StepRecord per chunk (the simulator's calibration)
        self.call_log: list = []  # multi-device passes: one engine.multi.CallRecord per phase and device
        self.calls_made = 0
        self.backend = backend
        self._fixed_chunks = None if num_chunks is None else int(num_chunks)
        self._fixed_sub_nnz = None if sub_chunk_nnz is None else int(sub_chunk_nnz)
        self.partition: GraphPartition | None = _partition
        self._derived: dict[str, object] = {}
        self._working_set: WorkingSet | None = None
        self._planned_peak = 0  # largest dry-run peak of the pass plans so far
        self._resident_ok = True  # may a pass hold source intervals resident (off after an out-of-memory re-plan)
        self._may_coarsen = False  # the call that set P no longer streams here: the next call may pick a smaller P
        self._plan_choices: dict[tuple, tuple] = {}  # pass key -> (partition ref, tile, resident intervals, spare room) chosen for it

    @classmethod
    def from_partition(cls, partition: GraphPartition, device: Device | None = None, backend: str = "auto", schedule: ScheduleConfig | None = None, topology=None, distributed=False, host_memory=None) -> "ChunkedGraph":
        """Wrap an existing partition (e.g. a dataset loaded from disk); repartitions only if needed."""
        return cls(None, partition.num_vertices, None, device, None, backend, schedule, topology=topology, distributed=distributed, host_memory=host_memory, _partition=partition)

    @property
    def multi_device(self) -> bool:
        """Do layer calls run on several devices (or ranks)?"""
        return self._device_list or self.process_group is not None

    @property
    def memory_budget(self) -> int | None:
        """The smallest budget of the devices (all share one partition), None if all are unlimited."""
        budgets = [d.memory_budget for d in self.devices if d.memory_budget is not None]
        return min(budgets) if budgets else None

    def _graphs(self) -> list["ChunkedGraph"]:
        """This graph and the graphs derived from it (e.g. GCN's self-loop graph)."""
        return [self] + [v[0] for v in self._derived.values() if isinstance(v, tuple) and isinstance(v[0], ChunkedGraph)]

    @classmethod
    def from_dataset(cls, path, device: Device | None = None, backend: str = "auto", verify: bool = True, schedule: ScheduleConfig | None = None, topology=None, distributed=False, host_memory=None) -> "ChunkedGraph":
        """Open a dataset directory (see ``sagann.chunks.save_dataset``); edge arrays stay memory-mapped."""
        from sagann.chunks.dataset import load_dataset

        return cls.from_partition(load_dataset(path, mmap=True, verify=verify).partition, device, backend, schedule, topology, distributed, host_memory)

    @property
    def num_chunks(self) -> int | None:
        """P used by layer calls so far (None before the first call chose it)."""
        ps = [g.partition.num_chunks for g in self._graphs() if g.partition is not None]
        return max(ps) if ps else None

    @property
    def planned_peak_bytes(self) -> int:
        """The plans' own prediction of the device peak: working set or dry-run, whichever is larger."""
        ws = self.working_set
        return max([g._planned_peak for g in self._graphs()] + [0 if ws is None else ws.peak_bytes])

    @property
    def working_set(self) -> WorkingSet | None:
        """The largest planned device working set of the layer calls so far."""
        sets = [g._working_set for g in self._graphs() if g._working_set is not None]
        return max(sets, key=lambda w: w.peak_bytes) if sets else None

    def edge_index(self) -> np.ndarray:
        """The ``[2, E]`` edge list in the caller's edge order (rebuilt from the partition if not kept)."""
        if self._edge_index is not None:
            return self._edge_index
        if self._derived_edges is not None:  # an engine-made graph's list is rebuilt when asked, not kept
            return self._derived_edges()
        self._edge_index = compact_ids(self.partition.edge_index(), self.num_vertices)
        return self._edge_index

    def _partition(self, num_chunks: int, sub_nnz: int, weight: float = 1.0) -> GraphPartition:
        p = self.partition
        if p is not None and p.num_chunks == num_chunks and p.sub_chunk_nnz == sub_nnz:
            return p
        return partition_graph(self.edge_index(), self.num_vertices, num_chunks, sub_nnz, vertex_weight=weight)

    def plan(self, shape: LayerShape, fused: bool, param_bytes: int) -> GraphPartition:
        """The partition for a layer call: the current one if it fits, else a finer one.

        P and the sub-chunk size only ever grow finer, so a model whose layers
        have different widths settles on one partition after its first pass.
        The first partition takes the smallest P that fits (as NeuGraph), then
        the largest sub-chunks that still fit at that P (:meth:`_widen`).
        """
        budget = self.memory_budget
        pipelined = self._pipelined()  # a fixed depth is planned for; "as deep as fits" needs room for one
        in_flight = live_sub_chunks(0 if pipelined is False else self.schedule.prefetch if pipelined is True else 1)
        if self._may_coarsen:
            self._may_coarsen = False
            coarser = self._coarser(shape, fused, param_bytes, budget, in_flight)
            if coarser is not None:
                return self._settle(*coarser)
        if self.partition is not None and self._fixed_chunks is None and self._fixed_sub_nnz is None and budget is not None:
            ws = working_set(self.partition, shape, fused, param_bytes, in_flight=in_flight)
            if ws.peak_bytes <= budget:  # this layer fits the partition the others use: keep it
                return self._settle(self.partition, ws)
        first = self.partition is None
        sub = self._fixed_sub_nnz or sub_chunk_nnz_for(budget, shape, fused, DEFAULT_SUB_CHUNK_NNZ)
        if self.partition is not None:
            sub = min(sub, self.partition.sub_chunk_nnz)
        if self._fixed_chunks is not None:
            part = self._partition(self._fixed_chunks, sub)
            ws = working_set(part, shape, fused, param_bytes)
            if budget is not None and ws.peak_bytes > budget:
                raise BudgetTooSmall(
                    f"num_chunks={self._fixed_chunks} needs {ws.peak_bytes:,} device bytes (in the {ws.phase}) "
                    f"but {self.device.name} has a budget of {budget:,} ({format_bytes(budget)}); "
                    f"pass num_chunks=None to let sagann choose, or raise the budget"
                )
        else:
            start = 1 if self.partition is None else self.partition.num_chunks
            weight = vertex_weight(shape, fused)
            try:  # room for one sub-chunk loading while one computes, if any P allows it
                part, ws = self._smallest_fit(shape, fused, param_bytes, budget, sub, weight, start, in_flight)
            except BudgetTooSmall:
                in_flight = 1
                part, ws = self._smallest_fit(shape, fused, param_bytes, budget, sub, weight, start, 1)
            if first and budget is not None and self._fixed_sub_nnz is None:
                part, ws = self._widen(part, ws, shape, fused, param_bytes, budget, weight, in_flight)
        return self._settle(part, ws)

    def allow_coarser_partition(self) -> None:
        """A layer whose calls set P stops streaming on this graph (its Gather is now cached): let the next call re-choose P.

        P otherwise only grows, and the first epoch's propagation of the
        input features (602 columns on Reddit) would keep every later
        layer on the partition it needed. Once per cached Gather: the next
        layer call picks the smallest P that fits it, and the graph moves to
        it where that is coarser (one partitioning).
        """
        for g in self._graphs():
            g._may_coarsen = True

    def _coarser(self, shape: LayerShape, fused: bool, param_bytes: int, budget: int | None, in_flight: int):
        """(partition, working set) of the smallest P below the current one that fits this call, trained; None if there is none.

        Planned for a call with a backward (its input needing a gradient)
        even when this one has none: an evaluation call must not coarsen
        the graph below what the next training call needs.
        """
        p = self.partition
        if p is None or p.num_chunks == 1 or budget is None or self._fixed_chunks is not None or self._fixed_sub_nnz is not None:
            return None
        if self._given_partition or self.replans:  # a dataset's partition stays; after running out of memory the plan is not trusted
            return None
        if not shape.backward:
            shape = shape.with_grads(True, True, False)
        sub = sub_chunk_nnz_for(budget, shape, fused, DEFAULT_SUB_CHUNK_NNZ)
        weight = vertex_weight(shape, fused)
        try:
            part, ws = self._smallest_fit(shape, fused, param_bytes, budget, sub, weight, 1, in_flight, max_chunks=p.num_chunks - 1)
        except BudgetTooSmall:
            return None
        return self._widen(part, ws, shape, fused, param_bytes, budget, weight, in_flight)

    def _smallest_fit(self, shape: LayerShape, fused: bool, param_bytes: int, budget: int | None, sub: int, weight: float, start: int, in_flight: int, max_chunks: int = MAX_CHUNKS):
        """``choose_num_chunks`` over this graph's partitions: P ruled out by its intervals' resident rows before it is cut."""
        make = lambda P: self._partition(P, sub, weight)  # noqa: E731
        bound = lambda P: resident_lower_bound(balanced_bounds(self.in_degree, P, weight), shape, param_bytes)  # noqa: E731
        return choose_num_chunks(make, self.num_vertices, shape, fused, param_bytes, budget, start, in_flight=in_flight, lower_bound=bound, max_chunks=max_chunks)

    def _widen(self, part: GraphPartition, ws: WorkingSet, shape: LayerShape, fused: bool, param_bytes: int, budget: int, weight: float, in_flight: int):
        """The same P with the largest sub-chunks (up to the default) whose working set still fits.

        The starting sub-chunk size assumes one new source row per edge; real
        chunks reuse rows, so bigger sub-chunks usually fit, and they re-send
        fewer shared rows (selective bytes) and take fewer steps. Grows 4x
        while the partition changes and fits.
        """
        while part.sub_chunk_nnz < DEFAULT_SUB_CHUNK_NNZ and max((c.nnz for c in part.sub_chunks()), default=0) >= part.sub_chunk_nnz:
            wider = self._partition(part.num_chunks, min(4 * part.sub_chunk_nnz, DEFAULT_SUB_CHUNK_NNZ), weight)
            w = working_set(wider, shape, fused, param_bytes, in_flight=in_flight)
            if w.peak_bytes > budget:
                break
            part, ws = wider, w
        return part, ws

    def _settle(self, part: GraphPartition, ws: WorkingSet) -> GraphPartition:
        """Make ``part`` the graph's partition and remember the largest working set planned on it."""
        if part is not self.partition:
            self._plan_choices = {}
        self.partition = part
        if self._derived_edges is not None:  # nobody else holds this list, and it can be rebuilt
            self._edge_index = None
        if self._working_set is None or ws.peak_bytes > self._working_set.peak_bytes:
            self._working_set = ws
        return part

    def _pipelined(self) -> bool | None:
        """False: no prefetching; True: a fixed depth > 0; None: as deep as the budget allows."""
        pf = self.schedule.prefetch
        if pf is None:  # disk reads wait on I/O, beside compute, like a link
            return None if self.device.overlaps_transfers or self.host.enabled else False
        if pf == "max":
            return None
        return pf > 0

    def refine(self, shape: LayerShape, fused: bool) -> GraphPartition | None:
        """A strictly finer partition after the device ran out of memory, or None if there is none.

        P doubles (up to min(N, MAX_CHUNKS)) and the sub-chunk edge bound
        halves (from the largest sub-chunk there really is), so the resident
        vertex rows and the sub-chunks in flight both shrink: the working set
        roughly halves per re-plan, whatever the planner got wrong. The finer
        partition becomes the graph's, and later layer calls start from it
        (P only grows). None when P was fixed by the caller (``num_chunks=``)
        or nothing can get finer.
        """
        old = self.partition
        self._resident_ok = False  # the device had less memory than planned: spare room is not to be trusted
        if self._fixed_chunks is not None or old is None:
            return None
        p = old.num_chunks
        biggest = max((c.nnz for c in old.sub_chunks()), default=0)
        new_p = min(2 * p, max(p, min(max(self.num_vertices, 1), MAX_CHUNKS)))
        new_sub = max(1, min(old.sub_chunk_nnz, biggest) // 2) if biggest > 1 else old.sub_chunk_nnz
        if new_p == p and new_sub == old.sub_chunk_nnz:
            return None
        self.partition = self._partition(new_p, new_sub, vertex_weight(shape, fused))
        return self.partition

    def prefetch_depth(self, partition: GraphPartition, shape: LayerShape, fused: bool, param_bytes: int) -> int:
        """The configured depth, 0 where transfers cannot overlap compute, or the deepest (up to MAX_PREFETCH) that fits."""
        pipelined = self._pipelined()
        if pipelined is False:
            return 0
        if pipelined is True:
            return self.schedule.prefetch
        budget = self.memory_budget
        if budget is None:
            return MAX_PREFETCH
        key = (id(partition), shape, fused, param_bytes)
        if key not in self._prefetch_cache:
            depth = 0
            for k in range(1, MAX_PREFETCH + 1):
                if working_set(partition, shape, fused, param_bytes, in_flight=live_sub_chunks(k)).peak_bytes > budget:
                    break
                depth = k
            self._prefetch_cache[key] = depth
        return self._prefetch_cache[key]

    def pass_plan(
        self,
        partition: GraphPartition,
        shape: LayerShape,
        fused: bool,
        param_bytes: int,
        phase: str,
        measured: Callable[[tuple[int, int]], tuple[float, float] | None] = lambda key: None,
    ) -> PassPlan:
        """The schedule of one edge stage, checked against the budget before it runs.

        Forward, the loop tiling is the planner's too: of the tiles that fit
        (``tile_candidates``), the one whose plan moves the fewest bytes, the
        smallest on ties.
        """
        cfg, budget = self.schedule, self.device.memory_budget
        depth = self.prefetch_depth(partition, shape, fused, param_bytes)
        # room for resident intervals: what this edge stage leaves, not the whole call's peak (its other phases are over)
        spare = None if budget is None else budget - edge_stage_bytes(partition, shape, fused, param_bytes, phase, in_flight=live_sub_chunks(depth))
        # the tile and resident intervals depend on sizes, not on measured times: choose them once per
        # partition and shape, then rebuild only the order (and check the dry run) on later passes
        costs = self._plan_costs(phase, fused)
        key = (id(partition), canonical(shape), fused, param_bytes, phase, depth, spare, self._resident_ok, cfg, costs)
        best, known = None, self._plan_choices.get(key)
        if known is not None and known[0]() is partition:  # (not a dead partition whose id was reused)
            _, tile, held, room, dst_rows = known
            plan = build_plan(partition, shape, phase, depth, cfg.transfer, costs, room, cfg.order, measured, resident=held, tile=tile)
            plan = dataclasses.replace(plan, dst_rows_bytes=dst_rows)
            peak = dry_run(plan, partition, shape, fused) + 2 * param_bytes
            if budget is None or peak <= budget:
                best = (plan, peak, room)
        if best is None:
            tiles = [cfg.tile or 1] if phase != FORWARD or cfg.tile is not None or budget is None else tile_candidates(partition.num_chunks)
            for tile in tiles:
                room = None if spare is None else spare - tile_extra_bytes(partition, shape, tile)
                if best is not None and room < 0:
                    break  # bigger tiles need more room still
                plan, peak, used = self._plan_for_tile(partition, shape, fused, param_bytes, phase, depth, room, measured, tile)
                fits = budget is None or peak <= budget
                if best is None or (fits and (best[1] > budget or plan.bytes_moved < best[0].bytes_moved)):
                    best = (plan, peak, used)
            if phase != FORWARD and budget is not None and best[1] <= budget:
                best = self._with_dst_rows_held(best, partition, shape, fused, param_bytes)
            self._plan_choices[key] = (weakref.ref(partition), best[0].tile, best[0].resident, best[2], best[0].dst_rows_bytes)
        plan, peak, _ = best
        self._planned_peak = max(self._planned_peak, peak)
        if budget is not None:
            if peak > budget:
                raise BudgetTooSmall(
                    f"the {phase} plan with prefetch {depth}{f' and tile {plan.tile}' if plan.tile > 1 else ''} needs {peak:,} device bytes but {self.device.name} has {budget:,}; "
                    f"use a smaller prefetch (ScheduleConfig(prefetch=...)){' or tile' if plan.tile > 1 else ''} or raise the budget"
                )
        return plan

    def _plan_for_tile(self, partition, shape, fused, param_bytes, phase, depth, spare, measured, tile) -> tuple[PassPlan, int, int | None]:
        """The plan with ``tile`` destination intervals per group, its dry-run peak and the spare room it was built with; resident intervals where they pay."""
        cfg = self.schedule
        room = max(spare or 0, 0) if spare is not None else None
        plan = build_plan(partition, shape, phase, depth, cfg.transfer, self._plan_costs(phase, fused), room, cfg.order, measured, tile=tile)
        peak = dry_run(plan, partition, shape, fused) + 2 * param_bytes
        if self._resident_ok and spare is not None and cfg.transfer is TransferPolicy.AUTO and spare > 0:
            return self._with_resident_intervals(plan, peak, room, partition, shape, fused, param_bytes, phase, depth, spare, measured)
        return plan, peak, room

    def _with_resident_intervals(self, plan: PassPlan, peak: int, plan_room, partition, shape, fused, param_bytes, phase, depth, spare, measured) -> tuple[PassPlan, int, int | None]:
        """``plan`` with the source intervals worth holding through the pass held (a cache of V's chunks), if any fit.

        Sends each held V_i once instead of once per chunk; the rest of the
        budget's spare room still carries the streamed chunks' blocks. Drops
        the least worthwhile interval until the dry run fits.
        """
        held = list(choose_resident(plan, spare))
        while held:
            room = spare - sum(partition.interval_size(i) for i in held) * src_row_bytes(shape)
            cached = build_plan(partition, shape, phase, depth, self.schedule.transfer, self._plan_costs(phase, fused), room, self.schedule.order, measured, resident=held, tile=plan.tile)
            cached_peak = dry_run(cached, partition, shape, fused) + 2 * param_bytes
            if cached_peak <= self.device.memory_budget:
                return (cached, cached_peak, room) if cached.bytes_moved < plan.bytes_moved else (plan, peak, plan_room)
            held.pop()  # the least worthwhile (choose_resident lists them best first); re-plan
        return plan, peak, plan_room

    def _with_dst_rows_held(self, best: tuple, partition, shape, fused, param_bytes) -> tuple:
        """A backward plan that sends every destination row once and holds it, where that fits and moves fewer bytes."""
        plan, peak, room = best
        held, saved = dst_rows_saving(plan, partition, shape)
        if not self._resident_ok or self.schedule.transfer is not TransferPolicy.AUTO or saved < held:  # worth a pass-long hold: at least halves them
            return best
        candidate = dataclasses.replace(plan, dst_rows_bytes=held)
        candidate_peak = dry_run(candidate, partition, shape, fused) + 2 * param_bytes
        return (candidate, candidate_peak, room) if candidate_peak <= self.device.memory_budget else best

    def _plan_costs(self, phase: str, fused: bool) -> TransferCosts | None:
        """The device's measured transfer costs for the selective-or-full choice (None unless the policy is auto).

        A fused forward reads a full block of V_i in place (``gspmm(src_rows=)``):
        no rows are picked on the device, so a full transfer costs the block alone.
        """
        if self.schedule.transfer is not TransferPolicy.AUTO:
            return None
        costs = self.device.transfer_costs()
        return dataclasses.replace(costs, compact=0.0) if phase == FORWARD and fused else costs

    def with_remaining_self_loops(self) -> tuple["ChunkedGraph", np.ndarray]:
        """This graph with every self loop replaced by exactly one per vertex (PyG's GCN convention).

        Returns the derived graph (cached) and ``kept``: a boolean mask over
        this graph's edges, True for the ones that are its first ``E' - N``
        edges (in order); the last N edges are the loops.
        """
        if "self_loops" not in self._derived:
            kept = self.edge_index()[0] != self.edge_index()[1]
            derived = self._derive(_with_self_loops(self.edge_index, kept, self.num_vertices), self._fixed_chunks, self._fixed_sub_nnz)
            derived._derived_edges = partial(_with_self_loops, self.edge_index, kept, self.num_vertices)
            self._derived["self_loops"] = (derived, kept)
        return self._derived["self_loops"]

    @contextlib.contextmanager
    def one_off_partition(self):
        """Layer calls inside plan as usual, but the partition they refine to is not kept.

        For a pass that runs once at a width the model's layers never use
        (the propagation of a cached Gather): P only grows, and a partition
        fine enough for 602 columns would slow every later pass.
        """
        kept = self.partition
        try:
            yield
        finally:
            if kept is not None:
                self.partition = kept

    def without_edges(self) -> "ChunkedGraph":
        """This graph's vertices and devices with no edges (cached): where a layer runs ApplyVertex alone."""
        if "no_edges" not in self._derived:
            self._derived["no_edges"] = self._derive(np.zeros((2, 0), dtype=np.int64), None, None)
        return self._derived["no_edges"]

    def _derive(self, edge_index, num_chunks: int | None, sub_chunk_nnz: int | None) -> "ChunkedGraph":
        """A graph over these vertices with other edges: same devices, chains, ranks, host memory and schedule, and this graph's logs."""
        devices = self.devices if self._device_list else self.device
        derived = ChunkedGraph(
            edge_index, self.num_vertices, num_chunks, devices, sub_chunk_nnz, self.backend, self.schedule,
            topology=self._chain_spec(), distributed=False if self.process_group is None else self.process_group, host_memory=self.host,
        )
        derived.costs, derived.pass_log, derived.link = self.costs, self.pass_log, self.link  # one log for the user's graph
        derived.step_log, derived.call_log = self.step_log, self.call_log
        return derived

    def _chain_spec(self):
        """The chains as positions, for graphs derived from this one (same devices)."""
        return [list(c) for c in self.chains] if self._device_list else None

    def cached(self, key: str, make):
        """Memoise a value derived from this graph (e.g. a layer's normalisation)."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

    def __repr__(self) -> str:
        dev = f"devices={self.devices!r}, chains={self.chains!r}" if self.multi_device else f"device={self.device!r}"
        return f"ChunkedGraph(num_vertices={self.num_vertices}, num_edges={self.num_edges}, num_chunks={self.num_chunks}, {dev})"


def _with_self_loops(edge_index, kept: np.ndarray, num_vertices: int) -> np.ndarray:
    """The kept edges of ``edge_index()``, then one self loop per vertex."""
    ei = edge_index()
    loops = np.arange(num_vertices, dtype=ei.dtype)
    return np.concatenate([ei[:, kept], np.stack([loops, loops])], axis=1)


def compact_ids(ids: np.ndarray, bound: int) -> np.ndarray:
    """``ids`` (all in ``[0, bound)``) as int32 when ``bound`` allows: half the memory of int64.

    The engine keeps its own copy of a graph's edge list (a GCN's self-loop
    graph keeps another); a caller may drop theirs once the graph is built.
    """
    if bound <= np.iinfo(np.int32).max and ids.dtype != np.int32:
        return ids.astype(np.int32)
    return ids


def _process_group(distributed, devices):
    """The process group of a distributed graph (None when not distributed), checked."""
    if distributed is False or distributed is None:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "distributed=... needs torch.distributed initialised in this process: launch with torchrun "
            "(python -m torch.distributed.run --nproc_per_node=2 script.py) and call "
            "torch.distributed.init_process_group('gloo') (or 'nccl') before building the graph"
        )
    if len(devices) != 1:
        raise ValueError("a distributed graph takes one device per rank; run one process per device")
    return dist.group.WORLD if distributed is True else distributed


def check_features(g: ChunkedGraph, x, what: str = "x") -> torch.Tensor:
    """Validate a host feature tensor for a layer call on ``g``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape [{g.num_vertices}, d], got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] != g.num_vertices:
        raise ValueError(f"{what} must have shape [num_vertices={g.num_vertices}, d], got {list(x.shape)}")
    if x.dtype != torch.float32:
        raise ValueError(f"{what} must be float32, got {x.dtype}; convert with {what}.float()")
    if x.device.type != "cpu":
        raise ValueError(f"{what} must be a host (CPU) tensor: sagann moves the chunks to the device itself")
    return x
