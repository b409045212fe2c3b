"""Layer calls on several devices: each device runs the chunked pass over the destination intervals it owns.

A graph built with ``device=[dev0, dev1, ...]`` keeps one partition; each
device owns a contiguous run of destination intervals balanced by edges
(:func:`sagann.scheduler.chains.assign_intervals`) and runs the ordinary
single-device pass (``dataflow._LayerCall``) restricted to them, in its own
thread. Per layer call:

forward
    1. hook pre-pass (``apply_src``/``apply_dst``): each device computes
       its own intervals; the rows are merged into one host tensor (every
       device's edge stage reads all sources);
    2. edge stage + ApplyVertex: each device walks the columns it owns;
       outputs, accumulators and winners go straight into shared host
       tensors (each device writes only its rows). Devices of a chain take
       V_i's block from a :class:`~sagann.scheduler.chains.ChainRelay`
       instead of the host.
backward
    1. ApplyVertex backward for the owned intervals, then the edge stage
       over the owned chunks (row order), each device into its own host
       gradient buffers;
    2. the hook gradients are summed over the devices, then each device
       back-propagates the hooks of its own intervals;
    3. the gradients of x, the edge data and the parameters are summed
       over the devices: this is the cross-device gradient reduction.

Each device's user functions run under the same per-call seed and
positional keys as on one device, so dropout inside them is identical;
the seeded sections hold one process-wide lock (``fork_rng`` acts on the
global generator). A failure on any device aborts the chain relays, so no
device waits forever; the first real error is raised in the caller.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch

from sagann.chunks.partition import GraphPartition
from sagann.engine.dataflow import _SRC_FIELDS, _Block, _LayerCall, _Saved
from sagann.engine.graph import ChunkedGraph
from sagann.scheduler.chains import ChainRelay, RelayAborted, assign_intervals
from sagann.scheduler.devices import Device
from sagann.scheduler.planner import LayerShape
from sagann.scheduler.policy import Transfer
from sagann.scheduler.schedule import BACKWARD, FORWARD, ChunkStep, PassPlan

_RNG_LOCK = threading.RLock()


# ---- what ran: the simulator's calibration ----------------------------------------------------
@dataclass(frozen=True)
class StepRecord:
    """One chunk E_ij as a multi-device pass ran it (``ChunkedGraph.step_log``)."""

    call: int  # layer call number on the graph
    phase: str
    device: str
    key: tuple[int, int]
    nnz: int
    block_bytes: int  # V_i's rows sent whole for this chunk (0: selective, or a block the device already held)
    other_bytes: int  # host bytes besides the block and the index arrays (selective rows, edge and destination rows)
    index_bytes: int  # the sub-chunks' index arrays
    load_seconds: float
    compute_seconds: float


@dataclass(frozen=True)
class CallRecord:
    """One phase of a layer call on one device (``ChunkedGraph.call_log``): edge stage and total seconds."""

    call: int
    name: str
    phase: str
    device: str
    owned_vertices: int
    edge_seconds: float
    total_seconds: float
    prefetch: int
    bounds: tuple[int, ...]  # interval bounds of the call's partition
    edge_stage: bool = True  # False: the hook pre-pass or the hooks' backward only
    host_bytes: int = 0  # bytes the device received over its host link during the phase (Device.bytes_in)


# ---- layout: who owns what ----------------------------------------------------------------------
@dataclass(eq=False)
class OwnedPartition(GraphPartition):
    """The shared partition seen by one device: its own destination columns' chunks and intervals."""

    owned: tuple[int, ...] = ()
    whole: GraphPartition | None = None  # the shared partition this is a view of

    @property
    def edge_order(self):
        """The shared partition's edge order: edge data are permuted once, by it, for every device."""
        return self.whole.edge_order

    def intervals(self):
        for p in self.owned:
            lo, hi = self.interval(p)
            if hi > lo:
                yield p, lo, hi


