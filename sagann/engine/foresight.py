"""Before training: the epoch time a budget's plan predicts, and whether a slightly larger budget is much faster.

A tight budget forces many chunks, and each sub-chunk costs a fixed
overhead (a load, a kernel call, Python) beside its edges; at P in the
hundreds that overhead, not the work, sets the epoch time. The forecast
models an epoch as ``work per edge * E + overhead per sub-chunk * S(B)``:

* both costs are measured on this machine by running the model (a copy,
  on its own RNG) for a training step and an evaluation on a sample of the
  graph, once as one chunk and once cut into many small sub-chunks; the
  sample keeps the graph's average degree;
* ``S(B)``, the sub-chunks one epoch streams under budget B, follows the
  planner's rules for the layer shapes the sample run planned, on the
  graph's real chunk sizes: the smallest P whose vertex phases fit and
  whose sub-chunks of the budget's size fit beside them, the sub-chunks
  then widened as far as they fit, and a larger P where that streams
  fewer. A sub-chunk is sized by the memory model from its edges, the
  distinct source rows they read and the span of destination rows they
  cover (no sub-chunk is cut): where a chunk has fewer edges than rows,
  that span holds rows without edges, and a wide layer's backward (a
  GAT's softmax and gradient rows) fits few edges a sub-chunk until P is
  large (a bound on resident rows alone gives P = 21 for a GAT 256 wide
  under 8 MB on 1.5M edges, where the planner takes 182).

It is an estimate, labelled as one; after training the report puts the
measured epoch time beside it.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from sagann.chunks.partition import DEFAULT_SUB_CHUNK_NNZ, GraphPartition, balanced_bounds
from sagann.chunks.sketch import SubChunkSizes
from sagann.chunks.types import ChunkId
from sagann.chunks.recut import edges_at
from sagann.engine.graph import ChunkedGraph
from sagann.scheduler.cost_model import GROWTH, MARGIN, NEXT_P, chunk_nnz, distinct_rows
from sagann.scheduler.devices import CpuDevice
from sagann.scheduler.layer_shape import LayerShape
from sagann.scheduler.memory_model import (
    canonical, resident_bytes, sub_chunk_bytes, sub_chunk_nnz_for, tile_resident_bytes, vertex_weight, working_set,
)
from sagann.scheduler.pipeline import planned_in_flight
from sagann.scheduler.planner import MAX_CHUNKS, Planner

__all__ = ["Forecast", "forecast_epoch"]

SAMPLE_EDGES = 20_000
FACTORS = (2, 4, 8, 16)  # larger budgets compared with the one given
WORTH_IT = 3.0  # speed-up from which a larger budget is worth a warning


def _size(n: int) -> str:
    """Bytes as the command reads them back, in decimal units (``--memory-budget 1.02MB``)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class Option:
    """One budget's predicted plan."""

    budget: int
    num_chunks: int
    sub_chunks: int  # streamed per epoch
    epoch_seconds: float


@dataclass(frozen=True)
class Forecast:
    """The plan a budget forces and its predicted epoch time (an estimate), with larger budgets beside it."""

    plan: Option
    larger: list[Option] = field(default_factory=list)
    sample_edges: int = 0

    def better(self) -> Option | None:
        """The smallest larger budget that gets most (80 %) of the best speed-up, if that is at least WORTH_IT."""
        if not self.larger:
            return None
        best = min(o.epoch_seconds for o in self.larger)
        pick = next(o for o in self.larger if o.epoch_seconds <= best / 0.8 or o.epoch_seconds == best)
        return pick if self.plan.epoch_seconds >= WORTH_IT * pick.epoch_seconds else None

    def lines(self, flag: str = "budget") -> list[str]:
        """The forecast for a report; ``flag`` names how the reader sets the budget (e.g. ``--memory-budget``)."""
        p = self.plan
        out = [f"plan: about P = {p.num_chunks} chunks per side under a {_size(p.budget)} budget, {p.sub_chunks:,} sub-chunks per epoch; "
               f"predicted training step ~{p.epoch_seconds:.3g} s per epoch (an estimate from a {self.sample_edges:,}-edge sample)"]
        b = self.better()
        if b is not None:
            out.append(f"warning: a {_size(b.budget)} {flag} would run ~{p.epoch_seconds / b.epoch_seconds:.0f}x faster "
                       f"(P = {b.num_chunks}, ~{b.epoch_seconds:.3g} s per training step): the overhead of {p.sub_chunks:,} sub-chunks dominates this budget")
        return out

    def to_dict(self) -> dict:
        b = self.better()
        return {"plan": asdict(self.plan), "larger": [asdict(o) for o in self.larger], "sample_edges": self.sample_edges,
                "faster_budget": None if b is None else b.budget}


