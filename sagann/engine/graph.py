"""ChunkedGraph: a graph, the device it is trained on, and the partition that fits it."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch

from sagann.chunks.partition import GraphPartition, as_edge_index, file_backed, pack_chunks
from sagann.chunks.recut import remaining_self_loops
from sagann.kernels import backend_names
from sagann.scheduler.chains import LinkCounter, resolve_chains, resolve_devices
from sagann.scheduler.config import ScheduleConfig
from sagann.scheduler.costs import CostTable
from sagann.scheduler.devices import Device
from sagann.scheduler.host import HostMemory
from sagann.scheduler.planner import LayerShape, Planner, WorkingSet
from sagann.scheduler.schedule import PassPlan
from sagann.scheduler.records import PassHistory, VertexSteps

BACKENDS = backend_names("auto")  # "auto" and every registered kernel backend, read at each check


@dataclass(frozen=True)
class Replan:
    """One re-plan after the device ran out of memory: the partition before and after."""

    layer: str
    phase: str
    chunks: tuple[int, int]  # P before, after
    sub_chunk_nnz: tuple[int, int]  # sub-chunk edge bound before, after
    reason: str  # the out-of-memory error, first line


class ChunkedGraph:
    """A graph split 2D into vertex intervals and edge chunks for out-of-core layers.

    Args:
        edge_index: ``[2, E]`` int ids, row 0 = source, row 1 = destination
            (PyG's convention); numpy or torch, or a PyG ``Data`` (its
            ``edge_index``; ``sagann.from_pyg`` brings its features, labels
            and masks too). The graph keeps its own (int32 where N allows)
            copy: drop yours to save memory.
        num_vertices: N.
        num_chunks: P, or None to pick, of the P whose working set fits the
            device's memory budget, the one the time model predicts fastest
            (decided at the first layer call, when the feature widths are
            known, and grown if a later layer needs more). A P sagann chose,
            passed back here, is accepted: where intervals balanced by edges
            do not fit, they are balanced by resident bytes as its own are.
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
        _source: GraphPartition | None = None,
        _placement=None,
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
        self.pass_log: PassHistory = PassHistory()  # list[PassRecord]; print(g.pass_log) shows the latest as a table
        self.replans: list[Replan] = []  # re-plans after running out of device memory, oldest first
        self._source = _source  # a partition holding the edges, to cut from (an engine-derived graph before its first call)
        if _partition is not None or _source is not None:
            given = _partition if _partition is not None else _source
            self._edge_index = None
            self.num_vertices, self.num_edges = given.num_vertices, given.num_edges
            self.in_degree = given.in_degree
        else:
            self._edge_index = compact_ids(as_edge_index(_edge_list_of(edge_index), num_vertices), num_vertices)
            self.num_vertices, self.num_edges = int(num_vertices), int(self._edge_index.shape[1])
            self.in_degree = np.bincount(self._edge_index[1], minlength=self.num_vertices).astype(np.int64)
        self._derived_edges = None  # a graph the engine derived (e.g. with self loops): how to rebuild its edge list
        self.device = self.devices[0]  # the only device; with several, the first (see ``devices``)
        self._layouts: dict = {}  # sagann.engine.multi: per-partition device layouts
        self.link = LinkCounter()  # V_i blocks of multi-device passes: host-link and device-to-device bytes
        self.step_log: list = []  # multi-device passes: one scheduler.records.StepRecord per chunk (the simulator's calibration)
        self.call_log: list = []  # multi-device passes: one scheduler.records.CallRecord per phase and device
        self.vertex_steps = VertexSteps()  # ApplyVertex and hooks run, per interval or block
        self.calls_made = 0
        self.backend = backend
        self._derived: dict[str, object] = {}
        # a derived graph's chunks go where its parent's do (a dataset's self-loop graph is cut from arrays the host placed)
        self._placement = _placement or self._chunk_placement(_partition if _partition is not None else _source)
        self.planner = Planner(
            self._edges_to_cut, self.num_vertices, self.in_degree, self.devices, self.schedule,
            host_spills=self.host.enabled, partition=_partition, num_chunks=num_chunks, sub_chunk_nnz=sub_chunk_nnz,
            place=self._placement,
        )

    def _chunk_placement(self, part: GraphPartition | None):
        """Where the arrays of the partitions cut from ``part`` (this graph's edges; None: a list in RAM) go: the host
        budget's spill files under one; memory-mapped files for a dataset's chunks (file-backed, and so stay the partitions
        cut from them); else RAM (None)."""
        if self.host.enabled:
            return self.host.place_chunks
        first = None if part is None else next(iter(part.sub_chunks()), None)
        return self.host.map_chunks if first is not None and file_backed(first.src_perm) else None

    @property
    def partition(self) -> GraphPartition | None:
        """The partition layer calls use now (the planner's; None before the first call chose it)."""
        return self.planner.partition

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
    def sub_chunk_nnz(self) -> int | None:
        """Edges per sub-chunk of the partition with the largest P so far (a derived graph's too, e.g. GCN's self loops)."""
        parts = [g.partition for g in self._graphs() if g.partition is not None]
        return max(parts, key=lambda p: p.num_chunks).sub_chunk_nnz if parts else None

    @property
    def planned_peak_bytes(self) -> int:
        """The plans' own prediction of the device peak: working set or dry-run, whichever is larger."""
        return max(g.planner.planned_peak_bytes for g in self._graphs())

    @property
    def working_set(self) -> WorkingSet | None:
        """The largest planned device working set of the layer calls so far."""
        sets = [g.planner.working_set for g in self._graphs() if g.planner.working_set is not None]
        return max(sets, key=lambda w: w.peak_bytes) if sets else None

    def edge_index(self) -> np.ndarray:
        """The ``[2, E]`` edge list in the caller's edge order (rebuilt from the partition if not kept)."""
        if self._edge_index is not None:
            return self._edge_index
        if self._derived_edges is not None:  # an engine-made graph's list is rebuilt when asked, not kept
            return self._derived_edges()
        part = self.partition if self.partition is not None else self._source
        self._edge_index = compact_ids(part.edge_index(), self.num_vertices)
        return self._edge_index

    def edges_in_chunks(self) -> GraphPartition | None:
        """The partition holding this graph's edges when its ``[2, E]`` list is not kept in RAM, else None.

        A dataset's graph (and the graphs the engine derives from it, such as
        GCN's self loops) reads its edges chunk by chunk from here: under a
        host budget the list (16 bytes an edge) would be the largest array
        of the run.
        """
        if self._edge_index is not None or self._derived_edges is not None:
            return None
        return self.partition if self.partition is not None else self._source

    def _edges_to_cut(self):
        """What the planner cuts a new partition from: the chunks where the list is not in RAM, else the list."""
        part = self.edges_in_chunks()
        return part if part is not None else self.edge_index()

    def plan(self, shape: LayerShape, fused: bool, param_bytes: int, owner: object = None) -> GraphPartition:
        """The partition for a layer call (``Planner.partition_for``): the current one if it fits, else a finer one.

        ``owner``: the call's layer and inputs (``sagann.engine.run.call_owner``).
        """
        part = self.planner.partition_for(shape, fused, param_bytes, owner)
        if self.host.enabled and part.alloc is None:  # the partition's E-long edge order goes under the host budget too
            host = self.host
            part.alloc = lambda n, dtype: host.array(n, dtype, "edge order")
        if self._derived_edges is not None:  # nobody else holds this list, and it can be rebuilt
            self._edge_index = None
        return part

    def pass_plan(
        self,
        partition: GraphPartition,
        shape: LayerShape,
        fused: bool,
        param_bytes: int,
        phase: str,
        measured: Callable[[tuple[int, int]], tuple[float, float] | None] = lambda key: None,
    ) -> PassPlan:
        """The schedule of one edge stage, checked against the budget before it runs (``Planner.plan_pass``)."""
        return self.planner.plan_pass(partition, shape, fused, param_bytes, phase, measured)

    def allow_coarser_partition(self, owner: object = None) -> None:
        """A layer whose calls set P stops streaming on this graph (its Gather is now cached): let the next call re-choose P.

        P otherwise only grows, and the first epoch's propagation of the
        input features (602 columns on Reddit) would keep every later
        layer on the partition it needed. Once per cached Gather: the next
        layer call picks the smallest P that fits it, and the graph moves to
        it where that is coarser (one partitioning), if every other call
        planned so far (not ``owner``'s) fits it too.

        Not under a host budget, nor for a dataset's graph (its edges read
        from the files): the coarser candidates are cut in anonymous RAM
        beside the current partition, outside a host budget (a whole-graph
        chunk at P = 1 put a GCN run 3-13 MiB over its anonymous-RSS bound)
        and, for a dataset, beside a run in memory that reads the files'
        partition (out of core peaked 126 MiB over it, 18 MiB when the
        partition in hand was kept; both measured from outside). Where host
        memory is what binds, the partition in hand is the one to keep.
        """
        if self.host.budget is not None or self.edges_in_chunks() is not None:
            return
        for g in self._graphs():
            g.planner.allow_coarser(owner)

    def with_remaining_self_loops(self) -> tuple["ChunkedGraph", np.ndarray]:
        """This graph with every self loop replaced by exactly one per vertex (PyG's GCN convention).

        Returns the derived graph (cached) and ``kept``: a boolean mask over
        this graph's edges, True for the ones that are its first ``E' - N``
        edges (in order); the last N edges are the loops.
        """
        part = self.edges_in_chunks()
        if "self_loops" not in self._derived and part is not None:  # derived chunk by chunk: no edge list in RAM
            loops, loop_ids, _ = remaining_self_loops(part, place=self._placement or pack_chunks)
            if self.host.enabled:  # its own in-degrees (N int64) go under the budget too
                loops.in_degree = self.host.copy(torch.from_numpy(loops.in_degree), "in-degrees").numpy()
            kept = self.host.array(self.num_edges, np.bool_, "kept-edge mask") if self.host.enabled else np.empty(self.num_edges, dtype=bool)
            kept[:] = True
            kept[loop_ids] = False
            self._derived["self_loops"] = (self._derive(None, self.planner.fixed_chunks, self.planner.fixed_sub_chunk_nnz, source=loops), kept)
        if "self_loops" not in self._derived:
            kept = self.edge_index()[0] != self.edge_index()[1]
            derived = self._derive(_with_self_loops(self.edge_index, kept, self.num_vertices), self.planner.fixed_chunks, self.planner.fixed_sub_chunk_nnz)
            derived._derived_edges = partial(_with_self_loops, self.edge_index, kept, self.num_vertices)
            self._derived["self_loops"] = (derived, kept)
        return self._derived["self_loops"]

    def one_off_partition(self):
        """Layer calls inside plan as usual, but the partition they refine to is not kept (a context manager).

        For a pass that runs once at a width the model's layers never use
        (the propagation of a cached Gather): P only grows, and a partition
        fine enough for 602 columns would slow every later pass.
        """
        return self.planner.one_off_partition()

    def without_edges(self) -> "ChunkedGraph":
        """This graph's vertices and devices with no edges (cached): where a layer runs ApplyVertex alone."""
        if "no_edges" not in self._derived:
            self._derived["no_edges"] = self._derive(np.zeros((2, 0), dtype=np.int64), None, None)
        return self._derived["no_edges"]

    def _derive(self, edge_index, num_chunks: int | None, sub_chunk_nnz: int | None, source: GraphPartition | None = None) -> "ChunkedGraph":
        """A graph over these vertices with other edges: same devices, chains, ranks, host memory and schedule, and this graph's logs."""
        devices = self.devices if self._device_list else self.device
        derived = ChunkedGraph(
            edge_index, self.num_vertices, num_chunks, devices, sub_chunk_nnz, self.backend, self.schedule,
            topology=self._chain_spec(), distributed=False if self.process_group is None else self.process_group, host_memory=self.host, _source=source, _placement=self._placement,
        )
        derived.costs, derived.pass_log, derived.link = self.costs, self.pass_log, self.link  # one log for the user's graph
        derived.step_log, derived.call_log, derived.replans = self.step_log, self.call_log, self.replans
        derived.vertex_steps = self.vertex_steps
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


def _edge_list_of(obj):
    """A PyG ``Data``'s edge_index; a DGL graph or a scipy matrix is refused naming its bridge."""
    if obj is None or isinstance(obj, (np.ndarray, torch.Tensor, list, tuple)):
        return obj
    if hasattr(obj, "edge_index") and hasattr(obj, "num_nodes"):  # torch_geometric.data.Data
        if obj.edge_index is None:
            raise ValueError("this PyG Data has no edge_index; set data.edge_index ([2, E], row 0 = source)")
        return obj.edge_index
    if callable(getattr(obj, "edges", None)) and callable(getattr(obj, "num_nodes", None)):
        raise TypeError(f"ChunkedGraph takes a [2, E] edge_index, not a {type(obj).__name__}; for a DGL graph use sagann.from_dgl(graph, device=...)")
    if callable(getattr(obj, "tocoo", None)):
        raise TypeError(f"ChunkedGraph takes a [2, E] edge_index, not a {type(obj).__name__}; for a scipy.sparse matrix use sagann.from_scipy(matrix, device=...)")
    return obj


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
