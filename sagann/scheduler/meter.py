"""Device memory measured beside the ledger: what the allocator really handed out during each pass.

The ledger (:class:`~sagann.scheduler.devices.MemoryLedger`) holds the bytes
the passes *charge*, from the memory model; it cannot overrun its budget by
construction, so it cannot show that the model is wrong. A meter counts
allocations independently:

* on a GPU, torch's caching allocator: ``reset_peak_memory_stats`` before a
  pass, ``max_memory_allocated`` after it, less what was allocated when the
  pass began (:class:`CudaMeter`);
* on the CPU virtual device, every tensor storage that a torch op creates
  in a thread working for the device while a pass runs, with its lifetime
  (a weak reference to the storage fires when the memory is freed)
  (:class:`CpuMeter`). The device's memory at a moment is the sum of the
  storages made during the pass that are alive then; storages that outlive
  the pass (output rows, saved activations, gradients handed to the host)
  are the host's and are left out of the whole pass, as is everything that
  existed before it.

What the CPU meter does not see: memory not allocated by a torch op
(numpy arrays inside numba kernels, ``torch.from_numpy`` of such an array)
and an op's internal workspace freed before it returns. See
docs/decisions.md, "Measured device memory".
"""
from __future__ import annotations

import functools
import sys
import threading
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["allocated_peak", "CpuMeter", "CudaMeter", "Meter", "metered_pass", "watched"]