class DeviceGraph(ChunkedGraph):
    """One device's view of a multi-device graph: same partition, its own budget, plans over its columns (``Planner.for_device``)."""

    def __init__(self, parent: ChunkedGraph, device: Device, owned: Sequence[int], chained: bool):
        planner = parent.planner.for_device(device, owned, chained)
        super().__init__(None, parent.num_vertices, None, device, None, parent.backend, planner.schedule, _partition=parent.partition)
        self.planner = planner
        self.costs, self.pass_log, self.link = parent.costs, parent.pass_log, parent.link
        self.step_log, self.call_log = parent.step_log, parent.call_log
        self.owned = frozenset(owned)
        self.chained = chained


@dataclass
class DeviceLayout:
    """How a multi-device graph's partition is spread: owned intervals per device, views, chains."""

    owned: list[list[int]]
    partitions: list[OwnedPartition]
    views: list[DeviceGraph]
    chains: list[list[int]]

    def owner(self, j: int) -> int:
        for k, cols in enumerate(self.owned):
            if j in cols:
                return k
        raise KeyError(j)


def owned_intervals(partition: GraphPartition, owners: int) -> list[list[int]]:
    """Destination intervals per owner (device or rank): contiguous, balanced by in-edges plus vertices."""
    weights = [0.0] * partition.num_chunks
    for (_, j), subs in partition.chunks.items():
        weights[j] += sum(c.nnz for c in subs)
    for j in range(partition.num_chunks):
        weights[j] += partition.interval_size(j)
    return assign_intervals(weights, owners)


def _owned_partition(partition: GraphPartition, owned: Sequence[int]) -> OwnedPartition:
    cols = set(owned)
    chunks = {key: subs for key, subs in partition.chunks.items() if key[1] in cols}
    return OwnedPartition(partition.num_vertices, partition.num_edges, partition.bounds, chunks, partition.in_degree, partition.sub_chunk_nnz, owned=tuple(owned), whole=partition)


def layout_for(g: ChunkedGraph, partition: GraphPartition) -> DeviceLayout:
    """The (cached) layout of ``g``'s devices over ``partition``."""
    hit = g._layouts.get(id(partition))
    if hit is not None and hit[0] is partition:
        return hit[1]
    owned = owned_intervals(partition, len(g.devices))
    chained = {k for chain in g.chains if len(chain) > 1 for k in chain}
    parts, views = [], []
    for k, dev in enumerate(g.devices):
        parts.append(_owned_partition(partition, owned[k]))
        views.append(DeviceGraph(g, dev, owned[k], k in chained))
    layout = DeviceLayout(owned, parts, views, [list(c) for c in g.chains])
    g._layouts = {id(partition): (partition, layout)}  # only the current partition's
    return layout


