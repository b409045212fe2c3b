"""Devices: places that compute, each with a memory budget that every allocation is charged to."""
from __future__ import annotations

import abc
import contextlib
import os
import threading
import time
import weakref
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import numpy as np
import torch

from sagann import profiler
from sagann.kernels.graph import ChunkTensors, StreamedChunkTensors, declare_rows_bound, narrowed
from sagann.scheduler.host import mapped, stage, stage_rows
from sagann.scheduler.link import EmulatedLink
from sagann.scheduler.meter import CpuMeter, Meter
from sagann.scheduler.policy import TransferCosts
from sagann.scheduler.pool import BufferPool
from sagann.units import format_bytes, parse_bytes, tensor_bytes

CALIBRATION_TWIN_BUDGET = 1 << 34  # far above the few MiB the step calibration holds
METER_ENV = "SAGANN_METER"  # "1": CpuDevices made without meter=... are metered

__all__ = ["CACHE_BLOCK_BYTES", "METER_ENV", "BudgetExceeded", "CpuDevice", "Device", "MemoryLedger", "Scope", "format_bytes", "parse_bytes", "tensor_bytes"]

class BudgetExceeded(MemoryError):
    """An allocation would exceed a device's memory budget: a planning bug or a too-small budget."""


class MemoryLedger:
    """Thread-safe byte accounting against a budget; remembers the peak.

    ``settle`` (set by a device whose frees complete later than the host
    makes them, see :meth:`Device.release`): ``settle(block)`` refunds the
    releases that have completed, or with ``block`` waits for the oldest
    one; it returns whether anything was refunded. A charge over the budget
    first waits for pending releases, and fails only when none is left.
    """

    def __init__(self, budget: int | None, owner: str):
        self.budget = budget
        self.owner = owner
        self.current = 0
        self.peak = 0
        self._lock = threading.Lock()
        self.settle: Callable[[bool], bool] | None = None

    def charge(self, nbytes: int, what: str | Callable[[], str]) -> None:
        """Account ``nbytes``; ``what`` (text, or a function making it) names them in the error."""
        settle = self.settle
        if settle is not None:
            settle(False)
        while True:
            with self._lock:
                new = self.current + nbytes
                if self.budget is None or new <= self.budget:
                    self.current = new
                    self.peak = max(self.peak, new)
                    return
            if settle is None or not settle(True):
                break
        what = what() if callable(what) else what
        raise BudgetExceeded(
            f"{self.owner}: allocating {format_bytes(nbytes)} for {what} would use {format_bytes(new)} "
            f"of its {format_bytes(self.budget)} budget; raise the budget or use more chunks"
        )

    def refund(self, nbytes: int) -> None:
        with self._lock:
            self.current -= nbytes

    def reset_peak(self) -> None:
        with self._lock:
            self.peak = self.current


