"""Recording spans: the Recorder, the active-recorder switch and ``span()``.

The active recorder is one module-level global, not a context variable: the
loader and compute threads an engine starts must record into the recorder
the training loop activated. Profiling is off by default; then ``span()``
does one global check and hands back a shared no-op context manager.
"""
from __future__ import annotations

import threading
from numbers import Integral
from time import perf_counter
from types import TracebackType
from typing import NamedTuple

from .types import ChunkKey, Seconds, Span, check_fields

_active: Recorder | None = None  # the recorder span()/record_interval() write to
_stack: list[Recorder] = []  # started recorders, innermost last
_stack_lock = threading.Lock()
_nvtx = None  # torch.cuda.nvtx while an NVTX-emitting recorder is active, else None


def _cuda_nvtx():
    """torch.cuda.nvtx where CUDA is usable (NVTX needs the CUDA runtime), else None."""
    import torch

    return torch.cuda.nvtx if torch.cuda.is_available() else None


class Recorder:
    """Thread-safe list of spans, plus the epoch number to tag new spans with.

    Use through :func:`profile`: ``with profile() as prof: ...`` or
    ``prof = profile(); prof.start(); ...; prof.stop()``. Recorders nest:
    stopping the inner one re-activates the outer one.
    """

    def __init__(self, nvtx: bool | None = None) -> None:
        if nvtx not in (None, True, False):
            raise ValueError(f"profile(nvtx=...): expected None (auto), True or False, got {nvtx!r}")
        self.nvtx = nvtx  # None: emit NVTX ranges when CUDA is available
        # Spans, or for span() blocks the raw field tuple: building the frozen
        # dataclass costs ~1 µs, so it is deferred to spans(), off the hot path.
        self._spans: list[Span | tuple] = []
        self._counters: dict[int, dict[str, int]] = {}  # epoch -> name -> total
        self._lock = threading.Lock()
        self._started = False
        self._nvtx_module = None  # what start() resolved nvtx to
        self.epoch = 0

    def record(self, span: Span) -> None:
        """Append ``span`` (safe from any thread; active or not)."""
        with self._lock:
            self._spans.append(span)

    def spans(self) -> list[Span]:
        """A copy of the spans recorded so far, in recording order."""
        with self._lock:
            items = self._spans
            for k, item in enumerate(items):
                if type(item) is tuple:
                    items[k] = Span(*item)
            return list(items)

    def set_epoch(self, n: int) -> None:
        """Tag spans that start from now on with epoch ``n``."""
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 0:
            raise ValueError(f"Recorder.set_epoch: epoch must be an int >= 0, got {n!r}")
        self.epoch = int(n)

    def add(self, name: str, value: int) -> None:
        """Add ``value`` to the counter ``name`` of the current epoch (e.g. bytes a full schedule moves)."""
        with self._lock:
            per_epoch = self._counters.setdefault(self.epoch, {})
            per_epoch[name] = per_epoch.get(name, 0) + int(value)

    def counters(self, name: str) -> dict[int, int]:
        """Epoch -> total of counter ``name``."""
        with self._lock:
            return {e: c[name] for e, c in self._counters.items() if name in c}

    def clear(self) -> None:
        """Drop all recorded spans and counters (the epoch counter is kept)."""
        with self._lock:
            self._spans.clear()
            self._counters.clear()

    @property
    def active(self) -> bool:
        return _active is self

    def start(self) -> Recorder:
        """Make this the active recorder until :meth:`stop`."""
        global _active, _nvtx
        nvtx = None if self.nvtx is False else _cuda_nvtx()
        if self.nvtx is True and nvtx is None:
            raise RuntimeError("profile(nvtx=True): NVTX needs CUDA, and torch.cuda.is_available() is False; "
                               "use nvtx=None to emit ranges only where CUDA is present")
        with _stack_lock:
            if self._started:
                raise RuntimeError("Recorder.start: already started; create a new one with sagann.profiler.profile()")
            self._started = True
            self._nvtx_module = nvtx
            _stack.append(self)
            _active = self
            _nvtx = nvtx
        return self

    def stop(self) -> None:
        """Deactivate; the recorder started before this one becomes active again."""
        global _active, _nvtx
        with _stack_lock:
            if not self._started:
                raise RuntimeError("Recorder.stop: this recorder was never started; call start() first")
            self._started = False
            # Remove this recorder wherever it is, so out-of-order stops of
            # nested recorders still leave the innermost live one active.
            for k in range(len(_stack) - 1, -1, -1):
                if _stack[k] is self:
                    del _stack[k]
                    break
            _active = _stack[-1] if _stack else None
            _nvtx = _active._nvtx_module if _active is not None else None

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __len__(self) -> int:
        return len(self._spans)

    def __repr__(self) -> str:
        state = "active" if self.active else ("started" if self._started else "stopped")
        return f"Recorder({len(self)} spans, epoch={self.epoch}, {state})"


