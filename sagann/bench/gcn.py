"""`sagann bench gcn`: a full-graph 2-layer GCN epoch, sagann vs PyG vs plain torch vs DGL.

Model 128 -> 128 -> 16 (ReLU between, no dropout), features 128, 16 classes;
one epoch = ``zero_grad`` + forward + cross-entropy over all vertices +
backward + ``Adam.step``. Graph: R-MAT, 2^18 vertices, 8M edges without
self loops, to which every implementation adds one self loop per vertex
(8,262,144 edges; ``quick``: 2^12 vertices, 64k edges). The edge list is
written once to an ``.npy`` file that every worker reads, DGL's included.

Configurations, each in a fresh subprocess so peak RSS (``ru_maxrss``) is
its own:

* ``sagann_p1``: ``sagann.engine.models.GCN`` on a ChunkedGraph with P=1 on
  an unlimited CpuDevice (its peak device bytes = the in-memory working set);
* ``sagann_ooc``: the same with a CpuDevice budget of 1/8 of that working
  set (1/2 with ``quick``), P chosen by the planner;
* ``pyg_edge_index``: ``torch_geometric.nn.GCNConv`` on ``edge_index``;
* ``pyg_csr``: the same on a torch CSR ``adj_t`` (rows = destinations);
* ``torch_sparse``: plain torch, ``torch.sparse.mm`` with the normalised CSR
  and default autograd;
* ``dgl``: ``dgl.nn.GraphConv`` (norm="both"), run by
  ``benchmarks/dgl_gcn.py`` in its own venv (``benchmarks/dgl_env.sh``).

PyG's GCNConv gets ``cached=True`` (its normalisation is computed once, as
sagann caches its own); the warm-up epoch pays for every implementation's
one-time preprocessing and is reported separately. Configurations run one
after the other, alternating ours and a peer's, in ``rounds`` rounds; the
epoch time is the median over all timed epochs of all rounds.

Run a worker by hand: ``python -m sagann.bench.gcn --worker pyg_csr --graph g.npy --num-vertices N``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from sagann.bench import _peers

__all__ = ["run", "format_report", "CONFIGS"]

# Alternating ours / peer. sagann_p1 first: its working set sets sagann_ooc's budget.
CONFIGS = ("sagann_p1", "pyg_csr", "sagann_ooc", "pyg_edge_index", "torch_sparse", "dgl")
IN_CHANNELS, HIDDEN, CLASSES = 128, 128, 16
BUDGET_FRACTION = 8  # sagann_ooc's budget = in-memory working set / 8
# --quick: / 2. On the tiny graph the fixed per-row and per-chunk bytes dominate, and 1/8
# makes the planner pick P > 100 (thousands of sub-chunks): a smoke test must be quick.
QUICK_BUDGET_FRACTION = 2
REPS, WARMUP, ROUNDS = 5, 1, 2
QUICK_REPS = 2  # --quick is a smoke test of every path, not a measurement
WORKER_TIMEOUT_S = 1800


# ----------------------------------------------------------------------------- workers
def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels from numpy (the same bits in every environment, DGL's too)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, IN_CHANNELS), dtype=np.float32)
    y = rng.integers(0, CLASSES, n)
    return torch.from_numpy(x), torch.from_numpy(y)


def _sagann(ei: np.ndarray, n: int, budget: int | None, num_chunks: int | None):
    from sagann.engine.graph import ChunkedGraph
    from sagann.engine.models import GCN
    from sagann.scheduler.devices import CpuDevice

    # out of core, every transfer is a real copy (as to a GPU); in memory the rows are already resident
    device = CpuDevice(budget, copy_transfers=budget is not None)
    g = ChunkedGraph(ei, n, num_chunks=num_chunks, device=device)
    model = GCN(IN_CHANNELS, HIDDEN, CLASSES, num_layers=2, dropout=0.0)

    def info() -> dict:
        return {"num_chunks": g.num_chunks, "peak_device_bytes": device.peak_bytes, "memory_budget_bytes": budget}

    return model, (lambda x: model(g, x)), info


def _pyg(ei: np.ndarray, n: int, csr: bool):
    from torch_geometric.nn import GCNConv

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = GCNConv(IN_CHANNELS, HIDDEN, cached=True)
            self.conv2 = GCNConv(HIDDEN, CLASSES, cached=True)

        def forward(self, x, adj):
            return self.conv2(torch.relu(self.conv1(x, adj)), adj)

    edge_index = torch.from_numpy(ei)
    if csr:
        from torch_geometric.utils import to_torch_csr_tensor

        adj = to_torch_csr_tensor(edge_index.flip(0), size=(n, n))  # adj_t: rows are destinations
    else:
        adj = edge_index
    model = Net()
    return model, (lambda x: model(x, adj)), dict


def _torch_sparse(ei: np.ndarray, n: int):
    """D^-1/2 (A + I) D^-1/2 as a CSR with rows = destinations; torch.sparse.mm with default autograd."""
    loops = torch.arange(n)
    src = torch.cat([torch.from_numpy(ei[0]), loops])
    dst = torch.cat([torch.from_numpy(ei[1]), loops])
    deg = torch.zeros(n).index_add_(0, dst, torch.ones(dst.shape[0]))
    dinv = deg.pow(-0.5)
    coo = torch.sparse_coo_tensor(torch.stack([dst, src]), dinv[dst] * dinv[src], (n, n)).coalesce()
    a_hat = coo.to_sparse_csr()
    del coo

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1 = torch.nn.Linear(IN_CHANNELS, HIDDEN)
            self.lin2 = torch.nn.Linear(HIDDEN, CLASSES)

        def forward(self, x):
            h = torch.relu(torch.sparse.mm(a_hat, self.lin1(x)))
            return torch.sparse.mm(a_hat, self.lin2(h))

    model = Net()
    return model, model, dict


def worker(config: str, graph: str, n: int, reps: int, warmup: int, budget: int | None) -> dict:
    """One configuration in this process: build, ``warmup`` + ``reps`` epochs, peak RSS."""
    import torch.nn.functional as F

    t0 = time.perf_counter()
    ei = np.load(graph)
    x, y = _data(n)
    torch.manual_seed(0)
    if config == "sagann_p1":
        model, forward, info = _sagann(ei, n, None, 1)
    elif config == "sagann_ooc":
        model, forward, info = _sagann(ei, n, budget, None)
    elif config in ("pyg_edge_index", "pyg_csr"):
        model, forward, info = _pyg(ei, n, csr=config == "pyg_csr")
    elif config == "torch_sparse":
        model, forward, info = _torch_sparse(ei, n)
    else:
        raise ValueError(f"unknown configuration {config!r}; known: {', '.join(CONFIGS)}")
    del ei
    setup_s = time.perf_counter() - t0
    rss_setup = psutil.Process().memory_info().rss
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    times = []
    for _ in range(warmup + reps):
        t = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return {
        "config": config,
        "epoch_seconds": times[warmup:],
        "warmup_seconds": times[:warmup],
        "setup_seconds": setup_s,
        "loss": float(loss.detach()),
        "rss_after_setup_bytes": rss_setup,
        "peak_rss_bytes": _peers.peak_rss_bytes(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        **info(),
    }


# ----------------------------------------------------------------------------- driver
def _dgl_python() -> str | None:
    env = os.environ.get("SAGANN_DGL_PYTHON")
    if env:
        return env
    root = _peers.repo_root()
    if root is not None and (root / "benchmarks" / ".dgl-venv" / "bin" / "python").exists():
        return str(root / "benchmarks" / ".dgl-venv" / "bin" / "python")
    return None


def _command(config: str, graph: Path, n: int, reps: int, warmup: int, budget: int | None) -> list[str] | None:
    if config == "dgl":
        py, root = _dgl_python(), _peers.repo_root()
        if py is None or root is None:
            return None
        return [py, str(root / "benchmarks" / "dgl_gcn.py"), "--graph", str(graph), "--num-vertices", str(n), "--reps", str(reps), "--warmup", str(warmup)]
    cmd = [sys.executable, "-m", "sagann.bench.gcn", "--worker", config, "--graph", str(graph), "--num-vertices", str(n), "--reps", str(reps), "--warmup", str(warmup)]
    if budget is not None:
        cmd += ["--budget", str(budget)]
    return cmd


def run(quick: bool = False, configs: tuple[str, ...] | None = None, rounds: int | None = None, reps: int | None = None, graph_dir: str | None = None) -> dict:
    """Run every configuration in fresh subprocesses, alternating, ``rounds`` times.

    ``quick`` uses the tiny graph, one round of 2 epochs and no DGL. Returns a JSON-able
    dict: per configuration the median epoch time, peak RSS and any error.
    """
    spec = _peers.QUICK_GRAPH if quick else _peers.FULL_GRAPH
    configs = configs or tuple(c for c in CONFIGS if not (quick and c == "dgl"))
    rounds = rounds or (1 if quick else ROUNDS)
    reps = reps or (QUICK_REPS if quick else REPS)
    fraction = QUICK_BUDGET_FRACTION if quick else BUDGET_FRACTION
    tmp = None
    if graph_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="sagann-bench-gcn-")
        graph_dir = tmp.name
    try:
        graph = _peers.gcn_graph(spec, Path(graph_dir) / f"rmat_{spec.num_vertices}_{spec.num_edges}_{spec.seed}.npy")
        load_before = _peers.load_average()
        runs: dict[str, list[dict]] = {c: [] for c in configs}
        budget = None
        for _ in range(rounds):
            for config in configs:
                if config == "sagann_ooc" and budget is None:
                    runs[config].append({"error": "needs sagann_p1's working set first (run sagann_p1 too)"})
                    continue
                cmd = _command(config, graph, spec.num_vertices, reps, WARMUP, budget if config == "sagann_ooc" else None)
                if cmd is None:
                    runs[config].append({"error": "not run: no DGL environment (create it with `bash benchmarks/dgl_env.sh`, or set SAGANN_DGL_PYTHON)"})
                    continue
                r = _peers.run_worker(cmd, WORKER_TIMEOUT_S)
                r["load_average_after"] = _peers.load_average()
                runs[config].append(r)
                if config == "sagann_p1" and budget is None and "peak_device_bytes" in r:
                    budget = max(1, r["peak_device_bytes"] // fraction)
    finally:
        if tmp is not None:
            tmp.cleanup()
    results = {c: _summarise(rs) for c, rs in runs.items()}
    result = {
        "graph": spec.to_dict(),
        "model": f"2-layer GCN {IN_CHANNELS}->{HIDDEN}->{CLASSES}, ReLU, dropout 0, Adam(lr=0.01), cross-entropy over all vertices",
        "reps": reps,
        "warmup": WARMUP,
        "rounds": rounds,
        "order": list(configs),
        "ooc_budget_fraction": f"1/{fraction}",
        "load_average_before": load_before,
        "load_average_after": _peers.load_average(),
        "results": results,
        "quick": quick,
    }
    result["ratios"] = _ratios(results)
    result["report"] = format_report(result)
    return result


def _summarise(rs: list[dict]) -> dict:
    ok = [r for r in rs if "error" not in r]
    errors = [r for r in rs if "error" in r]
    if not ok:
        return {"error": errors[0]["error"] if errors else "not run", "details": errors}
    epochs = [t for r in ok for t in r["epoch_seconds"]]
    out = {
        "epoch_s": float(np.median(epochs)),
        "epoch_s_min": float(min(epochs)),
        "epoch_s_per_round": [float(np.median(r["epoch_seconds"])) for r in ok],
        "warmup_s": [w for r in ok for w in r["warmup_seconds"]],
        "setup_s": [r["setup_seconds"] for r in ok],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in ok),
        "rss_after_setup_bytes": max(r["rss_after_setup_bytes"] for r in ok),
        "torch": ok[0].get("torch"),
        "runs": ok,
    }
    for key in ("num_chunks", "peak_device_bytes", "memory_budget_bytes", "dgl"):
        if key in ok[0]:
            out[key] = ok[0][key]
    if errors:
        out["errors"] = errors
    return out


def _ratios(results: dict) -> dict:
    """Epoch time and peak RSS of each peer over sagann_p1's."""
    ours = results.get("sagann_p1", {})
    if "epoch_s" not in ours:
        return {}
    out = {}
    for c, r in results.items():
        if c != "sagann_p1" and "epoch_s" in r:
            out[c] = {"time": r["epoch_s"] / ours["epoch_s"], "peak_rss": r["peak_rss_bytes"] / ours["peak_rss_bytes"]}
    return out


