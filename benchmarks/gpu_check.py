"""GPU checks on a CUDA machine: the CudaDevice tests, then a GCN epoch in memory and out of core.

Run on a machine with an NVIDIA GPU and a CUDA build of torch (``pip install
-e ".[test,cuda]"``), from the repository root::

    python benchmarks/gpu_check.py [--out DIR] [--vertices 262144] [--edges 8000000] [--fraction 8]

1. ``pytest tests/scheduler/test_cuda_device.py`` (skipped everywhere else);
2. pinned host-to-device bandwidth (``copy_`` of 256 MiB, CUDA events);
3. the 2-layer GCN epoch of ``sagann bench gcn`` (R-MAT, 128 -> 128 -> 16)
   with a ``CudaDevice``: unlimited budget (P = 1), then a budget of
   1/``fraction`` of that working set (out of core), next to PyG's GCNConv
   on the GPU; the out-of-core epoch is compared with its **H2D floor**,
   the bytes it moved over the host link divided by the pinned bandwidth.

Writes ``gpu_check.json`` into ``--out`` (default ``$OUT`` or ``.``).
Median of 5 epochs after 1 warm-up, ``torch.cuda.synchronize()`` around each.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pinned_h2d_gbps(device: torch.device, nbytes: int = 256 << 20) -> float:
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(5):
        start.record()
        dev.copy_(host, non_blocking=True)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return nbytes / best / 1e9


def _epochs(step, reps: int = 5) -> list[float]:
    step()  # warm-up: partitioning, kernel compiles, caches
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def _sagann_gcn(ei, n, x, y, budget):
    import sagann
    from sagann.engine.models import GCN

    dev = sagann.CudaDevice(budget)
    g = sagann.ChunkedGraph(ei, n, num_chunks=1 if budget is None else None, device=dev)
    torch.manual_seed(0)
    model = GCN(128, 128, 16, dropout=0.0).to(dev.torch_device)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(g, x), y).backward()
        opt.step()

    before = dev.bytes_in
    times = _epochs(step)
    loops = g.with_remaining_self_loops()[0]
    return {"epoch_s": float(np.median(times)), "epochs_s": times, "num_chunks": loops.num_chunks,
            "peak_device_bytes": dev.peak_bytes, "budget_bytes": dev.memory_budget,
            "h2d_bytes_per_epoch": (dev.bytes_in - before) / (len(times) + 1)}


def _pyg_gcn(ei, n, x, y, device):
    from torch_geometric.nn import GCNConv

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = GCNConv(128, 128, cached=True), GCNConv(128, 16, cached=True)

        def forward(self, x, e):
            return self.c2(F.relu(self.c1(x, e)), e)

    torch.manual_seed(0)
    model = Net().to(device)
    e, xd, yd = torch.from_numpy(ei).to(device), x.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(xd, e), yd).backward()
        opt.step()

    try:
        times = _epochs(step)
    except torch.cuda.OutOfMemoryError as exc:
        return {"error": f"out of memory: {str(exc).splitlines()[0]}"}
    return {"epoch_s": float(np.median(times)), "epochs_s": times, "peak_device_bytes": torch.cuda.max_memory_allocated(device)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--vertices", type=int, default=1 << 18)
    p.add_argument("--edges", type=int, default=8_000_000)
    p.add_argument("--fraction", type=int, default=8)
    p.add_argument("--skip-tests", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to check", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda", 0)
    report = {"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__, "cuda": torch.version.cuda}
    if not args.skip_tests:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/scheduler/test_cuda_device.py"], cwd=ROOT, capture_output=True, text=True)
        report["tests"] = {"returncode": proc.returncode, "tail": proc.stdout[-4000:] + proc.stderr[-2000:]}
        print(proc.stdout[-2000:], proc.stderr[-1000:])
    report["pinned_h2d_gbps"] = _pinned_h2d_gbps(dev)
    from sagann.chunks.synthetic import rmat

    n = args.vertices
    ei = rmat(n, args.edges, seed=0, self_loops=False)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((n, 128), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 16, n))
    report["sagann_in_memory"] = mem = _sagann_gcn(ei, n, x, y, None)
    report["sagann_out_of_core"] = ooc = _sagann_gcn(ei, n, x, y, max(1, mem["peak_device_bytes"] // args.fraction))
    ooc["h2d_floor_s"] = ooc["h2d_bytes_per_epoch"] / (report["pinned_h2d_gbps"] * 1e9)
    ooc["epoch_over_floor"] = ooc["epoch_s"] / ooc["h2d_floor_s"] if ooc["h2d_floor_s"] else None
    report["pyg"] = _pyg_gcn(ei, n, x, y, dev)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "tests"}, indent=2))
    return 0 if report.get("tests", {}).get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
