"""The disk tier: `sagann train` on an ogbn-products-shaped graph with host RAM unlimited vs budgeted.

Builds an SBM with ogbn-products' shape (2,449,029 vertices, 61,859,140
edges, 100 features, 47 classes; ``--scale`` shrinks both counts) as a
dataset directory once, then runs ``sagann train DATASET --model gcn`` in a
fresh subprocess per configuration, alternating, so each peak RSS
(``ru_maxrss`` of the child) is its own:

* ``ram``: no host budget (features, layer outputs and saved tensors in RAM);
* ``disk``: ``--host-memory`` set below what those tensors need, so the rest
  lives in memory-mapped spill files under ``--spill-dir``.

The device is a CpuDevice with ``--memory-budget`` (out of core in both).
Epoch time is the median train step over the epochs after the first.

Run: python benchmarks/disk_tier.py [--scale 1.0] [--epochs 4] [--host-memory 2GB] [--memory-budget 2GB] [--work DIR] [--configs ram disk]
Appends one JSON line to benchmarks/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sagann.bench._peers import load_average
from sagann.bench._results import append_result


def build_dataset(path: Path, scale: float, num_chunks: int) -> dict:
    """The products-shaped SBM as a dataset directory (skipped when one is already there)."""
    from sagann.chunks import partition_graph, save_dataset
    from sagann.chunks.dataset import load_dataset
    from sagann.chunks.synthetic import preset_graph

    if (path / "manifest.json").exists():
        ds = load_dataset(path, mmap=True, verify=False)
        return {"num_vertices": ds.partition.num_vertices, "num_edges": ds.partition.num_edges, "built_seconds": 0.0}
    t0 = time.perf_counter()
    d = preset_graph("ogbn-products", scale=scale, seed=0)
    part = partition_graph(d.edge_index, d.num_vertices, num_chunks)
    save_dataset(path, part, x=d.x, y=d.y, masks={"train": d.train_mask, "val": d.val_mask, "test": d.test_mask})
    return {"num_vertices": d.num_vertices, "num_edges": d.num_edges, "built_seconds": time.perf_counter() - t0}


def _poll_rss(pid: int, peaks: dict, stop: threading.Event) -> None:
    """Peak RssAnon / RssFile of a child: spilled pages are file-backed, so the OS can drop them."""
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key = line.split(":")[0]
                    if key in ("RssAnon", "RssFile", "VmRSS"):
                        peaks[key] = max(peaks.get(key, 0), int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            return
        stop.wait(0.05)


def run_train(dataset: Path, epochs: int, memory_budget: str, host_memory: str | None, spill_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "sagann.cli", "train", str(dataset), "--model", "gcn", "--epochs", str(epochs), "--hidden", "128",
           "--memory-budget", memory_budget, "--order", "natural", "--json"]
    if host_memory is not None:
        cmd += ["--host-memory", host_memory, "--spill-dir", str(spill_dir)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        peaks: dict[str, int] = {}
        stop = threading.Event()
        poller = threading.Thread(target=_poll_rss, args=(proc.pid, peaks, stop), daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
        stop.set()
        poller.join()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        return {"error": stderr.strip()[-2000:], "command": " ".join(cmd)}
    r = json.loads(stdout.strip().splitlines()[-1])
    r["peak_rss_bytes"] = usage.ru_maxrss * 1024  # KiB on Linux
    r["peak_rss_anon_bytes"], r["peak_rss_file_bytes"] = peaks.get("RssAnon"), peaks.get("RssFile")
    r["wall_seconds"] = wall
    r["command"] = " ".join(cmd)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--chunks", type=int, default=8, help="P of the dataset on disk")
    ap.add_argument("--memory-budget", default="2GB")
    ap.add_argument("--host-memory", default="2GB")
    ap.add_argument("--work", default="/tmp/sagann-disk-tier")
    ap.add_argument("--configs", nargs="+", choices=("ram", "disk"), default=["ram", "disk"],
                    help="which configurations to run (full scale takes ~10 min each)")
    args = ap.parse_args()
    work = Path(args.work)
    dataset = work / f"products@{args.scale:g}"
    spill = work / "spill"
    work.mkdir(parents=True, exist_ok=True)
    graph = build_dataset(dataset, args.scale, args.chunks)
    print(f"dataset {dataset}: {graph}", flush=True)
    load_before = load_average()
    rows = {}
    for label, host in (("ram", None), ("disk", args.host_memory)):
        if label not in args.configs:
            continue
        r = run_train(dataset, args.epochs, args.memory_budget, host, spill)
        if "error" in r:
            print(f"{label}: FAILED\n{r['error']}", flush=True)
            rows[label] = r
            continue
        steps = r["epoch_seconds"][1:] or r["epoch_seconds"]
        rows[label] = {
            "epoch_seconds_median": statistics.median(steps),
            "epoch_seconds": r["epoch_seconds"],
            "losses": r["losses"],
            "num_chunks": r["num_chunks"],
            "peak_rss_bytes": r["peak_rss_bytes"],
            "peak_rss_anon_bytes": r["peak_rss_anon_bytes"],  # sampled every 50 ms
            "peak_rss_file_bytes": r["peak_rss_file_bytes"],
            "peak_device_bytes": r["peak_device_bytes"],
            **{k: r.get(k) for k in ("host_memory_bytes", "peak_resident_bytes", "spilled_bytes_total", "peak_spilled_bytes", "spill_files")},
            "wall_seconds": r["wall_seconds"],
            "command": r["command"],
        }
        gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"  # noqa: E731
        rss = f"{gib(r['peak_rss_bytes'])} (anonymous {gib(r['peak_rss_anon_bytes'])}, file-backed {gib(r['peak_rss_file_bytes'])})"
        print(f"{label}: epoch {rows[label]['epoch_seconds_median']:.2f} s (median of {len(steps)}), peak RSS {rss}, "
              f"spilled {(r.get('spilled_bytes_total') or 0) / 2**30:.2f} GiB, losses {[round(v, 5) for v in r['losses']]}", flush=True)
    result = {"graph": {"preset": "ogbn-products", "scale": args.scale, **graph}, "epochs": args.epochs,
              "memory_budget": args.memory_budget, "host_memory": args.host_memory,
              "load_average_before": load_before, "load_average_after": load_average(), "configs": rows,
              "spill_dir_filesystem": os.statvfs(work).f_bsize}
    append_result(str(Path(__file__).with_name("results.jsonl")), "disk_tier", result)
    print(json.dumps({k: v for k, v in result.items() if k != "configs"}))


if __name__ == "__main__":
    main()
