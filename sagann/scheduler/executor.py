"""The executor: runs a :class:`~sagann.scheduler.schedule.PassPlan` on one device.

A pass's plan says which sub-chunks run in which order and how each gets
its source rows (selective, a full block of V_i, or a resident copy held
through the pass). The executor carries that out: a loader thread
(:class:`~sagann.scheduler.pipeline.Prefetcher`) prepares each sub-chunk's
inputs ``plan.prefetch`` sub-chunks ahead of the compute thread (the
caller's), the caller's ``compute`` runs on them step by step, and the
measured load and compute times feed the cost table that orders the next
pass. What the computation is belongs to the engine; how the inputs reach
the device belongs here.

Several devices, chains and ranks are not subclasses: each device's pass
is this executor with a :class:`Strategy` that says where V_i's blocks come
from (the host, or a chain relay) and what to record beyond the pass log
(:mod:`sagann.scheduler.strategies`).
"""
from __future__ import annotations

import dataclasses
import threading
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator

import numpy as np
import torch

from sagann import profiler
from sagann.scheduler import progress
from sagann.chunks.partition import GraphPartition
from sagann.chunks.types import EdgeChunk
from sagann.kernels.graph import StreamedChunkTensors
from sagann.scheduler.cost_model import in_pass_step_seconds, learn_in_pass_step, measured_step_costs, predict_seconds
from sagann.scheduler.costs import CostTable
from sagann.scheduler.devices import Device, Scope, host_tensor
from sagann.scheduler.host import is_spilled, rounded, rounded_rows, trim_after_pass, trim_if_grown
from sagann.scheduler.memory_model import backward_chunk
from sagann.scheduler.meter import watched
from sagann.scheduler.pipeline import Prefetcher
from sagann.scheduler.policy import Transfer, two_stage_makespan
from sagann.scheduler.records import PassRecord
from sagann.scheduler.schedule import BACKWARD, FORWARD, ChunkStep, PassPlan
from sagann.units import tensor_bytes

# A pass of fewer sub-chunk steps frees a few large buffers, which malloc maps and unmaps itself: trimming
# after it only costs the walk over the heaps and the next pass's page faults (8 % of an in-memory GCN epoch)
TRIM_MIN_STEPS = 16
WIDEN_PIECES = 16  # rows sent in 16 bits cross in this many pieces, each widened into the float32 rows (load_in_pieces)

__all__ = ["TRIM_MIN_STEPS", "NARROW_FIELDS", "SRC_FIELDS", "Block", "ChunkInputs", "Executor", "PassLog", "Strategy", "src_row_gather", "load_narrowed", "narrow", "widen"]

# host fields indexed by source row: sent selectively or as V_i's block
SRC_FIELDS = ("src", "src_term")
# what crosses the link in ScheduleConfig.transfer_dtype in an edge stage: vertex inputs, edge data, and in backward
# the gradient rows of acc (vertex passes send theirs through load_narrowed)
NARROW_FIELDS = ("src", "src_term", "dst", "dst_term", "g_rows", "out_rows", "data")


def narrow(host: dict, dtype: torch.dtype | None) -> dict:
    """``host`` with its float32 input rows rounded to ``dtype`` once (a tensor under two names once); spilled ones stay.

    The rounded copies are host memory: made in :mod:`sagann.scheduler.host`,
    so a CPU device's meter does not count them as the device's.
    """
    return host if dtype is None else rounded_rows(host, NARROW_FIELDS, dtype)


def load_narrowed(scope: Scope, host: torch.Tensor | None, dtype: torch.dtype | None, what) -> torch.Tensor | None:
    """``scope.load(host)``, float32 rows crossing in ``dtype`` (16-bit transfers) and widened back on the device.

    Rows that split into :data:`WIDEN_PIECES` cross piece by piece into the
    float32 tensor, so the 16-bit copy alive beside it is one piece, not all
    of it (the model counts the float32 rows alone; whole, an interval's
    16-bit rows put the device 7 % over its budget, measured).
    """
    if dtype is None or host is None or host.dtype != torch.float32 or is_spilled(host):
        return scope.load(host, what)
    return widen(scope, load_in_pieces(scope, rounded(host, dtype), what), what)


