"""`sagann bench overlap`: what each scheduling feature buys, in one run on one graph.

A 2-layer GCN epoch (forward + backward + Adam step) on an R-MAT graph,
in memory and out-of-core under 1/8 of a whole-graph epoch's working set
(ApplyVertex on whole intervals, as in the sweep), adding
the scheduler's features one at a time: pipelining, selective transfers,
profile-guided ordering. Each configuration gets warm-up epochs (which also
give the ordering its measurements), then timed epochs, then one profiled
epoch for the overlap figure (profiling is kept out of the timed epochs).
Every configuration streams both layers' edges every epoch
(``cache_gather=False``): the first layer's cached Gather would leave the
scheduler only the second layer to schedule.
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F

from sagann import profiler
from sagann.bench import roofline
from sagann.bench.sweep import FULL, QUICK, check_budget_basis, graph_index_bytes, run_sweep
from sagann.chunks.synthetic import rmat
from sagann.engine.graph import ChunkedGraph
from sagann.engine.models import GCN
from sagann.scheduler.config import ScheduleConfig
from sagann.scheduler.cost_model import measure_step_costs
from sagann.scheduler.devices import CpuDevice
from sagann.scheduler.records import recompute_seconds, work_since

def _streamed(**options) -> ScheduleConfig:
    """A schedule whose layers stream their edges every epoch (no cached Gather)."""
    return ScheduleConfig(cache_gather=False, **options)


CONFIGS = [
    ("out-of-core, no pipelining", _streamed(prefetch=0, transfer="full", order="natural")),
    ("+ pipelining", _streamed(prefetch="max", transfer="full", order="natural")),
    ("+ selective", _streamed(prefetch="max", transfer="auto", order="natural")),
    ("+ ordering", _streamed(prefetch="max", transfer="auto", order="profile")),
    ("default schedule", _streamed()),
]


def _epoch(model, g, x, y, opt) -> float:
    t0 = time.perf_counter()
    opt.zero_grad()
    F.cross_entropy(model(g, x), y).backward()
    opt.step()
    return time.perf_counter() - t0


def _whole_graph_peak(ei, n, x, y, dims, epochs: int, with_graph: bool = True) -> int:
    """The device peak of in-memory epochs with ApplyVertex on whole intervals (as PyG and DGL run it), with the graph's
    index arrays unless ``with_graph`` is False (``roofline.graph_index_bytes``): the working set the budget is a fraction of, as in the sweep (the
    in-memory row's cache-sized blocks hold less). Over as many epochs as the in-memory row runs (at least two): the
    second epoch's peak can be higher than the first's."""
    g = ChunkedGraph(ei, n, num_chunks=1, device=CpuDevice(name="whole graph", vertex_block_bytes=None), schedule=_streamed())
    torch.manual_seed(0)
    model = GCN(*dims, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(max(2, epochs)):
        _epoch(model, g, x, y, opt)
    return g.device.peak_bytes + (graph_index_bytes(int(ei.shape[1]), n) if with_graph else 0)


def _measure(name, g, x, y, dims, warmup, repeats) -> dict:
    torch.manual_seed(0)
    model = GCN(*dims, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(warmup):
        _epoch(model, g, x, y, opt)
    start, bytes0, vertex0, work0 = len(g.pass_log), g.device.bytes_in, g.vertex_steps.total, g.vertex_steps.work()
    times = [_epoch(model, g, x, y, opt) for _ in range(repeats)]
    vertex_steps = round((g.vertex_steps.total - vertex0) / repeats)
    work = work_since(g.vertex_steps.work(), work0, 1 / repeats)
    records = g.pass_log[start:]
    last = records[-4:]  # one epoch: 2 layers x (forward, backward)
    with profiler.profile() as prof:
        _epoch(model, g, x, y, opt)
    (summary,) = profiler.summarize(prof) or [None]
    return {
        "config": name,
        "epoch_seconds": statistics.median(times),
        "epoch_seconds_all": times,
        "num_chunks": g.num_chunks,
        "prefetch": max((r.prefetch for r in last), default=0),
        "peak_device_bytes": g.device.peak_bytes,
        "bytes_moved": sum(r.bytes_moved for r in last),
        "bytes_moved_full": sum(r.bytes_full for r in last),
        "edge_stage_seconds": sum(r.seconds for r in last),
        "edge_stage_predicted_seconds": sum(r.predicted_seconds for r in last),
        "steps": round(sum(r.steps for r in records) / repeats),
        "vertex_steps": vertex_steps,
        "vertex_work": work,
        "bytes_in": round((g.device.bytes_in - bytes0) / repeats),
        "overlap": None if summary is None else summary.overlap,
        "io_seconds": None if summary is None else summary.io_seconds,
        "compute_seconds": None if summary is None else summary.compute_seconds,
    }


def run(quick: bool = False, num_vertices: int | None = None, num_edges: int | None = None, budget_fraction: float = 1 / 8, sweep: bool = False,
        budget_basis: str = "graph") -> dict:
    """The features one by one on one graph; ``sweep``: the grid of :mod:`sagann.bench.sweep` instead (``quick``: its small grid).

    ``budget_basis``: "graph", budgets are fractions of a whole-graph epoch's device peak with the graph's index arrays;
    "vertices", without them (``sweep.Grid.budget_basis``).
    """
    check_budget_basis(budget_basis)
    if sweep:
        return run_sweep(dataclasses.replace(QUICK if quick else FULL, budget_basis=budget_basis))
    n = num_vertices or (2**11 if quick else 2**17)
    e = num_edges or (2**15 if quick else 2**21)
    dims = (64, 64, 16) if quick else (128, 128, 16)
    warmup, repeats = (1, 2) if quick else (2, 5)
    ei = rmat(n, e, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, dims[0], generator=gen)
    y = torch.randint(0, dims[2], (n,), generator=gen)

    memory = _measure("in-memory", ChunkedGraph(ei, n, num_chunks=1, device=CpuDevice(name="in-memory"), schedule=_streamed()), x, y, dims, warmup, repeats)
    working_set = _whole_graph_peak(ei, n, x, y, dims, warmup + repeats, with_graph=budget_basis == "graph")
    budget = int(working_set * budget_fraction)
    rows = [memory]
    for name, cfg in CONFIGS:
        g = ChunkedGraph(ei, n, device=CpuDevice(budget, copy_transfers=True), schedule=cfg)
        rows.append(_measure(name, g, x, y, dims, warmup, repeats))
        _step_overhead(rows[-1], memory, measure_step_costs(g.device))
    for row in rows:
        row.pop("vertex_work")  # keyed by (layer, function): read above, not for the JSON
    rates = roofline.machine_rates()
    floor = roofline.epoch_floor("gcn", n, e + n, dims[0], dims[1], dims[2], rates, cached=False)
    best = rows[-1]
    result = {
        "graph": {"kind": "rmat", "num_vertices": n, "num_edges": e, "dims": list(dims)},
        "working_set_bytes": working_set,
        "memory_budget_bytes": budget,
        "in_memory_seconds": memory["epoch_seconds"],
        "out_of_core_seconds": best["epoch_seconds"],
        "slowdown": best["epoch_seconds"] / memory["epoch_seconds"],
        "bytes_moved": best["bytes_moved"],
        "bytes_moved_full": best["bytes_moved_full"],
        "overlap": best["overlap"],
        "floor_seconds": floor,
        "floor_fraction": floor / memory["epoch_seconds"],
        "machine_rates": rates,
        "configs": rows,
    }
    result["report"] = _report(result)
    return result


def _step_overhead(row: dict, memory: dict, costs) -> None:
    """The fixed cost per step the run shows: what the extra bytes and vertex steps (at their calibrated cost) leave
    of the extra time, per extra step (µs)."""
    extra_steps = row["steps"] - memory["steps"]
    extra_bytes = max(0, row["bytes_in"] - memory["bytes_in"])
    extra_vertex = row.get("vertex_steps", 0) - memory.get("vertex_steps", 0)
    recompute = recompute_seconds(row["vertex_work"]) if "vertex_work" in row else 0.0  # at its own forward's rate
    extra = row["epoch_seconds"] - memory["epoch_seconds"] - extra_bytes * costs.seconds_per_byte - extra_vertex * costs.seconds_per_vertex_step - recompute
    row["recompute_seconds"] = recompute
    row["step_overhead_us"] = 1e6 * extra / extra_steps if extra_steps > 0 else None
    row["model_step_us"] = 1e6 * costs.seconds_per_step


def _report(r: dict) -> str:
    mib = lambda b: f"{b / 2**20:,.1f}"  # noqa: E731
    g = r["graph"]
    lines = [
        f"2-layer GCN {'-'.join(map(str, g['dims']))} on R-MAT ({g['num_vertices']:,} vertices, {g['num_edges']:,} edges); "
        f"budget {mib(r['memory_budget_bytes'])} MiB = 1/{r['working_set_bytes'] / r['memory_budget_bytes']:.0f} of a whole-graph epoch's working set",
        f"roofline: floor {r['floor_seconds']:.3f} s (bytes / {r['machine_rates']['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s + FLOPs / {r['machine_rates']['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s); "
        f"in memory achieves {100 * r['floor_fraction']:.0f}% of it",
        f"{'configuration':28s} {'epoch s':>8s} {'x in-mem':>8s} {'P':>3s} {'pf':>3s} {'moved MiB':>10s} {'full MiB':>9s} {'overlap':>8s} {'pred/achieved':>14s} {'steps':>6s} {'us/step':>8s}",
    ]
    base = r["in_memory_seconds"]
    for row in r["configs"]:
        ratio = row["edge_stage_predicted_seconds"] / row["edge_stage_seconds"] if row["edge_stage_seconds"] else float("nan")
        lines.append(
            f"{row['config']:28s} {row['epoch_seconds']:8.3f} {row['epoch_seconds'] / base:8.2f} {row['num_chunks']:3d} {row['prefetch']:3d} "
            f"{mib(row['bytes_moved']):>10s} {mib(row['bytes_moved_full']):>9s} {row['overlap'] if row['overlap'] is not None else float('nan'):8.2f} {ratio:14.2f}"
            f" {row['steps']:6d} {row['step_overhead_us'] if row.get('step_overhead_us') is not None else float('nan'):8.0f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(run()["report"])
