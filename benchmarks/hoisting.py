"""G-GCN with and without the ApplyEdge compiler's hoisting: epoch time, same graph, same run.

Run: python benchmarks/hoisting.py [--vertices 50000] [--edges 800000] [--width 64]
Appends one JSON line to benchmarks/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sagann
from sagann.bench._results import append_result
from sagann.chunks.synthetic import rmat


def epoch_seconds(layer, g, x, y, repeats: int) -> list[float]:
    opt = torch.optim.Adam(layer.parameters(), lr=0.01)
    times = []
    for k in range(repeats + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(layer(g, x), y).backward()
        opt.step()
        if k:  # the first epoch compiles and plans
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vertices", type=int, default=50_000)
    ap.add_argument("--edges", type=int, default=800_000)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    ei = rmat(args.vertices, args.edges, seed=0)
    x = torch.randn(args.vertices, args.width)
    y = torch.randint(0, 8, (args.vertices,))
    g = sagann.ChunkedGraph(ei, args.vertices, num_chunks=1)
    rows = {}
    for label, hoist in (("per-edge (hoist off)", False), ("hoisted", True), ("per-edge again", False), ("hoisted again", True)):
        torch.manual_seed(0)
        layer = sagann.nn.GatedGCNConv(args.width, 8)
        layer.hoist = hoist
        rows[label] = statistics.median(epoch_seconds(layer, g, x, y, args.repeats))
        print(f"{label:22s} {rows[label]:.3f} s/epoch")
    print(sagann.explain(layer))
    result = {"vertices": args.vertices, "edges": args.edges, "width": args.width, "median_epoch_seconds": rows}
    append_result(str(Path(__file__).with_name("results.jsonl")), "hoisting", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
