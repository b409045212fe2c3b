"""A/B: sagann's P=1 GCN epoch with the engine's default sub-chunk size vs one sub-chunk for the whole graph.

Both variants live in one process and their epochs alternate (a, b, a, b, ...),
so load from other processes hits both alike. ``sub_chunk_nnz`` is a public
``ChunkedGraph`` argument; nothing in the engine is changed.

Run by hand: ``python benchmarks/gcn_subchunk_ab.py [--quick] [--reps 5]``
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from sagann.bench import _peers
from sagann.bench.gcn import CLASSES, HIDDEN, IN_CHANNELS, _data
from sagann.engine.graph import ChunkedGraph
from sagann.engine.models import GCN
from sagann.scheduler.devices import CpuDevice


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    spec = _peers.QUICK_GRAPH if args.quick else _peers.FULL_GRAPH
    n = spec.num_vertices
    ei = spec.edge_index()
    x, y = _data(n)
    variants = {}
    for name, sub in (("default sub-chunks", None), ("one sub-chunk", 1 << 40)):
        torch.manual_seed(0)
        g = ChunkedGraph(ei, n, num_chunks=1, device=CpuDevice(None), sub_chunk_nnz=sub)
        model = GCN(IN_CHANNELS, HIDDEN, CLASSES, num_layers=2, dropout=0.0)
        variants[name] = (g, model, torch.optim.Adam(model.parameters(), lr=0.01))

    def epoch(g, model, opt):
        opt.zero_grad()
        F.cross_entropy(model(g, x), y).backward()
        opt.step()

    times = {k: [] for k in variants}
    for rep in range(args.reps + 1):
        for k, v in variants.items():
            t0 = time.perf_counter()
            epoch(*v)
            if rep:
                times[k].append(time.perf_counter() - t0)
    out = {"load_average": _peers.load_average()}
    for k, (g, _, _) in variants.items():
        part = g.with_remaining_self_loops()[0].partition  # GCNConv runs on the self-loop graph
        subs = sum(1 for _ in part.sub_chunks())
        out[k] = {"sub_chunks": subs, "epoch_s": float(np.median(times[k])), "all": times[k], "peak_device_bytes": g.device.peak_bytes}
        print(f"{k:20} sub-chunks {subs:3}  epoch median {np.median(times[k]):.3f} s  ({', '.join(f'{t:.2f}' for t in times[k])})  peak device {g.device.peak_bytes / 2**30:.2f} GiB")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