def forecast_epoch(model: torch.nn.Module, g: ChunkedGraph, in_features: int, *, sample_edges: int = SAMPLE_EDGES, seed: int = 0) -> Forecast | None:
    """The predicted epoch of ``model`` on ``g`` under its device's budget, and under 2x..16x that budget.

    None when there is nothing to predict (no budget, no edges, several
    devices) and, for now, on a GPU: the calibration runs on a CPU device,
    whose costs say nothing of a GPU's. The caller's model, graph and RNG
    state are left as they were.
    """
    budget = g.memory_budget
    if budget is None or g.num_edges == 0 or g.multi_device or not isinstance(g.device, CpuDevice):
        return None
    edges = g.edges_in_chunks()  # a dataset's edges are read chunk by chunk: no [2, E] list in RAM
    edges = edges if edges is not None else np.asarray(g.edge_index())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        per_edge, per_sub, calls, passes, e_s = _calibrate(model, edges, g.num_vertices, in_features, sample_edges, seed, g.schedule)
    floor = g.partition.num_chunks if g.partition is not None else 1
    in_flight = planned_in_flight(g.schedule.prefetch, g.device.overlaps_transfers)  # sub-chunks the planner makes room for
    chunks = _ChunkSizes(edges, g.in_degree, vertex_weight(*calls[-1][:2]) if calls else 1.0)
    options = []
    for k in (1, *FACTORS):
        option = _option(chunks, g.num_vertices, calls, budget * k, floor, in_flight)
        if option is not None:
            options.append(Option(budget * k, option[0], option[1] * passes, per_edge * g.num_edges + per_sub * option[1] * passes))
    if not options or options[0].budget != budget:
        return None
    return Forecast(options[0], options[1:], e_s)


def _sample(edges: np.ndarray | GraphPartition, n: int, sample_edges: int, seed: int) -> tuple[np.ndarray, int]:
    """Edges drawn uniformly, their ids folded onto as many vertices as keep the average degree."""
    e = edges.num_edges if isinstance(edges, GraphPartition) else edges.shape[1]
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(e, size=sample_edges, replace=False)) if e > sample_edges else np.arange(e)
    n_s = max(2, int(np.ceil(n * len(take) / e)))
    picked = edges_at(edges, take) if isinstance(edges, GraphPartition) else edges[:, take]
    return np.asarray(picked, dtype=np.int64) % n_s, n_s


def _epoch(model: torch.nn.Module, g: ChunkedGraph, x: torch.Tensor) -> tuple[float, int]:
    """Seconds and streamed passes of one training step (forward, backward); then an evaluation call, as the training loop makes one."""
    before = len(g.pass_log)
    t0 = time.perf_counter()
    model.train()
    model(g, x).square().mean().backward()
    seconds = time.perf_counter() - t0
    passes = sum(1 for r in g.pass_log[before:] if r.steps)  # streamed ones: a cached Gather's edgeless pass has no sub-chunks
    model.eval()
    with torch.no_grad():
        model(g, x)
    return seconds, passes


