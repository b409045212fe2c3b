"""Per-epoch statistics in the shape of NeuGraph's Table 2."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .types import IO, KINDS, Seconds, Span

# Spans that put data on a device (or into host RAM from disk) count as
# "bytes moved"; host gathers and write-backs are accounted elsewhere.
MOVED_KINDS: frozenset[str] = frozenset({"h2d", "d2d", "disk"})

SUMMARY_KEYS: tuple[str, ...] = (
    "epoch",
    "io_seconds",
    "compute_seconds",
    "runtime_seconds",
    "overlap",
    "bytes_moved",
    "bytes_moved_full",
    "stages",
    "unaccounted_seconds",
)


def union_seconds(intervals: Iterable[tuple[Seconds, Seconds]]) -> Seconds:
    """Length of the union of ``[t0, t1]`` intervals: time when at least one ran."""
    total = 0.0
    cur0 = cur1 = None
    for t0, t1 in sorted(intervals):
        if cur1 is None or t0 > cur1:
            if cur1 is not None:
                total += cur1 - cur0
            cur0, cur1 = t0, t1
        elif t1 > cur1:
            cur1 = t1
    if cur1 is not None:
        total += cur1 - cur0
    return total


def overlap_ratio(io: Seconds, compute: Seconds, runtime: Seconds) -> float:
    """Fraction of the smaller of IO and compute time hidden behind the other.

    :func:`summarize_epoch` passes the union of all spans as ``runtime``, so
    the figure is exactly ``|IO ∩ compute| / min(|IO|, |compute|)``; with
    the epoch's wall time instead (all a peer's published totals give), time
    outside any span counts against overlap, as explained below.

    NeuGraph's Table 2 reports three wall-clock figures per epoch: IO time,
    compute time and total runtime. With no overlap at all the runtime is at
    least ``io + compute``; with perfect overlap it is ``max(io, compute)``,
    i.e. the smaller of the two has vanished from the runtime entirely. So
    ``io + compute - runtime`` is the time saved by running them together,
    and dividing by ``min(io, compute)`` — the most that could be saved —
    gives 0 for serial execution and 1 for a fully hidden smaller stage.

    The figure is defined from those three columns alone so that it can be
    computed the same way for NeuGraph's published numbers and for peers
    that report only totals. By inclusion–exclusion, when the epoch has no
    idle gaps, ``io + compute - runtime`` is exactly the time IO and compute
    ran concurrently; idle time (nothing running) counts against overlap,
    because time spent waiting is not time hidden. The result is clipped to
    [0, 1] (an idle-heavy epoch would go negative) and is 0 when either
    stage took no time, since there is then nothing to hide.
    """
    smaller = min(io, compute)
    if smaller <= 0.0:
        return 0.0
    return min(1.0, max(0.0, (io + compute - runtime) / smaller))


@dataclass(frozen=True)
class EpochSummary:
    """One row of the overlap table: what an epoch spent on IO and compute.

    ``stages`` maps each span kind seen to the wall seconds during which some
    device ran it (a union over devices, like ``io_seconds``), in
    :data:`KINDS` order. ``bytes_moved_full`` is what a non-selective
    schedule would move, when the caller knows it.
    """

    epoch: int
    io_seconds: Seconds
    compute_seconds: Seconds
    runtime_seconds: Seconds
    overlap: float
    bytes_moved: int
    bytes_moved_full: int | None
    stages: dict[str, Seconds] = field(default_factory=dict)
    unaccounted_seconds: Seconds = 0.0

    def to_dict(self) -> dict:
        """JSON-ready dict with exactly :data:`SUMMARY_KEYS`."""
        return {
            "epoch": self.epoch,
            "io_seconds": self.io_seconds,
            "compute_seconds": self.compute_seconds,
            "runtime_seconds": self.runtime_seconds,
            "overlap": self.overlap,
            "bytes_moved": self.bytes_moved,
            "bytes_moved_full": self.bytes_moved_full,
            "stages": dict(self.stages),
            "unaccounted_seconds": self.unaccounted_seconds,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> EpochSummary:
        """Inverse of :meth:`to_dict`; raises ValueError naming missing keys."""
        missing = [k for k in SUMMARY_KEYS if k not in d]
        if missing:
            raise ValueError(f"epoch summary lacks keys {missing}; expected {list(SUMMARY_KEYS)}")
        full = d["bytes_moved_full"]
        return cls(
            epoch=int(d["epoch"]),
            io_seconds=float(d["io_seconds"]),
            compute_seconds=float(d["compute_seconds"]),
            runtime_seconds=float(d["runtime_seconds"]),
            overlap=float(d["overlap"]),
            bytes_moved=int(d["bytes_moved"]),
            bytes_moved_full=None if full is None else int(full),
            stages={str(k): float(v) for k, v in d["stages"].items()},
            unaccounted_seconds=float(d["unaccounted_seconds"]),
        )


def summarize_epoch(
    spans: Iterable[Span],
    epoch: int,
    bytes_moved_full: int | None = None,
    wall_seconds: Seconds | None = None,
) -> EpochSummary:
    """Summarise the spans of one epoch (all of ``spans`` are taken as that epoch).

    Args:
        wall_seconds: the epoch's measured wall time; default is last ``t1``
            minus first ``t0`` of the spans.
    """
    spans = list(spans)
    io_iv = [(s.t0, s.t1) for s in spans if s.category == IO]
    compute_iv = [(s.t0, s.t1) for s in spans if s.category != IO]
    io = union_seconds(io_iv)
    compute = union_seconds(compute_iv)
    busy = union_seconds(io_iv + compute_iv)
    if wall_seconds is not None:
        runtime = float(wall_seconds)
    elif spans:
        runtime = max(s.t1 for s in spans) - min(s.t0 for s in spans)
    else:
        runtime = 0.0
    by_kind: dict[str, list[tuple[Seconds, Seconds]]] = {}
    for s in spans:
        by_kind.setdefault(s.kind, []).append((s.t0, s.t1))
    stages = {k: union_seconds(by_kind[k]) for k in KINDS if k in by_kind}
    return EpochSummary(
        epoch=epoch,
        io_seconds=io,
        compute_seconds=compute,
        runtime_seconds=runtime,
        # concurrency measured from the spans themselves (io + compute - busy =
        # |IO ∩ compute|): time the engine spent outside any span (Python, waits)
        # is reported as unaccounted, not mistaken for serialisation
        overlap=overlap_ratio(io, compute, busy),
        bytes_moved=sum(s.nbytes for s in spans if s.kind in MOVED_KINDS),
        bytes_moved_full=bytes_moved_full,
        stages=stages,
        unaccounted_seconds=max(0.0, runtime - busy),
    )


def summarize(
    spans,
    bytes_moved_full: Mapping[int, int] | None = None,
    wall_seconds: Mapping[int, Seconds] | None = None,
) -> list[EpochSummary]:
    """One :class:`EpochSummary` per epoch seen in ``spans``, by epoch number.

    Args:
        spans: an iterable of :class:`Span`, or a Recorder.
        bytes_moved_full: epoch -> bytes a full (non-selective) schedule
            would move; epochs not in it get None. Default: a Recorder's
            ``bytes_moved_full`` counter.
        wall_seconds: epoch -> measured wall time, overriding the span extent.
    """
    by_epoch: dict[int, list[Span]] = {}
    for s in as_spans(spans):
        by_epoch.setdefault(s.epoch, []).append(s)
    if bytes_moved_full is None and callable(getattr(spans, "counters", None)):
        bytes_moved_full = spans.counters("bytes_moved_full")
    full = bytes_moved_full or {}
    wall = wall_seconds or {}
    return [
        summarize_epoch(by_epoch[e], e, full.get(e), wall.get(e))
        for e in sorted(by_epoch)
    ]


def as_spans(spans_or_recorder) -> list[Span]:
    """Spans from a Recorder (anything with ``.spans()``) or an iterable of spans."""
    get = getattr(spans_or_recorder, "spans", None)
    if callable(get):
        return list(get())
    return list(spans_or_recorder)
