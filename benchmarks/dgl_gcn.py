"""DGL's 2-layer GraphConv GCN epoch on the graph of `sagann bench gcn`; prints one JSON line.

Runs in the DGL venv (``bash benchmarks/dgl_env.sh``: DGL 2.1.0 with torch
2.2.1), not in sagann's environment, and imports nothing from sagann. It is
started by ``sagann bench gcn`` as one of its configurations, alternating
with the others; by hand:

    benchmarks/.dgl-venv/bin/python benchmarks/dgl_gcn.py --graph g.npy --num-vertices 262144

The graph is the ``.npy`` edge_index ``[2, E]`` (sources in row 0, no self
loops) that sagann's benchmark wrote; DGL adds one self loop per vertex, as
the other configurations do. Model, data and epoch as in
``sagann/bench/gcn.py``: 128 -> 128 -> 16, ReLU, no dropout, features and
labels from ``numpy.random.default_rng(0)``, cross-entropy over all
vertices, Adam(lr=0.01). ``GraphConv(norm="both")`` scales by out-degree at
the source and in-degree at the destination (PyG uses the in-degree at
both ends); the work per epoch is the same.
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

IN_CHANNELS, HIDDEN, CLASSES = 128, 128, 16


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--graph", required=True)
    p.add_argument("--num-vertices", type=int, required=True)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()

    import dgl
    from dgl.nn import GraphConv

    t0 = time.perf_counter()
    n = args.num_vertices
    ei = np.load(args.graph)
    g = dgl.graph((torch.from_numpy(ei[0]), torch.from_numpy(ei[1])), num_nodes=n)
    g = dgl.add_self_loop(g)
    del ei
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((n, IN_CHANNELS), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, CLASSES, n))
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = GraphConv(IN_CHANNELS, HIDDEN, norm="both", activation=torch.relu)
            self.conv2 = GraphConv(HIDDEN, CLASSES, norm="both")

        def forward(self, g, x):
            return self.conv2(g, self.conv1(g, x))

    model = Net()
    setup_s = time.perf_counter() - t0
    rss_setup = _rss()
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
    print(
        json.dumps(
            {
                "config": "dgl",
                "epoch_seconds": times[args.warmup :],
                "warmup_seconds": times[: args.warmup],
                "setup_seconds": setup_s,
                "loss": float(loss),
                "num_edges": int(g.num_edges()),
                "rss_after_setup_bytes": rss_setup,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "dgl": dgl.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
