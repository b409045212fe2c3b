"""Host memory measured from outside: `sagann train` under --host-memory budgets, peak anonymous RSS sampled.

Builds an SBM dataset directory once, then runs ``sagann train DATASET
--json`` in a fresh subprocess per configuration and samples the child's
``/proc/PID/status`` every ``--interval`` seconds:

* ``RssAnon``: anonymous memory (heap, torch tensors, numpy arrays): what a
  host budget must bound; spilled tensors and the dataset's memory-mapped
  files are file-backed pages, which the kernel may drop and re-read.
* ``VmRSS``: anonymous + file-backed + shared.

Configurations: no budget, then ``--host-memory`` set to 1/2, 1/4 and 1/8
of the unlimited run's peak anonymous RSS. The interpreter's footprint is
the peak anonymous RSS of a child that imports what ``sagann train``
imports (sagann, torch, numba) and takes one optimizer step on one
parameter (torch.optim's first step imports torch._dynamo), and compiles
nothing; each row's
``over`` is ``peak anon - interpreter - budget - device peak`` (the CPU
virtual device's memory is host RAM too): what the budgets do not cover,
to compare with ``HOST_MEMORY_SLACK``.

Run: python benchmarks/host_memory.py [--vertices 400000] [--degree 8] [--features 64] [--epochs 3] [--fractions 0.5 0.25 0.125 | --budgets 256MB]
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

ROOT = Path(__file__).resolve().parents[1]
# what `sagann train` imports, and one optimizer step: torch.optim's first step imports torch._dynamo
# (~70 MiB of torch's own code and data, the same for every graph), which plain imports leave out
INTERPRETER = ("import sagann, sagann.cli, sagann.engine.train, torch, numba, numpy, time; "
               "p = torch.nn.Parameter(torch.zeros(1)); p.grad = torch.zeros(1); torch.optim.Adam([p]).step(); time.sleep(0.5)")


def build_dataset(path: Path, vertices: int, degree: float, features: int, classes: int, chunks: int, preset: str | None = None, scale: float = 1.0) -> dict:
    """An SBM (or a preset's shape) saved as a dataset directory; reused when already there."""
    sys.path.insert(0, str(ROOT))
    from sagann.chunks import partition_graph, save_dataset
    from sagann.chunks.dataset import load_dataset
    from sagann.chunks.synthetic import preset_graph, sbm

    if (path / "manifest.json").exists():
        ds = load_dataset(path, mmap=True, verify=False)
        return {"num_vertices": ds.partition.num_vertices, "num_edges": ds.partition.num_edges, "num_features": int(ds.x.shape[1])}
    d = preset_graph(preset, scale=scale, seed=0) if preset else sbm(vertices, classes, degree, features, seed=0)
    part = partition_graph(d.edge_index, d.num_vertices, chunks)
    save_dataset(path, part, x=d.x, y=d.y, masks={"train": d.train_mask, "val": d.val_mask, "test": d.test_mask})
    return {"num_vertices": d.num_vertices, "num_edges": d.num_edges, "num_features": int(d.x.shape[1])}


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("RssAnon", "RssFile", "RssShmem", "VmRSS"):
                out[key] = int(line.split()[1]) * 1024
    return out


def measure(cmd: list[str], interval: float = 0.01, env: dict | None = None) -> dict:
    """Run ``cmd``; its exit code, stdout, stderr, and the peaks of RssAnon, RssFile, VmRSS sampled every ``interval`` s."""
    peaks: dict[str, int] = {}
    stop = threading.Event()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT, env=env)

        def poll():
            while not stop.is_set():
                try:
                    for k, v in _status(proc.pid).items():
                        peaks[k] = max(peaks.get(k, 0), v)
                except (FileNotFoundError, ProcessLookupError, ValueError):
                    return
                stop.wait(interval)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        stop.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {"returncode": proc.returncode, "stdout": out.read(), "stderr": err.read(), "wall_seconds": time.perf_counter() - t0,
                "peak_anon_bytes": peaks.get("RssAnon"), "peak_file_bytes": peaks.get("RssFile"), "peak_rss_bytes": peaks.get("VmRSS"),
                "maxrss_bytes": usage.ru_maxrss * 1024}


def interpreter_footprint(interval: float = 0.01) -> int:
    """Peak anonymous RSS of a Python that imports what `sagann train` imports."""
    r = measure([sys.executable, "-c", INTERPRETER], interval)
    if r["returncode"] != 0:
        raise RuntimeError(r["stderr"])
    return r["peak_anon_bytes"]