# ---- one device's share of a layer call ----------------------------------------------------------
class _DeviceCall(_LayerCall):
    """The single-device pass over one device's columns, fed by a chain relay where the device is in a chain."""

    rng_lock = _RNG_LOCK

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.relays: dict[str, tuple[ChainRelay, int]] = {}  # phase -> (relay, position in chain)
        self.terms: dict[str, torch.Tensor] = {}  # hook -> merged host rows of every device (forward)
        self.buffers = None  # shared host outputs of the forward
        self._relay: tuple[ChainRelay, int] | None = None
        self._sync: dict[tuple[int, int], tuple] = {}
        self._held: tuple[tuple, _Block] | None = None
        self._cancel = threading.Event()
        self._block_bytes: dict[tuple[int, int], tuple[int, int]] = {}  # step -> (host bytes, block bytes) of its V_i block
        self._phase = FORWARD
        self.call_no = 0
        self.edge_seconds: dict[str, float] = {}
        self.prefetch: dict[str, int] = {}

    # hooks into the single-device pass
    def _hook_pass(self, hook: str, x: torch.Tensor, width: int) -> torch.Tensor:
        if hook in self.terms:
            return self.terms[hook]
        return super()._hook_pass(hook, x, width)

    def _host_buffers(self, n: int):
        return self.buffers if self.buffers is not None else super()._host_buffers(n)

    def _stream(self, plan: PassPlan, host: dict, grad: dict, fields: tuple[str, ...]):
        self._relay, self._sync, self._cancel = self.relays.get(plan.phase), {}, threading.Event()
        self._phase = plan.phase
        if self._relay is not None:
            relay, position = self._relay
            names = tuple(f for f in fields if f in _SRC_FIELDS and host.get(f) is not None)
            requests: list[tuple[tuple, int]] = []
            if names:
                for r, (_, steps) in enumerate(plan.groups):
                    for step in steps:
                        if step.transfer is not Transfer.FULL:
                            continue
                        i = step.key[0]
                        key = (r, i) if plan.phase == FORWARD else (i,)
                        self._sync[step.key] = key
                        if not requests or requests[-1][0] != key:
                            requests.append((key, i))
            relay.register(position, requests, host, names)
        return _Stream(super()._stream(plan, host, grad, fields), self)

    def _load_block(self, step: ChunkStep, host: dict, fields) -> tuple[_Block, int]:
        key = self._sync.get(step.key)
        if key is None:
            block, nbytes = super()._load_block(step, host, fields)
            self.g.link.add(nbytes, 0)
            self._block_bytes[step.key] = (nbytes, nbytes)
            return block, nbytes
        if self._held is not None:
            if self._held[0] == key:  # another chunk of the same row: the block this device already has
                self._block_bytes[step.key] = (0, 0)
                return self._held[1].acquire(), 0
            self._release_held()
        relay, position = self._relay
        d = relay.take(position, key, self._cancel)
        block = _Block(d.scope, d.tensors)  # this step's reference
        self._held = (key, block.acquire())  # kept while the next steps may share it
        self.g.link.add(d.host_bytes, d.peer_bytes)
        self._block_bytes[step.key] = (d.host_bytes, d.host_bytes + d.peer_bytes)
        return block, d.host_bytes

    def _run_step(self, stream, step: ChunkStep, compute) -> tuple[float, float, int]:
        load, busy, moved = super()._run_step(stream, step, compute)
        host_block, block = self._block_bytes.pop(step.key, (0, 0))
        index = sum(sum(a.nbytes for a in (c.dst_ptr, c.dst_idx, c.src_idx, c.src_ptr, c.src_perm)) for c in step.subs)
        self.g.step_log.append(StepRecord(self.call_no, self._phase, self.device.name, step.key, sum(c.nnz for c in step.subs), block, moved - host_block - index, index, load, busy))
        return load, busy, moved

    def _record_pass(self, plan: PassPlan, phase: str, times: dict, seconds: float, moved: int) -> None:
        super()._record_pass(plan, phase, times, seconds, moved)
        self.edge_seconds[phase] = seconds
        self.prefetch[phase] = plan.prefetch

    def _release_held(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            held[1].release()


class _Stream:
    """The device's prefetching stream; closing it also stops the device's relay waits and frees its held block."""

    def __init__(self, inner, call: _DeviceCall):
        self.inner, self.call = inner, call

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.inner)

    def close(self) -> None:
        self.call._cancel.set()
        try:
            self.inner.close()
        finally:
            self.call._release_held()


# ---- the driver -----------------------------------------------------------------------------------
def _is_abort(exc: BaseException) -> bool:
    """Did this error only follow another device's failure (a stopped relay)?"""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RelayAborted):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def run_on_devices(devices: Sequence[Device], jobs: Sequence[Callable[[], object]], relays: Sequence[ChainRelay] = ()) -> list:
    """Run ``jobs[k]`` for device k, each in its own thread (the first in the caller's), with the caller's grad mode.

    The first failure aborts the relays (so no device waits forever on a
    chain); all threads are joined; the first error that is not a
    consequence of another raises, with a note naming its device.
    """
    mode = torch.is_grad_enabled()
    results: list = [None] * len(jobs)
    errors: list[BaseException | None] = [None] * len(jobs)

    def run(k: int) -> None:
        try:
            with torch.set_grad_enabled(mode):
                results[k] = jobs[k]()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors[k] = exc
            for r in relays:
                r.abort()

    threads = [threading.Thread(target=run, args=(k,), name=f"sagann-{devices[k].name}", daemon=True) for k in range(1, len(jobs))]
    try:
        for t in threads:
            t.start()
        if jobs:
            run(0)
        for t in threads:
            t.join()
    finally:
        for r in relays:
            r.close()
    failed = [(k, e) for k, e in enumerate(errors) if e is not None]
    if failed:
        k, exc = next(((k, e) for k, e in failed if not _is_abort(e)), failed[0])
        exc.add_note(f"on device {devices[k].name} (device {k} of {len(devices)})")
        raise exc
    return results