def profile(nvtx: bool | None = None) -> Recorder:
    """A new recorder; activate it with ``with`` or ``start()``.

    ``nvtx``: None (default) also emits NVTX ranges when CUDA is available,
    True requires them, False never emits them.
    """
    return Recorder(nvtx)


def enabled() -> bool:
    """Whether a recorder is active (spans are being recorded)."""
    return _active is not None


def count(name: str, value: int) -> None:
    """Add to a per-epoch counter of the active recorder; nothing when profiling is off."""
    rec = _active
    if rec is not None:
        rec.add(name, value)


def active_recorder() -> Recorder | None:
    """The recorder spans go to now, or None when profiling is off."""
    return _active


def mark_epoch(n: int) -> None:
    """Tag spans that start from now on with epoch ``n`` (no-op when off)."""
    rec = _active
    if rec is not None:
        rec.set_epoch(n)


class _NoSpan:
    """What ``span()`` returns when profiling is off: does nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    def __repr__(self) -> str:
        return "<sagann.profiler no-op span>"


_NO_SPAN = _NoSpan()


class _SpanFields(NamedTuple):
    """What a span records besides its times and epoch."""

    kind: str
    device: str
    track: str
    chunk: ChunkKey | None
    nbytes: int
    layer: str | None
    phase: str


class _TimedSpan:
    """Times its ``with`` body with perf_counter and records it on exit."""

    __slots__ = ("_rec", "_fields", "_epoch", "_t0", "_nvtx")

    def __init__(self, rec: Recorder, fields: _SpanFields, nvtx=None):
        check_fields(fields.kind, fields.device, fields.track, fields.chunk, fields.nbytes, fields.phase)
        self._rec = rec
        self._fields = fields
        self._nvtx = nvtx

    def __enter__(self) -> None:
        self._epoch = self._rec.epoch
        if self._nvtx is not None:
            self._nvtx.range_push(nvtx_name(self._fields.kind, self._fields.chunk))
        self._t0 = perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        t1 = perf_counter()
        if self._nvtx is not None:
            self._nvtx.range_pop()
        # Recorded even when the body raised: the time was spent.
        rec, f = self._rec, self._fields
        with rec._lock:
            rec._spans.append((f.device, f.track, f.kind, f.chunk, f.nbytes, self._t0, t1, self._epoch, f.layer, f.phase))


def span(
    kind: str,
    device: str,
    track: str,
    chunk: ChunkKey | None = None,
    nbytes: int = 0,
    layer: str | None = None,
    phase: str = "forward",
):
    """Context manager that records its body as a :class:`Span`.

    Costs one global check when profiling is off. Does not block or
    synchronise: around asynchronous work (CUDA launches) it times the
    launch only; time such work with events and :func:`record_interval`.

    Example::

        with span("h2d", "cpu0", "copy", chunk=(0, 1, 0), nbytes=x.nbytes):
            dst.copy_(x)
    """
    rec = _active
    if rec is None:
        return _NO_SPAN
    return _TimedSpan(rec, _SpanFields(kind, device, track, chunk, nbytes, layer, phase), _nvtx)


def nvtx_call(kind: str, chunk: ChunkKey | None, fn):
    """``fn()`` inside an NVTX range named like its span, where NVTX ranges are on; plain ``fn()`` elsewhere.

    For work whose span is recorded afterwards with :func:`record_interval`
    (a load timed by its own clock): Nsight still sees it under the span's name.
    """
    nvtx = _nvtx
    if nvtx is None:
        return fn()
    nvtx.range_push(nvtx_name(kind, chunk))
    try:
        return fn()
    finally:
        nvtx.range_pop()


def nvtx_name(kind: str, chunk: ChunkKey | None) -> str:
    """The NVTX range name of a span: its kind, then its chunk id if any ("h2d 2,0,1")."""
    return kind if chunk is None else f"{kind} {','.join(map(str, chunk))}"


def record_interval(
    kind: str,
    device: str,
    track: str,
    t0: Seconds,
    t1: Seconds,
    *,
    chunk: ChunkKey | None = None,
    nbytes: int = 0,
    layer: str | None = None,
    phase: str = "forward",
    epoch: int | None = None,
) -> None:
    """Record a span timed elsewhere (e.g. CUDA events mapped to perf_counter seconds).

    ``epoch`` defaults to the active recorder's current epoch. No-op when off.
    """
    rec = _active
    if rec is None:
        return
    rec.record(Span(device, track, kind, chunk, nbytes, t0, t1,
                    rec.epoch if epoch is None else epoch, layer, phase))
