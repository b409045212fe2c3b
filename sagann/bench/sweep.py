"""`sagann bench overlap --sweep`: the out-of-core epoch against the in-memory one over a grid, every cell a row.

The grid: graphs (R-MAT at scales 16-19 with average degrees 64 to 8, all
about 4M edges, and the Reddit-shaped SBM), widths (features = hidden),
models (GCN, GraphSAGE, GIN, GAT), budgets (a fraction of a whole-graph
in-memory epoch's device peak: ApplyVertex on whole intervals, as PyG and
DGL run it, measured over the warm-up epochs) and the cached Gather on or off. Per graph, width, model and
cache setting the in-memory epoch (P = 1, no copies) is measured once, then
each budget out of core (``CpuDevice(budget, copy_transfers=True)``), in
one process, each configuration after its warm-up epochs.

Each row holds the ratio, P, sub-chunk steps and bytes sent per epoch,
and what the time model (``sagann.scheduler.cost_model``) says: the fixed
cost per step it measured on the device, the epoch it predicts (the
in-memory epoch + extra bytes / bandwidth + extra steps x fixed cost per
step), the floor (the in-memory epoch + the least extra bytes any schedule
sends / bandwidth), and the fixed cost per step the epoch itself shows
(what the extra bytes leave of the extra time, per extra step). The
roofline (:mod:`sagann.bench.roofline`) puts each in-memory epoch against
the machine's floor.

``quick`` is a subset of the full grid that runs in under 3 minutes: its
smallest R-MAT (2^16 at degree 64) and the Reddit shape, width 64, every
model, budget 1/8, the cache on and off (14 cells), each configuration's
epoch the median of five, alternated with its in-memory run's (two were
too few: one cell's ratio moved by 0.4 between runs). ``SMOKE`` is a tiny
grid for checking the tooling, whose ratios fixed costs dominate.
"""
from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sagann.bench import roofline
from sagann.bench.roofline import graph_index_bytes
from sagann.chunks.synthetic import preset_graph, rmat
from sagann.engine.graph import ChunkedGraph
from sagann.engine.models import GAT, GCN, GIN, GraphSAGE
from sagann.scheduler.config import ScheduleConfig
from sagann.scheduler.cost_model import measure_step_costs
from sagann.scheduler.devices import CpuDevice
from sagann.scheduler.records import recompute_seconds, work_since

__all__ = ["FULL", "QUICK", "SMOKE", "Grid", "GraphSpec", "check_budget_basis", "graph_index_bytes", "run_sweep", "format_sweep"]

MODELS = {"gcn": GCN, "sage": GraphSAGE, "gin": GIN, "gat": GAT}
CLASSES = 16
CACHEABLE = {"gcn", "sage", "gin"}  # a first layer whose Gather reads raw features only (GAT's depends on its weights)


@dataclass(frozen=True)
class GraphSpec:
    """One graph of the grid: R-MAT with ``2**scale`` vertices and ``degree`` edges per vertex, or the Reddit-shaped SBM."""

    kind: str  # "rmat" | "reddit"
    scale: float
    degree: int = 0

    @property
    def name(self) -> str:
        return f"rmat{self.scale:g}-d{self.degree}" if self.kind == "rmat" else f"reddit{self.scale:g}"

    def edges(self) -> tuple[np.ndarray, int]:
        if self.kind == "rmat":
            n = 2 ** int(self.scale)
            return rmat(n, n * self.degree, seed=0), n
        g = preset_graph("reddit", self.scale, seed=0)
        return g.edge_index, g.num_vertices


@dataclass(frozen=True)
class Grid:
    graphs: tuple[GraphSpec, ...]
    widths: tuple[int, ...]
    models: tuple[str, ...]
    budgets: tuple[int, ...]  # denominators: 1/4, 1/8, 1/16 of a whole-graph epoch's device peak
    caches: tuple[bool, ...]
    warmup: int
    reps: int
    rules: tuple[str, ...] = ("time",)  # ScheduleConfig.partition_rule of the out-of-core runs; several: A/B in one run
    # what a budget is a fraction of: "graph", the whole-graph epoch's peak with the graph's index arrays on the
    # device (as any in-memory GPU epoch holds them); "vertices", that peak without them (see graph_index_bytes)
    budget_basis: str = "graph"

    def __post_init__(self):
        check_budget_basis(self.budget_basis)


def check_budget_basis(basis: str) -> None:
    if basis not in ("graph", "vertices"):
        raise ValueError(f"budget_basis must be 'graph' or 'vertices', not {basis!r}")


