"""A recording stand-in of the CUDA runtime: runs CudaDevice on CPU tensors and checks its stream protocol.

Every call of :class:`~sagann.scheduler.cuda_runtime.Runtime` is logged and
placed in a happens-before order kept with vector clocks: one clock per
stream and one per host thread. An operation queued on a stream comes after
the stream's previous operation and after everything the queuing thread
knew had happened; ``record`` stamps an event with its stream's clock,
``wait`` joins it into a stream, ``host_wait`` into the thread. Copies run at
once on the CPU (the numbers are right whatever the order), so what this
checks is the order the device *asked for*, which a GPU would honour and no
more:

* **read after write**: a copy or kernel reading a buffer comes after the
  operation that last wrote it;
* **reuse after read**: a write into a buffer (a staging block refilled by
  the host, a device block the caching allocator hands out again) comes after
  every earlier read of it. The allocator is modelled as torch's: a freed
  block is reused by the next allocation on its stream, in stream order,
  and after the streams named by ``keep_alive`` finished what they had
  queued when it was freed;
* **host hand-overs**: a pinned block passes between host threads only
  through ``hand_over``/``take_over`` (the staging ring's lock);
* **recorded events only**: no ``wait``/``host_wait`` on an event never recorded;
* **no blocking on the hot path**: ``device_synchronize`` and
  ``stream_synchronize`` are violations (the host may block on events only);
* **torch's ops are kernels**: while a stream of the device is current
  (``use_stream``), each torch op on device tensors is logged as a kernel on
  that stream reading them (a launch names what a whole sub-chunk reads);
* **no hidden syncs in kernels**: while a stream of the device is current, reading
  a device tensor's value on the host (``int(t)``, ``t.item()``, ``t.tolist()``,
  ...) or moving a host tensor to the device with torch's own ``.to`` are
  violations (on a GPU both block the host). Tensors computed from device
  tensors inside a launch count as device tensors.

Violations are collected in :attr:`Hub.violations` (with the operation that
broke the rule); tests assert the list is empty, or that a reintroduced bug
lands in it.
"""
from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

_READS = {"item", "__int__", "__float__", "__bool__", "__index__", "tolist", "cpu"}  # not numpy: how the stand-in's CPU kernels read device tensors
_MOVES = {"to", "cuda"}
# metadata and aliasing: no kernel runs
_NO_KERNEL = {"__get__", "untyped_storage", "data_ptr", "size", "dim", "stride", "numel", "element_size", "is_contiguous",
              "storage_offset", "is_pinned", "__len__", "__repr__", "__format__", "detach", "view", "requires_grad_", "__setstate__",
              "__hash__", "register_hook", "retain_grad", "__reduce_ex__"}


@dataclass(frozen=True)
class Stream:
    """A stream handle; like torch's, two handles of one stream are equal but not the same object."""

    name: str
    role: str
    gpu: int

    def __repr__(self) -> str:
        return self.name


@dataclass(eq=False)
class Event:
    name: str
    stamp: "Op | None" = None  # the record operation it stands for (the latest record)
    wall: float = 0.0


@dataclass(eq=False)
class Op:
    kind: str
    own: object  # the stream or thread whose clock this op advanced
    clock: dict
    thread: str
    detail: str = ""
    in_flight: int = 0  # host waits: copy-stream ops queued that the waiting thread still does not know finished

    def before(self, clock: dict) -> bool:
        """Does this op happen before (or at) a point with vector ``clock``?"""
        return clock.get(self.own, 0) >= self.clock[self.own]

    def __repr__(self) -> str:
        return f"{self.kind}[{self.detail}] by {self.thread}"


@dataclass(eq=False)
class Buf:
    name: str
    kind: str  # "device" or "pinned"
    stream: Stream | None  # the stream a device block was allocated for
    nbytes: int = 0
    last_write: Op | None = None
    reads: list = field(default_factory=list)
    kept_for: set = field(default_factory=set)  # streams named by keep_alive


