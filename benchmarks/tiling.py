"""A/B: loop tiling off (tile 1, NeuGraph's column order) vs the planner's tile, out of core, in one process.

One GIN layer (sum of 64-wide source rows, then a 64-64 MLP) on the GCN
benchmark's R-MAT graph (2^18 vertices, 8M edges), P fixed, on a CpuDevice
with real copies whose budget is the working set plus room for ``--room``
extra destination columns: the planner may tile (hold several accumulators
while V_i streams) or hold source intervals resident, whichever moves fewer
bytes. Epochs alternate
(a, b, a, b, ...) so load from other processes hits both alike. Prints one
JSON line per variant: seconds per epoch, bytes moved per forward pass (as
the pass counted them), the plan's tile.

Run by hand: ``python benchmarks/tiling.py [--quick] [--transfer full|auto] [--room 3] [--reps 5]``
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import sagann
from sagann.bench import _peers
from sagann.engine.graph import ChunkedGraph
from sagann.engine.layer import probe_layer
from sagann.scheduler.config import ScheduleConfig
from sagann.scheduler.devices import CpuDevice
from sagann.scheduler.planner import resident_bytes

WIDTH = 64


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the small R-MAT graph")
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--room", type=float, default=3.0, help="budget beyond the working set, in destination columns")
    p.add_argument("--transfer", default="full", choices=["full", "auto", "selective"])
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    spec = _peers.QUICK_GRAPH if args.quick else _peers.FULL_GRAPH
    n, ei = spec.num_vertices, spec.edge_index()
    torch.manual_seed(0)
    x = torch.randn(n, WIDTH)
    layer = sagann.nn.GINConv(torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, WIDTH)))
    probe = ChunkedGraph(ei, n, num_chunks=args.chunks)
    layer(probe, x)
    shape = probe_layer(layer, WIDTH, None, torch.device("cpu"))
    column = resident_bytes(-(-n // args.chunks), shape, "forward")
    budget = probe.working_set.peak_bytes + int(args.room * column)
    variants = {}
    for name, tile in (("tile 1", 1), ("planner's tile", None)):
        dev = CpuDevice(budget, copy_transfers=True)
        g = ChunkedGraph(ei, n, num_chunks=args.chunks, device=dev, schedule=ScheduleConfig(transfer=args.transfer, order="natural", tile=tile, cache_gather=False))
        variants[name] = (g, dev, [])
    params = list(layer.parameters())
    for _ in range(args.reps + 1):  # the first epoch of each warms up (partition, kernels)
        for g, _, times in variants.values():
            for q in params:
                q.grad = None
            t0 = time.perf_counter()
            layer(g, x).sum().backward()
            times.append(time.perf_counter() - t0)
    rows = []
    for name, (g, dev, times) in variants.items():
        fwd = [r for r in g.pass_log if r.phase == "forward"]
        rows.append(
            {
                "variant": name,
                "tile": fwd[-1].tile,
                "seconds_median": round(statistics.median(times[1:]), 4),
                "seconds": [round(t, 4) for t in times[1:]],
                "forward_bytes_moved": fwd[-1].bytes_moved,
                "forward_bytes_full": fwd[-1].bytes_full,
                "forward_resident_bytes": fwd[-1].resident_bytes,
                "peak_device_bytes": dev.peak_bytes,
                "budget_bytes": budget,
                "num_chunks": g.num_chunks,
                "transfer": args.transfer,
                "graph": f"R-MAT {n} vertices, {ei.shape[1]} edges",
                "machine": platform.processor() or platform.machine(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            }
        )
        print(json.dumps(rows[-1]))
    return rows


if __name__ == "__main__":
    main()