def _numba_safe_for_threads(backend: str, num_devices: int) -> None:
    """Several device threads call numba's parallel kernels at once: only the OpenMP and TBB layers allow that.

    numba's fallback ``workqueue`` layer aborts the process on concurrent
    launches, so before the first launch ask for a thread-safe layer, and
    refuse clearly if ``workqueue`` is already running.
    """
    if backend != "cpu" or num_devices < 2:
        return
    try:
        import numba
        from numba.core import config
    except ImportError:
        return
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel launched yet
        if config.THREADING_LAYER == "default":
            config.THREADING_LAYER = "threadsafe"
        return
    if layer == "workqueue":
        raise RuntimeError(
            "several devices run numba kernels in parallel threads, but numba uses its 'workqueue' threading layer, "
            "which aborts on concurrent launches; install OpenMP (libgomp) or TBB (pip install tbb), or set "
            "NUMBA_THREADING_LAYER=threadsafe, or build the graph with backend='reference'"
        )


class MultiDeviceCall:
    """One layer call on several devices; the ``_SagaFunction`` interface of ``_LayerCall``."""

    def __init__(self, layer, g: ChunkedGraph, partition: GraphPartition, shape: LayerShape, backend: str, fused: bool, param_bytes: int, seed: int, name: str):
        _numba_safe_for_threads(backend, len(g.devices))
        self.g, self.shape, self.name, self.partition = g, shape, name, partition
        self.layout = layout_for(g, partition)
        self.devices = list(g.devices)
        self.calls = [
            _DeviceCall(layer, view, part, shape, backend, fused, param_bytes, seed, name=name)
            for view, part in zip(self.layout.views, self.layout.partitions)
        ]
        self.params = self.calls[0].params
        self.need_x = self.need_e = True
        self.keep_graphs = True
        g.calls_made += 1
        self.call_no = g.calls_made
        for c in self.calls:
            c.call_no = self.call_no

    def _relays(self, phase: str) -> list[ChainRelay]:
        relays = []
        for c in self.calls:
            c.relays.pop(phase, None)
        for chain in self.layout.chains:
            if len(chain) < 2:
                continue
            relay = ChainRelay([self.devices[k] for k in chain], self.partition.interval, label=self.name, phase=phase)
            for position, k in enumerate(chain):
                self.calls[k].relays[phase] = (relay, position)
            relays.append(relay)
        return relays

    def _run(self, jobs, relays=()) -> list:
        return run_on_devices(self.devices, jobs, relays)

    def _timed(self, phase: str, jobs, edges: bool = True):
        """Wrap each device's job to log its seconds (``ChunkedGraph.call_log``); ``edges``: the job runs the edge stage."""

        def wrap(k, job):
            def run():
                t0, b0 = time.perf_counter(), self.devices[k].bytes_in
                result = job()
                c = self.calls[k]
                owned = sum(hi - lo for _, lo, hi in c.p.intervals())
                edge = c.edge_seconds.get(phase, 0.0) if edges else 0.0
                self.g.call_log.append(CallRecord(self.call_no, self.name, phase, self.devices[k].name, owned, edge, time.perf_counter() - t0, c.prefetch.get(phase, 0), tuple(int(b) for b in c.p.bounds), edges, self.devices[k].bytes_in - b0))
                return result

            return run

        return [wrap(k, job) for k, job in enumerate(jobs)]

    def forward(self, x: torch.Tensor, edata: torch.Tensor | None):
        shape, n = self.shape, self.g.num_vertices
        for c in self.calls:
            c.need_x, c.need_e, c.keep_graphs = self.need_x, self.need_e, self.keep_graphs
            c.terms = {}
        hooks = [(h, w) for h, w in (("apply_src", shape.d_src_term), ("apply_dst", shape.d_dst_term)) if w]
        terms: dict[str, torch.Tensor] = {}
        if hooks:
            parts = self._run(self._timed(FORWARD, [partial(lambda c: [c._hook_pass(h, x, w) for h, w in hooks], c) for c in self.calls], edges=False))
            for k, (h, w) in enumerate(hooks):
                merged = torch.empty(n, w)
                for c, rows in zip(self.calls, parts):
                    for _, lo, hi in c.p.intervals():
                        merged[lo:hi] = rows[k][lo:hi]
                terms[h] = merged
        out = torch.empty(n, shape.d_out)
        acc = torch.empty(n, shape.d_msg)
        win = torch.empty(n, shape.d_msg, dtype=torch.long) if shape.winners else None
        sm_max = torch.zeros(n, shape.d_score) if shape.softmax else None
        sm_sum = torch.zeros(n, shape.d_score) if shape.softmax else None
        for c in self.calls:
            c.terms, c.buffers = terms, (out, acc, win, sm_max, sm_sum)
        relays = self._relays(FORWARD)
        results = self._run(self._timed(FORWARD, [partial(c.forward, x, edata) for c in self.calls]), relays)
        for c, (out_k, _) in zip(self.calls, results):
            if out_k is not out:  # one interval taken whole (no copy) on its device
                for _, lo, hi in c.p.intervals():
                    out[lo:hi] = out_k[lo:hi]
        return out, _Saved(terms.get("apply_src"), terms.get("apply_dst"), acc, win, sm_max, sm_sum)

    def backward(self, x, edata, saved: _Saved, grad_out, need_x: bool, need_e: bool):
        relays = self._relays(BACKWARD)
        parts = self._run(self._timed(BACKWARD, [partial(c.backward_edges, x, edata, saved, grad_out, need_x, need_e) for c in self.calls]), relays)
        gxs, ges, gparams_k, g_src, g_dst = (list(t) for t in zip(*parts))
        g_src_term, g_dst_term = _sum(g_src), _sum(g_dst)
        if g_src_term is not None or g_dst_term is not None:
            self._run(self._timed(BACKWARD, [partial(c.backward_hooks, x, g_src_term, g_dst_term, need_x, gxs[k], gparams_k[k]) for k, c in enumerate(self.calls)], edges=False))
        gparams = [_sum([gp[q] for gp in gparams_k]) for q in range(len(self.params))]
        return _sum([None if g is None else g.tensor() for g in gxs]), _sum(ges), gparams