def _calibrate(model, edges, n, in_features, sample_edges, seed, schedule=None):
    """(seconds per edge, seconds per sub-chunk, planner calls, edge passes per training step, sample edges) measured on a sample,
    under the graph's own ``schedule`` (a cached Gather, or not, plans other layers)."""
    ei, n_s = _sample(edges, n, sample_edges, seed)
    x = torch.randn(n_s, in_features)
    e_s = ei.shape[1]
    sub = max(16, e_s // 256)
    runs = {}
    for chunks, nnz in ((1, None), (8, sub)):
        g = ChunkedGraph(ei, n_s, device=CpuDevice(), num_chunks=chunks, sub_chunk_nnz=nnz, schedule=schedule)
        calls: list = []
        m = copy.deepcopy(model).to(torch.device("cpu"))
        with _recording_plans(calls):  # the layer shapes the model plans, for the budgets compared below
            _epoch(m, g, x)  # compiles, plans, fills the constant-Gather caches: the steady state is the second epoch
        seconds, passes = _epoch(m, g, x)
        subs = sum(len(c) for c in calls[-1][3].chunks.values()) if calls else 0
        runs[chunks] = (seconds, passes * subs, passes, [c[:3] for c in calls])
    (t1, s1, passes, calls), (t8, s8, _, _) = runs[1], runs[8]
    per_sub = max((t8 - t1) / max(s8 - s1, 1), 0.0)
    per_edge = max(t1 - per_sub * s1, 0.0) / max(e_s, 1)
    return per_edge, per_sub, calls, passes, e_s


@contextlib.contextmanager
def _recording_plans(calls: list):
    """Record every ``Planner.partition_for`` call inside the block as (shape, fused, param_bytes, partition).

    The layers plan on graphs they derive (a GCN's self loops), each with
    its own planner, so the class's method is wrapped, for this block only.
    """
    real = Planner.partition_for

    def record(self, shape, fused, param_bytes, owner=None):
        part = real(self, shape, fused, param_bytes, owner)
        calls.append((shape, fused, param_bytes, part))
        return part

    Planner.partition_for = record
    try:
        yield
    finally:
        Planner.partition_for = real


class _ChunkSizes:
    """Interval bounds and edges per chunk at each P asked for, counted once for all the budgets compared (a pass over the edges each)."""

    def __init__(self, edges, in_degree: np.ndarray, weight: float):
        self.edges, self.in_degree, self.weight, self._at = edges, in_degree, weight, {}

    def at(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        if p not in self._at:
            bounds = balanced_bounds(self.in_degree, p, self.weight)
            self._at[p] = bounds, chunk_nnz(self.edges, bounds).astype(np.float64)
        return self._at[p]


def _option(chunks: _ChunkSizes, n, calls, budget: int, floor: int, in_flight: int = 1) -> tuple[int, int] | None:
    """(P, sub-chunks of one pass) under ``budget`` as the planner settles them; None if no P fits.

    The planner takes the smallest P whose vertex phases fit and whose
    sub-chunks of the budget's size (``sub_chunk_nnz_for``) fit beside them,
    widens them as far as they fit, then a larger P where its time rule
    predicts fewer steps: here, of the P from there on, the one with the
    fewest sub-chunks.
    """
    sub = DEFAULT_SUB_CHUNK_NNZ
    for shape, fused, param_bytes in calls:
        sub = min(sub, sub_chunk_nnz_for(budget, shape, fused, DEFAULT_SUB_CHUNK_NNZ))
    hi = min(max(n, 1), MAX_CHUNKS)
    p = floor
    for shape, fused, param_bytes in calls:  # the smallest P whose vertex phases fit every call
        weight = vertex_weight(shape, fused)
        q = _smallest(lambda q: _vertex_bytes(n, chunks.in_degree, q, weight, (shape, fused, param_bytes), budget) <= budget, p, hi)  # noqa: B023
        if q is None:
            return None
        p = max(p, q)
    p0 = _smallest(lambda q: _sub_chunks_at(chunks, calls, budget, q, sub, in_flight) is not None, p, hi)
    if p0 is None:
        return None
    best = None
    for q in sorted({min(hi, int(np.ceil(p0 * g))) for g in GROWTH} | {min(hi, p0 + k) for k in range(NEXT_P + 1)}):  # the time rule's candidates
        subs = _sub_chunks_at(chunks, calls, budget, q, sub, in_flight)
        if subs is not None and (best is None or subs < (1 - MARGIN) * best[1]):
            best = (q, subs)
    return best


def _vertex_bytes(n: int, in_degree, p: int, weight: float, call: tuple, budget: int) -> int:
    """The working set of ``call`` (shape, fused, parameter bytes) at P = ``p`` without its sub-chunks: resident rows,
    ApplyVertex and hook blocks, parameters (the memory model's, on the intervals alone)."""
    shape, fused, param_bytes = call
    bounds = balanced_bounds(in_degree, p, weight)
    rows_only = GraphPartition(num_vertices=int(n), num_edges=1, bounds=bounds, chunks={}, in_degree=in_degree, sub_chunk_nnz=1)
    return working_set(rows_only, shape, fused, param_bytes, budget=budget).peak_bytes


def _sub_chunks_at(chunks: _ChunkSizes, calls, budget: int, p: int, sub: int, in_flight: int) -> int | None:
    """Sub-chunks of one pass at P = ``p``, each as wide as the room beside the resident rows allows ``in_flight`` of
    them; None where a sub-chunk of ``sub`` edges (or the whole chunk, if smaller) does not fit.

    A chunk of ``m`` edges into an interval of ``R_j`` rows, its sources in
    one of ``R_i``: a sub-chunk of ``k`` of them spans about
    ``1 + (k - 1) R_j / m`` destination rows (at most ``R_j``: ``k - 1``
    gaps between edges spread evenly over the rows) and reads about
    ``R_i (1 - exp(-k / R_i))`` distinct sources (uniform draws,
    :func:`~sagann.scheduler.cost_model.distinct_rows`, as the planner's estimate counts them).
    """
    bounds, m = chunks.at(p)  # m: edges of chunk [i, j]
    rows = np.maximum(np.diff(bounds).astype(np.float64), 1.0)
    span_per_edge = np.divide(rows[None, :], m, out=np.ones_like(m), where=m > 0)
    least, most = np.minimum(m, sub), np.minimum(m, DEFAULT_SUB_CHUNK_NNZ)
    biggest = rows.max()
    in_flight = min(in_flight, int((m > 0).sum()) or 1)  # the working set counts the largest sub-chunks there are, at most this many
    for (shape, fused, param_bytes), backward in itertools.product(calls, (False, True)):
        if backward and not shape.backward_edges:
            continue
        # what the biggest interval holds through the edge stage: a forward's column (ApplyVertex comes after), a backward's source gradients
        held = resident_bytes(int(biggest), shape, "backward") if backward else tile_resident_bytes([int(biggest)], shape, apply_rows=0)
        room = (budget - 2 * param_bytes - held) / in_flight
        fixed, edge, dst, src = _sub_chunk_coefficients(shape, fused, backward)

        def need(k):
            span = np.minimum(rows[None, :], 1.0 + (k - 1) * span_per_edge)
            return fixed + edge * k + dst * span + src * distinct_rows(k, rows[:, None])

        if (need(least) > room).any():
            return None
        lo, hi = least, most  # the largest k in [lo, hi] whose sub-chunk fits
        while (lo < hi).any():
            mid = np.ceil((lo + hi) / 2)
            fits = need(mid) <= room
            lo, hi = np.where(fits, mid, lo), np.where(fits, hi, mid - 1)
        most = lo
    live = m > 0
    return int(np.ceil(m[live] / np.maximum(most[live], 1)).sum())


def _sub_chunk_coefficients(shape: LayerShape, fused: bool, backward: bool) -> tuple[int, int, int, int]:
    """The memory model's bytes of a forward (or ``backward``) sub-chunk as fixed + per edge + per destination row + per
    source row: differences of the model at a sketched sub-chunk of a thousand of each."""
    s = canonical(shape)

    def model(nnz: int, num_dst: int, num_src: int) -> int:
        return sub_chunk_bytes(SubChunkSizes(ChunkId(0, 0, 0), nnz, num_dst, num_src), s, fused, backward)

    at = 1000
    base = model(at, at, at)
    edge, dst, src = model(at + 1, at, at) - base, model(at, at + 1, at) - base, model(at, at, at + 1) - base
    return base - at * (edge + dst + src), edge, dst, src


def _smallest(fits, lo: int, hi: int) -> int | None:
    """The smallest q in [lo, hi] with fits(q) (monotone), or None."""
    if fits(lo):
        return lo
    step = lo
    while step < hi and not fits(min(2 * step, hi)):
        step = min(2 * step, hi)
    if step >= hi:
        return None
    a, b = step, min(2 * step, hi)  # fits(b), not fits(a)
    while b - a > 1:
        mid = (a + b) // 2
        a, b = (a, mid) if fits(mid) else (mid, b)
    return b
