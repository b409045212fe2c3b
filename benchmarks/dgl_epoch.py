"""DGL's 2-layer GCN, GAT or GraphSAGE epoch on the graph of `sagann bench gcn|gat|sage`; prints one JSON line.

Runs in the DGL venv (``bash benchmarks/dgl_env.sh``: DGL 2.1.0 with torch
2.2.1), not in sagann's environment, and imports nothing from sagann. It is
started by ``sagann bench gcn|gat|sage`` as one of its configurations,
alternating with the others; by hand:

    benchmarks/.dgl-venv/bin/python benchmarks/dgl_epoch.py --model gat --graph g_edges.npy --num-vertices N \
        --features g_x.npy --labels g_y.npy --init init_gat.npz

The graph is the ``.npy`` edge_index ``[2, E]`` (sources in row 0, no self
loops) that sagann's benchmark wrote; DGL adds one self loop per vertex
(``dgl.add_self_loop``), as the other configurations do. Without
``--features`` the features and labels are the R-MAT bench's
(``numpy.random.default_rng(0)``, 128 and 16): ``benchmarks/dgl_gcn.py``'s
old command line. ``--init`` loads the shared initial weights (PyG's names,
mapped here to DGL's). Models, as in ``sagann/bench/{gcn,gat,sage}.py``:

* gcn: ``GraphConv(norm="both")`` x 2 (DGL scales by the out-degree at the
  source, PyG by the in-degree at both ends: the same work, not the same loss);
* gat: ``GATConv(F, hidden/heads, heads)`` (concatenated), ReLU,
  ``GATConv(hidden, C, 1)``; no dropout, slope 0.2, bias, no residual;
* sage: ``SAGEConv(F, hidden, 'mean')``, ReLU, ``SAGEConv(hidden, C, 'mean')``.

Out of memory or any other failure is printed as ``{"error": ...}``, not a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

os.environ.setdefault("DGLBACKEND", "pytorch")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

IN_CHANNELS, HIDDEN, CLASSES, HEADS = 128, 128, 16, 4


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Net(torch.nn.Module):
    """Two DGL layers with ReLU between; GAT's heads are concatenated, then the one output head squeezed."""

    def __init__(self, conv1: torch.nn.Module, conv2: torch.nn.Module):
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2

    def forward(self, g, x):
        h = torch.relu(self.conv1(g, x).flatten(1))
        return self.conv2(g, h).flatten(1)


def _layers(model: str, d_in: int, hidden: int, classes: int, heads: int):
    from dgl.nn import GATConv, GraphConv, SAGEConv

    if model == "gcn":
        return GraphConv(d_in, hidden, norm="both"), GraphConv(hidden, classes, norm="both")
    if model == "gat":
        return GATConv(d_in, hidden // heads, num_heads=heads), GATConv(hidden, classes, num_heads=1)
    return SAGEConv(d_in, hidden, "mean"), SAGEConv(hidden, classes, "mean")


# DGL parameter name -> the init file's (PyG's) name, per model; "T" marks a transposed weight.
_NAMES = {
    "gcn": {"weight": ("lin.weight", "T"), "bias": ("bias", "")},
    "gat": {"fc.weight": ("lin.weight", ""), "attn_l": ("att_src", ""), "attn_r": ("att_dst", ""), "bias": ("bias", "")},
    "sage": {"fc_neigh.weight": ("lin_l.weight", ""), "fc_self.bias": ("lin_l.bias", ""), "fc_self.weight": ("lin_r.weight", "")},
}


def load_init(net: Net, model: str, path: str) -> None:
    """The shared initial weights (PyG's names) into DGL's layers (strict: every parameter is set)."""
    init = np.load(path)
    state = {}
    for key, value in net.state_dict().items():
        layer, name = key.split(".", 1)
        theirs, how = _NAMES[model][name]
        w = torch.from_numpy(init[f"{layer}.{theirs}"])
        state[key] = (w.t() if how == "T" else w).reshape(value.shape).contiguous()
    net.load_state_dict(state)


def _data(args):
    if args.features is None:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.num_vertices, IN_CHANNELS), dtype=np.float32)
        return torch.from_numpy(x), torch.from_numpy(rng.integers(0, CLASSES, args.num_vertices))
    return torch.from_numpy(np.load(args.features)), torch.from_numpy(np.load(args.labels))


def _failure(phase: str, exc: BaseException) -> dict:
    text = " ".join(str(exc).split())[:500] or type(exc).__name__
    oom = isinstance(exc, MemoryError) or any(s in text.lower() for s in ("out of memory", "can't allocate memory", "not enough memory"))
    what = "out of memory" if oom else "failed"
    return {"config": "dgl", "error": f"{what} during {phase}: {type(exc).__name__}: {text}", "out_of_memory": oom, "peak_rss_bytes": _peak_rss()}


def run(args) -> dict:
    import dgl

    phase = "setup"
    try:
        t0 = time.perf_counter()
        n = args.num_vertices
        ei = np.load(args.graph)
        g = dgl.add_self_loop(dgl.graph((torch.from_numpy(ei[0]), torch.from_numpy(ei[1])), num_nodes=n))
        del ei
        x, y = _data(args)
        classes = args.classes or int(y.max()) + 1
        torch.manual_seed(0)
        model = Net(*_layers(args.model, x.shape[1], args.hidden, classes, args.heads))
        if args.init:
            load_init(model, args.model, args.init)
        setup_s = time.perf_counter() - t0
        rss_setup = _rss()
        phase = "the epochs"
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        model.train()
        times = []
        for _ in range(args.warmup + args.reps):
            t = time.perf_counter()
            opt.zero_grad()
            loss = F.cross_entropy(model(g, x), y)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
    except Exception as exc:  # out of memory or a DGL limitation: a row for the bench, not a crash
        return _failure(phase, exc)
    return {
        "config": "dgl",
        "model": args.model,
        "epoch_seconds": times[args.warmup :],
        "warmup_seconds": times[: args.warmup],
        "setup_seconds": setup_s,
        "loss": float(loss),
        "num_edges": int(g.num_edges()),
        "rss_after_setup_bytes": rss_setup,
        "peak_rss_bytes": _peak_rss(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "dgl": dgl.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gcn", choices=("gcn", "gat", "sage"))
    p.add_argument("--graph", required=True, help=".npy edge_index [2, E] without self loops")
    p.add_argument("--num-vertices", type=int, required=True)
    p.add_argument("--features", default=None, help=".npy float32 [N, F] (default: the R-MAT bench's random 128)")
    p.add_argument("--labels", default=None, help=".npy int64 [N] (with --features)")
    p.add_argument("--classes", type=int, default=None, help="number of classes (default: the largest label + 1)")
    p.add_argument("--hidden", type=int, default=HIDDEN)
    p.add_argument("--heads", type=int, default=HEADS, help="GAT's hidden heads")
    p.add_argument("--init", default=None, help=".npz initial weights by PyG's names (default: DGL's own under seed 0)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args(argv)
    if (args.features is None) != (args.labels is None):
        p.error("give --features and --labels together")
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