class Hub:
    """The checker shared by every runtime of one test (several GPUs, several logical devices)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.clocks: dict[object, dict] = {}
        self.log: list[Op] = []
        self.violations: list[str] = []
        self.buffers: dict[int, Buf] = {}  # storage data_ptr -> the buffer living there
        self.derived: set[int] = set()  # storages of tensors computed from device tensors inside launches
        # device bytes alive (device blocks and tensors computed from them), as torch's memory_allocated counts them: a
        # storage counts until the host drops its last reference; peak_bytes is the most at once since reset_peak()
        self.live_bytes = self.peak_bytes = 0
        self.pools: dict[Stream, list[tuple[Buf, dict]]] = {}
        self.handoffs: dict[int, dict] = {}  # pinned block -> clock of the host's last hand-over of it  # freed device blocks per stream, with their free clocks
        self._ids = itertools.count()
        self.local = threading.local()

    # ---- clocks ------------------------------------------------------------------------------------
    def _thread(self) -> str:
        return threading.current_thread().name

    def _clock(self, who) -> dict:
        return self.clocks.setdefault(who, {who: 0})

    @staticmethod
    def _join(into: dict, other: dict) -> None:
        for k, v in other.items():
            if into.get(k, 0) < v:
                into[k] = v

    def host_op(self, kind: str, detail: str = "") -> Op:
        h = ("host", self._thread())
        c = self._clock(h)
        c[h] += 1
        op = Op(kind, h, dict(c), self._thread(), detail)
        self.log.append(op)
        return op

    def stream_op(self, stream: Stream, kind: str, detail: str = "") -> Op:
        c = self._clock(stream)
        self._join(c, self._clock(("host", self._thread())))  # queued after what the queuing thread knew
        c[stream] = c.get(stream, 0) + 1
        op = Op(kind, stream, dict(c), self._thread(), detail)
        self.log.append(op)
        return op

    def note_in_flight(self, op: Op) -> None:
        """After a host wait: how many queued copy-stream ops it left running (0 for every wait: lockstep)."""
        known = self._clock(("host", self._thread()))
        op.in_flight = sum(c[s] - known.get(s, 0) for s, c in self.clocks.items() if isinstance(s, Stream) and s.role == "copy")

    def flag(self, rule: str, op, what: str) -> None:
        self.violations.append(f"{rule}: {what} ({op})")

    # ---- buffers -----------------------------------------------------------------------------------
    def buf_of(self, t: torch.Tensor) -> Buf | None:
        ptr = _ptr(t)
        return self.buffers.get(ptr) if ptr else None

    def is_device(self, t: torch.Tensor) -> bool:
        ptr = _ptr(t)
        b = self.buffers.get(ptr) if ptr else None
        return (b is not None and b.kind == "device") or (ptr in self.derived)

    def read(self, t: torch.Tensor, op: Op) -> None:
        b = self.buf_of(t)
        if b is None:
            return
        if b.last_write is not None and not b.last_write.before(op.clock):
            self.flag("read before write", op, f"{b.name} is read before {b.last_write} completed")
        b.reads.append(op)

    def write(self, t: torch.Tensor, op: Op) -> None:
        b = self.buf_of(t)
        if b is None:
            return
        for r in b.reads:
            if not r.before(op.clock):
                self.flag("reuse before read", op, f"{b.name} is overwritten before its reader {r} completed")
                break
        if b.last_write is not None and not b.last_write.before(op.clock):
            self.flag("write after write", op, f"{b.name} is written before {b.last_write} completed")
        b.last_write, b.reads = op, []

    def register(self, t: torch.Tensor, b: Buf) -> None:
        ptr = _ptr(t)
        if not ptr:
            return
        self.buffers[ptr] = b
        if b.kind == "device":
            b.nbytes = int(t.untyped_storage().nbytes())
            self._alive(b.nbytes)
        weakref.finalize(t.untyped_storage(), self._freed, ptr, b)

    def _alive(self, nbytes: int) -> None:
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def reset_peak(self) -> None:
        with self.lock:
            self.peak_bytes = self.live_bytes

    def _freed(self, ptr: int, b: Buf) -> None:
        with self.lock:
            self.live_bytes -= b.nbytes
            if self.buffers.get(ptr) is b:
                del self.buffers[ptr]
            if b.kind == "device":  # torch's allocator: reusable on its stream, after the kept-for streams' queued work
                snap = {}
                for s in b.kept_for:
                    self._join(snap, self._clock(s))
                self.pools.setdefault(b.stream, []).append((b, snap))

    def reuse(self, stream: Stream) -> Buf | None:
        """A freed block for an allocation on ``stream`` (its history kept), or None."""
        pool = self.pools.get(stream)
        if not pool:
            return None
        b, snap = pool.pop()
        self._join(self._clock(("host", self._thread())), snap)  # the allocator saw those streams' events complete
        return b

    def derive(self, out) -> None:
        for t in _tensors(out):
            ptr = _ptr(t)
            if ptr and ptr not in self.buffers:
                if ptr not in self.derived:
                    self.derived.add(ptr)
                    nbytes = int(t.untyped_storage().nbytes())
                    self._alive(nbytes)
                    weakref.finalize(t.untyped_storage(), self._underived, ptr, nbytes)

    def _underived(self, ptr: int, nbytes: int) -> None:
        with self.lock:
            self.live_bytes -= nbytes
            self.derived.discard(ptr)

    def ops(self, kind: str) -> list[Op]:
        return [op for op in self.log if op.kind == kind]


def _ptr(t) -> int:
    try:
        with torch._C.DisableTorchFunction():  # the checker's own look-ups are no kernels
            return t.untyped_storage().data_ptr()
    except Exception:  # noqa: BLE001 - no storage (sparse, meta)
        return 0


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y)


class _KernelWatch(TorchFunctionMode):
    """While a stream of the device is current: torch's ops on device tensors are kernels queued on it.

    Each such op is logged as a kernel reading the device buffers among its
    arguments; reading a device tensor's value on the host, or moving a host
    tensor to the device with torch's own ``.to``, is a violation.
    """

    def __init__(self, rt: "RecordingRuntime", stream: Stream):
        super().__init__()
        self.rt, self.stream = rt, stream

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        hub = self.rt.hub
        if getattr(hub.local, "inside", False):
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        with hub.lock:
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if first is not None and name in _READS and hub.is_device(first):
                hub.flag("host sync in a kernel", hub.host_op("sync", name), f"Tensor.{name} reads a device tensor's value on the host")
            if first is not None and name in _MOVES and not hub.is_device(first) and self._names_device(args[1:], kwargs):
                hub.flag("pageable copy in a kernel", hub.host_op("sync", name), f"Tensor.{name} moves a host tensor to the device outside the runtime")
            on_device = [t for t in itertools.chain(_tensors(args), _tensors(kwargs)) if hub.is_device(t)]
            if on_device and name not in _NO_KERNEL:
                op = hub.stream_op(self.stream, "torch", f"{name} on {self.stream}")
                for t in on_device:
                    hub.read(t, op)
        out = func(*args, **kwargs)
        if on_device or "device" in kwargs:
            with hub.lock:
                hub.derive(out)
        return out

    def _names_device(self, args, kwargs) -> bool:
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, (torch.device, str)) and torch.device(a) == self.rt.device:
                return True
            if isinstance(a, torch.Tensor):
                return self.rt.hub.is_device(a)
        return False


class RecordingRuntime:
    """One GPU of the stand-in (see the module docstring); several share a :class:`Hub`."""

    def __init__(self, hub: Hub | None = None, gpu: int = 0, kernel_backend: str = "reference"):
        self.hub = hub or Hub()
        self.gpu = gpu
        self.device = torch.device("cpu")
        self.kernel_backend = kernel_backend
        self.default = Stream(f"gpu{gpu}.default", "default", gpu)
        self.streams = [self.default]
        self._local = threading.local()
        self.fail_copy_at: int | None = None  # inject a failure: the n-th copy (0-based) raises
        self._copies = 0

    @contextmanager
    def _inside(self):
        local = self.hub.local
        before = getattr(local, "inside", False)
        local.inside = True
        try:
            yield
        finally:
            local.inside = before

    # ---- streams and events ------------------------------------------------------------------------
    def on_device(self, t: torch.Tensor) -> bool:
        with self.hub.lock:
            return self.hub.is_device(t)

    def new_stream(self, role: str) -> Stream:
        with self.hub.lock:
            s = Stream(f"gpu{self.gpu}.{role}{next(self.hub._ids)}", role, self.gpu)
            self.streams.append(s)
            return s

    def current_stream(self) -> Stream:
        stack = getattr(self._local, "stack", None)
        return dataclasses.replace(stack[-1] if stack else self.default)  # a new handle, as torch.cuda.current_stream gives

    @contextmanager
    def use_stream(self, stream: Stream):
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        self._local.stack.append(stream)
        try:
            with _KernelWatch(self, stream):
                yield
        finally:
            self._local.stack.pop()

    def new_event(self, timing: bool = False) -> Event:
        return Event(f"e{next(self.hub._ids)}")

    def record(self, event: Event, stream: Stream) -> None:
        with self.hub.lock:
            event.stamp = self.hub.stream_op(stream, "record", event.name)
            event.wall = time.perf_counter()

    def wait(self, stream: Stream, event: Event) -> None:
        hub = self.hub
        with hub.lock:
            op = hub.stream_op(stream, "wait", event.name)
            if event.stamp is None:
                hub.flag("wait on an unrecorded event", op, f"{stream} waits on {event.name}, never recorded")
                return
            hub._join(hub._clock(stream), event.stamp.clock)

    def _host_learns(self, event: Event, kind: str, what: str, verb: str):
        """The host learns that ``event`` completed (it waited, or asked): the Op, or None (flagged) if it was never recorded."""
        hub = self.hub
        op = hub.host_op(kind, event.name)
        if event.stamp is None:
            hub.flag(f"{what} an unrecorded event", op, f"the host {verb} {event.name}, never recorded")
            return None
        hub._join(hub._clock(("host", hub._thread())), event.stamp.clock)
        return op

    def host_wait(self, event: Event) -> None:
        with self.hub.lock:
            op = self._host_learns(event, "host_wait", "wait on", "waits on")
            if op is not None:
                self.hub.note_in_flight(op)

    def query(self, event: Event) -> bool:
        """Everything here has completed once recorded: True, and the host now knows what happened before the event."""
        with self.hub.lock:
            return self._host_learns(event, "query", "query of", "queries") is not None

    def elapsed(self, start: Event, end: Event) -> float:
        return end.wall - start.wall  # wall clock of the records: the stand-in runs nothing asynchronously

    def device_synchronize(self) -> None:
        hub = self.hub
        with hub.lock:
            op = hub.host_op("device_synchronize")
            hub.flag("blocking sync", op, f"the host waits for every stream of gpu{self.gpu} (prefetch copies and other logical devices included)")
            for s in self.streams:
                hub._join(hub._clock(("host", hub._thread())), hub._clock(s))
            hub.note_in_flight(op)

    def stream_synchronize(self, stream: Stream) -> None:
        hub = self.hub
        with hub.lock:
            op = hub.host_op("stream_synchronize", stream.name)
            hub.flag("blocking sync", op, f"the host waits for all of {stream} (not for one event)")
            hub._join(hub._clock(("host", hub._thread())), hub._clock(stream))

    # ---- memory ------------------------------------------------------------------------------------
    def empty(self, shape, dtype: torch.dtype, stream: Stream) -> torch.Tensor:
        hub = self.hub
        with self._inside():
            t = torch.empty(shape, dtype=dtype)
        with hub.lock:
            old = hub.reuse(stream)
            b = old or Buf(f"dev{next(hub._ids)}", "device", stream)
            b.kept_for = set()
            hub.register(t, b)
        return t

    def pinned(self, nbytes: int) -> torch.Tensor:
        with self._inside():
            t = torch.empty(nbytes, dtype=torch.uint8)
        with self.hub.lock:
            self.hub.register(t, Buf(f"pinned{next(self.hub._ids)}", "pinned", None))
        return t

    def host_fill(self, block: torch.Tensor, fill):
        hub = self.hub
        with hub.lock:
            hub.write(block, hub.host_op("host_fill", hub.buf_of(block).name))
        with self._inside():
            return fill()

    def host_read(self, block: torch.Tensor, read):
        hub = self.hub
        with hub.lock:
            hub.read(block, hub.host_op("host_read", hub.buf_of(block).name))
        with self._inside():
            return read()

    def hand_over(self, block: torch.Tensor) -> None:
        hub = self.hub
        with hub.lock:
            op = hub.host_op("hand_over", hub.buf_of(block).name)
            hub._join(hub.handoffs.setdefault(_ptr(block), {}), op.clock)

    def take_over(self, block: torch.Tensor) -> None:
        hub = self.hub
        with hub.lock:
            hub.host_op("take_over", hub.buf_of(block).name)
            hub._join(hub._clock(("host", hub._thread())), hub.handoffs.get(_ptr(block), {}))

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream: Stream) -> None:
        hub = self.hub
        with hub.lock:
            n = self._copies
            self._copies += 1
            if self.fail_copy_at is not None and n == self.fail_copy_at:
                raise RuntimeError(f"injected failure of copy {n}")
            sb, db = hub.buf_of(src), hub.buf_of(dst)
            kind = f"{'pinned' if sb is not None and sb.kind == 'pinned' else 'dev' if hub.is_device(src) else 'host'}->{'pinned' if db is not None and db.kind == 'pinned' else 'dev' if hub.is_device(dst) else 'host'}"
            op = hub.stream_op(stream, "copy", f"{kind} {src.dtype} {src.numel() * src.element_size()}B on {stream}")
            if kind == "host->dev":
                hub.flag("pageable copy", op, "a host-to-device copy from pageable (not pinned) memory")
            hub.read(src, op)
            hub.write(dst, op)
        with self._inside():
            dst.copy_(src)

    def launch(self, stream: Stream, reads) -> None:
        hub = self.hub
        with hub.lock:
            op = hub.stream_op(stream, "launch", f"{len(reads)} buffers on {stream}")
            for t in reads:
                hub.read(t, op)

    def keep_alive(self, t: torch.Tensor, stream: Stream) -> None:
        with self.hub.lock:
            b = self.hub.buf_of(t)
            if b is not None:
                b.kept_for.add(stream)
