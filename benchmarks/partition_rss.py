"""Peak RSS of ``sagann partition`` on an edge list several times larger than ``--host-memory``.

Writes an R-MAT edge list (int64 ``[2, E]`` .npy, vertices randomly
permuted) block by block, runs ``sagann partition`` on it in a child process
and reads the child's peak RSS from ``wait4`` (``ru_maxrss``) and from its
``VmHWM`` (/proc, sampled every 20 ms; the high-water mark, so sampling loses
nothing but the last 20 ms). Linux carries a parent's RSS over into a
child's ru_maxrss, so this parent stays small: it imports neither torch nor
sagann, and the edge list is generated in a child of its own. A child that
only imports sagann gives the constant (interpreter + numpy + torch). With ``--check``, the dataset is compared
array by array with ``partition_graph`` in memory (needs RAM for that).

Run by hand:  ``python benchmarks/partition_rss.py [--host-memory 256MB] [--ratio 5] [--vertices 1000000] [--check]``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

BLOCK = 1 << 22
UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_bytes(s: str) -> int:
    s = s.strip().upper()
    for unit, size in UNITS.items():
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * size)
    return int(s)


def write_edge_list(path: Path, num_vertices: int, num_edges: int, seed: int) -> None:
    """An R-MAT [2, E] int64 .npy written in blocks (never all edges in memory)."""
    from sagann.chunks.synthetic import rmat

    perm = np.random.default_rng(seed).permutation(num_vertices)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(2, num_edges))
    for k, lo in enumerate(range(0, num_edges, BLOCK)):
        hi = min(num_edges, lo + BLOCK)
        out[:, lo:hi] = perm[rmat(num_vertices, hi - lo, seed=seed + 1 + k)]
        out.flush()
    del out


def _hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_child(cmd: list[str]) -> dict:
    """Run ``cmd``; its peak RSS from wait4 and from the sampled VmHWM."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampled = [0]

    def sample() -> None:
        while proc.returncode is None:
            try:
                sampled[0] = max(sampled[0], _hwm(proc.pid))
            except (OSError, ValueError):
                return
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return {"peak_rss": usage.ru_maxrss * 1024, "hwm_rss": sampled[0], "seconds": round(time.perf_counter() - t0, 2), "stdout": out.decode().strip()}


def check_equal(edges: Path, out: Path, sub_chunk_nnz: int) -> None:
    from sagann.chunks.dataset import load_dataset
    from sagann.chunks.partition import partition_graph

    ds = load_dataset(out)
    ref = partition_graph(np.load(edges), ds.partition.num_vertices, ds.partition.num_chunks, sub_chunk_nnz=sub_chunk_nnz)
    assert sorted(ds.partition.chunks) == sorted(ref.chunks)
    for key, subs in ref.chunks.items():
        for a, b in zip(ds.partition.chunks[key], subs, strict=True):
            for name in ("dst_ptr", "dst_idx", "src_idx", "src_rows", "src_ptr", "src_perm", "edge_ids"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), f"{a.id!r}.{name}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host-memory", default="256MB")
    ap.add_argument("--ratio", type=float, default=5.0, help="edge-list bytes / host memory (>= 4)")
    ap.add_argument("--vertices", type=int, default=1_000_000)
    ap.add_argument("--reorder", default="none")
    ap.add_argument("--sub-chunk-nnz", type=int, default=1 << 20)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--check", action="store_true", help="compare with partition_graph in memory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generate-only", nargs=3, metavar=("PATH", "N", "E"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.generate_only:
        path, n, e = args.generate_only
        write_edge_list(Path(path), int(n), int(e), args.seed)
        return {}
    host = parse_bytes(args.host_memory)
    num_edges = int(args.ratio * host / 16)  # int64 [2, E]: 16 bytes per edge
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        edges, out = Path(tmp) / "edges.npy", Path(tmp) / "dataset"
        t0 = time.perf_counter()
        run_child([sys.executable, __file__, "--generate-only", str(edges), str(args.vertices), str(num_edges), "--seed", str(args.seed)])
        gen_s = time.perf_counter() - t0
        base = run_child([sys.executable, "-c", "import sagann.cli, sagann.chunks.external"])
        cmd = [sys.executable, "-m", "sagann.cli", "partition", str(edges), str(out), "--chunks", "auto", "--host-memory", str(host),
               "--reorder", args.reorder, "--sub-chunk-nnz", str(args.sub_chunk_nnz), "--json"]
        run = run_child(cmd)
        summary = json.loads(run["stdout"])
        verified = run_child([sys.executable, "-m", "sagann.cli", "verify", str(out)])
        if args.check:
            check_equal(edges, out, args.sub_chunk_nnz)
        result = {
            "machine": f"{platform.node()} {platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM",
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(["sagann"] + cmd[3:]).replace(str(tmp), "$TMP"),
            "edge_list_bytes": edges.stat().st_size,
            "host_memory": host,
            "ratio": round(edges.stat().st_size / host, 2),
            "num_vertices": summary["num_vertices"],
            "num_edges": summary["num_edges"],
            "num_chunks": summary["num_chunks"],
            "max_bucket_edges": summary["max_bucket_edges"],
            "baseline_rss": base["peak_rss"],
            "peak_rss": run["peak_rss"],
            "hwm_rss": run["hwm_rss"],
            "parent_rss": psutil.Process().memory_info().rss,
            "peak_minus_baseline": run["peak_rss"] - base["peak_rss"],
            "under_budget_plus_baseline": run["peak_rss"] <= host + base["peak_rss"],
            "partition_seconds": run["seconds"],
            "generate_seconds": round(gen_s, 1),
            "verify": verified["stdout"][:2] == "OK",
            "checked_equal": bool(args.check),
        }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