def load_in_pieces(scope: Scope, host: torch.Tensor, what) -> torch.Tensor:
    """``scope.load(host)``; 16-bit rows enough for :data:`WIDEN_PIECES` pieces arrive widened, a piece at a time."""
    if not in_pieces(host, host.shape[0] if host.dim() else 0):
        return scope.load(host, what)
    return widened_in_pieces(scope, tuple(host.shape), what, lambda lo, hi: scope.device.copy_in(host[lo:hi]))


def in_pieces(host: torch.Tensor, rows: int) -> bool:
    """Do ``rows`` rows of ``host`` cross in 16 bits, enough of them to cross in :data:`WIDEN_PIECES` pieces?"""
    return host.dtype in (torch.bfloat16, torch.float16) and rows >= 2 * WIDEN_PIECES


def widened_in_pieces(scope: Scope, shape: tuple, what, piece: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """float32 rows of ``shape``, charged to ``scope``, filled from the 16-bit rows ``piece(lo, hi)`` sends (a transfer each)."""
    rows = shape[0]
    wide = scope.adopt(torch.empty(tuple(shape), dtype=torch.float32, device=scope.device.torch_device), what)
    step = -(-rows // WIDEN_PIECES)
    for lo in range(0, rows, step):
        wide[lo : lo + step].copy_(piece(lo, min(rows, lo + step)))
    return wide


def widen(scope: Scope, t: torch.Tensor | None, what) -> torch.Tensor | None:
    """16-bit rows that crossed the link, as float32 on the device; the ledger holds the float32 bytes (the 16-bit copy is transient)."""
    if t is None or t.dtype not in (torch.bfloat16, torch.float16):
        return t
    wide = t.float()
    scope.charge(tensor_bytes(wide) - tensor_bytes(t), what)
    return wide


def src_row_gather(host: torch.Tensor, c: EdgeChunk) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-chunk ``c``'s source rows as a gather: the host rows from V_i's start, and ``c``'s rows within V_i (int32).

    Gathering from that view by the chunk's own int32 rows reads the rows
    that global int64 ids would, with no id array made per step (8 bytes a
    row): 2,500 rows of 64 floats in 11.9 us against 14.2 us, 6,000 in 25
    against 33 us (medians, one core).
    """
    return host[c.src_start :], host_tensor(c.src_rows)


def _dst_rows(scope: Scope, host: torch.Tensor, c: EdgeChunk, what) -> torch.Tensor:
    """Sub-chunk ``c``'s destination rows of ``host`` on the device: a slice, or a compacted sub-chunk's rows (``c.dst_rows``) gathered."""
    lo = c.dst_start + c.dst_offset
    if c.dst_rows is None:
        return load_in_pieces(scope, host[lo : lo + c.num_dst], what)
    return _gathered(scope, host[lo:], host_tensor(c.dst_rows), what)


def _gathered(scope: Scope, rows: torch.Tensor, index: torch.Tensor, what) -> torch.Tensor:
    """Rows ``index`` of host ``rows`` gathered and sent (a selective transfer); 16-bit rows gathered and widened a piece at a time."""
    if in_pieces(rows, index.numel()):
        return widened_in_pieces(scope, (index.numel(), *rows.shape[1:]), what, lambda a, b: scope.device.gather_in(rows, index[a:b]))
    return scope.load_rows(rows, index, what)


def _kernel_threads(plan: PassPlan, host: dict):
    """A context for the pass's compute thread: numba held at one thread where every sub-chunk's kernels run on one
    (``kernels.cpu.serial_pass``), by the widest row the pass loads; nothing where numba's kernels are not built."""
    try:
        from sagann.kernels.cpu import serial_pass
    except ImportError:  # no numba: the kernels are torch's
        return nullcontext()
    width = max([t.shape[1] for t in host.values() if t is not None and t.dim() == 2] or [1])
    return serial_pass((c for step in plan.steps() for c in step.subs), width)


class Block:
    """V_i's source rows sent as one block, shared by the sub-chunks of one full-transfer chunk (or of a pass: resident).

    Reference counted: the loader holds one reference while it still loads
    the chunk's sub-chunks (a resident copy: while the pass runs), each
    loaded sub-chunk one; the last release frees the device memory.
    """

    def __init__(self, scope: Scope, tensors: dict[str, torch.Tensor]):
        self.scope, self.tensors = scope, tensors
        self._refs, self._lock = 1, threading.Lock()

    def acquire(self) -> "Block":
        with self._lock:
            self._refs += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            self.scope.close()


class ChunkInputs:
    """A sub-chunk's device-side inputs, each loaded once on first use; in backward they are autograd leaves."""

    def __init__(self, ex: "Executor", c: EdgeChunk, fields: "_Fields", block: Block | None, block_in_place: bool = False):
        self.device, self.c = ex.device, c
        # the fused forward reads source rows from V_i's block in place (kernels.gspmm(src_rows=...))
        self.block_in_place = block_in_place and block is not None
        self.scope = Scope(ex.device)
        self._edge_offset = ex.edge_offset(c)
        self._host, self._grad, self._block = fields.host, fields.grad, block
        self._resident: dict[str, torch.Tensor | None] = {}
        self._values: dict[str, torch.Tensor | None] = {}
        self.loaded_bytes = 0
        self.load_seconds = 0.0
        self.started = self.ready = None  # the device's events around this sub-chunk's loads (None where loads are synchronous)
        # index arrays and the source rows within V_i, sent together by the loader (one copy on a GPU)
        backward = fields.phase == BACKWARD
        narrow = ex.narrow_index  # 16-bit index arrays, where they fit
        source_major = ex.source_major and backward
        native = ex.native_index  # kernels that read a forward's source ids (a source-major backward's rows) in 16 bits
        self.ct, self._src_local, index_bytes = ex.device.chunk_index(c, source_major=source_major, backward=backward, narrow=narrow, native=native)
        self.scope.charge(index_bytes, lambda: f"index arrays of {c.id!r}")
        if isinstance(self.ct, StreamedChunkTensors):  # an array a kernel reads later is sent (or made) then, and charged then
            self.ct.charge_later(self.scope)
        self.loaded_bytes += c.sent_index_bytes(backward, narrow, source_major, native)
        self._sent_before = getattr(self.ct, "sent_bytes", 0)  # arrays first read in compute are sent then (counted at close)

    def src_local_rows(self) -> torch.Tensor:
        """The sub-chunk's source rows within V_i (an int tensor on the device, loaded with the index arrays)."""
        return self._src_local

    def device_tensors(self) -> list[torch.Tensor]:
        """The device tensors loaded so far (what the sub-chunk's kernels read)."""
        found = self.ct.present() + [self._src_local]
        found += list(self._values.values()) + ([] if self._block is None else list(self._block.tensors.values()))
        return [t for t in found if t is not None]

    def set_resident(self, resident: dict) -> None:
        """The destination rows of V_j already on the device (forward: the column; backward: held rows)."""
        self._resident = resident

    def get(self, name: str) -> torch.Tensor | None:
        if name not in self._values:
            self._values[name] = self._load(name)
        return self._values[name]

    def preload(self, names) -> None:
        for name in names:
            self.get(name)

    def _load(self, name: str) -> torch.Tensor | None:
        c, s = self.c, self.scope
        if name in self._resident:  # rows of V_j the pass holds
            t = self._resident[name]
            if t is None:
                return None
            t = t[c.dst_offset : c.dst_offset + c.num_dst]
            return t.detach().requires_grad_(True) if self._grad.get(name) else t  # a leaf of its own on the held rows
        host = self._host.get(name)
        if host is None:
            return None
        if name in SRC_FIELDS and self._block is not None:
            block = self._block.tensors[name]
            if self.block_in_place:
                return block
            t = s.adopt(block.index_select(0, self._src_local), lambda: f"{name} rows picked for {c.id!r}")
        else:
            what = lambda: f"{'edge' if name == 'data' else name} rows of {c.id!r}"  # noqa: E731
            if name in SRC_FIELDS:
                t = _gathered(s, *src_row_gather(host, c), what)
            elif name == "data":  # edge data arrive in sub-chunk order (one slice)
                t = load_in_pieces(s, host[self._edge_offset : self._edge_offset + c.nnz], what)
            else:  # destination-row fields, in backward: the sub-chunk's rows, or a compacted one's rows with edges
                t = _dst_rows(s, host, c, what)
            self.loaded_bytes += t.numel() * host.element_size()
        t = widen(s, t, lambda: f"{name} rows of {c.id!r} widened to float32")
        if self._grad.get(name):
            t.requires_grad_(True)
        return t

    def leaves(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self._values.items() if v is not None and v.requires_grad and v.is_leaf}

    def close(self) -> None:
        self.loaded_bytes += getattr(self.ct, "sent_bytes", 0) - self._sent_before
        self._sent_before = getattr(self.ct, "sent_bytes", 0)
        self.scope.close()
        if self._block is not None:
            self._block.release()
            self._block = None


@dataclass(frozen=True)
class PassLog:
    """Where a pass's measurements go: the cost table (keyed by ``key`` and phase) and the graph's pass log."""

    costs: CostTable
    records: list
    key: tuple


@dataclass(frozen=True)
class _Fields:
    """The host tensors a pass reads (``host``), which of them become autograd leaves (``grad``), and which to preload."""

    phase: str
    host: dict
    grad: dict
    names: tuple[str, ...]
    src_names: tuple[str, ...]  # the preloaded fields a block of V_i carries


class Strategy:
    """How one device's pass gets V_i's blocks and what it records; this default reads every block from the host.

    A strategy is handed to the :class:`Executor`; multi-device, chained and
    distributed runs use :class:`~sagann.scheduler.strategies.SharedPass`.
    """

    def begin(self, ex: "Executor", plan: PassPlan, host: dict, names: tuple[str, ...]) -> None:
        """Before the pass's first load (a chain registers the blocks it will ask its relay for)."""

    def block(self, ex: "Executor", step: ChunkStep, host: dict, names: tuple[str, ...]) -> tuple[Block, int]:
        """V_i's block for a non-selective step, and the bytes sent from the host."""
        return ex.host_block(step, host, names)

    def after_step(self, ex: "Executor", step: ChunkStep, times: tuple[float, float], moved: int) -> None:
        """After a step's sub-chunks ran: (load, compute) seconds and the bytes its loads moved."""

    def after_pass(self, ex: "Executor", plan: PassPlan, seconds: float) -> None:
        """After the pass's last step."""

    def stop(self) -> None:
        """The pass's stream is closing (also on failure): stop any wait of the loader, before it is joined."""

    def end(self) -> None:
        """The pass's stream has closed: release what the strategy holds."""


class _Stream:
    """A pass's prefetching stream of :class:`ChunkInputs`; closing it also ends the strategy's part."""

    def __init__(self, inner: Iterator[ChunkInputs], strategy: Strategy, on_close: Callable[[], None] = lambda: None):
        self._inner, self._strategy, self._on_close = inner, strategy, on_close

    def __iter__(self):
        return self

    def __next__(self) -> ChunkInputs:
        return next(self._inner)

    def close(self) -> None:
        self._strategy.stop()
        try:
            self._inner.close()
        finally:
            self._strategy.end()
            self._on_close()


class Executor:
    """Runs the pass plans of one layer call on one device.

    Args:
        device: where the sub-chunks compute.
        partition: the call's partition (its edge order places edge data).
        log: where measured times and pass records go.
        name: the layer's name, for spans and errors.
        fused: a fused forward reads V_i's block in place (no rows picked).
        strategy: where blocks come from and what else to record.
    """

    def __init__(self, device: Device, partition: GraphPartition, log: PassLog, name: str, *, fused: bool = False, strategy: Strategy | None = None,
                 transfer_dtype: torch.dtype | None = None, host_budget: bool = False, narrow_index: bool = False, native_index: bool = False):
        """``host_budget``: the graph's host memory has a budget, bound on RSS: every pass of many steps trims the heaps.
        ``narrow_index``: index arrays cross in 16 bits where they fit (``ScheduleConfig.narrows_index``);
        ``native_index``: a forward's source ids do, for kernels that read them so (``LayerShape.narrow_src_ids``)."""
        self.device, self.partition, self.log, self.name = device, partition, log, name
        self.host_budget = host_budget
        self.transfer_dtype = transfer_dtype  # ScheduleConfig.transfer_dtype: input rows cross the link in 16 bits
        self.narrow_index = narrow_index
        self.native_index = native_index
        self.fused = fused
        self.strategy = strategy or Strategy()
        self.source_major = False  # this backward pass reads edges source-major (set by the pass)
        self.compact_dst = False  # this backward pass runs sparse sub-chunks over their rows with edges (set by the pass)
        self.dst_rows: dict[int, dict[str, torch.Tensor]] = {}  # a backward pass's held destination rows, per V_j
        self._edge_offsets = partition.edge_order[1]
        self._resident_copies: dict[int, Block] = {}  # this pass's copies of its resident intervals' source rows

    def edge_offset(self, c: EdgeChunk) -> int | None:
        """Where sub-chunk ``c``'s rows start in the chunk-ordered edge data; None for a merged sub-chunk, whose edges
        are not one slice of it (only passes without edge data merge: ``scheduler.batching``)."""
        return self._edge_offsets.get(c.id)

    def measured(self, phase: str) -> Callable[[tuple[int, int]], tuple[float, float] | None]:
        """The smoothed (load, compute) seconds of each chunk in earlier passes: what the plan orders by."""
        return lambda key: self.log.costs.get((self.log.key, phase), key)

    # ---- loading ----------------------------------------------------------------------------
    def stream(self, plan: PassPlan, host: dict, grad: dict, names: tuple[str, ...]) -> _Stream:
        """The pass's sub-chunk inputs in plan order, loaded ``plan.prefetch`` ahead by a loader thread.

        ``host``: the host tensors by field; ``grad``: the fields that become
        autograd leaves; ``names``: the fields each sub-chunk preloads.
        """
        host = narrow(host, self.transfer_dtype)
        fields = _Fields(plan.phase, host, grad, names, tuple(f for f in names if f in SRC_FIELDS and host.get(f) is not None))
        threads = _kernel_threads(plan, host) if self.device.kernel_backend == "cpu" else nullcontext()
        held = ExitStack()  # the threads setting, held on the computing thread (which closes the stream) to the pass's end
        self.strategy.begin(self, plan, host, fields.src_names)
        try:
            held.enter_context(threads)
            inner = iter(Prefetcher(self._jobs(plan, fields), plan.prefetch, release=ChunkInputs.close))
        except BaseException:
            held.close()
            self.strategy.end()
            raise
        progress.pass_began(self, plan)

        def ended() -> None:
            held.close()
            progress.pass_ended(self)

        return _Stream(inner, self.strategy, ended)

    def _jobs(self, plan: PassPlan, fields: _Fields):
        """(label, job) per sub-chunk in plan order; a job loads that sub-chunk's inputs."""
        self._resident_copies = {}  # the pass's resident intervals (plan.resident), each sent by its first job
        holder: dict[str, Block] = {}  # the run's full block of V_i, while its steps share it
        try:
            steps = list(plan.steps())
            for n, step in enumerate(steps):
                if "block" in holder and not step.shares_block:
                    holder.pop("block").release()  # the loader's own reference; the chunks using it hold theirs
                # the block's last reader: the loader lets go with its load, so the block goes with that sub-chunk
                # (not when the next step loads, after a column's ApplyVertex)
                last = n + 1 == len(steps) or not steps[n + 1].shares_block
                for k, c in enumerate(step.subs):
                    load = watched(self.device.meter, partial(self._load, step, k, fields, holder, last and k + 1 == len(step.subs)))
                    yield repr(c.id), partial(profiler.nvtx_call, "h2d", c.id, load)  # Nsight names it like its span
        finally:
            if "block" in holder:
                holder.pop("block").release()
            for copy_i in self._resident_copies.values():
                copy_i.release()  # the loader's reference; the last chunk using it frees it
            self._resident_copies = {}

    def _load(self, step: ChunkStep, k: int, fields: _Fields, holder: dict, last_reader: bool = False) -> ChunkInputs:
        with self.device.loading():  # a GPU queues these copies on its copy stream; compute waits for inputs.ready
            inputs = self._load_inputs(step, k, fields, holder)
        if last_reader and "block" in holder:
            holder.pop("block").release()
        return inputs

    def _load_inputs(self, step: ChunkStep, k: int, fields: _Fields, holder: dict) -> ChunkInputs:
        t0 = time.perf_counter()
        started = self.device.loads_ready()  # on a GPU: the copies of this job run between this event and inputs.ready
        c = step.subs[k]
        if fields.phase == BACKWARD and self.compact_dst and not self.dst_rows:  # its rows with edges where few have one (held rows: slices)
            c = backward_chunk(c)
        block_bytes = 0
        if step.transfer is not Transfer.SELECTIVE and k == 0 and not step.shares_block:
            holder["block"], block_bytes = self.strategy.block(self, step, fields.host, fields.src_names)
        block = holder["block"].acquire() if "block" in holder else None
        try:
            inputs = ChunkInputs(self, c, fields, block, block_in_place=fields.phase == FORWARD and self.fused)
        except BaseException:  # e.g. out of memory on its index arrays: the block reference is ours to drop
            if block is not None:
                block.release()
            raise
        if self.dst_rows:
            inputs.set_resident(self.dst_rows[step.key[1]])
        try:
            inputs.preload(fields.names)
        except BaseException:
            inputs.close()
            raise
        inputs.loaded_bytes += block_bytes
        inputs.started, inputs.ready = started, self.device.loads_ready()
        t1 = time.perf_counter()
        inputs.load_seconds = t1 - t0
        if profiler.enabled():
            profiler.record_interval("h2d", self.device.name, "loader", t0, t1, chunk=c.id, nbytes=inputs.loaded_bytes, layer=self.name, phase=fields.phase)
        return inputs

    def host_block(self, step: ChunkStep, host: dict, names: tuple[str, ...]) -> tuple[Block, int]:
        """V_i's source rows for a non-selective step, sent from the host as one block, and the bytes sent.

        A resident step's block is the pass's copy of V_i, sent by the first
        step that reads it (its bytes are counted there) and held to the
        pass's end.
        """
        i = step.key[0]
        rows = self.partition.interval(i)
        if step.transfer is Transfer.RESIDENT:
            sent = 0
            if i not in self._resident_copies:
                self._resident_copies[i], sent = self.send_rows(host, names, rows, f"resident copy of V_{i}")
            return self._resident_copies[i].acquire(), sent
        return self.send_rows(host, names, rows, f"block V_{i}")

    def send_rows(self, host: dict, names: tuple[str, ...], rows: tuple[int, int], what: str) -> tuple[Block, int]:
        """Rows ``lo:hi`` of each named host field, sent as one block; and the bytes sent."""
        lo, hi = rows
        scope = Scope(self.device)
        try:
            sent = {name: scope.load(host[name][lo:hi], f"{name} {what}") for name in names}
            tensors = {name: widen(scope, t, f"{name} {what} widened to float32") for name, t in sent.items()}
        except BaseException:  # out of memory on the block's second field: give back the first
            scope.close()
            raise
        return Block(scope, tensors), sum(tensor_bytes(t) for t in sent.values())

    # ---- running ----------------------------------------------------------------------------
    def run_step(self, stream: _Stream, step: ChunkStep, compute: Callable[[ChunkInputs], None]) -> tuple[float, float, int]:
        """Compute the sub-chunks of one chunk as they arrive; returns (load s, compute s, bytes)."""
        load = busy = 0.0
        moved = 0
        for c in step.subs:
            inputs = next(stream)
            assert inputs.c.id == c.id, f"pipeline out of order: expected {c.id!r}, got {inputs.c.id!r}"
            try:
                t0 = time.perf_counter()
                with self.device.computing(inputs.ready, inputs.device_tensors() if self.device.computing_reads else ()):
                    compute(inputs)
                # on a GPU: wait for the launched kernels, so the measured compute is real (it feeds the
                # ordering) and the ledger frees this sub-chunk's bytes only when the device has
                self.device.synchronize()
                busy += time.perf_counter() - t0
                copying = self.device.seconds_between(inputs.started, inputs.ready)  # the copies' own time, now complete
                inputs.load_seconds = max(inputs.load_seconds, copying or 0.0)
            except Exception as exc:
                exc.add_note(f"while computing sub-chunk {c.id!r} of {self.name} on {self.device.name}")
                raise
            finally:
                inputs.close()
            load += inputs.load_seconds
            moved += inputs.loaded_bytes
            inputs = None  # its tensors go now, not when the next sub-chunk's loads are made
        self.strategy.after_step(self, step, (load, busy), moved)
        if self.host_budget:  # its bound is on RSS: the heap's freed buffers go back within the pass
            trim_if_grown()
        progress.step_done(self, moved)
        return load, busy, moved

    def record_pass(self, plan: PassPlan, times: dict, seconds: float, moved: int) -> None:
        """Feed the measured chunk times to the cost table and log the pass next to its prediction."""
        phase = plan.phase
        full = moved - plan.bytes_moved + plan.bytes_full
        steps = sum(len(s.subs) for s in plan.steps())
        base = self._model_seconds(plan, steps, moved)
        # what a step cost beyond the model in this pass's earlier runs; before its first, in the device's other passes
        # (a mix over layers, phases and graphs: the forward of a narrow layer must not be predicted from a GAT's backward)
        pass_key = (self.log.key, phase)
        per_step = self.log.costs.step_residual(pass_key)
        model = max(0.0, base + steps * (in_pass_step_seconds(self.device) if per_step is None else per_step)) if base == base else base
        for key, (load, busy) in times.items():
            self.log.costs.update((self.log.key, phase), key, load, busy)
        if base != base:  # nothing predicted (the chunks' times were the warm-up's): fitted to this run's own times, once settled
            base = self._model_seconds(plan, steps, moved)
        learn_in_pass_step(self.device, base, seconds, steps)
        if base == base and steps > 0:
            self.log.costs.learn_step_residual(pass_key, (seconds - base) / steps)
        predicted = two_stage_makespan([times[s.key] for s in plan.steps()]) if times else 0.0
        record = PassRecord(self.name, phase, plan.num_steps, plan.prefetch, seconds, predicted, moved, full, plan.resident_bytes, plan.tile, plan.dst_rows_bytes)
        least = moved - plan.bytes_moved + plan.bytes_lower_bound
        loads, busy = sum(t[0] for t in times.values()), sum(t[1] for t in times.values())
        self.log.records.append(dataclasses.replace(record, bytes_lower_bound=least, steps=steps, model_seconds=model, load_seconds=loads, compute_seconds=busy))
        profiler.count("bytes_moved_full", full)
        self.device.flush_spans()
        self.strategy.after_pass(self, plan, seconds)
        if steps >= TRIM_MIN_STEPS:  # the pass's small buffers are freed: their pages go back to the OS, not to the next pass's peak
            trim_after_pass(always=self.host_budget)

    def _model_seconds(self, plan: PassPlan, steps: int, moved: int) -> float:
        """The calibrated time model's prediction of this pass (``sagann.scheduler.cost_model``), from what was known before it ran.

        ``record_pass`` adds what steps cost beyond it in this pass's earlier
        runs (``CostTable.step_residual``, fitted from its second run on), or
        where it has none the device's other passes' (:func:`~sagann.scheduler.cost_model.in_pass_step_seconds`).

        Edge work: the compute the cost table holds for the plan's chunks from
        earlier runs, less their fixed cost per step; NaN before every chunk
        was measured after its warm-up run (``CostTable.settled``: a pass's first
        run pays for compiling), or where the device's rates were never measured
        (the planner measures them for a device with a budget).
        """
        costs = measured_step_costs(self.device)
        key, table = (self.log.key, plan.phase), self.log.costs
        if costs is None or not plan.num_steps or not all(table.settled(key, s.key) for s in plan.steps()):
            return float("nan")
        earlier = [table.get(key, s.key) for s in plan.steps()]
        work = max(0.0, sum(e[1] for e in earlier) - steps * costs.seconds_per_step)
        return predict_seconds(costs, moved, steps) + work
