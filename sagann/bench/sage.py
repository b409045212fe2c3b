"""`sagann bench sage`: a full-graph 2-layer GraphSAGE epoch (mean aggregation), sagann vs PyG vs DGL.

Model: ``SAGEConv(F, 128, aggr="mean")``, ReLU, ``SAGEConv(128, C)``; no
dropout, ``lin_l(mean_j x_j) + lin_r(x_i)`` (DGL: ``fc_neigh`` and
``fc_self``). Graph: R-MAT without duplicate edges (default; 2^18
vertices, 128 random features, 16 classes) or ``preset_graph("reddit",
scale)``. SAGEConv adds no self loops, so the worker appends one per vertex
to the edge list every implementation gets (DGL: ``dgl.add_self_loop``):
all see the edges plus N loops, as in the GCN and GAT benches. Method,
shared initial weights and failures: ``sagann/bench/_epoch.py``.

Configurations (each a fresh subprocess):

* ``sagann_p1`` / ``sagann_ooc``: ``sagann.engine.models.GraphSAGE`` in
  memory (P=1) and out of core (a CpuDevice budget of 1/8 of the P=1 working
  set of a whole-graph epoch, ApplyVertex on whole intervals; every
  transfer a real copy);
* ``sagann_streamed``: ``sagann_p1`` with ``ScheduleConfig(cache_gather=False)``
  (the first layer aggregates the features every epoch); ``sagann_ooc_streamed``:
  the same out of core, under 1/8 of ``sagann_streamed``'s working set;
* ``pyg_edge_index``: ``torch_geometric.nn.SAGEConv(aggr="mean")`` on
  ``edge_index`` (gathers an ``[E, F]`` message tensor);
* ``pyg_csr``: the same on a torch CSR ``adj_t`` (a sparse-dense matmul
  with mean reduction, no per-edge tensor);
* ``dgl``: ``dgl.nn.SAGEConv('mean')`` through ``benchmarks/dgl_epoch.py --model sage``
  (DGL multiplies by ``fc_neigh`` before aggregating where that narrows the rows).
"""
from __future__ import annotations

import sys

import torch

from sagann.bench import _epoch

__all__ = ["run", "BENCH", "CONFIGS"]

HIDDEN = 128


def _sagann_sage(in_channels: int, classes: int) -> torch.nn.Module:
    from sagann.engine.models import GraphSAGE

    return GraphSAGE(in_channels, HIDDEN, classes, num_layers=2, dropout=0.0)


def _pyg_sage(in_channels: int, classes: int):
    from torch_geometric.nn import SAGEConv

    return SAGEConv(in_channels, HIDDEN, aggr="mean"), SAGEConv(HIDDEN, classes, aggr="mean")


BENCH = _epoch.Bench(
    name="sage",
    hidden=HIDDEN,
    description="2-layer GraphSAGE (mean) {in_channels}->{hidden}->{classes}, ReLU",
    sagann_model=_sagann_sage,
    pyg_layers=_pyg_sage,
    adds_self_loops=False,
)
CONFIGS = BENCH.configs
run = _epoch.runner(BENCH)


if __name__ == "__main__":
    sys.exit(_epoch.worker_main(BENCH))
