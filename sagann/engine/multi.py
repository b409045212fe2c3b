"""Layer calls on several devices: each device runs the chunked pass over the destination intervals it owns.

A graph built with ``device=[dev0, dev1, ...]`` keeps one partition; each
device owns a contiguous run of destination intervals balanced by edges
(:func:`sagann.scheduler.chains.assign_intervals`) and runs the ordinary
single-device passes (a :class:`~sagann.engine.call.LayerCall` whose executor
has a :class:`~sagann.scheduler.strategies.SharedPass` strategy) restricted
to them, in its own thread. Per layer call:

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
from sagann.engine.backward import Grads, backward_edges, backward_hooks
from sagann.engine.call import CallFlags, CallSpec, LayerCall, Saved
from sagann.engine.forward import HostOutputs, forward_pass, hook_pass
from sagann.engine.graph import ChunkedGraph
from sagann.scheduler.chains import ChainRelay, RelayAborted, assign_intervals
from sagann.scheduler.devices import Device
from sagann.scheduler.planner import LayerShape
from sagann.scheduler.records import CallRecord, StepRecord
from sagann.scheduler.schedule import BACKWARD, FORWARD
from sagann.scheduler.strategies import SharedPass

_RNG_LOCK = threading.RLock()


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
        self.step_log, self.call_log, self.vertex_steps = parent.step_log, parent.call_log, parent.vertex_steps
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


def _release_outputs() -> None:
    """Why a call's shared output buffers are dropped once its forward pass has filled them.

    The buffers hold the layer's output tensor, whose autograd node holds
    this call (``ctx.run``): a cycle through a C++ node, which Python's
    garbage collector cannot see. It kept the output, the graph and, on a
    distributed graph, the process group alive until the interpreter shut
    down; gloo's worker threads then met a finalizing interpreter
    ("terminate called without an active exception").
    """


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
        exc.sagann_device = devices[k]  # a re-plan's message names it (sagann.engine.replan)
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
    """One layer call on several devices: one :class:`LayerCall` per device, each over its own columns."""

    def __init__(self, spec: CallSpec, g: ChunkedGraph, partition: GraphPartition, *, flags: CallFlags | None = None, given=None):
        """``flags`` and ``given``: a re-plan's call keeps the first call's autograd flags and edge data order (``LayerCall``)."""
        _numba_safe_for_threads(spec.backend, len(g.devices))
        self.spec, self.g, self.shape, self.name, self.partition = spec, g, spec.shape, spec.name, partition
        self.fused = spec.fused
        self.layout = layout_for(g, partition)
        self.devices = list(g.devices)
        g.calls_made += 1
        self.call_no = g.calls_made
        self.shares = [SharedPass(g.link, g.step_log, self.call_no) for _ in self.devices]
        self.flags = flags or CallFlags()  # one set for every device's call
        self.calls = [
            LayerCall(spec, view, part, strategy=share, flags=self.flags, rng_lock=_RNG_LOCK, given=given)
            for view, part, share in zip(self.layout.views, self.layout.partitions, self.shares)
        ]
        self.params = self.calls[0].params

    @property
    def p(self) -> GraphPartition:
        return self.partition

    @property
    def device(self) -> Device:
        """The device with the least memory: the one a re-plan's message names where the failing one is unknown."""
        budgets = [d.memory_budget if d.memory_budget is not None else float("inf") for d in self.devices]
        return self.devices[budgets.index(min(budgets))]

    def on_partition(self, partition: GraphPartition) -> "MultiDeviceCall":
        """This call on a finer partition (a re-plan after a device ran out of memory): every device's columns re-laid out on it."""
        return MultiDeviceCall(self.spec, self.g, partition, flags=self.flags, given=self.calls[0].given_order_on(partition))

    def _relays(self, phase: str) -> list[ChainRelay]:
        relays = []
        for share in self.shares:
            share.relays.pop(phase, None)
        for chain in self.layout.chains:
            if len(chain) < 2:
                continue
            relay = ChainRelay([self.devices[k] for k in chain], self.partition.interval, label=self.name, phase=phase)
            for position, k in enumerate(chain):
                self.shares[k].relays[phase] = (relay, position)
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
                c, share = self.calls[k], self.shares[k]
                owned = sum(hi - lo for _, lo, hi in c.p.intervals())
                edge = share.edge_seconds.get(phase, 0.0) if edges else 0.0
                self.g.call_log.append(CallRecord(self.call_no, self.name, phase, self.devices[k].name, owned, edge, time.perf_counter() - t0, share.prefetch.get(phase, 0), tuple(int(b) for b in c.p.bounds), edges, self.devices[k].bytes_in - b0))
                return result

            return run

        return [wrap(k, job) for k, job in enumerate(jobs)]

    def forward(self, x: torch.Tensor, edata: torch.Tensor | None):
        shape, n = self.shape, self.g.num_vertices
        for c in self.calls:
            c.terms = {}
        hooks = [(h, w) for h, w in (("apply_src", shape.d_src_term), ("apply_dst", shape.d_dst_term)) if w]
        terms: dict[str, torch.Tensor] = {}
        if hooks:
            parts = self._run(self._timed(FORWARD, [partial(lambda c: [hook_pass(c, h, x, w) for h, w in hooks], c) for c in self.calls], edges=False))
            for k, (h, w) in enumerate(hooks):
                merged = torch.empty(n, w)
                for c, rows in zip(self.calls, parts):
                    for _, lo, hi in c.p.intervals():
                        merged[lo:hi] = rows[k][lo:hi]
                terms[h] = merged
        bufs = _shared_outputs(shape, n)
        for c in self.calls:
            c.terms, c.buffers = terms, bufs
        relays = self._relays(FORWARD)
        results = self._run(self._timed(FORWARD, [partial(forward_pass, c, x, edata) for c in self.calls]), relays)
        for c, (out_k, _) in zip(self.calls, results):
            if out_k is not bufs.out:  # one interval taken whole (no copy) on its device
                for _, lo, hi in c.p.intervals():
                    bufs.out[lo:hi] = out_k[lo:hi]
            c.buffers = None  # see _release_outputs
        return bufs.out, Saved(terms.get("apply_src"), terms.get("apply_dst"), bufs.acc, bufs.win, bufs.sm_max, bufs.sm_sum)

    def backward(self, x, edata, saved: Saved, grad_out, need: tuple[bool, bool]):
        need_x, need_e = need
        relays = self._relays(BACKWARD)
        edata = self.calls[0].edges_in_partition_order(edata)  # after a re-plan: this partition's order (one copy for every device)
        parts: list[Grads] = self._run(self._timed(BACKWARD, [partial(backward_edges, c, x, edata, saved, grad_out, need_x, need_e) for c in self.calls]), relays)
        g_src_term, g_dst_term = _sum([p.src_term for p in parts]), _sum([p.dst_term for p in parts])
        if g_src_term is not None or g_dst_term is not None:
            for p in parts:
                p.src_term, p.dst_term = g_src_term, g_dst_term
            self._run(self._timed(BACKWARD, [partial(backward_hooks, c, x, parts[k], need_x) for k, c in enumerate(self.calls)], edges=False))
        gparams = [_sum([p.params[q] for p in parts]) for q in range(len(self.params))]
        return _sum([None if p.x is None else p.x.tensor() for p in parts]), self.calls[0].edges_in_given_order(_sum([p.edge for p in parts])), gparams


