"""`sagann bench gat`: a full-graph 2-layer GAT epoch, sagann vs PyG vs DGL.

Model: ``GATConv(F, 32, heads=4)`` (heads concatenated: 128 wide), ReLU,
``GATConv(128, C, heads=1)``; no dropout (features or attention), LeakyReLU
slope 0.2, bias, no residual. Graph: R-MAT without duplicate edges (default;
2^18 vertices, 128 random features, 16 classes) or
``preset_graph("reddit", scale)``; each layer adds one self loop per vertex
itself (sagann's and PyG's GATConv replace existing loops by one; DGL runs
on ``dgl.add_self_loop(g)``), so all see the edges plus N loops. Method,
shared initial weights and failures: ``sagann/bench/_epoch.py``.

Configurations (each a fresh subprocess):

* ``sagann_p1`` / ``sagann_ooc``: ``sagann.engine.models.GAT`` in memory
  (P=1) and out of core (a CpuDevice budget of 1/8 of the P=1 working set,
  every transfer a real copy);
* ``pyg_edge_index``: ``torch_geometric.nn.GATConv`` on ``edge_index``;
* ``pyg_csr``: the same on a torch CSR ``adj_t`` (PyG 2.x accepts a torch
  sparse adjacency in GATConv and adds the self loops to it; it computes
  on the edge list it takes from it, so the work per edge is the same);
* ``dgl``: ``dgl.nn.GATConv`` through ``benchmarks/dgl_epoch.py --model gat``.
"""
from __future__ import annotations

import sys

import torch

from sagann.bench import _epoch

__all__ = ["run", "BENCH", "CONFIGS"]

HIDDEN, HEADS = 128, 4  # 4 heads x 32, concatenated


def _sagann_gat(in_channels: int, classes: int) -> torch.nn.Module:
    from sagann.engine.models import GAT

    return GAT(in_channels, HIDDEN, classes, num_layers=2, dropout=0.0, heads=HEADS)


def _pyg_gat(in_channels: int, classes: int):
    from torch_geometric.nn import GATConv

    return GATConv(in_channels, HIDDEN // HEADS, heads=HEADS), GATConv(HIDDEN, classes, heads=1)


BENCH = _epoch.Bench(
    name="gat",
    hidden=HIDDEN,
    heads=HEADS,
    description=f"2-layer GAT {{in_channels}}->{HEADS} heads x {HIDDEN // HEADS} (concat)->1 head x {{classes}}, ReLU",
    sagann_model=_sagann_gat,
    pyg_layers=_pyg_gat,
    adds_self_loops=True,
    caches_gather=False,  # attention's Gather depends on the weights: nothing to cache
)
CONFIGS = BENCH.configs
run = _epoch.runner(BENCH)


if __name__ == "__main__":
    sys.exit(_epoch.worker_main(BENCH))
