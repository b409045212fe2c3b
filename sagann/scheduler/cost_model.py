"""The time model: what a plan costs in seconds, so the planner picks the fastest plan that fits, not the smallest P.

An out-of-core pass spends, beyond the in-memory pass, (1) the bytes it
sends over the link, (2) a fixed cost per sub-chunk step (loading its index
arrays, picking its rows, launching its kernel, merging its partial rows,
the Python between them) and (3) the kernel work, which is the same for
every plan of one layer. So a candidate plan's time is

    bytes / measured bandwidth + steps x measured fixed cost per step + edge work

and the planner compares candidates by it. :func:`measure_step_costs`
measures the three rates on the device itself, once per device: a copy of
rows, and passes of ``copy_src`` sums over the same edges cut into tiny and
into big sub-chunks, whose difference is the fixed cost per step.
:func:`estimate_partition` predicts a partition's bytes and steps from the
edge list and interval bounds alone (no partition cut), so several P can
be weighed before one is cut.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from sagann.chunks.partition import GraphPartition, balanced_bounds, chunk_counts, partition_graph
from sagann.chunks.recut import chunk_nnz_of
from sagann.kernels import gspmm
from sagann.scheduler import calibration
from sagann.scheduler.memory_model import FLOAT, LayerShape, backward_dst_row_bytes, backward_sizes, resident_lower_bound, src_row_bytes, sub_chunk_nnz_in_room, vertex_weight

__all__ = ["PartitionEstimate", "StepCosts", "chunk_nnz", "distinct_rows", "estimate_partition", "faster_partition", "faster_partitions", "in_pass_step_seconds", "learn_in_pass_step", "measure_partition", "measure_step_costs", "measured_step_costs", "predict_seconds", "set_engine_step_timer", "unlearned"]

_LOG = logging.getLogger("sagann")
CALIBRATION_VERTICES, CALIBRATION_EDGES, CALIBRATION_WIDTH = 2048, 16384, 32
SMALL_SUB, BIG_SUB = 32, 16384  # edges per sub-chunk of the two calibration passes
VERTEX_BLOCKS = 64  # blocks of the calibration's vertex steps (32 rows each)
INDEX_BYTES_PER_EDGE = 4  # index arrays a pass sends per edge: source ids (int32); the device makes dst_idx
INDEX_BYTES_BACKWARD = 4  # and backward's source-major order besides (EdgeChunk.sent_index_bytes)


@dataclass(frozen=True)
class StepCosts:
    """Measured rates of one device: seconds per byte sent, per sub-chunk step, per edge x column of kernel work,
    and per vertex step (a per-vertex function run on one interval or block of rows, forward and backward)."""

    seconds_per_byte: float
    seconds_per_step: float
    seconds_per_edge_column: float
    seconds_per_vertex_step: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def predict_seconds(costs: StepCosts, nbytes: float, steps: float, edge_columns: float = 0.0) -> float:
    """bytes / bandwidth + steps x fixed cost per step + edge work."""
    return nbytes * costs.seconds_per_byte + steps * costs.seconds_per_step + edge_columns * costs.seconds_per_edge_column


_MEASURED: dict = {}  # device kind -> StepCosts


def _kind(device) -> tuple:
    """What the step rates depend on: the device's class, torch device, kernels and whether loads copy."""
    return (type(device).__name__, str(device.torch_device), device.kernel_backend, device.shares_host_memory, getattr(device, "link_bandwidth", None))