class Scope:
    """Allocations that live together and are released together when the scope closes."""

    def __init__(self, device: "Device"):
        self.device = device
        self._held = 0

    def charge(self, nbytes: int, what: str) -> None:
        self.device.ledger.charge(nbytes, what)
        self._held += nbytes

    def adopt(self, t: torch.Tensor | None, what: str) -> torch.Tensor | None:
        """Account a tensor created on the device (a kernel output, an accumulator)."""
        if t is not None:
            self.charge(tensor_bytes(t), what)
        return t

    def load(self, host: torch.Tensor | None, what: str) -> torch.Tensor | None:
        """Copy a host tensor to the device (a transfer) and account it."""
        if host is None:
            return None
        self.charge(tensor_bytes(host), what)
        return self.device.copy_in(stage(host))

    def load_peer(self, t: torch.Tensor, source: "Device", what: str) -> torch.Tensor:
        """Copy a tensor held by another device to this one (a chain hop) and account it here."""
        self.charge(tensor_bytes(t), what)
        return self.device.copy_from_peer(t, source)

    def load_rows(self, host: torch.Tensor, index: torch.Tensor, what: str) -> torch.Tensor:
        """Gather rows of a host tensor on the host, then send them (a selective transfer)."""
        self.charge(index.numel() * tensor_bytes(host[:1]), what)
        staged = stage_rows(host, index)  # a spilled source is read from disk first
        return self.device.gather_in(host, index) if staged is None else self.device.copy_in(staged)

    def zeros(self, shape, dtype: torch.dtype, what: str) -> torch.Tensor:
        return self.full(shape, 0, dtype, what)

    def full(self, shape, value, dtype: torch.dtype, what: str) -> torch.Tensor:
        """A filled device tensor, on a reused buffer where the device keeps some (its accumulators: no fresh pages per pass)."""
        t = self.device.reused_buffer(tuple(shape), dtype)
        t = torch.full(shape, value, dtype=dtype, device=self.device.torch_device) if t is None else t.fill_(value)
        return self.adopt(t, what)

    def result_buffer(self, host: torch.Tensor, fill, what: str) -> tuple[torch.Tensor, bool]:
        """A device buffer whose contents end up in ``host``; True if it *is* ``host``. Charged either way (a GPU would hold it).

        Where the device shares host memory, ``host`` itself (filled with ``fill``, or kept as it is when ``fill``
        is None, to accumulate onto): no copy back. Elsewhere a device tensor (``fill``, or zeros) the caller copies or adds back.
        """
        if self.device.shares_host_memory and host.device == self.device.torch_device:
            self.charge(tensor_bytes(host), what)
            if fill is not None:
                host.fill_(fill)
            return host, True
        return self.full(tuple(host.shape), 0 if fill is None else fill, host.dtype, what), False

    def close(self) -> None:
        self.device.release(self._held)
        self._held = 0


def host_tensor(a: np.ndarray) -> torch.Tensor:
    """A contiguous host array as a torch tensor (a view); a read-only one (a file's pages) is read into RAM first, as torch takes none."""
    return torch.from_numpy(np.ascontiguousarray(a if a.flags.writeable else np.array(a)))


