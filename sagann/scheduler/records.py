"""What ran: one record per streamed pass, per chunk of a multi-device pass, and per device phase; vertex steps counted.

``PassRecord``s put the plan's prediction next to what happened
(``ChunkedGraph.pass_log``); ``StepRecord``s and ``CallRecord``s are the
simulator's calibration (``ChunkedGraph.step_log`` / ``call_log``).
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

__all__ = ["CallRecord", "PassHistory", "PassRecord", "StepRecord", "VertexSteps", "recompute_seconds", "work_since"]


@dataclass(frozen=True)
class PassRecord:
    """One streamed edge stage as it ran: the plan's prediction next to what happened."""

    layer: str
    phase: str
    chunks: int
    prefetch: int
    seconds: float  # wall time of the edge stage
    predicted_seconds: float  # two-stage makespan of the measured chunk times in plan order
    bytes_moved: int  # host -> device bytes of the edge stage
    bytes_full: int  # what a non-selective schedule would have moved
    resident_bytes: int = 0  # source rows of the intervals held on the device through the pass (0: streamed per chunk)
    tile: int = 1  # destination intervals whose accumulators the pass held together (loop tiling)
    dst_rows_bytes: int = 0  # backward: destination rows sent once and held through the pass (0: sent per chunk)
    bytes_lower_bound: int = 0  # bytes_moved with the source rows at the plan's lower bound (PassPlan.bytes_lower_bound)
    steps: int = 0  # sub-chunks computed (the unit of the fixed cost per step)
    # the time model's prediction, made before the pass's times were known: bytes / measured bandwidth +
    # steps x measured fixed cost per step + the edge work measured on the previous run of this pass
    # (NaN on a pass's first run, whose edge work is not known yet)
    model_seconds: float = float("nan")
    # summed over the pass's sub-chunks, as measured: their loads (on the critical path where the pass does not
    # prefetch; beside compute where it does) and their compute (kernels and per-edge functions)
    load_seconds: float = 0.0
    compute_seconds: float = 0.0


class PassHistory(list):
    """``ChunkedGraph.pass_log``: the :class:`PassRecord` of every streamed pass, oldest first; a list that prints as a table.

    ``print(g.pass_log)`` shows the latest passes, each one's predicted time
    beside the achieved one; :meth:`table` chooses how many.
    """

    def table(self, last: int | None = 12) -> str:
        """The ``last`` passes (None: all) as aligned rows: what a pass moved and computed, and the time model's error."""
        rows = self if last is None else self[-last:]
        lines = [f"{len(self)} passes" + (f", the last {len(rows)}" if len(rows) < len(self) else ""),
                 f"{'layer':24} {'phase':8} {'chunks':>6} {'steps':>6} {'MB sent':>8} {'predicted':>10} {'achieved':>9} {'error':>6} {'loads':>8} {'compute':>8}"]
        for r in rows:
            known = r.model_seconds == r.model_seconds  # NaN on a pass's first run
            predicted = f"{r.model_seconds * 1e3:8.2f}ms" if known else f"{'-':>10}"
            error = f"{(r.model_seconds / r.seconds - 1) * 100:+5.0f}%" if known and r.seconds > 0 else f"{'-':>6}"
            lines.append(f"{r.layer[:24]:24} {r.phase:8} {r.chunks:6d} {r.steps:6d} {r.bytes_moved / 1e6:8.2f} {predicted} {r.seconds * 1e3:7.2f}ms "
                         f"{error} {r.load_seconds * 1e3:6.2f}ms {r.compute_seconds * 1e3:6.2f}ms")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@dataclass(frozen=True)
class StepRecord:
    """One chunk E_ij as a multi-device pass ran it (``ChunkedGraph.step_log``)."""

    call: int  # layer call number on the graph
    phase: str
    device: str
    key: tuple[int, int]
    nnz: int
    block_bytes: int  # V_i's rows sent whole for this chunk (0: selective, or a block the device already held)
    other_bytes: int  # host bytes besides the block and the index arrays (selective rows, edge and destination rows)
    index_bytes: int  # the sub-chunks' index arrays
    load_seconds: float
    compute_seconds: float


@dataclass(frozen=True)
class CallRecord:
    """One phase of a layer call on one device (``ChunkedGraph.call_log``): edge stage and total seconds."""

    call: int
    name: str
    phase: str
    device: str
    owned_vertices: int
    edge_seconds: float
    total_seconds: float
    prefetch: int
    bounds: tuple[int, ...]  # interval bounds of the call's partition
    edge_stage: bool = True  # False: the hook pre-pass or the hooks' backward only
    host_bytes: int = 0  # bytes the device received over its host link during the phase (Device.bytes_in)


class VertexSteps:
    """Vertex steps run (``ChunkedGraph.vertex_steps``): ApplyVertex or a hook on one interval or block of rows.

    Each has a fixed cost, as a sub-chunk step has (``StepCosts.seconds_per_vertex_step``):
    a budget that cuts ApplyVertex into blocks pays it once a block. Counted per
    (layer, phase); devices of a multi-device pass count from their threads.
    """

    def __init__(self) -> None:
        self._counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        # (layer, function) -> rows a forward evaluated and the seconds it took, and rows a backward evaluated again
        self._forward_rows: collections.Counter = collections.Counter()
        self._forward_seconds: collections.Counter = collections.Counter()
        self._recomputed: collections.Counter = collections.Counter()

    def add(self, layer: str, phase: str) -> None:
        with self._lock:
            self._counts[(layer, phase)] += 1

    def evaluated(self, layer: str, fn: str, rows: int, seconds: float) -> None:
        """A forward ran ``fn`` (ApplyVertex or a hook) of ``layer`` over ``rows`` rows in ``seconds`` (wall clock:
        on a device that queues its work, the time to queue it)."""
        with self._lock:
            self._forward_rows[(layer, fn)] += int(rows)
            self._forward_seconds[(layer, fn)] += float(seconds)

    def recomputed(self, layer: str, fn: str, rows: int) -> None:
        """A backward ran ``fn`` of ``layer`` again over ``rows`` rows (no graph kept from the forward)."""
        with self._lock:
            self._recomputed[(layer, fn)] += int(rows)

    def work(self) -> dict:
        """What :meth:`evaluated` and :meth:`recomputed` counted so far, for :func:`recompute_seconds`."""
        with self._lock:
            return {"forward_rows": dict(self._forward_rows), "forward_seconds": dict(self._forward_seconds), "recomputed_rows": dict(self._recomputed)}

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


def work_since(now: dict, before: dict, per: float = 1.0) -> dict:
    """The counts of :meth:`VertexSteps.work` between ``before`` and ``now``, times ``per`` (1 / epochs: per epoch)."""
    return {kind: {k: (v - before[kind].get(k, 0)) * per for k, v in counts.items()} for kind, counts in now.items()}


def recompute_seconds(work: dict) -> float:
    """What a run's backward recomputes (rows per function, :func:`work_since`) costs at the seconds per row the same
    run's forward spent on that function: the same blocks. A function no forward ran costs nothing here."""
    total = 0.0
    for key, rows in work["recomputed_rows"].items():
        ran = work["forward_rows"].get(key, 0)
        if rows and ran:
            total += rows * work["forward_seconds"][key] / ran
    return total