FULL = Grid(
    graphs=(GraphSpec("rmat", 16, 64), GraphSpec("rmat", 17, 32), GraphSpec("rmat", 18, 16), GraphSpec("rmat", 19, 8), GraphSpec("reddit", 0.05)),
    widths=(16, 64, 128, 256), models=("gcn", "sage", "gin", "gat"), budgets=(4, 8, 16), caches=(True, False), warmup=2, reps=3,
)
QUICK = Grid(
    graphs=(GraphSpec("rmat", 16, 64), GraphSpec("reddit", 0.05)),
    widths=(64,), models=("gcn", "sage", "gin", "gat"), budgets=(8,), caches=(True, False), warmup=2, reps=5,
)
SMOKE = Grid(
    graphs=(GraphSpec("rmat", 12, 16), GraphSpec("reddit", 0.002)),
    widths=(16, 64), models=("gcn", "sage", "gin", "gat"), budgets=(8,), caches=(True, False), warmup=2, reps=2,
)


def _epoch(model, g, x, y, opt) -> float:
    t0 = time.perf_counter()
    opt.zero_grad()
    F.cross_entropy(model(g, x), y).backward()
    opt.step()
    return time.perf_counter() - t0


class _Run:
    """One configuration of a cell: a graph and a fresh model (seed 0), warmed up; epochs are timed one at a time, so configurations alternate."""

    def __init__(self, g: ChunkedGraph, model_name: str, width: int, data: tuple, warmup: int):
        torch.manual_seed(0)
        self.g, self.data = g, data
        self.model = MODELS[model_name](width, width, CLASSES, dropout=0.0)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=0.01)
        for _ in range(warmup):
            self.epoch()
        self.warm_peak = g.device.peak_bytes  # over the warm-up epochs
        self.restart()

    def restart(self) -> None:
        """Forget the epochs timed so far: the next :meth:`result` covers the epochs after this call."""
        g = self.g
        g.device.reset_peak()
        self.start, self.bytes0, self.vertex0, self.times = len(g.pass_log), g.device.bytes_in, g.vertex_steps.total, []
        self.work0 = g.vertex_steps.work()

    def epoch(self) -> None:
        t0 = time.perf_counter()
        self.opt.zero_grad()
        F.cross_entropy(self.model(self.g, self.data[0]), self.data[1]).backward()
        self.opt.step()
        if hasattr(self, "times"):
            self.times.append(time.perf_counter() - t0)

    def result(self) -> dict:
        """Median and best epoch, and per epoch the steps, bytes and pass-log figures."""
        g, records, per = self.g, self.g.pass_log[self.start :], 1 / len(self.times)
        known = [r for r in records if r.model_seconds == r.model_seconds]  # passes the model could predict (not NaN)
        sent = g.device.bytes_in - self.bytes0
        return {
            "epoch_seconds": statistics.median(self.times),
            "best_epoch_seconds": min(self.times),
            "epoch_seconds_all": self.times,
            "mean_epoch_seconds": statistics.fmean(self.times),
            # the edge stages' sub-chunks, summed per epoch: their loads and their compute, as measured
            "edge_load_seconds": sum(r.load_seconds for r in records) * per,
            "edge_compute_seconds": sum(r.compute_seconds for r in records) * per,
            "num_chunks": g.num_chunks,
            "sub_chunk_nnz": g.sub_chunk_nnz,
            "steps": round(sum(r.steps for r in records) * per),
            "vertex_steps": round((g.vertex_steps.total - self.vertex0) * per),
            "vertex_work": work_since(g.vertex_steps.work(), self.work0, per),  # per-vertex functions' rows and seconds
            "bytes_moved": round(sent * per),
            # what crossed as real copies: a device whose loads are views of host memory (in memory) copies nothing
            "bytes_copied": 0 if g.device.shares_host_memory else round(sent * per),
            # the epoch's bytes with every edge stage's source rows at its plan's lower bound
            "bytes_lower_bound": round((sent - sum(r.bytes_moved - r.bytes_lower_bound for r in records)) * per),
            "peak_device_bytes": g.device.peak_bytes,
            "pass_model_seconds": sum(r.model_seconds for r in known) * per if known else None,
            "pass_achieved_seconds": sum(r.seconds for r in known) * per if known else None,
        }


