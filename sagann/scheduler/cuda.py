"""CudaDevice: a CUDA GPU through torch, with its own copy stream, pinned staging and event-timed spans.

Streams and who waits for whom
------------------------------
* **Compute** runs on the device's default stream, in the caller's thread:
  kernels, ApplyVertex, write-backs.
* **Loads** (``copy_in``, ``gather_in``, ``chunk_tensors``, chain hops) run
  in the loader thread on :attr:`CudaDevice.copy_stream`: the host rows are
  copied (or gathered) into a reusable pinned staging buffer, sent with a
  ``non_blocking`` copy, and the loader waits for *its own* stream only. The
  default stream is never blocked by a load, so loads overlap compute; a
  loaded tensor is complete before the loader hands it over, so compute
  needs no event to wait for.
* Every loaded tensor is marked ``record_stream(default stream)``: its
  memory was allocated on the copy stream, and torch's caching allocator
  must not give it to the next load while compute still reads it.
* After each chunk's compute the engine calls :meth:`CudaDevice.synchronize`
  (the compute time it measures feeds profile-guided ordering, and the
  ledger then refunds bytes only when the GPU is done with them).
* Write-backs (``copy_out``, ``add_out``) are blocking device-to-host copies
  on the default stream.

Profiling: compute spans are timed with CUDA events on the default stream
and handed to the profiler, mapped onto ``perf_counter`` seconds, at the end
of each pass (:meth:`flush_spans`); loads are timed on the wall clock of the
loader thread, which waits for each copy to finish.

Its unit tests run where torch sees a CUDA GPU and skip elsewhere;
``benchmarks/gpu_check.py`` runs them and times a GCN epoch on the GPU.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np
import torch

from sagann import profiler
from sagann.scheduler.devices import Device
from sagann.units import format_bytes, parse_bytes, tensor_bytes

__all__ = ["CudaDevice", "cuda_available"]

# a budget left unset is this share of the GPU's free memory when the device is made:
# torch's caching allocator, cuBLAS workspaces and fragmentation need the rest
FREE_MEMORY_SHARE = 0.85


def cuda_available() -> bool:
    """Is there a CUDA GPU torch can use (a CPU build of torch says no)?"""
    return bool(torch.cuda.is_available())


class _PinnedStaging:
    """One pinned host buffer, grown to the largest transfer seen; used under the device's load lock.

    Pinned (page-locked) memory is what lets a host-to-device copy run as
    DMA beside compute; allocating it is slow (a driver call), so it is
    allocated once and reused. The loader waits for each copy before the
    buffer is reused, so one buffer is enough.
    """

    def __init__(self):
        self._buf: torch.Tensor | None = None

    def view(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """A pinned tensor of ``shape``/``dtype`` over the buffer (its contents are garbage)."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
        if self._buf is None or self._buf.numel() < nbytes:
            self._buf = torch.empty(max(nbytes, 1 << 20), dtype=torch.uint8, pin_memory=True)
        return self._buf[:nbytes].view(dtype).view(shape)

    @property
    def nbytes(self) -> int:
        return 0 if self._buf is None else int(self._buf.numel())


