"""What profiling costs: GCN epochs with the profiler on and off, alternated in one run.

Out-of-core 2-layer GCN (R-MAT, 1/8 of the in-memory working set, default
schedule, so P > 4 and every span kind fires). Epochs alternate off/on so
drift in machine load hits both alike. The "off" cost cannot be timed as an
epoch difference (the instrumentation is always compiled in), so it is
bounded instead: spans per epoch (counted with profiling on) times the
measured cost of one disabled ``span()`` call.

Run: python benchmarks/profiler_overhead.py [--vertices 131072] [--edges 2097152] [--pairs 8]
Appends one JSON line to benchmarks/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import timeit
from pathlib import Path

import torch
import torch.nn.functional as F

from sagann import profiler
from sagann.bench._results import append_result
from sagann.chunks.synthetic import rmat
from sagann.engine.graph import ChunkedGraph
from sagann.engine.models import GCN
from sagann.scheduler.devices import CpuDevice


def _epoch(model, g, x, y, opt) -> float:
    t0 = time.perf_counter()
    opt.zero_grad()
    F.cross_entropy(model(g, x), y).backward()
    opt.step()
    return time.perf_counter() - t0


def span_seconds() -> float:
    """Seconds per ``with profiler.span(...)`` block, in the current on/off state."""
    n = 200_000

    def body():
        with profiler.span("kernel", device="cpu0", track="compute", chunk=(0, 0, 0)):
            pass

    return min(timeit.repeat(body, number=n, repeat=5)) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vertices", type=int, default=2**17)
    ap.add_argument("--edges", type=int, default=2**21)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--budget-fraction", type=float, default=1 / 8)
    args = ap.parse_args()
    n, dims = args.vertices, (128, 128, 16)
    ei = rmat(n, args.edges, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, dims[0], generator=gen)
    y = torch.randint(0, dims[2], (n,), generator=gen)

    probe = ChunkedGraph(ei, n, num_chunks=1, device=CpuDevice(name="in-memory"))
    model = GCN(*dims, dropout=0.0)
    _epoch(model, probe, x, y, torch.optim.Adam(model.parameters()))
    budget = int(probe.device.peak_bytes * args.budget_fraction)
    del probe

    g = ChunkedGraph(ei, n, device=CpuDevice(budget, copy_transfers=True))
    torch.manual_seed(0)
    model = GCN(*dims, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):  # plan, measure costs, order
        _epoch(model, g, x, y, opt)
    off, on, spans = [], [], []
    for _ in range(args.pairs):
        off.append(_epoch(model, g, x, y, opt))
        with profiler.profile() as prof:
            on.append(_epoch(model, g, x, y, opt))
        spans.append(len(prof))
    per_span = span_seconds()
    with profiler.profile(nvtx=False):
        per_span_on = span_seconds()
    t_off, t_on = statistics.median(off), statistics.median(on)
    result = {
        "vertices": n, "edges": args.edges, "dims": list(dims), "num_chunks": g.num_chunks,
        "budget_bytes": budget, "pairs": args.pairs,
        "epoch_seconds_off": off, "epoch_seconds_on": on,
        "median_off": t_off, "median_on": t_on,
        "overhead_on": t_on / t_off - 1.0,
        "spans_per_epoch": statistics.median(spans),
        "disabled_span_seconds": per_span,
        "overhead_off_bound": statistics.median(spans) * per_span / t_off,
        "enabled_span_seconds": per_span_on,
        "overhead_on_recording": statistics.median(spans) * per_span_on / t_off,
    }
    append_result(str(Path(__file__).with_name("results.jsonl")), "profiler_overhead", result)
    print(f"P={g.num_chunks}, {result['spans_per_epoch']:.0f} spans/epoch")
    print(f"profiling off: {t_off:.3f} s/epoch (median of {args.pairs})")
    print(f"profiling on:  {t_on:.3f} s/epoch -> {100 * result['overhead_on']:+.2f} %")
    print(f"on: {1e9 * per_span_on:.0f} ns per recorded span -> {100 * result['overhead_on_recording']:.3f} % of an epoch in recording itself")
    print(f"off: {1e9 * per_span:.0f} ns per disabled span -> at most {100 * result['overhead_off_bound']:.4f} % of an epoch")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