def _cell(mem: dict, ooc: dict, costs) -> dict:
    """The time model's figures for one out-of-core cell against its in-memory run."""
    # an in-memory run "moves" its chunks as views of host memory: they cost nothing, so every byte the
    # out-of-core run copies is extra (counting only the difference priced a dense graph's edges at zero)
    extra_bytes = max(0, ooc["bytes_copied"] - mem["bytes_copied"])
    extra_steps = ooc["steps"] - mem["steps"]
    extra_vertex = ooc.get("vertex_steps", 0) - mem.get("vertex_steps", 0)  # ApplyVertex and hooks in blocks
    extra_time = ooc["epoch_seconds"] - mem["epoch_seconds"]
    least_bytes = max(0, (ooc["bytes_lower_bound"] if ooc["bytes_copied"] else 0) - mem["bytes_copied"])
    # rows whose per-vertex function backward evaluates again (the in-memory run keeps its graphs), at the rate the
    # same run's forward evaluated them: the same blocks (the in-memory forward's whole intervals, fresh pages for every
    # output, priced R-MAT GIN's recompute at twice the time it took)
    recompute = recompute_seconds(ooc["vertex_work"]) if "vertex_work" in ooc else 0.0
    predicted = mem["epoch_seconds"] + extra_bytes * costs.seconds_per_byte + extra_steps * costs.seconds_per_step
    predicted += extra_vertex * costs.seconds_per_vertex_step + recompute
    explained = extra_bytes * costs.seconds_per_byte + extra_vertex * costs.seconds_per_vertex_step + recompute
    return {
        "ratio": ooc["epoch_seconds"] / mem["epoch_seconds"],
        "predicted_seconds": predicted,
        "prediction_error": predicted / ooc["epoch_seconds"] - 1,
        "lower_bound_seconds": mem["epoch_seconds"] + least_bytes * costs.seconds_per_byte,
        "recompute_seconds": recompute,
        "step_overhead_us": 1e6 * (extra_time - explained) / extra_steps if extra_steps > 0 else None,
        "model_step_us": 1e6 * costs.seconds_per_step,
        "model_vertex_step_us": 1e6 * costs.seconds_per_vertex_step,
        "bandwidth_gbs": 1e-9 / costs.seconds_per_byte if costs.seconds_per_byte > 0 else None,
        **gap_split(mem, ooc),
    }


def gap_split(mem: dict, ooc: dict) -> dict:
    """Where the out-of-core epoch's extra time went, measured (mean epochs; the three add up to the gap): the edge
    stages' loads, their compute (smaller sub-chunks, partial rows), and everything outside their steps (ApplyVertex and
    hook blocks and their recompute, columns opened and closed, outputs copied back)."""
    if "edge_load_seconds" not in mem or "edge_load_seconds" not in ooc:
        return {}
    loads = ooc["edge_load_seconds"] - mem["edge_load_seconds"]
    compute = ooc["edge_compute_seconds"] - mem["edge_compute_seconds"]
    gap = ooc["mean_epoch_seconds"] - mem["mean_epoch_seconds"]
    return {"extra_load_seconds": loads, "extra_edge_compute_seconds": compute, "extra_other_seconds": gap - loads - compute}


def run_sweep(grid: Grid = QUICK, progress=None) -> dict:
    """Every cell of ``grid``; returns ``{"cells": [...], "summary": {...}, "report": str}``."""
    cells, t_start = [], time.perf_counter()
    rates = roofline.machine_rates()
    for spec in grid.graphs:
        ei, n = spec.edges()
        gen = torch.Generator().manual_seed(0)
        y = torch.randint(0, CLASSES, (n,), generator=gen)
        for width, model_name, cache in itertools.product(grid.widths, grid.models, grid.caches):
            if cache and model_name not in CACHEABLE and False in grid.caches:
                continue  # nothing to cache: the cache-off row is the same run
            cells += _cells(spec, (ei, n), (torch.randn(n, width, generator=gen), y), model_name, width, cache, grid, rates)
            if progress is not None:
                for c in cells[-len(grid.budgets) * len(grid.rules):]:
                    progress(_line(c))
    result = {"grid": _grid_dict(grid), "seconds": time.perf_counter() - t_start, "machine_rates": rates, "cells": cells, "summary": summarise_cells(cells)}
    result["report"] = format_sweep(result)
    return result


