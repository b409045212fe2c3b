"""CudaDevice: a CUDA GPU through a :class:`~sagann.scheduler.cuda_runtime.Runtime`, with its own streams, pinned staging and events.

Streams and who waits for whom
------------------------------
* **Compute** runs on the device's own compute stream, in the caller's
  thread: the executor enters :meth:`CudaDevice.computing` around each
  sub-chunk, which makes that stream current, orders it after the caller's
  stream (accumulators, held rows) and after the sub-chunk's loads (an
  event), and orders the caller's stream after it on the way out (write-backs,
  frees). Two logical devices on one GPU have two compute streams, so
  neither waits for the other's kernels.
* **Loads** made inside :meth:`CudaDevice.loading` (the loader thread, the
  chain relay) run on :attr:`CudaDevice.copy_stream`, and so do torch's ops
  there (picking rows from a block); the host never blocks on them: the
  loader ends each sub-chunk with :meth:`loads_ready`, an event the compute
  stream waits on. Loads made elsewhere (the compute thread) run on the
  caller's current stream, in order with the work around them.
* **Staging**: host rows are copied (or gathered) into one of N pinned
  blocks used in turn (:class:`StagingRing`), then sent with an asynchronous
  copy; a block is refilled only after an event says the copy that last read
  it has finished. Transfers over 16 MiB go in pieces, so the host fills one
  piece while the DMA sends the last. Blocks grow geometrically.
* **Index arrays** of a sub-chunk (and its source rows within V_i) are packed
  into one staging block and sent with one copy (:meth:`chunk_index`).
* Every tensor loaded on the copy stream is marked as read on the compute
  stream (``record_stream``): the caching allocator must not hand its memory
  to the next load while compute still reads it.
* :meth:`synchronize` (after each sub-chunk's compute: the measured compute
  time orders the next pass, the ledger refunds bytes only when the GPU is
  done) waits for an event on this device's compute stream only: not for
  the prefetch copies queued behind it, not for another logical device.
* A chain hop (:meth:`copy_from_peer`) waits on the *source's copy stream*,
  where the block it forwards was written, and the source's copy stream then
  waits for the hop, so the source's allocator does not reuse the block early.
* Write-backs (``copy_out``, ``add_out``) copy into a pinned block on the
  current stream and wait for that copy's event before the host reads it.

Profiling: compute spans are timed with events and handed to the profiler,
mapped onto ``perf_counter`` seconds, at the end of each pass
(:meth:`flush_spans`).

The protocol is checked without a GPU by a recording stand-in of the runtime
(``tests/scheduler/test_stream_protocol.py``); the GPU tests run where torch
sees a GPU (``benchmarks/gpu_check.py``).
"""
from __future__ import annotations

import collections
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from sagann import kernels, profiler
from sagann.chunks.types import sent_names
from sagann.kernels.graph import StreamedChunkTensors, crossing_array, declare_rows_bound, widen_index
from sagann.scheduler.cuda_runtime import Runtime, TorchRuntime
from sagann.scheduler.devices import Device
from sagann.scheduler.meter import CudaMeter
from sagann.units import format_bytes, parse_bytes, tensor_bytes

__all__ = ["CudaDevice", "StagingRing", "cuda_available"]

# a budget left unset is this share of the GPU's free memory when the device is made:
# torch's caching allocator, cuBLAS workspaces and fragmentation need the rest
FREE_MEMORY_SHARE = 0.85
STAGING_BUFFERS = 4  # pinned blocks in turn: the loader, the relay and write-backs each hold one briefly
MIN_STAGING_BYTES = 1 << 20
STAGING_PIECE_BYTES = 16 << 20  # larger transfers go in pieces of about this size, pipelined through the ring
# transfer costs are measured on payloads this big at least: below a few MiB a GPU copy measures launch latency
MIN_MEASURE_BYTES, MAX_MEASURE_BYTES = 4 << 20, 64 << 20
_ALIGN = 8  # each array of a packed index block starts on an 8-byte boundary (int64 views need it)


