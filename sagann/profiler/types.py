"""Plain types of the profiler: the span, its kinds and their categories.

The profiler imports no other sagann subpackage (everyone imports it), so a
chunk id is a plain tuple ``(i, j, sub)``; ``sagann.chunks.ChunkId`` is a
NamedTuple and fits as is.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

Seconds = float  # perf_counter clock
ChunkKey = tuple  # (i, j, sub), or a ChunkId

IO_KINDS: tuple[str, ...] = ("h2d", "d2h", "d2d", "disk", "gather")
COMPUTE_KINDS: tuple[str, ...] = (
    "scatter",
    "apply_edge",
    "gather_reduce",
    "apply_vertex",
    "kernel",
    "evict",
    "other",
)
# Order used for stage tables and legends: data movement first, then the
# SAGA stages in the order they run.
KINDS: tuple[str, ...] = (
    "disk",
    "gather",
    "h2d",
    "d2d",
    "d2h",
    "scatter",
    "apply_edge",
    "gather_reduce",
    "apply_vertex",
    "kernel",
    "evict",
    "other",
)
PHASES: tuple[str, ...] = ("forward", "backward")

IO = "io"
COMPUTE = "compute"

_CATEGORY = {**{k: IO for k in IO_KINDS}, **{k: COMPUTE for k in COMPUTE_KINDS}}


def category(kind: str) -> str:
    """``"io"`` or ``"compute"``: which Table-2 column a kind counts towards."""
    try:
        return _CATEGORY[kind]
    except KeyError:
        raise ValueError(_unknown_kind(kind)) from None


def _unknown_kind(kind: object) -> str:
    return f"unknown span kind {kind!r}; use one of {', '.join(KINDS)}"


@dataclass(frozen=True, slots=True)
class Span:
    """Work of one ``kind`` on ``device``/``track`` between ``t0`` and ``t1``.

    Args:
        device: the place that did the work, e.g. ``"cuda:0"``, ``"cpu1"``,
            ``"host"``.
        track: the stream or thread on that device: ``"copy"``,
            ``"compute"``, ``"loader"``...
        kind: one of :data:`KINDS`; :func:`category` maps it to IO/compute.
        chunk: the sub-chunk key ``(i, j, sub)``, or None.
        nbytes: bytes moved (IO) or touched; 0 when not meaningful.
        t0, t1: start and end in seconds on the ``time.perf_counter`` clock.
        epoch: training epoch, see :func:`sagann.profiler.mark_epoch`.
        layer: name of the layer being run, or None.
        phase: ``"forward"`` or ``"backward"``.
    """

    device: str
    track: str
    kind: str
    chunk: ChunkKey | None
    nbytes: int
    t0: Seconds
    t1: Seconds
    epoch: int = 0
    layer: str | None = None
    phase: str = "forward"

    def __post_init__(self) -> None:
        check_fields(self.kind, self.device, self.track, self.chunk, self.nbytes, self.phase)
        if not self.t1 >= self.t0:
            raise ValueError(
                f"{self.kind} span on {self.device}/{self.track} ends before it starts "
                f"(t0={self.t0!r}, t1={self.t1!r}); pass times from one clock, t0 first"
            )

    @property
    def seconds(self) -> Seconds:
        return self.t1 - self.t0

    @property
    def category(self) -> str:
        return _CATEGORY[self.kind]


def check_fields(kind: str, device: str, track: str, chunk: object, nbytes: int, phase: str) -> None:
    """Raise if a span with these fields would be invalid (shared by Span and span())."""
    if kind not in _CATEGORY:
        raise ValueError(_unknown_kind(kind))
    if nbytes < 0:
        raise ValueError(f"{kind} span on {device}/{track}: nbytes={nbytes} < 0")
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; use one of {', '.join(PHASES)}")
    if chunk is not None and not isinstance(chunk, tuple):
        raise TypeError(f"span chunk must be a tuple (i, j, sub) or None, got {type(chunk).__name__}")


def chunk_label(chunk: ChunkKey | None) -> str | None:
    """Readable chunk name, ``E[i,j].sub``, for traces and tables."""
    if chunk is None:
        return None
    if len(chunk) == 3 and all(isinstance(x, Integral) for x in chunk):
        i, j, sub = chunk
        return f"E[{i},{j}].{sub}"
    return str(tuple(chunk))
