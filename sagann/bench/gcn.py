"""`sagann bench gcn`: a full-graph 2-layer GCN epoch, sagann vs PyG vs plain torch vs DGL.

Model F -> 128 -> C (ReLU between, no dropout); on the default R-MAT graph
F = 128 random features and C = 16 random classes; one epoch =
``zero_grad`` + forward + cross-entropy over all vertices + backward +
``Adam.step``. Graph: R-MAT, 2^18 vertices, 8M edges without self loops
(duplicates kept: a multigraph), to which every implementation adds one
self loop per vertex (8,262,144 edges; ``quick``: 2^12 vertices, 64k edges);
or ``graph="reddit"``: ``preset_graph("reddit", scale)`` (602 features, 41
classes, duplicates removed). The files are written once and every worker
reads them, DGL's included. Method, initial weights and failures: see
``sagann/bench/_epoch.py``.

Configurations, each in a fresh subprocess so peak RSS (``ru_maxrss``) is
its own:

* ``sagann_p1``: ``sagann.engine.models.GCN`` on a ChunkedGraph with P=1 on
  an unlimited CpuDevice; its worker then measures the in-memory working
  set of a whole-graph epoch (the device peak with ApplyVertex on whole
  intervals, as PyG and DGL run it: ``whole_graph_peak_bytes``);
* ``sagann_ooc``: the same with a CpuDevice budget of 1/8 of that working
  set (1/2 with ``quick``), P chosen by the planner;
* ``sagann_streamed``: ``sagann_p1`` with ``ScheduleConfig(cache_gather=False)``:
  the first layer streams its edges every epoch instead of reusing its
  cached ``Â X`` (how much of the lead the cache gives); ``sagann_ooc_streamed``:
  ``sagann_ooc`` likewise, under 1/8 of ``sagann_streamed``'s working set;
* ``pyg_edge_index``: ``torch_geometric.nn.GCNConv`` on ``edge_index``;
* ``pyg_csr``: the same on a torch CSR ``adj_t`` (rows = destinations; a
  duplicate edge is one entry whose value counts its copies);
* ``torch_sparse``: plain torch, ``torch.sparse.mm`` with the normalised CSR
  and default autograd;
* ``dgl``: ``dgl.nn.GraphConv`` (norm="both"), run by
  ``benchmarks/dgl_epoch.py`` in its own venv (``benchmarks/dgl_env.sh``).

PyG's GCNConv gets ``cached=True`` (its normalisation is computed once, as
sagann caches its own); the warm-up epoch pays for every implementation's
one-time preprocessing and is reported separately. Configurations run one
after the other, alternating ours and a peer's, in ``rounds`` rounds; the
epoch time is the median over all timed epochs of all rounds.

Run a worker by hand: ``python -m sagann.bench.gcn --worker pyg_csr --graph g.npy --num-vertices N``.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from sagann.bench import _epoch

__all__ = ["run", "format_report", "CONFIGS", "BENCH"]

IN_CHANNELS, HIDDEN, CLASSES = _epoch.RMAT_FEATURES, 128, _epoch.RMAT_CLASSES
REPS, WARMUP, ROUNDS, WORKER_TIMEOUT_S = _epoch.REPS, _epoch.WARMUP, _epoch.ROUNDS, _epoch.WORKER_TIMEOUT_S
_data = _epoch.rmat_features  # R-MAT's features and labels (benchmarks/profile_gcn.py uses them)
format_report = _epoch.format_report


def _sagann_gcn(in_channels: int, classes: int) -> torch.nn.Module:
    from sagann.engine.models import GCN

    return GCN(in_channels, HIDDEN, classes, num_layers=2, dropout=0.0)


def _pyg_gcn(in_channels: int, classes: int):
    from torch_geometric.nn import GCNConv

    return GCNConv(in_channels, HIDDEN, cached=True), GCNConv(HIDDEN, classes, cached=True)


class _Propagate(torch.nn.Module):
    """``Â (X W) + b`` with a fixed sparse Â; parameters named as PyG's GCNConv (``lin.weight``, ``bias``)."""

    def __init__(self, a_hat: torch.Tensor, d_in: int, d_out: int):
        super().__init__()
        self.a_hat = a_hat
        self.lin = torch.nn.Linear(d_in, d_out, bias=False)
        self.bias = torch.nn.Parameter(torch.zeros(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(self.a_hat, self.lin(x)) + self.bias


def _torch_sparse(ei: np.ndarray, n: int, in_channels: int, classes: int) -> _epoch.Built:
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
            self.conv1 = _Propagate(a_hat, in_channels, HIDDEN)
            self.conv2 = _Propagate(a_hat, HIDDEN, classes)

        def forward(self, x):
            return self.conv2(torch.relu(self.conv1(x)))

    model = Net()
    return model, model, dict


BENCH = _epoch.Bench(
    name="gcn",
    hidden=HIDDEN,
    description="2-layer GCN {in_channels}->{hidden}->{classes}, ReLU",
    sagann_model=_sagann_gcn,
    pyg_layers=_pyg_gcn,
    adds_self_loops=True,
    simple_rmat=False,  # the R-MAT multigraph the docs' GCN runs measured
    extra={"torch_sparse": _torch_sparse},
)
CONFIGS = BENCH.configs
run = _epoch.runner(BENCH)


if __name__ == "__main__":
    sys.exit(_epoch.worker_main(BENCH))
