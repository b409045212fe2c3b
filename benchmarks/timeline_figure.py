"""The timeline pictures in docs/: an out-of-core GCN, three profiled epochs.

Out-of-core 2-layer GCN on R-MAT (1/8 of the in-memory working set, copying
transfers so the loader does real work), default schedule. Writes the whole
run and one epoch at readable scale, plus the trace and summary beside them.

Run: python benchmarks/timeline_figure.py [--out docs/images]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from sagann import profiler
from sagann.chunks.synthetic import rmat
from sagann.engine.graph import ChunkedGraph
from sagann.engine.models import GCN
from sagann.scheduler.devices import CpuDevice


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--vertices", type=int, default=2**17)
    ap.add_argument("--edges", type=int, default=2**21)
    ap.add_argument("--budget-mib", type=float, default=56.0, help="1/8 of this graph's in-memory working set")
    args = ap.parse_args()
    n, dims = args.vertices, (128, 128, 16)
    ei = rmat(n, args.edges, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, dims[0], generator=gen)
    y = torch.randint(0, dims[2], (n,), generator=gen)
    g = ChunkedGraph(ei, n, device=CpuDevice(int(args.budget_mib * 2**20), copy_transfers=True))
    torch.manual_seed(0)
    model = GCN(*dims, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def epoch():
        opt.zero_grad()
        F.cross_entropy(model(g, x), y).backward()
        opt.step()

    epoch()  # plan and measure costs outside the picture
    with profiler.profile() as prof:
        for e in range(3):
            profiler.mark_epoch(e)
            epoch()
    out = Path(args.out)
    label = f"GCN {'-'.join(map(str, dims))}, R-MAT {n:,} v / {args.edges:,} e, P={g.num_chunks}, budget {args.budget_mib:.0f} MiB"
    profiler.write_timeline_png(prof, out / "timeline.png", title=f"sagann timeline: {label}, 3 epochs")
    profiler.write_timeline_png(prof, out / "timeline_epoch.png", title=f"one epoch: {label}", epochs=[1])
    print(profiler.format_table(profiler.summarize(prof)))


if __name__ == "__main__":
    main()