def measure_step_costs(device, repeats: int = 3) -> StepCosts:
    """The device's :class:`StepCosts`, measured once per kind of device and machine (a fraction of a second).

    Kept in the process and on disk (:mod:`sagann.scheduler.calibration`), so
    plans compare alike within a process and the same command plans alike in
    the next.

    The fixed cost per step is ``(T_small - T_big) / (steps_small - steps_big)``
    of two passes that sum the same edges' source rows into their
    destinations, one cut into sub-chunks of ``SMALL_SUB`` edges, one of
    ``BIG_SUB``: each step loads its index arrays and its rows and runs one
    kernel, as a pass's step does; or, where more, the same measured on the
    engine's own passes (:func:`sagann.engine.calibrate.engine_step_seconds`). The bandwidth is a
    block copy of the calibration's rows to the device. A vertex step's fixed
    cost is measured alike: a Linear-ReLU's forward and backward in blocks
    against whole, or where more, in the engine's own calls.
    """
    kind = _kind(device)
    known = _MEASURED.get(kind)
    if known is None:
        known = _stored_costs(calibration.load(kind))  # measured by an earlier process on this machine: the same plan again
    if known is None:
        # the caller's random stream must not move: a first call that measures would otherwise draw other dropout
        # masks than the calls after it (a Linear's initialisation here reads the default generator)
        with torch.random.fork_rng(devices=[]):
            known = _measure_all(device, kind, repeats)
    _MEASURED[kind] = known
    return known


def _measure_all(device, kind: tuple, repeats: int) -> StepCosts:
    """The bare loop's rates, raised to the engine's own where those are more, stored for the next process."""
    try:
        with device.unmetered():  # the calibration's buffers are not a pass's, even when a pass plans inside its meter
            known = _measure_steps(device, repeats)
        _MEASURED[kind] = known  # what the engine calibration's own planner reads (a twin is of the same kind)
        try:
            in_engine = _ENGINE_STEP_TIMER(device, repeats) if _ENGINE_STEP_TIMER is not None else None
        except Exception as exc:  # the bare loop's figure stands
            _LOG.warning("sagann: could not time the engine's steps on %s (%s); planning with the bare loop's cost per step", device.name, exc)
            in_engine = None
        if in_engine is not None and in_engine > known.seconds_per_step:
            known = dataclasses.replace(known, seconds_per_step=in_engine)
        try:
            in_engine = _ENGINE_VERTEX_TIMER(device, repeats) if _ENGINE_VERTEX_TIMER is not None else None
        except Exception as exc:
            _LOG.warning("sagann: could not time the engine's vertex steps on %s (%s); using the bare loop's", device.name, exc)
            in_engine = None
        if in_engine is not None and in_engine > known.seconds_per_vertex_step:
            known = dataclasses.replace(known, seconds_per_vertex_step=in_engine)
        return _stored_costs(calibration.store(kind, known.to_dict())) or known  # another process's, where it stored first
    except Exception as exc:  # a device whose kernels cannot run the calibration still trains: bytes alone decide
        _LOG.warning("sagann: could not measure the fixed cost per step on %s (%s); planning by bytes alone", device.name, exc)
        return StepCosts(device.transfer_costs().block, 0.0, 0.0)


def _stored_costs(stored: dict | None) -> StepCosts | None:
    """Stored rates as :class:`StepCosts`; None where there are none or they are of another shape (measured again)."""
    try:
        return None if stored is None else StepCosts(**stored)
    except TypeError:
        return None


_ENGINE_STEP_TIMER = None  # (device, repeats) -> seconds a step costs in the engine's passes, or None; set by sagann.engine.calibrate
_ENGINE_VERTEX_TIMER = None  # the same for a vertex step


def set_engine_step_timer(timer, vertex_timer=None) -> None:
    """Register how to time a step (and a vertex step) on the engine's own passes: the engine is a layer above this module."""
    global _ENGINE_STEP_TIMER, _ENGINE_VERTEX_TIMER
    _ENGINE_STEP_TIMER, _ENGINE_VERTEX_TIMER = timer, vertex_timer


_IN_PASS: dict = {}  # device kind -> what a step costs inside a pass beyond the calibrated fixed cost, learned from the pass log


@contextlib.contextmanager
def unlearned(device):
    """Passes run inside teach the pass log nothing about ``device``'s kind (the step calibration's own passes)."""
    kind = _kind(device)
    learned = _IN_PASS.get(kind)
    try:
        yield
    finally:
        if learned is None:
            _IN_PASS.pop(kind, None)
        else:
            _IN_PASS[kind] = learned


