"""Shared pieces of the benchmarks: the graph, timing, memory bandwidth, peak RSS, subprocesses.

Timing rules (every benchmark): ``time.perf_counter`` around a call that
returns when the result is ready (everything here is synchronous CPU work),
warm-up calls first, and the competing implementations interleaved call by
call (ours, peer, ours, ...) so a burst of load on a shared machine hits them
alike. The figure reported is the median.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import torch

from sagann.chunks.synthetic import rmat

__all__ = [
    "GraphSpec",
    "FULL_GRAPH",
    "QUICK_GRAPH",
    "gcn_graph",
    "with_self_loops",
    "interleaved_times",
    "memcpy_bandwidth",
    "peak_rss_bytes",
    "load_average",
    "available_bytes",
    "run_worker",
    "repo_root",
]


class GraphSpec:
    """An R-MAT graph (Graph500 a=.57, b=c=.19) without self loops; users add one loop per vertex."""

    def __init__(self, num_vertices: int, num_edges: int, seed: int = 0):
        self.num_vertices, self.num_edges, self.seed = num_vertices, num_edges, seed

    def edge_index(self) -> np.ndarray:
        """``[2, E]`` int64, sources in row 0; no self loops (multi-edges kept)."""
        return rmat(self.num_vertices, self.num_edges, seed=self.seed, self_loops=False)

    def to_dict(self) -> dict:
        return {"generator": "sagann.chunks.synthetic.rmat(self_loops=False) + one self loop per vertex", "num_vertices": self.num_vertices, "rmat_edges": self.num_edges, "edges_with_self_loops": self.num_edges + self.num_vertices, "seed": self.seed}


# 2^18 vertices, 8M R-MAT edges + 2^18 self loops = 8,262,144 edges (the GCN benchmark's graph).
FULL_GRAPH = GraphSpec(1 << 18, 8_000_000)
QUICK_GRAPH = GraphSpec(1 << 12, 64_000)


def with_self_loops(edge_index: np.ndarray, num_vertices: int) -> np.ndarray:
    loops = np.arange(num_vertices, dtype=np.int64)
    return np.concatenate([edge_index, np.stack([loops, loops])], axis=1)


def gcn_graph(spec: GraphSpec, path: str | os.PathLike) -> Path:
    """Write ``spec``'s edge_index (no self loops) to ``path`` (.npy) once; every peer reads that file."""
    path = Path(path)
    if not path.exists():
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, spec.edge_index())
        tmp.rename(path)
    return path


def interleaved_times(cases: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each case; calls are interleaved round-robin (a, b, c, a, b, c, ...).

    ``warmup`` untimed rounds first (numba compilation, allocator warm-up, caches).
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def memcpy_bandwidth(threads: int, nbytes: int = 1 << 29, reps: int = 7) -> float:
    """Copy bandwidth in GB/s (10^9 B/s) of ``dst.copy_(src)`` on ``nbytes`` fp32 with ``threads`` torch threads.

    Counts read + write: ``2 * nbytes / seconds``. The median of ``reps``
    copies after one warm-up; torch's thread count is restored afterwards.
    """
    old = torch.get_num_threads()
    n = nbytes // 4
    src = torch.ones(n)
    dst = torch.empty(n)
    try:
        torch.set_num_threads(threads)
        dst.copy_(src)  # warm-up: faults the pages in
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return 2 * nbytes / float(np.median(times)) / 1e9


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def available_bytes() -> int:
    return int(psutil.virtual_memory().available)


def repo_root() -> Path | None:
    """The source checkout holding ``benchmarks/`` (editable installs), or None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "benchmarks").is_dir() else None


def run_worker(cmd: list[str], timeout: float) -> dict:
    """Run a benchmark worker process that prints one JSON object on its last stdout line.

    Returns that object, or ``{"error": ...}`` naming the exit status (a
    negative status is a signal: -9 is what the kernel's OOM killer sends).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", DGLBACKEND="pytorch")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        why = "killed by SIGKILL (out of memory?)" if proc.returncode == -9 else f"exit status {proc.returncode}"
        return {"error": why, "stderr_tail": tail}
    return json.loads(lines[-1])