def train(dataset: Path, args, host_memory: int | None, spill: Path) -> dict:
    cmd = [sys.executable, "-m", "sagann.cli", "train", str(dataset), "--model", args.model, "--epochs", str(args.epochs), "--hidden", str(args.hidden),
           "--memory-budget", args.memory_budget, "--order", "natural", "--json"]
    if host_memory is not None:
        cmd += ["--host-memory", str(host_memory), "--spill-dir", str(spill)]
    r = measure(cmd, args.interval)
    r["command"] = " ".join(cmd)
    if r["returncode"] != 0:
        return {"error": r["stderr"].strip()[-3000:], **{k: v for k, v in r.items() if k not in ("stdout", "stderr")}}
    result = json.loads(r["stdout"].strip().splitlines()[-1])
    steps = result["epoch_seconds"][1:] or result["epoch_seconds"]
    return {
        "host_memory_bytes": host_memory,
        "peak_anon_bytes": r["peak_anon_bytes"],
        "peak_rss_bytes": max(r["peak_rss_bytes"] or 0, r["maxrss_bytes"]),
        "peak_file_bytes": r["peak_file_bytes"],
        "spilled_bytes_total": result.get("spilled_bytes_total") or 0,
        "peak_spilled_bytes": result.get("peak_spilled_bytes") or 0,
        "peak_host_anon_bytes": result.get("peak_host_anon_bytes"),  # the child's own sample, for comparison
        "peak_device_bytes": result.get("peak_device_bytes"),  # a CpuDevice's memory is host RAM too
        "epoch_seconds_median": statistics.median(steps),
        "losses": result["losses"],
        "num_chunks": result["num_chunks"],
        "wall_seconds": r["wall_seconds"],
        "command": r["command"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vertices", type=int, default=400_000)
    ap.add_argument("--degree", type=float, default=8.0)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--preset", default=None, help="a preset_graph name (e.g. ogbn-products) instead of the SBM sizes")
    ap.add_argument("--scale", type=float, default=1.0, help="with --preset: the fraction of its vertices and edges")
    ap.add_argument("--chunks", type=int, default=4, help="P of the dataset on disk")
    ap.add_argument("--model", default="gcn")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--memory-budget", default="64MB")
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.5, 0.25, 0.125])
    ap.add_argument("--budgets", nargs="*", default=None, help="explicit --host-memory values (e.g. 256MB) instead of fractions; no unlimited run")
    ap.add_argument("--interval", type=float, default=0.01, help="RSS sampling interval, seconds")
    ap.add_argument("--work", default="/tmp/sagann-host-memory")
    ap.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.jsonl")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    name = f"{args.preset}@{args.scale:g}" if args.preset else f"sbm-{args.vertices}-{args.degree:g}-{args.features}"
    dataset = work / name
    graph = build_dataset(dataset, args.vertices, args.degree, args.features, args.classes, args.chunks, args.preset, args.scale)
    print(f"dataset {dataset}: {graph}", flush=True)
    base = interpreter_footprint(args.interval)
    print(f"interpreter (sagann, torch, numba imported, one optimizer step): {base / 2**20:.1f} MiB anonymous", flush=True)
    if args.budgets:
        from sagann.units import parse_bytes

        labels = args.budgets
        rows = [train(dataset, args, parse_bytes(b), work / "spill") for b in args.budgets]
    else:
        rows = [train(dataset, args, None, work / "spill")]
        if "error" in rows[0]:
            raise SystemExit(f"the unlimited run failed: {rows[0]['error']}")
        top = rows[0]["peak_anon_bytes"]
        rows += [train(dataset, args, int(top * f), work / "spill") for f in args.fractions]
        labels = [None, *(f"1/{round(1 / f)}" for f in args.fractions)]
    mib = lambda b: "-" if b is None else f"{b / 2**20:.0f} MiB"  # noqa: E731
    print("| host memory | peak anon RSS | over interp.+budget+device | peak RSS | spilled | epoch | losses equal |")
    for f, r in zip(labels, rows):
        if "error" in r:
            print(f"| {f} | FAILED: {r['error'].splitlines()[-1]} |")
            continue
        over = None if r["host_memory_bytes"] is None else r["peak_anon_bytes"] - base - r["host_memory_bytes"] - (r["peak_device_bytes"] or 0)
        label = "none" if f is None else f"{f} = {mib(r['host_memory_bytes'])}"
        print(f"| {label} | {mib(r['peak_anon_bytes'])} | {mib(over)} | {mib(r['peak_rss_bytes'])} | {mib(r['spilled_bytes_total'])} | "
              f"{r['epoch_seconds_median']:.2f} s | {r['losses'] == rows[0]['losses']} |", flush=True)
        print(f"losses: {r['losses']}", flush=True)
    result = {"graph": {"name": name, **graph}, "args": vars(args), "interpreter_anon_bytes": base, "rows": rows}
    if not args.no_record:
        sys.path.insert(0, str(ROOT))
        from sagann.bench._results import append_result

        append_result(str(Path(__file__).with_name("results.jsonl")), "host_memory", result)


if __name__ == "__main__":
    main()