class _EventSpans:
    """Spans of asynchronous GPU work, timed with CUDA events and resolved to perf_counter seconds later."""

    def __init__(self, device: "CudaDevice"):
        self.device = device
        self._pending: list[tuple] = []
        self._ref: tuple[torch.cuda.Event, float] | None = None
        self._lock = threading.Lock()

    def _reference(self, stream) -> tuple[torch.cuda.Event, float]:
        """An event whose completion time on the perf_counter clock is known (set once per recorder)."""
        rec = profiler.active_recorder()
        if self._ref is None or self._ref[2] is not rec:
            ref = torch.cuda.Event(enable_timing=True)
            ref.record(stream)
            ref.synchronize()
            self._ref = (ref, time.perf_counter(), rec)
        return self._ref[:2]

    @contextmanager
    def span(self, kind: str, track: str, chunk, nbytes: int, layer, phase: str):
        if not profiler.enabled():
            yield
            return
        stream = torch.cuda.current_stream(self.device.torch_device)
        ref = self._reference(stream)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        rec = profiler.active_recorder()
        nvtx = getattr(rec, "_nvtx_module", None)  # Nsight shows the same names
        if nvtx is not None:
            nvtx.range_push(f"{kind} {layer or ''} {phase} {chunk}")
        start.record(stream)
        try:
            yield
        finally:
            end.record(stream)
            if nvtx is not None:
                nvtx.range_pop()
            epoch = profiler.active_recorder().epoch
            with self._lock:
                self._pending.append((ref, start, end, kind, track, chunk, nbytes, layer, phase, epoch))

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for (ref, t_ref), start, end, kind, track, chunk, nbytes, layer, phase, epoch in pending:
            end.synchronize()
            t0 = t_ref + ref.elapsed_time(start) / 1e3
            t1 = t_ref + ref.elapsed_time(end) / 1e3
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

    Raises:
        RuntimeError: torch sees no CUDA GPU (a CPU build of torch, or no
            driver); use :class:`~sagann.CpuDevice` there.
    """

    def __init__(self, memory_budget: int | str | None = None, index: int = 0, name: str | None = None):
        if not cuda_available():
            raise RuntimeError(
                "CudaDevice needs a CUDA GPU, but torch sees none (torch "
                f"{torch.__version__}{', a CPU build' if torch.version.cuda is None else ''}); "
                "use sagann.CpuDevice(memory_budget=...) on this machine"
            )
        count = torch.cuda.device_count()
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise ValueError(f"CudaDevice index must be an int in [0, {count}) on this machine, got {index!r}")
        torch_device = torch.device("cuda", index)
        if memory_budget is None:
            free, _ = torch.cuda.mem_get_info(torch_device)
            memory_budget = int(free * FREE_MEMORY_SHARE)
        super().__init__(name or f"cuda{index}", parse_bytes(memory_budget), auto_named=name is None)
        self.torch_device = torch_device
        self.index = index
        self.copy_stream = torch.cuda.Stream(device=torch_device)
        self._staging = _PinnedStaging()
        self._load_lock = threading.Lock()  # one load at a time uses the staging buffer
        self._events = _EventSpans(self)

    # ---- properties the engine reads -----------------------------------------------------------
    @property
    def shares_host_memory(self) -> bool:
        return False

    @property
    def overlaps_transfers(self) -> bool:
        return True  # a copy engine moves the data beside the SMs

    @property
    def kernel_backend(self) -> str:
        """The numba.cuda kernels where numba can drive this GPU, else torch's ops (``reference``)."""
        try:
            from numba import cuda

            if cuda.is_available():
                import sagann.kernels.cuda  # noqa: F401

                return "cuda"
        except Exception:  # noqa: BLE001 - no numba-cuda or no driver for it: torch's ops work anyway
            pass
        return "reference"

    @property
    def _compute_stream(self) -> torch.cuda.Stream:
        return torch.cuda.default_stream(self.torch_device)

    # ---- loads: the loader thread, on the copy stream --------------------------------------------
    def _send(self, staged: torch.Tensor, nbytes: int) -> torch.Tensor:
        """``staged`` (pinned host, or already on a GPU) onto this device on the copy stream; complete on return."""
        with torch.cuda.stream(self.copy_stream):
            out = torch.empty(staged.shape, dtype=staged.dtype, device=self.torch_device)
            out.copy_(staged, non_blocking=True)
        self.copy_stream.synchronize()  # the loader waits for its own copy only: compute runs on
        out.record_stream(self._compute_stream)  # compute reads it there: no reuse before that is done
        self._count_in(nbytes)
        return out

    def copy_in(self, host: torch.Tensor) -> torch.Tensor:
        host = host.detach()
        if host.device.type == "cuda":  # already on a GPU (e.g. another device's block)
            return self.copy_from_peer(host, None)
        with self._load_lock:
            src = host if host.is_pinned() else self._staging.view(tuple(host.shape), host.dtype).copy_(host)
            return self._send(src, tensor_bytes(host))

    def gather_in(self, host: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Gather rows straight into pinned staging on the host, then one copy to the GPU."""
        host = host.detach()
        if host.device.type == "cuda":
            return self.copy_in(host.index_select(0, index.to(host.device)))
        shape = (int(index.numel()),) + tuple(host.shape[1:])
        with self._load_lock:
            staged = torch.index_select(host, 0, index, out=self._staging.view(shape, host.dtype))
            return self._send(staged, tensor_bytes(staged))

    def chunk_tensors(self, chunk, source_major: bool = False):
        from sagann.kernels.graph import ChunkTensors

        host = ChunkTensors.from_chunk(chunk, "cpu", source_major=source_major)
        move = lambda t: None if t is None else self.copy_in(t)  # noqa: E731
        return ChunkTensors(
            dst_ptr=move(host.dst_ptr), dst_idx=move(host.dst_idx), src_idx=move(host.src_idx),
            src_ptr=move(host.src_ptr), src_perm=move(host.src_perm),
            num_src=host.num_src, num_dst=host.num_dst, src_dst=move(host.src_dst),
        )

    def copy_from_peer(self, t: torch.Tensor, source: Device | None) -> torch.Tensor:
        """A chain hop: GPU to GPU on this device's copy stream (peer access where the GPUs have it)."""
        nbytes = tensor_bytes(t)
        with torch.cuda.stream(self.copy_stream):
            if t.device.type == "cuda":  # the copy must not start before the producer's stream wrote t
                self.copy_stream.wait_stream(torch.cuda.current_stream(t.device))
            out = t.detach().to(self.torch_device, non_blocking=True, copy=True)
        self.copy_stream.synchronize()
        out.record_stream(self._compute_stream)
        if source is not None:
            self._count_peer_in(nbytes)
        return out

    # ---- compute side ------------------------------------------------------------------------
    def copy_out(self, dev: torch.Tensor, host_out: torch.Tensor) -> None:
        host_out.copy_(dev)  # device to pageable host memory: blocking

    def add_out(self, dev: torch.Tensor, host_out: torch.Tensor) -> None:
        host_out.add_(dev.to(host_out.device))

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.torch_device)

    def span(self, kind: str, track: str, chunk=None, nbytes: int = 0, layer: str | None = None, phase: str = "forward"):
        if track == "compute":
            return self._events.span(kind, track, chunk, nbytes, layer, phase)
        return super().span(kind, track, chunk, nbytes, layer, phase)

    def flush_spans(self) -> None:
        self._events.flush()

    def __repr__(self) -> str:
        return f"CudaDevice({self.name!r}, index={self.index}, memory_budget={format_bytes(self.memory_budget)})"
