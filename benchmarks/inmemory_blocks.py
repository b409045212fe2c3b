"""The in-memory epoch with ApplyVertex on whole intervals against cache-sized blocks, alternated in one process.

Run: python benchmarks/inmemory_blocks.py rmat 16 64 gcn 64 [--cache] [--epochs 7]
     python benchmarks/inmemory_blocks.py reddit 0.05 0 sage 64
(graph kind, scale, degree as ``sagann.bench.sweep.GraphSpec``; model and width as the sweep's.)
Appends one JSON line to benchmarks/results.jsonl.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sagann.bench._results import append_result
from sagann.bench.sweep import CLASSES, MODELS, GraphSpec
from sagann.engine.graph import ChunkedGraph
from sagann.scheduler.config import ScheduleConfig
from sagann.scheduler.devices import CpuDevice

WARMUP = 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["rmat", "reddit"])
    p.add_argument("scale", type=float)
    p.add_argument("degree", type=int)
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("width", type=int)
    p.add_argument("--cache", action="store_true", help="the first layer's cached Gather on")
    p.add_argument("--epochs", type=int, default=7, help="per configuration, the first two warm-ups")
    p.add_argument("--out", default=str(Path(__file__).with_name("results.jsonl")))
    args = p.parse_args()
    spec = GraphSpec(args.kind, args.scale, args.degree)
    ei, n = spec.edges()
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    x = torch.randn(n, args.width, generator=gen)
    runs = {}
    for name, block_bytes in (("blocks", "8MiB"), ("whole_intervals", None)):
        device = CpuDevice(name=name, vertex_block_bytes=block_bytes)
        g = ChunkedGraph(ei, n, num_chunks=1, device=device, schedule=ScheduleConfig(cache_gather=args.cache))
        torch.manual_seed(0)
        model = MODELS[args.model](args.width, args.width, CLASSES, dropout=0.0)
        runs[name] = (g, model, torch.optim.Adam(model.parameters(), lr=0.01), [])
    for _ in range(args.epochs):
        for g, model, opt, times in runs.values():
            t0 = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(model(g, x), y).backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    result = {"graph": spec.name, "num_vertices": n, "num_edges": int(ei.shape[1]), "model": args.model, "width": args.width, "cache_gather": args.cache}
    for name, (g, _, _, times) in runs.items():
        result[name] = {"epoch_seconds": statistics.median(times[WARMUP:]), "vertex_steps": g.vertex_steps.total, "peak_device_bytes": g.device.peak_bytes}
        print(f"{name:16s} {result[name]['epoch_seconds']:.3f} s  peak {g.device.peak_bytes / 2**20:.0f} MiB  vertex steps {g.vertex_steps.total}")
    append_result(args.out, "inmemory_blocks", result)


if __name__ == "__main__":
    main()
