"""The fixed cost of one sub-chunk step: epochs on a graph so small that the kernels cost almost nothing.

A two-layer model 16-16-16 on R-MAT 2^12 with 16 edges a vertex, forced to
P = 16 (256 chunks, hundreds of sub-chunk steps an epoch) on a copying
CPU device with room for everything: what an epoch takes is, almost all of
it, the engine's work around each step (index arrays sent, inputs loaded,
kernel calls checked and launched, the ledger, the pass log). The figure
printed is the median epoch over its sub-chunk steps; ApplyVertex blocks
and the optimiser are in it too, so it bounds the per-step cost from above.

Run: python benchmarks/step_cost.py [--model gcn] [--chunks 16] [--epochs 15] [--out benchmarks/results.jsonl]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from sagann.bench._results import append_result
from sagann.bench.sweep import MODELS
from sagann.chunks.synthetic import rmat
from sagann.engine.graph import ChunkedGraph
from sagann.scheduler.config import ScheduleConfig
from sagann.scheduler.devices import CpuDevice


def measure(model_name: str, chunks: int, epochs: int, warmup: int = 3) -> dict:
    torch.manual_seed(0)
    n = 2**12
    g = ChunkedGraph(rmat(n, 16 * n, seed=0), n, num_chunks=chunks, device=CpuDevice(64 << 20, copy_transfers=True), schedule=ScheduleConfig(cache_gather=False))
    x, y = torch.randn(n, 16), torch.randint(0, 16, (n,))
    model = MODELS[model_name](16, 16, 16, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def epoch() -> float:
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(g, x), y).backward()
        opt.step()
        return time.perf_counter() - t0

    for _ in range(warmup):
        epoch()
    start, vertex0 = len(g.pass_log), g.vertex_steps.total
    times = [epoch() for _ in range(epochs)]
    steps = round(sum(r.steps for r in g.pass_log[start:]) / epochs)
    median = statistics.median(times)
    return {"model": model_name, "num_chunks": g.num_chunks, "epoch_seconds": median, "best_epoch_seconds": min(times), "steps": steps,
            "vertex_steps": round((g.vertex_steps.total - vertex0) / epochs), "us_per_step": 1e6 * median / steps if steps else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="gcn")
    ap.add_argument("--chunks", type=int, default=16, help="P: the graph is cut into P x P chunks")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--out", help="append the result to this JSONL file")
    args = ap.parse_args()
    r = measure(args.model, args.chunks, args.epochs)
    print(f"{r['model']} P={r['num_chunks']}: epoch {1e3 * r['epoch_seconds']:.1f} ms (best {1e3 * r['best_epoch_seconds']:.1f}), "
          f"{r['steps']} steps, {r['vertex_steps']} vertex steps, {r['us_per_step']:.0f} us a step")
    if args.out:
        append_result(args.out, "step_cost", r)


if __name__ == "__main__":
    main()