def _shared_outputs(shape: LayerShape, n: int) -> HostOutputs:
    """The host tensors every device of a shared call writes its own rows of."""
    return HostOutputs(
        torch.empty(n, shape.d_out),
        torch.empty(n, shape.d_msg),
        torch.empty(n, shape.d_msg, dtype=torch.long) if shape.winners else None,
        torch.zeros(n, shape.d_score) if shape.softmax else None,
        torch.zeros(n, shape.d_score) if shape.softmax else None,
    )


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
    """One layer call on this rank of a torch.distributed group.

    Each rank owns a contiguous run of destination intervals (the same
    split as for local devices) and runs the single-device pass over them
    on its own device. Forward all-gathers the hook rows and the layer's
    output rows, so every rank holds the whole output; backward
    all-reduces (sums) the gradients of x, of the edge data, of the
    source hook terms and of the parameters. Every rank must run the same
    model on the same inputs with the same seed (the loss, and so the
    output gradient, is then identical on every rank).
    """

    def __init__(self, spec: CallSpec, g: ChunkedGraph, partition: GraphPartition):
        import torch.distributed as dist

        self.dist, self.group = dist, g.process_group
        self.rank, self.world = dist.get_rank(self.group), dist.get_world_size(self.group)
        self.g, self.shape, self.name = g, spec.shape, spec.name
        mine = torch.tensor([partition.num_chunks, partition.sub_chunk_nnz, spec.seed & ((1 << 62) - 1)], dtype=torch.int64)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine, group=self.group)
        if any(not torch.equal(e[:2], mine[:2]) for e in every):
            raise RuntimeError(
                f"{spec.name}: the ranks partitioned the graph differently (P, sub-chunk nnz per rank: "
                f"{[tuple(e[:2].tolist()) for e in every]}); give every rank the same device budget, or fix num_chunks and sub_chunk_nnz"
            )
        if any(e[2] != mine[2] for e in every):
            raise RuntimeError(f"{spec.name}: the ranks drew different seeds for this layer call; seed every rank the same (torch.manual_seed) and run the same model")
        owned = owned_intervals(partition, self.world)
        self.rows = [(int(partition.bounds[o[0]]), int(partition.bounds[o[-1] + 1])) if o else (0, 0) for o in owned]
        view = DeviceGraph(g, g.device, owned[self.rank], chained=False)
        g.calls_made += 1
        share = SharedPass(g.link, g.step_log, g.calls_made)
        self.call = LayerCall(spec, view, _owned_partition(partition, owned[self.rank]), strategy=share, rng_lock=_RNG_LOCK)
        self.params, self.flags = self.call.params, self.call.flags

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
        c.terms = {}
        terms = {}
        for hook, width in (("apply_src", shape.d_src_term), ("apply_dst", shape.d_dst_term)):
            if width:
                rows = hook_pass(c, hook, x, width)
                self._all_gather_rows(rows)
                terms[hook] = rows
        bufs = _shared_outputs(shape, n)  # backward reads this rank's rows of acc only: not gathered
        c.terms, c.buffers = terms, bufs
        try:
            out_k, _ = forward_pass(c, x, edata)
        finally:
            c.buffers = None  # see _release_outputs
        if out_k is not bufs.out:
            lo, hi = self.rows[self.rank]
            bufs.out[lo:hi] = out_k[lo:hi]
        self._all_gather_rows(bufs.out)
        return bufs.out, Saved(terms.get("apply_src"), terms.get("apply_dst"), bufs.acc, bufs.win, bufs.sm_max, bufs.sm_sum)

    def backward(self, x, edata, saved: Saved, grad_out, need: tuple[bool, bool]):
        c = self.call
        grads = backward_edges(c, x, edata, saved, grad_out, *need)
        self._all_reduce(grads.src_term)  # sources are everyone's; destination terms are this rank's rows only
        if grads.src_term is not None or grads.dst_term is not None:
            backward_hooks(c, x, grads, need[0])
        gx = None if grads.x is None else grads.x.tensor()
        for t in [gx, grads.edge, *grads.params]:
            self._all_reduce(t)
        return gx, grads.edge, grads.params


def make_multi_call(spec: CallSpec, g: ChunkedGraph, partition: GraphPartition):
    """The call object the autograd function runs for a multi-device graph (local devices, or this rank)."""
    if g.process_group is not None:
        return DistributedCall(spec, g, partition)
    return MultiDeviceCall(spec, g, partition)