def _sum(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The sum over devices (in device order), into the first device's buffer."""
    present = [t for t in tensors if t is not None]
    if not present:
        return None
    total = present[0]
    for t in present[1:]:
        total.add_(t)
    return total


class DistributedCall:
    """One layer call on this rank of a torch.distributed group; the ``_SagaFunction`` interface.

    Each rank owns a contiguous run of destination intervals (the same
    split as for local devices) and runs the single-device pass over them
    on its own device. Forward all-gathers the hook rows and the layer's
    output rows, so every rank holds the whole output; backward
    all-reduces (sums) the gradients of x, of the edge data, of the
    source hook terms and of the parameters. Every rank must run the same
    model on the same inputs with the same seed (the loss, and so the
    output gradient, is then identical on every rank).
    """

    def __init__(self, layer, g: ChunkedGraph, partition: GraphPartition, shape: LayerShape, backend: str, fused: bool, param_bytes: int, seed: int, name: str):
        import torch.distributed as dist

        self.dist, self.group = dist, g.process_group
        self.rank, self.world = dist.get_rank(self.group), dist.get_world_size(self.group)
        self.g, self.shape, self.name = g, shape, name
        mine = torch.tensor([partition.num_chunks, partition.sub_chunk_nnz, seed & ((1 << 62) - 1)], dtype=torch.int64)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine, group=self.group)
        if any(not torch.equal(e[:2], mine[:2]) for e in every):
            raise RuntimeError(
                f"{name}: the ranks partitioned the graph differently (P, sub-chunk nnz per rank: "
                f"{[tuple(e[:2].tolist()) for e in every]}); give every rank the same device budget, or fix num_chunks and sub_chunk_nnz"
            )
        if any(e[2] != mine[2] for e in every):
            raise RuntimeError(f"{name}: the ranks drew different seeds for this layer call; seed every rank the same (torch.manual_seed) and run the same model")
        owned = owned_intervals(partition, self.world)
        self.rows = [(int(partition.bounds[o[0]]), int(partition.bounds[o[-1] + 1])) if o else (0, 0) for o in owned]
        view = DeviceGraph(g, g.device, owned[self.rank], chained=False)
        self.call = _DeviceCall(layer, view, _owned_partition(partition, owned[self.rank]), shape, backend, fused, param_bytes, seed, name=name)
        self.params = self.call.params
        self.need_x = self.need_e = True
        self.keep_graphs = True

    def _all_gather_rows(self, t: torch.Tensor) -> None:
        """Fill every rank's rows of ``t`` [N, d] from that rank (in place)."""
        width = t.shape[1]
        most = max(hi - lo for lo, hi in self.rows)
        if width == 0 or most == 0:
            return
        lo, hi = self.rows[self.rank]
        mine = torch.zeros(most, width, dtype=t.dtype)
        mine[: hi - lo] = t[lo:hi]
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        self.dist.all_gather(parts, mine, group=self.group)
        for (lo, hi), part in zip(self.rows, parts):
            t[lo:hi] = part[: hi - lo]

    def _all_reduce(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is not None:
            self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM, group=self.group)
        return t

    def forward(self, x: torch.Tensor, edata: torch.Tensor | None):
        shape, n, c = self.shape, self.g.num_vertices, self.call
        c.need_x, c.need_e, c.keep_graphs, c.terms = self.need_x, self.need_e, self.keep_graphs, {}
        terms = {}
        for hook, width in (("apply_src", shape.d_src_term), ("apply_dst", shape.d_dst_term)):
            if width:
                rows = c._hook_pass(hook, x, width)
                self._all_gather_rows(rows)
                terms[hook] = rows
        out = torch.empty(n, shape.d_out)
        acc = torch.empty(n, shape.d_msg)  # backward reads this rank's rows only: not gathered
        win = torch.empty(n, shape.d_msg, dtype=torch.long) if shape.winners else None
        sm_max = torch.zeros(n, shape.d_score) if shape.softmax else None
        sm_sum = torch.zeros(n, shape.d_score) if shape.softmax else None
        c.terms, c.buffers = terms, (out, acc, win, sm_max, sm_sum)
        out_k, _ = c.forward(x, edata)
        if out_k is not out:
            lo, hi = self.rows[self.rank]
            out[lo:hi] = out_k[lo:hi]
        self._all_gather_rows(out)
        return out, _Saved(terms.get("apply_src"), terms.get("apply_dst"), acc, win, sm_max, sm_sum)

    def backward(self, x, edata, saved: _Saved, grad_out, need_x: bool, need_e: bool):
        c = self.call
        g_x, ge, gparams, g_src_term, g_dst_term = c.backward_edges(x, edata, saved, grad_out, need_x, need_e)
        self._all_reduce(g_src_term)  # sources are everyone's; destination terms are this rank's rows only
        if g_src_term is not None or g_dst_term is not None:
            c.backward_hooks(x, g_src_term, g_dst_term, need_x, g_x, gparams)
        gx = None if g_x is None else g_x.tensor()
        for t in [gx, ge, *gparams]:
            self._all_reduce(t)
        return gx, ge, gparams


def make_multi_call(layer, g: ChunkedGraph, partition: GraphPartition, shape: LayerShape, backend: str, fused: bool, param_bytes: int, seed: int, name: str):
    """The call object ``dataflow.run_layer`` hands to its autograd function for a multi-device graph."""
    if g.process_group is not None:
        return DistributedCall(layer, g, partition, shape, backend, fused, param_bytes, seed, name)
    return MultiDeviceCall(layer, g, partition, shape, backend, fused, param_bytes, seed, name)