class Device(abc.ABC):
    """One place that computes, with a memory budget every allocation is charged against.

    A device must say how host rows get there (:meth:`copy_in`) and which
    ``torch_device`` its tensors live on; everything else has a default that
    a device overrides where it can do better (``gather_in`` for selective
    transfers, ``copy_out``/``add_out`` for write-back, ``copy_from_peer``
    for chain hops, ``synchronize``/``span`` for asynchronous work,
    ``loading``/``loads_ready``/``computing`` for the streams a GPU orders
    loads and compute with, ``chunk_index`` for a sub-chunk's index arrays,
    and ``kernel_backend`` for fused kernels).
    """

    torch_device: torch.device

    def __init__(self, name: str, memory_budget: int | str | None, *, auto_named: bool = False):
        self.name = name
        self.auto_named = auto_named  # the name is a default: a device list may renumber it
        self.memory_budget = parse_bytes(memory_budget)
        self.ledger = MemoryLedger(self.memory_budget, name)
        self.bytes_in = 0  # bytes sent host -> device since creation
        self.bytes_peer_in = 0  # bytes received from other devices (chain hops) since creation
        self._counter_lock = threading.Lock()
        self._costs = None  # costs set by hand; measured ones are kept per payload size
        self._measured: dict[int, TransferCosts] = {}
        # transfer costs are measured on payloads in [min, max], the plan's transfer size where it names one
        # (a GPU: a few MiB at least, since below that a copy measures launch latency, not bandwidth)
        self.min_measure_bytes = self.default_measure_bytes = 512 << 10
        self.max_measure_bytes = 4 << 20
        self.meter: Meter | None = None  # measures what the allocator hands out (measured_peak_bytes); None: off

    def rename(self, name: str) -> None:
        """Give the device another name (errors, traces, chains); it is then no longer a default."""
        self.name = self.ledger.owner = name
        self.auto_named = False

    def _count_in(self, nbytes: int) -> None:
        with self._counter_lock:
            self.bytes_in += nbytes

    def _count_peer_in(self, nbytes: int) -> None:
        with self._counter_lock:
            self.bytes_peer_in += nbytes

    def transfer_costs(self, nbytes: int | None = None) -> TransferCosts:
        """Seconds per byte of gather-and-send, block send and on-device row picking; measured once per payload size.

        ``nbytes``: the size of the plan's transfers (a block of V_i), rounded up to a power of two within
        [:attr:`min_measure_bytes`, :attr:`max_measure_bytes`]: small copies measure latency, not bandwidth.
        """
        payload = max(self.min_measure_bytes, self.default_measure_bytes if nbytes is None else int(nbytes), 1)
        payload = min(1 << (payload - 1).bit_length(), self.max_measure_bytes)
        if self._costs is not None:
            return self._costs  # set by hand
        with self._counter_lock:
            known = self._measured.get(payload)
        if known is None:
            with self.unmetered():  # a measurement's buffers are not the pass's
                known = self._measure_costs(payload)
            with self._counter_lock:
                self._measured[payload] = known
        return known

    def _measure_costs(self, payload: int = 512 << 10, width: int = 64, repeats: int = 3) -> TransferCosts:
        """Best of ``repeats`` on a ``payload``-byte block of ``width``-float rows (half of them gathered)."""
        gen = torch.Generator().manual_seed(0)  # never the caller's RNG: measuring must not move dropout draws
        rows = max(2, payload // (width * 4))
        host = torch.randn(rows, width, generator=gen)
        index = torch.randperm(rows, generator=gen)[: rows // 2].sort().values
        nbytes_block, nbytes_rows = tensor_bytes(host), index.numel() * width * host.element_size()

        def best(fn) -> float:
            times = []
            for _ in range(repeats):
                self.drain()
                t0 = time.perf_counter()
                fn()
                self.drain()  # device work is asynchronous on a GPU: time it to completion
                times.append(time.perf_counter() - t0)
            return min(times)

        count = self.bytes_in
        block = best(lambda: self.copy_in(host)) / nbytes_block
        gather = best(lambda: self.gather_in(host, index)) / nbytes_rows
        on_device = self.copy_in(host)
        dev_index = self.copy_in(index)
        compact = best(lambda: on_device.index_select(0, dev_index)) / nbytes_rows
        one_row = index[:1]
        latency = max(0.0, best(lambda: self.gather_in(host, one_row)) - host[:1].nbytes * gather)
        with self._counter_lock:
            self.bytes_in = count  # measurements are not traffic
        return TransferCosts(gather=gather, block=block, compact=compact, latency=latency)

    @property
    def peak_bytes(self) -> int:
        """Most bytes held at once since creation or the last ``reset_peak``."""
        return self.ledger.peak

    @property
    def current_bytes(self) -> int:
        return self.ledger.current

    @property
    def measured_peak_bytes(self) -> int | None:
        """Most device bytes the allocator held at once during a pass, measured (not charged); None when not metered.

        Beside :attr:`peak_bytes`, the ledger's own count, it checks the memory
        model: see :mod:`sagann.scheduler.meter`.
        """
        return None if self.meter is None else self.meter.peak

    def unmetered(self):
        """A context in which this thread's allocations are not the device's (see :mod:`sagann.scheduler.meter`)."""
        return nullcontext() if self.meter is None else self.meter.paused()

    def reset_peak(self) -> None:
        self.ledger.reset_peak()
        if self.meter is not None:
            self.meter.reset_peak()

    def release(self, nbytes: int) -> None:
        """A closed scope's bytes are free: at once here; a GPU refunds them when the kernels queued so far have run."""
        self.ledger.refund(nbytes)

    @contextmanager
    def scope(self) -> Iterator[Scope]:
        s = Scope(self)
        try:
            yield s
        finally:
            s.close()

    @abc.abstractmethod
    def copy_in(self, host: torch.Tensor) -> torch.Tensor:
        """A copy (or, where the device shares host memory, a view) of a host tensor on this device."""

    def chunk_tensors(self, chunk, source_major: bool = False):
        """A sub-chunk's index arrays on this device (a load: the loader thread calls it)."""
        return ChunkTensors.from_chunk(chunk, self.torch_device, source_major=source_major)

    def synchronize(self) -> None:
        """Wait for the device's compute (a no-op where work is synchronous)."""

    def drain(self) -> None:
        """Wait for all of the device's queued work, loads included (for measuring; never on the hot path)."""
        self.synchronize()

    def loading(self):
        """A context whose loads are prefetches (a GPU queues them on its copy stream)."""
        return contextlib.nullcontext()

    def loads_ready(self):
        """An event after every prefetch queued so far (None where loads are synchronous)."""
        return None

    def seconds_between(self, start, end) -> float | None:
        """Seconds between two completed :meth:`loads_ready` events (None without events)."""
        return None

    # does computing() use its ``reads`` (tensors the compute stream must keep alive)? Listing them is a
    # per-step cost that a device computing in line with its loads need not pay
    computing_reads = False

    def computing(self, ready=None, reads=()):
        """A context running one sub-chunk's compute after its loads ``ready`` (a GPU: on its compute stream)."""
        return contextlib.nullcontext()

    def chunk_index(self, chunk, source_major: bool = False, backward: bool = True, narrow: bool = False, native: bool = False) -> tuple[ChunkTensors, torch.Tensor, int]:
        """A sub-chunk's index arrays as a pass streams them, its source rows within V_i (a loader job), and the device bytes they may take.

        Only what a pass reads is sent (``StreamedChunkTensors``: a forward
        pass sends no source-major order; no pass sends what the device can
        make from the pointers); ``narrow``: in 16 bits where they fit; ``native``: the ids kernels read so (``native_16``).
        """
        ct = StreamedChunkTensors(chunk, self._send_index, backward=backward, source_major=source_major, narrow=narrow, derive=self.derives_index, send_many=self._send_indices, native=native)
        return ct, self._source_rows(chunk), ct.nbytes

    holds_narrow_index_copies = False  # 16-bit index arrays kept beside their widened copies until compute (a GPU)
    keeps_native_index = True  # chunk_index(native=True) leaves the 16-bit ids of native_16 unwidened (not a GPU)
    # make dst_idx from dst_ptr on the device, not send it, where that beats the link (a GPU; a CPU copies: 5 us against 24)
    derives_index = False
    # ApplyVertex and hook blocks of at most this many modelled bytes, however many the budget would allow
    # (None: no such bound); a CPU device's whole wide intervals fall out of its caches
    vertex_block_bytes: int | None = None

    def reused_buffer(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor | None:
        """An uninitialised tensor on memory the device keeps for reuse, or None: the caller allocates (as on a GPU)."""
        return None

    def _send_index(self, a: np.ndarray) -> torch.Tensor:
        """One host index array on this device (a transfer)."""
        return self.copy_in(host_tensor(a))

    def _send_indices(self, arrays: list[np.ndarray], shorts: list[bool]) -> list[torch.Tensor]:
        """Several host index arrays on this device, in 16 bits where ``shorts`` says (one transfer where the device packs them)."""
        return [self._send_index(narrowed(a) if short else a) for a, short in zip(arrays, shorts)]

    def _source_rows(self, chunk) -> torch.Tensor:
        """The sub-chunk's source rows within V_i as int32 on this device (as stored: the kernels read int32), their bound declared (no host sync to find it)."""
        rows = host_tensor(chunk.src_rows).to(self.torch_device)
        declare_rows_bound(rows, int(chunk.src_rows[-1]) + 1 if chunk.num_src else 0)
        return rows

    def span(self, kind: str, track: str, chunk=None, nbytes: int = 0, layer: str | None = None, phase: str = "forward"):
        """A profiler span of device work on ``track`` (wall clock here; CUDA events on a GPU)."""
        return profiler.span(kind, self.name, track, chunk=chunk, nbytes=nbytes, layer=layer, phase=phase)

    def flush_spans(self) -> None:
        """Hand spans timed asynchronously (CUDA events) to the profiler; the end of each pass calls it."""

    @property
    def kernel_backend(self) -> str:
        """The fused-kernel backend for builtin messages on this device (``"reference"``: torch ops)."""
        return "reference"

    def gather_in(self, host: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Gather rows on the host, then send them (one selective transfer)."""
        return self.copy_in(host.index_select(0, index))

    def copy_from_peer(self, t: torch.Tensor, source: "Device") -> torch.Tensor:
        """A copy on this device of ``t``, held by ``source`` (device to device, not through the host link)."""
        self._count_peer_in(tensor_bytes(t))
        return t.to(self.torch_device, copy=True)

    def copy_out(self, dev: torch.Tensor, host_out: torch.Tensor) -> None:
        """Write a device tensor into a host tensor (blocking)."""
        host_out.copy_(dev)

    def add_out(self, dev: torch.Tensor, host_out: torch.Tensor) -> None:
        """Add a device tensor into a host tensor (blocking)."""
        host_out.add_(dev.to(host_out.device))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, memory_budget={format_bytes(self.memory_budget)})"

    @property
    def shares_host_memory(self) -> bool:
        """True when loads are views of host memory, so results may be written straight into host tensors."""
        return False

    @property
    def transfers_cost_alike(self) -> bool:
        """Do a full block and a selective gather cost the same here, so that only their bytes tell them apart?

        Where true, the planner chooses selective or full by bytes: timing
        two equal costs would pick one by noise, and the device peak with it.
        """
        return False

    @property
    def overlaps_transfers(self) -> bool:
        """Do transfers run beside compute (a copy engine, a link) rather than on the cores that compute?

        Decides whether prefetching is on by default: where loads take the
        same cores as the kernels, a loader thread only competes with them.
        """
        return True


# a CPU device's ApplyVertex and hook blocks, in modelled bytes; measured: 4 MiB and 16 MiB blocks were slower
# (docs/benchmarks.md, "Blocks that fit the caches"), and whole intervals slower in memory too ("Blocks in memory")
CACHE_BLOCK_BYTES = 8 << 20

# sub-chunks whose index views a non-copying CPU device keeps (CpuDevice.chunk_index): at most ~6 MiB of objects
INDEX_MEMO_SUB_CHUNKS = 1024


class CpuDevice(Device):
    """A virtual device in RAM with a memory budget: every byte it would hold is accounted.

    Its memory is the host's, so by default a whole-block 'transfer' hands
    the engine a read-only view of the host rows (no copy: the engine never
    writes into loaded tensors) while the ledger still charges the bytes as
    a GPU would hold them. Row gathers (selective transfers) are real copies.

    Args:
        memory_budget: bytes as an int or a string such as ``"64MB"``;
            None (the default) means unlimited.
        name: shown in errors and traces; default ``"cpu0"``, numbered
            ``cpu0``, ``cpu1``, ... by position when several unnamed
            devices form a list.
        link_bandwidth: bytes per second of an emulated host link (e.g.
            ``"2GB"`` for 2 GB/s); transfers then take at least
            bytes / bandwidth, sleeping (GIL released) for the rest, so a
            slow PCIe link can be studied on a CPU. An
            :class:`EmulatedLink` shared by several devices makes their
            transfers queue on one link (a PCIe switch's uplink). None:
            copy speed.
        copy_transfers: make every block transfer a real copy, as on a
            discrete accelerator; for studying transfer cost and overlap
            on a CPU (``sagann bench overlap`` sets it).
        peer_bandwidth: bytes per second of an emulated device-to-device
            link into this device (chain hops); None: copy speed.
        meter: measure the bytes torch allocates during each pass
            (:attr:`measured_peak_bytes`); it costs time on every torch op,
            so it is off unless asked for. None (the default): on when the
            environment sets ``SAGANN_METER=1``.
        vertex_block_bytes: the modelled bytes an ApplyVertex or hook block
            may hold, with or without a budget (default
            :data:`CACHE_BLOCK_BYTES`): whole wide intervals fall out of the
            caches, so blocks are faster even where everything fits. None:
            as large as the budget allows (whole intervals without one), as
            a whole-graph in-memory epoch runs.
    """

    def __init__(self, memory_budget: int | str | None = None, name: str | None = None, link_bandwidth: int | str | None = None,
                 copy_transfers: bool = False, peer_bandwidth: int | str | None = None, meter: bool | None = None,
                 vertex_block_bytes: int | str | None = CACHE_BLOCK_BYTES):
        auto = name is None
        name = "cpu0" if auto else name
        super().__init__(name, memory_budget, auto_named=auto)
        if meter is None:
            meter = os.environ.get(METER_ENV, "") not in ("", "0")
        self.meter = CpuMeter() if meter else None
        self.torch_device = torch.device("cpu")
        if isinstance(link_bandwidth, EmulatedLink):
            self.link: EmulatedLink | None = link_bandwidth
        else:
            self.link = None if link_bandwidth is None else EmulatedLink(link_bandwidth, f"{name} host link")
        self.link_bandwidth = None if self.link is None else self.link.bandwidth
        self.peer_bandwidth = parse_bytes(peer_bandwidth)
        self.copy_transfers = bool(copy_transfers)
        try:
            self.vertex_block_bytes = parse_bytes(vertex_block_bytes)
        except ValueError as exc:
            raise ValueError(f"vertex_block_bytes: {exc}; or None for blocks as large as the budget allows") from None
        # copies land in reused buffers, as a GPU's caching allocator keeps device memory (sagann.scheduler.pool);
        # not when metered: a reused buffer is no new allocation, so the meter would not see the copy
        pooled = self.copy_transfers and self.memory_budget is not None and self.meter is None
        self._pool = BufferPool(2 * self.memory_budget) if pooled else None
        # sub-chunk -> {source_major: its ChunkTensors (views)}; see chunk_index
        self._index_memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def shares_host_memory(self) -> bool:
        return not self.copy_transfers

    def calibration_twin(self) -> "CpuDevice":
        """A device of this kind for the step calibration; a budget none reaches, so copies pool as a budgeted pass's do."""
        return CpuDevice(CALIBRATION_TWIN_BUDGET, f"{self.name} (calibration)", self.link_bandwidth, self.copy_transfers, self.peer_bandwidth, meter=False,
                         vertex_block_bytes=self.vertex_block_bytes)

    def chunk_index(self, chunk, source_major: bool = False, backward: bool = True, narrow: bool = False, native: bool = False) -> tuple[ChunkTensors, torch.Tensor, int]:
        """The sub-chunk's index arrays: views of the host's arrays, made once per sub-chunk and kept while it lives.

        Views hold no array memory, only their objects (2-6 KB a sub-chunk);
        remade at every step they cost more Python than a small sub-chunk's
        kernel. At most :data:`INDEX_MEMO_SUB_CHUNKS` sub-chunks are kept,
        and none of a mapped file's (a dataset's, a spill file's): a fine
        re-cut of a dataset has thousands (GIN at P = 69 held 55-60 MiB more
        anonymous RSS with all 4,761 kept, 36 with 1,024, its epochs no
        faster; at P = 11 kept ones made epochs 3-5 % shorter).
        Bytes are counted as a copying device would send them.
        The source rows are a view made at each step. With ``copy_transfers``
        every step copies what the pass reads, as a GPU's would.
        """
        per = None if self.copy_transfers else self._index_memo.get(chunk)  # a kept sub-chunk is neither copied nor mapped
        if per is None:
            # a fine partition's others are remade at every step
            if self.copy_transfers or mapped(chunk.src_rows) or len(self._index_memo) >= INDEX_MEMO_SUB_CHUNKS:
                return super().chunk_index(chunk, source_major, backward, narrow, native)
            per = self._index_memo[chunk] = {}
        key = bool(source_major)
        ct = per.get(key)
        if ct is None:  # views of every array: nothing is derived (that would hold new memory per sub-chunk)
            ct = per[key] = self.chunk_tensors(chunk, key)
        self._count_in(chunk.sent_index_bytes(backward, narrow, source_major, native) - chunk.src_rows.nbytes)  # what a copying device sends (as rows, the source rows are not counted)
        # charged as a copying device holds them: what a forward or a source-major backward sends (its kernels read no more), all arrays in another backward
        # kernels reading 16-bit ids (native): charged as the copying device's copies, as planned
        return ct, self._source_rows(chunk), ct.nbytes if backward and not source_major else chunk.sent_index_bytes(backward, False, source_major, native) - chunk.src_rows.nbytes

    @property
    def transfers_cost_alike(self) -> bool:
        # sharing host memory, a block 'transfer' is a view and a gather the same host index_select as a pick
        # from the block; an emulated link, or costs set by hand, make them differ
        return self.shares_host_memory and self.link is None and self._costs is None

    @property
    def kernel_backend(self) -> str:
        try:
            import sagann.kernels.cpu  # noqa: F401  (numba present and kernels built)
        except ImportError:
            return "reference"
        return "cpu"

    @property
    def overlaps_transfers(self) -> bool:
        # Only an emulated link's wait runs beside compute; copies and gathers take the
        # host cores the kernels use (measured: docs/benchmarks.md, "Scheduling features").
        return self.link_bandwidth is not None

    def _throttle(self, t0: float, nbytes: int) -> None:
        self._count_in(nbytes)
        if self.link is not None:
            self.link.occupy(nbytes, time.perf_counter() - t0)

    def _send_indices(self, arrays: list[np.ndarray], shorts: list[bool]) -> list[torch.Tensor]:
        """Copying: the arrays packed into one buffer (8-byte aligned), one pool allocation and one count for all; 16-bit ones narrowed by the copy.
        numpy copies and views (a torch slice, view and copy_ cost several times as much, every step); each view holds
        the buffer through numpy's base, so the pool sees it taken while one lives. A C cast keeps an id's low 16 bits."""
        if not self.copy_transfers:
            return super()._send_indices(arrays, shorts)
        t0 = time.perf_counter()
        sizes = [a.size * 2 if short else a.nbytes for a, short in zip(arrays, shorts)]
        total = sum(-(-n // 8) * 8 for n in sizes)
        buf = self._pool.empty((total,), torch.uint8) if self._pool is not None and total else None
        flat = (torch.empty(max(8, total), dtype=torch.uint8) if buf is None else buf).numpy()
        out, off = [], 0
        for a, short, n in zip(arrays, shorts, sizes):
            view = flat[off : off + n].view(np.int16 if short else a.dtype)
            np.copyto(view, a, casting="unsafe")  # int32 -> int16 keeps the low 16 bits
            out.append(torch.from_numpy(view))
            off += -(-n // 8) * 8
        self._throttle(t0, sum(sizes))
        return out

    def reused_buffer(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor | None:
        return self._pool.empty(shape, dtype) if self._pool is not None else None

    def copy_in(self, host: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        if not self.copy_transfers:
            out = host.detach()
        else:
            out = self._pool.empty(tuple(host.shape), host.dtype) if self._pool is not None and host.is_contiguous() else None
            out = host.detach().clone() if out is None else out.copy_(host.detach())
        self._throttle(t0, tensor_bytes(out))
        return out

    def gather_in(self, host: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self._pool.empty((index.numel(), *host.shape[1:]), host.dtype) if self._pool is not None and host.dim() >= 1 else None
        if out is None:
            out = host.detach().index_select(0, index)  # already a fresh copy
        else:
            torch.index_select(host.detach(), 0, index, out=out)
        self._throttle(t0, tensor_bytes(out))
        return out

    def copy_from_peer(self, t: torch.Tensor, source: "Device") -> torch.Tensor:
        """A chain hop: as a host transfer, a view unless ``copy_transfers`` (the ledger charges it either way)."""
        t0 = time.perf_counter()
        out = t.detach().clone() if self.copy_transfers else t.detach()
        nbytes = tensor_bytes(out)
        self._count_peer_in(nbytes)
        if self.peer_bandwidth is not None:
            rest = nbytes / self.peer_bandwidth - (time.perf_counter() - t0)
            if rest > 0:
                time.sleep(rest)
        return out