class Meter:
    """Peak device bytes measured over passes; ``peak`` since creation or the last :meth:`reset_peak`."""

    def __init__(self):
        self.peak = 0
        self.passes = 0  # passes measured since creation
        self._depth = threading.local()  # a pass inside a pass (a hook pre-pass) is part of it

    @contextmanager
    def measure(self) -> Iterator[None]:
        """Measure one pass (re-entrant per thread: only the outermost one counts)."""
        depth = getattr(self._depth, "n", 0)
        self._depth.n = depth + 1
        try:
            if depth:
                yield
            else:
                with self._pass():
                    yield
        finally:
            self._depth.n = depth

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Count what this thread allocates while a pass runs (a loader thread's loads); a no-op by default."""
        yield

    @contextmanager
    def paused(self) -> Iterator[None]:
        """What this thread allocates inside is not the device's (a measurement's own buffers)."""
        yield

    def _pass(self):
        raise NotImplementedError

    def _record(self, pass_peak: int) -> None:
        self.peak = max(self.peak, int(pass_peak))
        self.passes += 1

    def reset_peak(self) -> None:
        self.peak = 0


class CudaMeter(Meter):
    """torch's CUDA allocator statistics around each pass (the whole GPU: logical devices sharing it share them).

    :meth:`paused` leaves a window out of the pass's peak (a transfer-cost
    measurement the planner makes inside the pass): the peak reached before
    the window is kept, and the allocator's peak statistic restarts after
    it, once the window's buffers are freed. The statistic is the whole
    GPU's, so the window must be synchronous, as measurements are.
    """

    def __init__(self, torch_device: torch.device):
        super().__init__()
        self.torch_device = torch_device
        self._open: list[int] | None = None  # [bytes allocated when the pass began, its peak before the last pause]

    def _peak_so_far(self, base: int) -> int:
        torch.cuda.synchronize(self.torch_device)
        return torch.cuda.max_memory_allocated(self.torch_device) - base

    @contextmanager
    def _pass(self) -> Iterator[None]:
        torch.cuda.synchronize(self.torch_device)
        base = torch.cuda.memory_allocated(self.torch_device)
        torch.cuda.reset_peak_memory_stats(self.torch_device)
        self._open = [base, 0]
        try:
            yield
        finally:
            state, self._open = self._open, None
            self._record(max(state[1], self._peak_so_far(base)))

    @contextmanager
    def paused(self) -> Iterator[None]:
        state = self._open
        if state is None:  # no pass is being measured
            yield
            return
        state[1] = max(state[1], self._peak_so_far(state[0]))
        try:
            yield
        finally:
            torch.cuda.synchronize(self.torch_device)
            torch.cuda.reset_peak_memory_stats(self.torch_device)  # the window's own peak is not the pass's


# Code in these modules allocates host memory (HostMemory's buffers, rows read back from spill files):
# on the CPU virtual device it is the same RAM, but no GPU would hold it, and the ledger does not charge it.
HOST_MODULES = frozenset({"sagann.scheduler.host", "sagann.engine.host_ops"})


def _host_allocation() -> bool:
    """Is the innermost sagann frame calling the op in a host module (the op's result a host tensor)?"""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_globals.get("__name__", "")
        if name.startswith("sagann.") and name != __name__:
            return name in HOST_MODULES
        f = f.f_back
    return False


class _Allocations(TorchDispatchMode):
    """Reports every CPU storage an op creates (one not among its inputs' storages) to a meter."""

    def __init__(self, meter: "CpuMeter"):
        super().__init__()
        self.meter = meter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.meter.counting() and _may_allocate(func):
            kind = self.meter.device_type
            outputs = _tensors(out, [])
            if kind == "cpu":
                outputs = [t for t in outputs if t.is_cpu]
            elif kind is not None:
                outputs = [t for t in outputs if t.device.type == kind]
            if outputs:
                inputs = {_cdata(t) for t in _tensors(kwargs, _tensors(args, []))}
                fresh = [(t, key) for t in outputs if (key := _cdata(t)) is not None and key not in inputs]
                if fresh and not _host_allocation():
                    for t, key in fresh:
                        self.meter.allocated(t.untyped_storage(), key)
        return out


_ALLOCATES: dict = {}  # op -> may it return a tensor on storage of its own (not a view of, or an input written in place)?


def _may_allocate(func) -> bool:
    """Does the op's schema have a result that aliases no argument? Views (``view``, ``slice``, ``detach``)
    and in-place or ``out=`` ops return their inputs' storages, which the meter leaves out anyway."""
    known = _ALLOCATES.get(func)
    if known is None:
        try:
            known = any(r.alias_info is None for r in func._schema.returns)
        except AttributeError:  # not an aten op overload: look at its results
            known = True
        _ALLOCATES[func] = known
    return known


def _tensors(obj, found: list) -> list:
    """The tensors in an op's arguments or results (tensors, lists, tuples and dicts of them), appended to ``found``.

    What ``torch.utils._pytree.tree_leaves`` finds in an aten op's
    arguments, without its generic node lookup: the meter runs on every op of
    a pass, and the pytree walk was a third of a metered step's time.
    """
    if isinstance(obj, torch.Tensor):
        found.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            if isinstance(item, torch.Tensor):
                found.append(item)
            elif isinstance(item, (list, tuple, dict)):
                _tensors(item, found)
    elif isinstance(obj, dict):
        for item in obj.values():
            _tensors(item, found)
    return found


def _cdata(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # no storage (sparse, a functional wrapper)
        return None


class CpuMeter(Meter):
    """Storages made by torch ops in the device's threads during a pass, alive at once, less those outliving it."""

    def __init__(self, device_type: str | None = "cpu"):
        super().__init__()
        self.device_type = device_type  # the storages counted: this device type's (None: any)
        self.open = False  # a pass is being measured
        self._lock = threading.RLock()  # RLock: a weakref callback may fire inside allocated() (GC)
        self._events: list[tuple[int, int]] = []  # (serial, +bytes) allocated, (serial, -bytes) freed
        self._live: dict[int, tuple[int, weakref.ref]] = {}  # storage -> (serial, weak reference)
        self._serial = 0
        self._watching = threading.local()
        self._mode = None

    def allocated(self, storage: torch.UntypedStorage, key: int) -> None:
        with self._lock:
            if not self.open or key in self._live:
                return
            nbytes = int(storage.nbytes())
            self._serial += 1
            serial = self._serial
            ref = weakref.ref(storage, functools.partial(self._freed, key, serial, nbytes))
            self._live[key] = (serial, ref)
            self._events.append((serial, nbytes))

    def _freed(self, key: int, serial: int, nbytes: int, _ref) -> None:
        with self._lock:
            held = self._live.get(key)
            if held is not None and held[0] == serial:
                del self._live[key]
                if self.open:
                    self._events.append((serial, -nbytes))

    @contextmanager
    def paused(self) -> Iterator[None]:
        was = getattr(self._watching, "paused", False)
        self._watching.paused = True
        try:
            yield
        finally:
            self._watching.paused = was

    def counting(self) -> bool:
        """Is an allocation in this thread, now, the device's?"""
        return self.open and not getattr(self._watching, "paused", False)

    @contextmanager
    def watching(self) -> Iterator[None]:
        if getattr(self._watching, "on", False):  # this thread already reports (a pass's own thread)
            yield
            return
        self._watching.on = True
        try:
            with _Allocations(self):
                yield
        finally:
            self._watching.on = False

    @contextmanager
    def _pass(self) -> Iterator[None]:
        with self._window() as log:
            yield
        events, live = log
        self._record(pass_peak(events, {serial for serial, _ in live.values()}))

    @contextmanager
    def _window(self) -> Iterator[list]:
        """Record this thread's allocations inside; the list then holds the events and the storages still alive."""
        log: list = []
        with self._lock:
            self._events, self._live, self.open = [], {}, True
        try:
            with self.watching():
                yield log
        finally:
            with self._lock:
                self.open = False
                log += [self._events, self._live]
                self._events, self._live = [], {}


def allocated_peak(fn: Callable[[], object]) -> int:
    """Most bytes torch ops allocated in this thread and held at once while ``fn`` ran, what it returns included."""
    meter = CpuMeter(device_type=None)
    with meter._window() as log:
        result = fn()
    del result
    return pass_peak(log[0], set())


def pass_peak(events: list[tuple[int, int]], outliving: set[int]) -> int:
    """Most bytes alive at once among allocations (``(serial, +bytes)``, freed ``(serial, -bytes)``) not in ``outliving``."""
    current = peak = 0
    for serial, nbytes in events:
        if serial not in outliving:
            current += nbytes
            peak = max(peak, current)
    return peak


def metered_pass(fn: Callable) -> Callable:
    """Decorate a pass whose first argument is a layer call: its device's meter measures it."""

    @functools.wraps(fn)
    def run(call, *args, **kwargs):
        meter = call.device.meter
        if meter is None:
            return fn(call, *args, **kwargs)
        with meter.measure():
            return fn(call, *args, **kwargs)

    return run


def watched(meter: Meter | None, job: Callable) -> Callable:
    """``job``, run so that ``meter`` counts what it allocates (a load in the loader thread)."""
    if meter is None:
        return job

    def run():
        with meter.watching():
            return job()

    return run