def format_report(r: dict) -> str:
    gr = r["graph"]
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    lines = [
        f"{r['model']}",
        f"R-MAT N={gr['num_vertices']:,}, {gr['edges_with_self_loops']:,} edges with self loops; median of {r['reps']} epochs x {r['rounds']} round(s) after {r['warmup']} warm-up",
        f"load average before {r['load_average_before']}, after {r['load_average_after']}",
        "",
        f"{'configuration':16} {'epoch s':>9} {'peak RSS':>10} {'warm-up s':>10}  notes",
    ]
    for c, x in r["results"].items():
        if "error" in x:
            lines.append(f"{c:16} {'-':>9} {'-':>10} {'-':>10}  {x['error']}")
            continue
        notes = []
        if "num_chunks" in x:
            notes.append(f"P={x['num_chunks']}, peak device {gib(x['peak_device_bytes'])}")
            if x.get("memory_budget_bytes"):
                notes.append(f"budget {gib(x['memory_budget_bytes'])}")
        if c in r["ratios"]:
            notes.append(f"{r['ratios'][c]['time']:.2f}x sagann_p1's time")
        lines.append(f"{c:16} {x['epoch_s']:9.3f} {gib(x['peak_rss_bytes']):>10} {max(x['warmup_s']):10.2f}  {'; '.join(notes)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="one GCN benchmark configuration (a worker of `sagann bench gcn`)")
    p.add_argument("--worker", required=True, choices=[c for c in CONFIGS if c != "dgl"])
    p.add_argument("--graph", required=True, help=".npy edge_index [2, E] without self loops")
    p.add_argument("--num-vertices", type=int, required=True)
    p.add_argument("--reps", type=int, default=REPS)
    p.add_argument("--warmup", type=int, default=WARMUP)
    p.add_argument("--budget", type=int, default=None, help="device budget in bytes (sagann_ooc)")
    args = p.parse_args(argv)
    print(json.dumps(worker(args.worker, args.graph, args.num_vertices, args.reps, args.warmup, args.budget)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
