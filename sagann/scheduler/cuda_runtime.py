"""The CUDA operations :class:`~sagann.scheduler.cuda.CudaDevice` uses, behind one small interface.

Every stream, event, copy and pinned block of the GPU path goes through a
:class:`Runtime`, so that the order of operations can be checked without a
GPU: tests run the real device, executor and pipeline over a recording
stand-in that logs each call and checks happens-before
(``tests/scheduler/test_stream_protocol.py``). :class:`TorchRuntime` is the
one that drives a GPU.

The protocol (what the device promises, and the stand-in checks):

* a buffer is read (by a copy or a kernel) only after the operation that
  wrote it has completed: on the same stream, or on another stream through
  an event recorded after the write and waited on before the read;
* a buffer is written again (a pinned staging block refilled by the host, a
  device block the allocator hands out again) only after its last reader
  completed: the host waits for an event recorded after the read, or the
  allocator is told the streams that read it (:meth:`Runtime.keep_alive`);
* nobody waits for an event that was never recorded (CUDA would not wait);
* on the hot path the host blocks only on events (never on a whole stream
  or device), and never on the copy it has just issued.

A kernel launch names the buffers it reads (:meth:`Runtime.launch`); on a
GPU that is a no-op (torch launches the kernels itself), for the stand-in
it is the read it checks.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch

__all__ = ["Runtime", "TorchRuntime"]


class Runtime(Protocol):
    """Streams, events, copies and pinned host blocks of one GPU (see the module docstring)."""

    device: torch.device  # where the device buffers live

    def on_device(self, t: torch.Tensor) -> bool:
        """Is ``t`` in device memory (not a host tensor)?"""

    def new_stream(self, role: str) -> Any:
        """A new stream; ``role`` (``"copy"``, ``"compute"``) names it in logs and checks."""

    def current_stream(self) -> Any:
        """The calling thread's current stream on the device (torch's ops run there)."""

    def use_stream(self, stream) -> Any:
        """A context in which ``stream`` is the calling thread's current stream."""

    def new_event(self, timing: bool = False) -> Any:
        """A new event (``timing``: it can be asked for elapsed times)."""

    def record(self, event, stream) -> None:
        """``event`` completes when the work queued on ``stream`` so far has."""

    def wait(self, stream, event) -> None:
        """Work queued on ``stream`` after this starts after ``event`` completes (the host does not block)."""

    def host_wait(self, event) -> None:
        """Block the calling thread until ``event`` completes."""

    def query(self, event) -> bool:
        """Has ``event`` (recorded) completed? The host does not block."""

    def elapsed(self, start, end) -> float:
        """Seconds between two completed timing events."""

    def empty(self, shape, dtype: torch.dtype, stream) -> torch.Tensor:
        """A device buffer for use on ``stream`` (its contents are garbage)."""

    def pinned(self, nbytes: int) -> torch.Tensor:
        """A page-locked host block of ``nbytes`` (uint8): what lets a copy run as DMA beside compute."""

    def host_fill(self, block: torch.Tensor, fill: Callable[[], Any]) -> Any:
        """The host writes into pinned ``block`` by calling ``fill``; its result is returned."""

    def host_read(self, block: torch.Tensor, read: Callable[[], Any]) -> Any:
        """The host reads pinned ``block`` (filled by a device-to-host copy) by calling ``read``."""

    def hand_over(self, block: torch.Tensor) -> None:
        """The calling thread is done with pinned ``block``; another thread may take it (a lock orders the two)."""

    def take_over(self, block: torch.Tensor) -> None:
        """The calling thread takes pinned ``block`` after the thread that handed it over."""

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream) -> None:
        """Queue ``dst.copy_(src)`` on ``stream``: host (pinned) to device, device to device, or device to pinned host."""

    def launch(self, stream, reads: Sequence[torch.Tensor]) -> None:
        """Name the buffers the kernels about to be queued on ``stream`` read."""

    def keep_alive(self, t: torch.Tensor, stream) -> None:
        """``t`` (allocated on another stream) is read on ``stream``: the allocator must not reuse it before that is done."""

    def device_synchronize(self) -> None:
        """Block until every stream of the device is idle (never on the hot path)."""

    def stream_synchronize(self, stream) -> None:
        """Block until ``stream`` is idle (never on the hot path)."""


class TorchRuntime:
    """:class:`Runtime` over ``torch.cuda`` for GPU ``index``."""

    def __init__(self, index: int = 0):
        self.device = torch.device("cuda", index)

    def on_device(self, t: torch.Tensor) -> bool:
        return t.device.type == "cuda"

    def new_stream(self, role: str) -> torch.cuda.Stream:
        return torch.cuda.Stream(device=self.device)

    def current_stream(self) -> torch.cuda.Stream:
        return torch.cuda.current_stream(self.device)

    @contextmanager
    def use_stream(self, stream) -> Iterator[None]:
        with torch.cuda.stream(stream):
            yield

    def new_event(self, timing: bool = False) -> torch.cuda.Event:
        return torch.cuda.Event(enable_timing=timing)

    def record(self, event, stream) -> None:
        event.record(stream)

    def wait(self, stream, event) -> None:
        stream.wait_event(event)

    def host_wait(self, event) -> None:
        event.synchronize()

    def query(self, event) -> bool:
        return event.query()

    def elapsed(self, start, end) -> float:
        return start.elapsed_time(end) / 1e3

    def empty(self, shape, dtype: torch.dtype, stream) -> torch.Tensor:
        with torch.cuda.stream(stream):  # the caching allocator keys blocks by the current stream
            return torch.empty(shape, dtype=dtype, device=self.device)

    def pinned(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def host_fill(self, block: torch.Tensor, fill: Callable[[], Any]) -> Any:
        return fill()

    def host_read(self, block: torch.Tensor, read: Callable[[], Any]) -> Any:
        return read()

    def hand_over(self, block: torch.Tensor) -> None:
        """Ordered by the lock of the one handing blocks out."""

    def take_over(self, block: torch.Tensor) -> None:
        """Ordered by the lock of the one handing blocks out."""

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream) -> None:
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)

    def launch(self, stream, reads: Sequence[torch.Tensor]) -> None:
        """torch queues the kernels itself, ordered by the device's waits."""

    def keep_alive(self, t: torch.Tensor, stream) -> None:
        if t.device == self.device:
            t.record_stream(stream)

    def device_synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def stream_synchronize(self, stream) -> None:
        stream.synchronize()
