"""Where sagann's GCN epoch (P=1, the `sagann bench gcn` model and graph) spends its time.

Three views of the same epochs, after a warm-up epoch:

1. sagann's own spans (``sagann.profiler``): time per span kind and phase
   (kernel, apply_edge, apply_vertex, h2d loads, ...), summed over the epoch;
2. the numba kernels, timed by wrapping each ``sagann.kernels._cpu_kernels``
   entry point (per kernel: calls, seconds, seconds per call);
3. ``torch.profiler`` (CPU): aten ops by self time (matmuls, copies,
   index_select, add, ...), and cProfile's top Python functions by own time
   (interpreter overhead, lock waits of the loader thread).

Run by hand: ``python benchmarks/profile_gcn.py [--quick] [--epochs 2] [--out DIR]``.
Profiling slows the epoch a little; the plain epoch time is printed first.
"""
from __future__ import annotations

import argparse
import cProfile
import collections
import functools
import io
import json
import pstats
import time

import numpy as np
import torch
import torch.nn.functional as F

from sagann import profiler
from sagann.bench import _peers
from sagann.bench.gcn import CLASSES, HIDDEN, IN_CHANNELS, _data
from sagann.engine.graph import ChunkedGraph
from sagann.engine.models import GCN
from sagann.kernels import _cpu_kernels as K
from sagann.scheduler.devices import CpuDevice

KERNELS = ("spmm_sum", "spmm_arg", "sddmm", "grad_src", "grad_dst", "grad_edge")
_OUTPUT_ARG = {"spmm_sum": -2, "spmm_arg": -3}  # position of each kernel's output argument (default: the last)


class KernelTimer:
    """Wraps the numba entry points of ``_cpu_kernels`` with perf_counter timers."""

    def __init__(self):
        self.seconds = collections.Counter()
        self.calls = collections.Counter()
        self._orig = {}

    def __enter__(self):
        for name in KERNELS:
            fn = getattr(K, name)
            self._orig[name] = fn

            @functools.wraps(fn)
            def timed(*args, _fn=fn, _name=name):
                t0 = time.perf_counter()
                try:
                    return _fn(*args)
                finally:
                    key = f"{_name} d={args[_OUTPUT_ARG.get(_name, -1)].shape[1]}"
                    self.seconds[key] += time.perf_counter() - t0
                    self.calls[key] += 1

            setattr(K, name, timed)
        return self

    def __exit__(self, *exc):
        for name, fn in self._orig.items():
            setattr(K, name, fn)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=2, help="profiled epochs (after one warm-up)")
    p.add_argument("--out", default=None, help="write a Chrome trace and the tables here")
    p.add_argument("--sub-chunk-nnz", type=int, default=None, help="ChunkedGraph(sub_chunk_nnz=...): default the engine's")
    p.add_argument("--out-of-core", type=int, default=None, metavar="K", help="profile out of core: a copying CpuDevice with 1/K of the in-memory working set (as `sagann bench gcn`'s sagann_ooc with K=8)")
    args = p.parse_args(argv)

    spec = _peers.QUICK_GRAPH if args.quick else _peers.FULL_GRAPH
    n = spec.num_vertices
    ei = spec.edge_index()
    x, y = _data(n)
    torch.manual_seed(0)
    device = CpuDevice(None)
    g = ChunkedGraph(ei, n, num_chunks=1, device=device, sub_chunk_nnz=args.sub_chunk_nnz)
    model = GCN(IN_CHANNELS, HIDDEN, CLASSES, num_layers=2, dropout=0.0)
    if args.out_of_core:  # the in-memory working set first, then the budgeted graph
        F.cross_entropy(model(g, x), y).backward()
        device = CpuDevice(max(1, device.peak_bytes // args.out_of_core), copy_transfers=True)
        g = ChunkedGraph(ei, n, device=device, sub_chunk_nnz=args.sub_chunk_nnz)
        model.zero_grad()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def epoch():
        opt.zero_grad()
        loss = F.cross_entropy(model(g, x), y)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    epoch()
    warm = time.perf_counter() - t0
    plain = []
    for _ in range(3):
        t0 = time.perf_counter()
        epoch()
        plain.append(time.perf_counter() - t0)
    loops = g.with_remaining_self_loops()[0]  # GCNConv runs on the self-loop graph
    subs = sum(1 for _ in loops.partition.sub_chunks())
    budget = "unlimited" if device.memory_budget is None else f"budget {device.memory_budget:,} B, peak {device.peak_bytes:,} B, copying transfers"
    lines = [
        f"graph N={n:,}, {spec.num_edges + n:,} edges with self loops; P={loops.num_chunks}, {subs} sub-chunks; {budget}; load average {_peers.load_average()}",
        f"warm-up epoch {warm:.3f} s; plain epochs {', '.join(f'{t:.3f}' for t in plain)} s (median {np.median(plain):.3f})",
    ]

    # 1 + 2: sagann spans and numba kernels
    with profiler.profile() as prof, KernelTimer() as kt:
        t0 = time.perf_counter()
        for e in range(args.epochs):
            profiler.mark_epoch(e)
            epoch()
        wall = (time.perf_counter() - t0) / args.epochs
    by_kind = collections.Counter()
    for s in prof.spans():
        by_kind[(s.kind, s.phase, s.track)] += (s.t1 - s.t0) / args.epochs
    lines += ["", f"sagann spans per epoch (epoch wall {wall:.3f} s with profiling on); kind / phase / track: seconds"]
    for (kind, phase, track), sec in by_kind.most_common():
        lines.append(f"  {kind:16} {phase:9} {track:8} {sec:8.3f}")
    lines += ["", "overlap table (sagann.profiler.summarize):", profiler.format_table(profiler.summarize(prof))]
    lines += ["", "numba kernels per epoch (d = output width: 128 is layer 1, 16 is layer 2): calls, seconds, ms per call"]
    for name in sorted(kt.calls):
        c, sec = kt.calls[name] / args.epochs, kt.seconds[name] / args.epochs
        lines.append(f"  {name:16} {c:6.0f} {sec:8.3f} {1e3 * sec / c:9.2f}")

    # 3: torch ops and Python functions
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tp:
        epoch()
    table = tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
    lines += ["", "torch.profiler, one epoch, aten ops by self CPU time:", table]
    pr = cProfile.Profile()
    pr.enable()
    epoch()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
    lines += ["", "cProfile, one epoch, by own time:", s.getvalue()]
    report = "\n".join(lines)
    print(report)
    if args.out:
        import pathlib

        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile_gcn.txt").write_text(report)
        tp.export_chrome_trace(str(out / "torch_trace.json"))
        profiler.write_chrome_trace(prof, out / "sagann_trace.json")
        (out / "kernels.json").write_text(json.dumps({k: [kt.calls[k], kt.seconds[k]] for k in kt.calls}))
    return {"plain_epoch_s": plain, "warmup_s": warm}


if __name__ == "__main__":
    main()