def in_pass_step_seconds(device) -> float:
    """What a step has cost inside the passes that ran, beyond the calibrated fixed cost (0.0 before any).

    The calibration times a bare loop (index arrays, a row gather, one
    kernel); inside a pass a step also pays the prefetcher's hand-offs,
    the ledger and the profiler, several times that on a loaded CPU. Only
    the pass log's predictions read this; the planner plans with the
    stored calibration, so the same command plans alike in every run.
    """
    return _IN_PASS.get(_kind(device), 0.0)


def learn_in_pass_step(device, base_seconds: float, achieved_seconds: float, steps: int) -> None:
    """Fold one pass's time beyond its calibrated prediction, per step, into :func:`in_pass_step_seconds` (an even mix with the earlier passes')."""
    if steps <= 0 or base_seconds != base_seconds:  # nothing predicted (NaN): nothing to learn
        return
    kind, extra = _kind(device), (achieved_seconds - base_seconds) / steps
    old = _IN_PASS.get(kind)
    _IN_PASS[kind] = extra if old is None else 0.5 * (old + extra)


def measured_step_costs(device) -> StepCosts | None:
    """The device kind's :class:`StepCosts` if measured already, else None (never measures: a pass in flight must not pay for it)."""
    return _MEASURED.get(_kind(device))


def _measure_steps(device, repeats: int) -> StepCosts:
    gen = np.random.default_rng(0)  # never the caller's RNG
    n, e, d = CALIBRATION_VERTICES, CALIBRATION_EDGES, CALIBRATION_WIDTH
    edges = gen.integers(0, n, (2, e))
    x = torch.from_numpy(gen.standard_normal((n, d), dtype=np.float32))
    passes = {sub: list(partition_graph(edges, n, 1, sub).sub_chunks()) for sub in (SMALL_SUB, BIG_SUB)}

    def run(subs) -> float:
        best = math.inf
        for _ in range(repeats):
            device.synchronize()
            t0 = time.perf_counter()
            out = torch.zeros((n, d), device=device.torch_device)  # outside the ledger: a budget does not bound a measurement
            for c in subs:
                ct = device.chunk_tensors(c)
                rows = device.gather_in(x, torch.from_numpy(c.src_start + c.src_rows.astype(np.int64)))
                lo = c.dst_start + c.dst_offset
                gspmm(ct, "copy_src", "sum", src=rows, backend=device.kernel_backend, out=out[lo : lo + c.num_dst])
                del ct, rows
            device.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    def copy() -> float:
        best = math.inf
        for _ in range(repeats):
            device.synchronize()
            t0 = time.perf_counter()
            device.copy_in(x)
            device.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    count = device.bytes_in
    run(passes[SMALL_SUB][:8]), run(passes[BIG_SUB])  # compile and warm up the kernel's paths
    small, big, block = run(passes[SMALL_SUB]), run(passes[BIG_SUB]), copy()
    per_vertex_step = _vertex_step_seconds(device, x, repeats)
    device.bytes_in = count  # measurements are not traffic
    n_small, n_big = len(passes[SMALL_SUB]), len(passes[BIG_SUB])
    per_step = max(0.0, (small - big) / max(1, n_small - n_big))
    per_edge_column = max(0.0, big - n_big * per_step) / (e * d)
    return StepCosts(block / (n * d * FLOAT), per_step, per_edge_column, per_vertex_step)