def _cells(spec: GraphSpec, graph: tuple, data: tuple, model_name: str, width: int, cache: bool, grid: Grid, rates: dict) -> list[dict]:
    """The rows of one graph, width, model and cache setting: each budget out of core, its epochs alternating with the in-memory run's.

    One out-of-core run is alive at a time beside the in-memory one (a
    group's runs all alive at once took wide GIN and GAT on 2^19 vertices
    past 23 GiB of host memory), and each row's ratio is against the
    in-memory epochs timed beside it.
    """
    (ei, n), schedule = graph, ScheduleConfig(cache_gather=cache)
    # budgets are fractions of a whole-graph epoch's device peak (ApplyVertex on whole intervals, as PyG and DGL run
    # it), not of the in-memory run's, whose cache-sized blocks hold a fraction of that; over the same warm-up epochs
    whole = CpuDevice(name="whole graph", vertex_block_bytes=None)
    vertex_peak = _Run(ChunkedGraph(ei, n, num_chunks=1, device=whole, schedule=schedule), model_name, width, data, grid.warmup).warm_peak
    structure = graph_index_bytes(int(ei.shape[1]), n)
    peak = vertex_peak + (structure if grid.budget_basis == "graph" else 0)
    mem_run = _Run(ChunkedGraph(ei, n, num_chunks=1, device=CpuDevice(name="in-memory"), schedule=schedule), model_name, width, data, grid.warmup)
    cached = cache and model_name in CACHEABLE
    floor = roofline.epoch_floor(model_name, n, ei.shape[1] + n, width, width, CLASSES, rates, cached=cached)
    rows = []
    for denom, rule in itertools.product(grid.budgets, grid.rules):
        budget = max(1, peak // denom)
        row = {"graph": spec.name, "num_vertices": n, "num_edges": int(ei.shape[1]), "avg_degree": round(ei.shape[1] / n, 1), "width": width, "model": model_name,
               "budget_fraction": f"1/{denom}", "budget_bytes": budget, "budget_basis": grid.budget_basis, "whole_graph_peak_bytes": peak, "vertex_peak_bytes": vertex_peak,
               "graph_index_bytes": structure, "in_memory_peak_bytes": mem_run.warm_peak, "cache_gather": cached, "partition_rule": rule}
        rows.append(row)
        try:
            ooc_schedule = ScheduleConfig(cache_gather=cache, partition_rule=rule)
            run = _Run(ChunkedGraph(ei, n, device=CpuDevice(budget, copy_transfers=True), schedule=ooc_schedule), model_name, width, data, grid.warmup)
        except Exception as exc:  # a budget no plan fits: a row naming it, the sweep goes on
            row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            continue
        mem_run.restart()
        for _ in range(grid.reps):
            mem_run.epoch()
            run.epoch()
        mem, ooc = mem_run.result(), run.result()
        row.update({"in_memory_seconds": mem["epoch_seconds"], "in_memory_mean_seconds": mem["mean_epoch_seconds"], "in_memory_steps": mem["steps"], "in_memory_vertex_steps": mem["vertex_steps"], "in_memory_bytes_moved": mem["bytes_moved"],
                    "floor_seconds": floor, "floor_fraction": floor / mem["epoch_seconds"]})
        row.update({"out_of_core_seconds": ooc["epoch_seconds"], "out_of_core_mean_seconds": ooc["mean_epoch_seconds"], "best_ratio": ooc["best_epoch_seconds"] / mem["best_epoch_seconds"], "num_chunks": ooc["num_chunks"],
                    "sub_chunk_nnz": ooc["sub_chunk_nnz"], "steps": ooc["steps"], "vertex_steps": ooc["vertex_steps"], "bytes_moved": ooc["bytes_moved"], "bytes_lower_bound": ooc["bytes_lower_bound"],
                    "peak_device_bytes": ooc["peak_device_bytes"], "pass_model_seconds": ooc["pass_model_seconds"], "pass_achieved_seconds": ooc["pass_achieved_seconds"]})
        row.update(_cell(mem, ooc, measure_step_costs(run.g.device)))
        model, achieved = ooc["pass_model_seconds"], ooc["pass_achieved_seconds"]
        # the planner's own prediction of each pass (g.pass_log), against the pass's measured time
        row["pass_prediction_error"] = model / achieved - 1 if model and achieved else None
        del run  # before the next budget's run is built
    return rows


def _grid_dict(grid: Grid) -> dict:
    return {"graphs": [s.name for s in grid.graphs], "widths": list(grid.widths), "models": list(grid.models), "budgets": [f"1/{b}" for b in grid.budgets],
            "cache_gather": list(grid.caches), "warmup": grid.warmup, "reps": grid.reps, "partition_rules": list(grid.rules), "budget_basis": grid.budget_basis}


def summarise_cells(cells: list[dict]) -> dict:
    """Median and worst ratio, with and without the cache, and the prediction's error."""
    out = {}
    groups = [("all", lambda c: True), ("cache_on", lambda c: c["cache_gather"]), ("cache_off", lambda c: not c["cache_gather"])]
    rules = sorted({c["partition_rule"] for c in cells})
    if len(rules) > 1:
        groups += [(f"rule_{r}", lambda c, r=r: c["partition_rule"] == r) for r in rules]
    for name, keep in groups:
        ratios = [c["ratio"] for c in cells if "ratio" in c and keep(c)]
        best = [c["best_ratio"] for c in cells if "ratio" in c and keep(c)]
        errors = [abs(c["prediction_error"]) for c in cells if "ratio" in c and keep(c)]
        passes = [abs(c["pass_prediction_error"]) for c in cells if "ratio" in c and keep(c) and c.get("pass_prediction_error") is not None]
        if ratios:
            out[name] = {"cells": len(ratios), "median_ratio": statistics.median(ratios), "worst_ratio": max(ratios), "median_best_ratio": statistics.median(best),
                         "median_abs_prediction_error": statistics.median(errors), "worst_abs_prediction_error": max(errors),
                         "median_abs_pass_prediction_error": statistics.median(passes) if passes else None,
                         "worst_abs_pass_prediction_error": max(passes) if passes else None}
    out["failed"] = sum("error" in c for c in cells)
    return out


def _line(c: dict) -> str:
    head = f"{c['graph']:15s} {c['model']:4s} {c['width']:4d} {c['budget_fraction']:>5s} {'on ' if c['cache_gather'] else 'off'} {c['partition_rule'][:4]:4s}"
    if "error" in c:
        return f"{head}  {c['error']}"
    us = lambda v: f"{v:8.0f}" if v is not None else f"{'-':>8s}"  # noqa: E731
    return (f"{head} {c['in_memory_seconds']:7.3f} {c['out_of_core_seconds']:7.3f} {c['ratio']:6.2f} {c['num_chunks']:4d} {c['steps']:6d} {c.get('vertex_steps', 0):6d} "
            f"{c['bytes_moved'] / 2**20:9.1f} {c['lower_bound_seconds']:7.3f} {c['predicted_seconds']:7.3f} {100 * c['prediction_error']:+6.0f}% "
            f"{us(c['step_overhead_us'])} {c['model_step_us']:7.0f} {100 * c['floor_fraction']:5.0f}%{_split(c)}")


def _split(c: dict) -> str:
    if "extra_load_seconds" not in c:
        return ""
    return "".join(f" {1e3 * c[k]:+7.1f}" for k in ("extra_load_seconds", "extra_edge_compute_seconds", "extra_other_seconds"))


HEADER = (f"{'graph':15s} {'model':4s} {'width':>4s} {'budg':>5s} {'gc '} {'rule':4s} {'mem s':>7s} {'ooc s':>7s} {'ratio':>6s} {'P':>4s} {'steps':>6s} {'vsteps':>6s} "
          f"{'MiB sent':>9s} {'floor s':>7s} {'pred s':>7s} {'err':>7s} {'us/step':>8s} {'model':>7s} {'roof':>6s} {'+load':>7s} {'+kern':>7s} {'+rest':>7s}")


def format_sweep(r: dict) -> str:
    lines = ["out-of-core / in-memory epoch per cell (one process, copying transfers); timings on a shared machine are noisy",
             "us/step: (extra time - extra bytes / bandwidth - extra vertex steps x their calibrated cost) / extra steps, measured; model: the fixed cost per step the planner measured",
             "floor s: in-memory epoch + least extra bytes / bandwidth; roof: the roofline floor / the in-memory epoch",
             "+load, +kern, +rest: the extra ms of a mean epoch, measured: edge-stage loads, edge-stage compute, all else (vertex blocks, recompute, columns)", HEADER]
    lines += [_line(c) for c in r["cells"]]
    for name, s in r["summary"].items():
        if isinstance(s, dict):
            lines.append(f"{name}: {s['cells']} cells, median ratio {s['median_ratio']:.2f} (of best epochs {s['median_best_ratio']:.2f}), worst {s['worst_ratio']:.2f}; "
                         f"prediction error median {100 * s['median_abs_prediction_error']:.0f}%, worst {100 * s['worst_abs_prediction_error']:.0f}%"
                         + (f"; pass-log prediction error median {100 * s['median_abs_pass_prediction_error']:.0f}%, worst {100 * s['worst_abs_pass_prediction_error']:.0f}%"
                            if s.get("median_abs_pass_prediction_error") is not None else ""))
    lines.append(f"{r['summary']['failed']} cells failed; {r['seconds']:.0f} s")
    return "\n".join(lines)