def warm_math_libraries(runtime: TorchRuntime, streams) -> None:
    """Make cuBLAS and cuBLASLt allocate their workspaces for ``streams`` now, outside every pass and its budget.

    torch gives each (handle, stream) its own workspace from the caching
    allocator on the first matrix product there: 32 MiB for cuBLAS on a
    Hopper GPU, more than a small budget. Left to the first pass, it lands
    inside that pass's measured peak although it is no tensor of sagann's
    and is never freed; taken here, it is part of what the GPU held before
    sagann ran, like the CUDA context. The workspaces stay with their
    stream; torch hands streams out from a fixed pool, so they stay bounded
    however many devices are made.
    """
    a = torch.ones(8, 8, device=runtime.device, requires_grad=True)
    for stream in streams:
        with runtime.use_stream(stream):
            # addmm with a bias (cuBLASLt) and a product (cuBLAS) in this thread; their backward runs in
            # autograd's thread for the GPU, whose handle has workspaces of its own
            (torch.nn.functional.linear(a, a, a[0]) @ a).sum().backward()
    torch.cuda.synchronize(runtime.device)


def cuda_available() -> bool:
    """Is there a CUDA GPU torch can use (a CPU build of torch says no)?"""
    return bool(torch.cuda.is_available())


@dataclass
class _Slot:
    block: torch.Tensor | None = None
    event: object = None  # recorded after the last copy that read (or wrote) the block
    busy: bool = False


class StagingRing:
    """N pinned host blocks used in turn; a block is refilled only after the copy that last read it finished.

    A block grows to ``max(needed, 2 x its size)``: allocating pinned memory
    is a slow driver call, and geometric growth keeps the number of
    allocations logarithmic in the largest transfer. Only choosing a free
    block takes the lock; filling it and the copy run outside it, so the
    loader, the chain relay and the compute thread's write-backs do not
    queue behind each other.
    """

    def __init__(self, runtime: Runtime, count: int = STAGING_BUFFERS):
        if count < 1:
            raise ValueError(f"a staging ring needs at least one buffer, got {count}")
        self.runtime = runtime
        self._slots = [_Slot() for _ in range(count)]
        self._next = 0
        self._cond = threading.Condition()
        self.allocations = 0  # pinned blocks allocated so far

    def acquire(self, nbytes: int) -> _Slot:
        """A block of at least ``nbytes``, free to fill (waits for the copy that last read it)."""
        with self._cond:
            slot = self._free_slot()
            while slot is None:
                self._cond.wait()
                slot = self._free_slot()
            slot.busy = True
        try:
            if slot.block is not None:
                self.runtime.take_over(slot.block)  # after the host's last use of it, in whichever thread
            if slot.event is not None:
                self.runtime.host_wait(slot.event)
            if slot.block is None or slot.block.numel() < nbytes:
                old = 0 if slot.block is None else slot.block.numel()
                slot.block = self.runtime.pinned(max(nbytes, 2 * old, MIN_STAGING_BYTES))
                self.allocations += 1
        except BaseException:
            self.release(slot)
            raise
        return slot

    def _free_slot(self) -> _Slot | None:
        n = len(self._slots)
        for k in range(n):
            slot = self._slots[(self._next + k) % n]
            if not slot.busy:
                self._next = (self._next + k + 1) % n
                return slot
        return None

    def release(self, slot: _Slot, stream=None) -> None:
        """Hand ``slot`` back; with ``stream``, the copy that reads it was queued there: record when it is done."""
        if stream is not None:
            if slot.event is None:
                slot.event = self.runtime.new_event()
            self.runtime.record(slot.event, stream)
        if slot.block is not None:
            self.runtime.hand_over(slot.block)
        with self._cond:
            slot.busy = False
            self._cond.notify()

    @property
    def nbytes(self) -> int:
        return sum(0 if s.block is None else int(s.block.numel()) for s in self._slots)