def _vertex_step_seconds(device, x: torch.Tensor, repeats: int) -> float:
    """The fixed cost of a vertex step: ``(T_blocks - T_whole) / (blocks - 1)`` of a Linear-ReLU's forward and backward
    over ``x``'s rows, in ``VERTEX_BLOCKS`` blocks and whole. Each block loads its rows, runs the function under
    autograd, takes its gradients and writes the rows' gradient out, as the engine's ApplyVertex blocks do."""
    n, d = x.shape
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(d, d).to(device.torch_device)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(d, d, generator=gen) / d**0.5)
    grad_out, grad_x = torch.randn(n, d, generator=gen), torch.empty(n, d)

    def run(blocks: int) -> float:
        best, rows = math.inf, -(-n // blocks)
        for _ in range(repeats):
            device.synchronize()
            t0 = time.perf_counter()
            for lo in range(0, n, rows):
                v = device.copy_in(x[lo : lo + rows]).requires_grad_(True)
                with torch.enable_grad():
                    out = torch.relu(lin(v))
                grads = torch.autograd.grad(out, [v, lin.weight, lin.bias], device.copy_in(grad_out[lo : lo + rows]))
                device.copy_out(grads[0], grad_x[lo : lo + rows])
                del v, out, grads
            device.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    run(1), run(VERTEX_BLOCKS)  # warm up
    return max(0.0, (run(VERTEX_BLOCKS) - run(1)) / (VERTEX_BLOCKS - 1))


@dataclass(frozen=True)
class PartitionEstimate:
    """A P's predicted bytes sent and sub-chunk steps for one training call (forward + backward edge stages)."""

    num_chunks: int
    sub_chunk_nnz: int
    bytes: int
    steps: int

    def seconds(self, costs: StepCosts) -> float:
        return predict_seconds(costs, self.bytes, self.steps)


def chunk_nnz(edges: np.ndarray | GraphPartition, bounds: np.ndarray) -> np.ndarray:
    """``[P, P]`` edges of each chunk E_ij (sources in V_i, destinations in V_j) for interval ``bounds``.

    ``edges``: the ``[2, E]`` list, or a partition (counted chunk by chunk
    when the list is not kept in RAM).
    """
    if isinstance(edges, GraphPartition):
        return chunk_nnz_of(edges, bounds)
    return chunk_counts(edges[0], edges[1], bounds)


def distinct_rows(draws, rows):
    """Distinct rows about ``draws`` uniform draws over ``rows`` rows hit: ``rows (1 - exp(-draws / rows))`` (arrays broadcast)."""
    return rows * -np.expm1(-draws / rows)


def estimate_partition(nnz: np.ndarray, bounds: np.ndarray, sub_chunk_nnz: int, shape: LayerShape) -> PartitionEstimate:
    """Bytes and steps of a partition with chunk sizes ``nnz`` (:func:`chunk_nnz`), without cutting it.

    Each chunk of ``m`` edges runs as ``ceil(m / sub)`` sub-chunks; a
    sub-chunk of ``s`` edges over an interval of ``n_i`` sources sends about
    ``n_i (1 - exp(-s / n_i))`` distinct source rows (uniform draws; never
    more than V_i's block, which the auto policy sends instead), its index
    arrays, and in backward also its destination rows.
    """
    sizes = np.diff(bounds).astype(np.float64)
    m = nnz.astype(np.float64)
    subs = np.ceil(m / max(1, sub_chunk_nnz))
    per_sub = np.divide(m, subs, out=np.zeros_like(m), where=subs > 0)
    rows = subs * distinct_rows(per_sub, np.maximum(sizes[:, None], 1.0))
    forward = rows.sum() * src_row_bytes(shape) + m.sum() * INDEX_BYTES_PER_EDGE
    steps = int(subs.sum())
    total, passes = forward, steps
    if shape.backward_edges:
        dst = (subs * np.minimum(per_sub, sizes[None, :])).sum() * backward_dst_row_bytes(shape)
        total += forward + m.sum() * INDEX_BYTES_BACKWARD + dst + m.sum() * FLOAT * shape.d_edge
        passes += steps
    return PartitionEstimate(len(bounds) - 1, int(sub_chunk_nnz), int(total), int(passes))


MARGIN = 0.05  # a larger P must be predicted this much faster: the model's noise must not flip the choice
GROWTH = (1.25, 1.5, 2.0, 3.0)  # larger P tried, as multiples of the smallest P that fits
NEXT_P = 3  # and the next few P above it: where a sub-chunk can just hold a whole chunk, one more interval is often enough
MAX_PICKS = 3  # candidates the planner cuts and widens, keeping the fastest that fits (each cut costs a pass over the edges)


def _sub_for_room(room: int, in_flight: int, rows: int, shape: LayerShape, fused: bool, default: int) -> int:
    """Edges per sub-chunk when ``in_flight`` sub-chunks share ``room`` bytes and read sources from intervals of at most ``rows`` rows."""
    return sub_chunk_nnz_in_room(max(0, room // max(1, in_flight)), rows, shape, fused, default)


def faster_partition(edges: np.ndarray | GraphPartition, in_degree: np.ndarray, chosen, job: dict, costs: StepCosts, max_chunks: int) -> tuple[int, int] | None:
    """The fastest of :func:`faster_partitions`, or None."""
    picks = faster_partitions(edges, in_degree, chosen, job, costs, max_chunks)
    return picks[0] if picks else None


def faster_partitions(edges: np.ndarray | GraphPartition, in_degree: np.ndarray, chosen, job: dict, costs: StepCosts, max_chunks: int) -> list[tuple[int, int]]:
    """Every (P, sub-chunk edges) the time model predicts faster than ``chosen`` (the smallest P that fits, widened), fastest first.

    At the smallest P the resident rows leave little room, so sub-chunks are
    small and steps many; a larger P holds fewer rows and leaves room for
    bigger sub-chunks, at the price of more chunks and more re-sent rows.
    Each candidate (the smallest P itself, and larger ones) gets the
    largest sub-chunks its room allows once a sub-chunk's source rows are
    bounded by its interval (:func:`sub_chunk_nnz_in_room`); bytes and
    steps come from :func:`estimate_partition`. The caller cuts the picks,
    widens each that fits and keeps the fastest counted: the estimate
    counts a sub-chunk's source rows, not the destination rows a sparse
    chunk's backward sub-chunk also loads, so the fastest may not fit once
    cut, and its sub-chunks may be smaller than what fits.
    ``job``: shape, fused, param_bytes, budget, in_flight, default (the
    largest sub-chunk).
    """
    shape, fused, params, budget, in_flight, default = (job[k] for k in ("shape", "fused", "param_bytes", "budget", "in_flight", "default"))
    weight = vertex_weight(shape, fused)

    def sub_at(bounds) -> int:
        rows = int(np.diff(bounds).max()) if len(bounds) > 1 else 0
        return _sub_for_room(budget - resident_lower_bound(bounds, shape, params), in_flight, rows, shape, fused, default)

    p0 = chosen.num_chunks
    base = estimate_partition(chunk_nnz(edges, chosen.bounds), chosen.bounds, chosen.sub_chunk_nnz, shape).seconds(costs)
    picks = []
    for p in sorted({min(max_chunks, int(math.ceil(p0 * g))) for g in GROWTH} | {min(max_chunks, p0 + k) for k in range(NEXT_P + 1)}):
        bounds = chosen.bounds if p == p0 else balanced_bounds(in_degree, p, weight)
        if resident_lower_bound(bounds, shape, params) >= budget:
            continue
        sub = sub_at(bounds)
        if p == p0 and sub <= chosen.sub_chunk_nnz:  # the smallest P is a candidate only with wider sub-chunks
            continue
        seconds = estimate_partition(chunk_nnz(edges, bounds), bounds, sub, shape).seconds(costs)
        if seconds < base * (1 - MARGIN):
            picks.append((seconds, p, sub))
    return [(p, sub) for _, p, sub in sorted(picks)]


def measure_partition(partition, shape: LayerShape) -> PartitionEstimate:
    """A cut partition's bytes and steps for one training call, counted from its sub-chunks (what :func:`estimate_partition` predicts)."""
    subs = list(partition.sub_chunks())
    rows = sum(c.num_src for c in subs) * src_row_bytes(shape)
    forward = rows + sum(c.sent_index_bytes(False) for c in subs)
    total, steps = forward, len(subs)
    if shape.backward_edges:
        back = [backward_sizes(c, shape) for c in subs]  # over their rows with edges where few have one
        total += rows + sum(c.sent_index_bytes(True) + c.num_dst * backward_dst_row_bytes(shape) + c.nnz * FLOAT * shape.d_edge for c in back)
        steps *= 2
    return PartitionEstimate(partition.num_chunks, partition.sub_chunk_nnz, int(total), steps)