class _EventSpans:
    """Spans of asynchronous GPU work, timed with events and resolved to perf_counter seconds later."""

    def __init__(self, device: "CudaDevice"):
        self.device = device
        self._pending: list[tuple] = []
        self._ref: tuple | None = None
        self._lock = threading.Lock()

    def _reference(self, stream) -> tuple:
        """An event whose completion time on the perf_counter clock is known (set once per recorder)."""
        rec, rt = profiler.active_recorder(), self.device.runtime
        if self._ref is None or self._ref[2] is not rec:
            ref = rt.new_event(timing=True)
            rt.record(ref, stream)
            rt.host_wait(ref)
            self._ref = (ref, time.perf_counter(), rec)
        return self._ref[:2]

    @contextmanager
    def span(self, kind: str, track: str, chunk, nbytes: int, layer, phase: str):
        if not profiler.enabled():
            yield
            return
        rt = self.device.runtime
        stream = rt.current_stream()
        ref = self._reference(stream)
        start, end = rt.new_event(timing=True), rt.new_event(timing=True)
        rec = profiler.active_recorder()
        nvtx = getattr(rec, "_nvtx_module", None)  # Nsight shows the same names
        if nvtx is not None:
            nvtx.range_push(profiler.nvtx_name(kind, chunk))
        rt.record(start, stream)
        try:
            yield
        finally:
            rt.record(end, stream)
            if nvtx is not None:
                nvtx.range_pop()
            epoch = profiler.active_recorder().epoch
            with self._lock:
                self._pending.append((ref, start, end, kind, track, chunk, nbytes, layer, phase, epoch))

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        rt = self.device.runtime
        for (ref, t_ref), start, end, kind, track, chunk, nbytes, layer, phase, epoch in pending:
            rt.host_wait(end)
            t0, t1 = t_ref + rt.elapsed(ref, start), t_ref + rt.elapsed(ref, end)
            profiler.record_interval(kind, self.device.name, track, t0, t1, chunk=chunk, nbytes=nbytes, layer=layer, phase=phase, epoch=epoch)


class CudaDevice(Device):
    """A CUDA GPU (through torch) with a memory budget; loads overlap compute on a copy stream.

    Args:
        memory_budget: bytes (or a string such as ``"40GB"``) sagann may hold
            on the GPU; None (the default): 85% of the GPU's free memory when
            the device is made. Several logical devices may share one GPU
            (give each its share): chains can then be tested on one GPU.
        index: the CUDA device ordinal (``cuda:index``).
        name: shown in errors and traces (default ``"cuda<index>"``).
        runtime: the CUDA runtime to drive (default: torch's for GPU
            ``index``); tests pass a recording stand-in.
        staging_buffers: pinned staging blocks used in turn (at least 2 for
            the host's copies to overlap the DMA).

    Raises:
        RuntimeError: torch sees no CUDA GPU (a CPU build of torch, or no
            driver); use :class:`~sagann.CpuDevice` there.
    """

    holds_narrow_index_copies = True  # widened on the copy stream, the 16-bit arrays kept until compute (chunk_index)
    keeps_native_index = False  # the CUDA kernels read int32 index arrays

    def __init__(self, memory_budget: int | str | None = None, index: int = 0, name: str | None = None, *, runtime: Runtime | None = None, staging_buffers: int = STAGING_BUFFERS):
        if runtime is None:
            runtime = self._torch_runtime(index)
        elif memory_budget is None:
            raise ValueError("CudaDevice(runtime=...) needs a memory_budget")
        copy_stream, compute_stream = runtime.new_stream("copy"), runtime.new_stream("compute")
        if isinstance(runtime, TorchRuntime):
            warm_math_libraries(runtime, (compute_stream, runtime.current_stream()))
            if memory_budget is None:
                free, _ = torch.cuda.mem_get_info(runtime.device)
                memory_budget = int(free * FREE_MEMORY_SHARE)
        super().__init__(name or f"cuda{index}", parse_bytes(memory_budget), auto_named=name is None)
        self.runtime = runtime
        self.torch_device = runtime.device
        self.index = index
        self.copy_stream, self.compute_stream = copy_stream, compute_stream
        self._ring = StagingRing(runtime, staging_buffers)
        self._events = _EventSpans(self)
        # measured_peak_bytes: the allocator's peak around every pass (a stand-in runtime allocates nothing real)
        self.meter = CudaMeter(self.torch_device) if isinstance(runtime, TorchRuntime) else None
        self.min_measure_bytes, self.default_measure_bytes, self.max_measure_bytes = MIN_MEASURE_BYTES, 2 * MIN_MEASURE_BYTES, MAX_MEASURE_BYTES
        # released scopes whose kernels may still run: (event on the compute stream, bytes), oldest first
        self._pending: collections.deque = collections.deque()
        self._pending_lock = threading.Lock()
        self.ledger.settle = self._settle

    @staticmethod
    def _torch_runtime(index) -> TorchRuntime:
        if not cuda_available():
            raise RuntimeError(
                "CudaDevice needs a CUDA GPU, but torch sees none (torch "
                f"{torch.__version__}{', a CPU build' if torch.version.cuda is None else ''}); "
                "use sagann.CpuDevice(memory_budget=...) on this machine"
            )
        count = torch.cuda.device_count()
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise ValueError(f"CudaDevice index must be an int in [0, {count}) on this machine, got {index!r}")
        return TorchRuntime(index)

    def calibration_twin(self) -> "CudaDevice | None":
        """A device on the same GPU for the step calibration's engine passes (own streams and ledger); None on a stand-in runtime."""
        if not isinstance(self.runtime, TorchRuntime):
            return None
        return CudaDevice(self.memory_budget, self.index, f"{self.name} (calibration)")

    # ---- properties the engine reads -----------------------------------------------------------
    @property
    def shares_host_memory(self) -> bool:
        return False

    @property
    def overlaps_transfers(self) -> bool:
        return True  # a copy engine moves the data beside the SMs

    @property
    def kernel_backend(self) -> str:
        """The numba.cuda kernels where numba can drive this GPU, else torch's ops, with a warning saying why."""
        if not isinstance(self.runtime, TorchRuntime):
            return getattr(self.runtime, "kernel_backend", "reference")
        return kernels.gpu_kernel_backend()

    @property
    def staging_bytes(self) -> int:
        """Pinned host bytes the staging blocks hold."""
        return self._ring.nbytes

    # ---- the executor's hooks --------------------------------------------------------------------
    def loading(self):
        """Loads made inside, and torch's ops, go on the copy stream (the loader thread, the chain relay)."""
        return self.runtime.use_stream(self.copy_stream)

    def loads_ready(self):
        """An event that completes when every copy queued on the copy stream so far has (timed)."""
        event = self.runtime.new_event(timing=True)
        self.runtime.record(event, self.copy_stream)
        return event

    def seconds_between(self, start, end) -> float | None:
        return None if start is None or end is None else self.runtime.elapsed(start, end)

    computing_reads = True

    @contextmanager
    def computing(self, ready=None, reads=()):
        """Run the caller's kernels on the compute stream, after ``ready`` (a :meth:`loads_ready`) and the caller's stream."""
        rt = self.runtime
        caller = rt.current_stream()
        self._keep_for_compute(reads)  # loaded on the copy stream, or picked there by torch: read here
        if caller == self.compute_stream:  # nested: already ordered
            rt.launch(self.compute_stream, reads)
            yield
            return
        enter = rt.new_event()
        rt.record(enter, caller)
        rt.wait(self.compute_stream, enter)
        if ready is not None:
            rt.wait(self.compute_stream, ready)
        rt.launch(self.compute_stream, reads)
        try:
            with rt.use_stream(self.compute_stream):
                yield
        finally:
            leave = rt.new_event()
            rt.record(leave, self.compute_stream)
            rt.wait(caller, leave)  # write-backs and frees queued after this see the kernels' results

    def synchronize(self) -> None:
        """Wait for this device's compute stream (an event): not for queued prefetch copies or another device."""
        done = self._pending_count()
        event = self.runtime.new_event()
        self.runtime.record(event, self.compute_stream)
        self.runtime.host_wait(event)
        self._refund_oldest(done)

    def drain(self) -> None:
        """Wait for every stream this device queues work on (measuring; never on the hot path)."""
        done = self._pending_count()
        for stream in (self.runtime.current_stream(), self.copy_stream, self.compute_stream):
            event = self.runtime.new_event()
            self.runtime.record(event, stream)
            self.runtime.host_wait(event)
        self._refund_oldest(done)

    # ---- releases that complete on the GPU -----------------------------------------------------
    def release(self, nbytes: int) -> None:
        """Refund a closed scope when the compute stream has run what was queued so far, not now.

        The host queues kernels ahead of the GPU. A load read on the compute
        stream goes back to torch's allocator only when that stream has run
        past its last reader (``record_stream``), so a host far ahead holds
        many steps' loads at once. Until then the ledger keeps the bytes,
        and a charge over the budget waits for them (:class:`MemoryLedger`):
        the budget bounds what the allocator holds, not only what the host
        still names.
        """
        if nbytes <= 0:
            self.ledger.refund(nbytes)
            return
        event = self.runtime.new_event()
        self.runtime.record(event, self.compute_stream)
        with self._pending_lock:
            self._pending.append((event, nbytes))

    def _pending_count(self) -> int:
        with self._pending_lock:
            return len(self._pending)

    def _refund_oldest(self, count: int) -> None:
        """Refund the ``count`` oldest releases: their events were recorded before one the host has waited for."""
        for _ in range(count):
            with self._pending_lock:
                if not self._pending:
                    return
                _, nbytes = self._pending.popleft()
            self.ledger.refund(nbytes)

    @property
    def current_bytes(self) -> int:
        """Bytes held now: releases the GPU has completed are refunded first."""
        self._settle(False)
        return self.ledger.current

    def _settle(self, block: bool) -> bool:
        """Refund the releases whose kernels have run; with ``block``, wait for the oldest first. Did any get refunded?"""
        refunded = False
        while True:
            wait = block and not refunded  # the oldest release is waited for; the others only if already done
            with self._pending_lock:
                if not self._pending:
                    return refunded
                event, nbytes = self._pending[0]
                if not wait and not self.runtime.query(event):
                    return refunded
                self._pending.popleft()
            if wait:
                self.runtime.host_wait(event)
            self.ledger.refund(nbytes)
            refunded = True

    # ---- loads ---------------------------------------------------------------------------------
    def _send_staged(self, shape, dtype: torch.dtype, fill, split: bool = True) -> torch.Tensor:
        """``fill(view, lo, hi)`` writes rows ``lo:hi`` into a pinned staging block; asynchronous copies send them.

        A transfer over :data:`STAGING_PIECE_BYTES` goes in pieces through
        the ring (``split``), so the host fills the next piece while the DMA
        sends the last, and pinned memory stays a few pieces, not a block.
        """
        rt, stream = self.runtime, self.runtime.current_stream()
        rows = shape[0]
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
        step = max(1, STAGING_PIECE_BYTES // max(row_bytes, 1)) if split else max(rows, 1)
        out = rt.empty(shape, dtype, stream)
        for lo in range(0, max(rows, 1), step):
            hi = min(rows, lo + step)
            nbytes = (hi - lo) * row_bytes
            slot = self._ring.acquire(nbytes)
            try:
                view = slot.block[:nbytes].view(dtype).view((hi - lo,) + tuple(shape[1:]))
                rt.host_fill(slot.block, lambda: fill(view, lo, hi))
                rt.copy(out[lo:hi], view, stream)
            except BaseException:
                self._ring.release(slot)
                raise
            self._ring.release(slot, stream)
        self._loaded(out, stream)
        self._count_in(rows * row_bytes)
        return out

    def _loaded(self, out: torch.Tensor, stream) -> None:
        if stream == self.copy_stream:
            self._keep_for_compute([out])

    def _keep_for_compute(self, tensors) -> None:
        """Tensors the compute stream reads: the allocator must not reuse their memory before it is done."""
        for t in tensors:
            self.runtime.keep_alive(t, self.compute_stream)

    def copy_in(self, host: torch.Tensor) -> torch.Tensor:
        host = host.detach()
        if host.dim() == 0:
            return self.copy_in(host.reshape(1)).reshape(())
        if self.runtime.on_device(host):  # already on a GPU (e.g. another device's block)
            return self._copy_on_device(host)
        return self._send_staged(tuple(host.shape), host.dtype, lambda view, lo, hi: view.copy_(host[lo:hi]))

    def gather_in(self, host: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Gather rows straight into a pinned staging block on the host, then one copy to the GPU."""
        host = host.detach()
        if self.runtime.on_device(host):
            return self._copy_on_device(host.index_select(0, index.to(host.device)))
        shape = (int(index.numel()),) + tuple(host.shape[1:])
        return self._send_staged(shape, host.dtype, lambda view, lo, hi: torch.index_select(host, 0, index[lo:hi], out=view))

    def chunk_index(self, chunk, source_major: bool = False, backward: bool = True, narrow: bool = False, native: bool = False):
        """The index arrays the pass reads and the sub-chunk's source rows within V_i, packed into one staging block, sent with one copy.

        ``dst_idx`` is made on the GPU from ``dst_ptr`` when first read
        (``StreamedChunkTensors``): the link never carries it. ``narrow``:
        the arrays cross in 16 bits where they fit and are widened on the copy stream (``native``
        is ignored: the CUDA kernels read int32).
        """
        names = sent_names(backward, source_major)
        if "src_dst" in names and not chunk.keeps_src_major_dst():  # a file-backed chunk: made on the GPU from these
            names = sent_names(backward, False)
        host = [crossing_array(chunk, n, narrow) for n in names]
        short = [a.dtype == np.int16 for a in host]
        arrays = [np.ascontiguousarray(a if sh else a.astype(np.int32, copy=False)) for a, sh in zip(host, short)]  # 16-bit ones already narrowed
        arrays.append(np.ascontiguousarray(chunk.src_rows))
        offsets, total = [], 0
        for a in arrays:
            offsets.append(total)
            total += -(-a.nbytes // _ALIGN) * _ALIGN

        def fill(view: torch.Tensor, lo: int, hi: int) -> None:
            for a, off in zip(arrays, offsets):
                view[off : off + a.nbytes].view(_torch_dtype(a)).copy_(torch.from_numpy(a))

        packed = self._send_staged((max(total, _ALIGN),), torch.uint8, fill, split=False)
        views = [packed[off : off + a.nbytes].view(_torch_dtype(a)) for a, off in zip(arrays, offsets)]
        if any(short):
            views[:-1] = [widen_index(v) if sh else v for v, sh in zip(views[:-1], short)]  # on the loader's stream, after the copy
            self._keep_for_compute([v for v, sh in zip(views, short) if sh])
        ct = StreamedChunkTensors(chunk, self._send_index, backward=backward, source_major=source_major, sent=dict(zip(names, views)), narrow=narrow, derive=True)
        rows = views[-1]
        declare_rows_bound(rows, int(chunk.src_rows[-1]) + 1 if chunk.num_src else 0)  # known here: no device read to check it
        # what the plan counts (+ the 16-bit arrays, held with the rows in one block); the 8-byte padding is below the allocator's rounding
        return ct, rows, ct.nbytes + rows.numel() * 4 + sum(a.nbytes for a, sh in zip(arrays, short) if sh)

    def chunk_tensors(self, chunk, source_major: bool = False):
        return self.chunk_index(chunk, source_major)[0]

    def _copy_on_device(self, t: torch.Tensor) -> torch.Tensor:
        """A copy of ``t`` (on a GPU, written on the caller's current stream) made on the current stream."""
        rt, stream = self.runtime, self.runtime.current_stream()
        if t.device != self.torch_device:  # another GPU: torch orders the two devices' current streams
            return t.to(self.torch_device)
        out = rt.empty(tuple(t.shape), t.dtype, stream)
        rt.copy(out, t, stream)
        self._loaded(out, stream)
        return out

    def _producer_event(self, t: torch.Tensor, source: "CudaDevice"):
        """An event after the write of ``t``: blocks a chain forwards were loaded on the source's copy stream."""
        return source.loads_ready()

    def copy_from_peer(self, t: torch.Tensor, source: Device | None) -> torch.Tensor:
        """A chain hop: GPU to GPU on this device's copy stream (peer access where the GPUs have it)."""
        if not isinstance(source, CudaDevice):
            return self._copy_on_device(t.detach())
        rt = self.runtime
        rt.wait(self.copy_stream, self._producer_event(t, source))
        out = rt.empty(tuple(t.shape), t.dtype, self.copy_stream)
        rt.copy(out, t.detach(), self.copy_stream)
        done = rt.new_event()
        rt.record(done, self.copy_stream)
        source.runtime.wait(source.copy_stream, done)  # the source's next loads may reuse t's memory: after this read
        self._loaded(out, self.copy_stream)
        self._count_peer_in(tensor_bytes(t))
        return out

    # ---- write-backs: the compute side -----------------------------------------------------------
    def _read_back(self, dev: torch.Tensor, use) -> None:
        """Copy ``dev`` into pinned blocks on the current stream, piece by piece; wait for each, then ``use(view, lo, hi)``."""
        rt, stream = self.runtime, self.runtime.current_stream()
        dev = dev.detach()
        rows, row_bytes = dev.shape[0], tensor_bytes(dev[:1])
        step = max(1, STAGING_PIECE_BYTES // max(row_bytes, 1))
        for lo in range(0, max(rows, 1), step):
            hi = min(rows, lo + step)
            slot = self._ring.acquire((hi - lo) * row_bytes)
            try:
                view = slot.block[: (hi - lo) * row_bytes].view(dev.dtype).view((hi - lo,) + tuple(dev.shape[1:]))
                rt.copy(view, dev[lo:hi], stream)
                if slot.event is None:
                    slot.event = rt.new_event()
                rt.record(slot.event, stream)
                rt.host_wait(slot.event)  # this stream's work only: the copy and the kernels before it
                rt.host_read(slot.block, lambda: use(view, lo, hi))
            finally:
                self._ring.release(slot)

    def copy_out(self, dev: torch.Tensor, host_out: torch.Tensor) -> None:
        if dev.dim() == 0:
            dev, host_out = dev.reshape(1), host_out.view(1)
        self._read_back(dev, lambda view, lo, hi: host_out[lo:hi].copy_(view))

    def add_out(self, dev: torch.Tensor, host_out: torch.Tensor) -> None:
        if dev.dim() == 0:
            dev, host_out = dev.reshape(1), host_out.view(1)
        self._read_back(dev, lambda view, lo, hi: host_out[lo:hi].add_(view))

    def span(self, kind: str, track: str, chunk=None, nbytes: int = 0, layer: str | None = None, phase: str = "forward"):
        if track == "compute":
            return self._events.span(kind, track, chunk, nbytes, layer, phase)
        return super().span(kind, track, chunk, nbytes, layer, phase)

    def flush_spans(self) -> None:
        self._events.flush()

    def __repr__(self) -> str:
        return f"CudaDevice({self.name!r}, index={self.index}, memory_budget={format_bytes(self.memory_budget)})"


def _torch_dtype(a: np.ndarray) -> torch.dtype:
    return torch.from_numpy(a[:0]).dtype

