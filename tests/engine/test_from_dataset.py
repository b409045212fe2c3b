"""A graph opened from a dataset directory trains exactly like the in-memory graph."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sagann
from sagann.chunks import DatasetError, partition_graph, save_dataset
from tests.engine.graphs import awkward_graph
from tests.engine.test_out_of_core import assert_rel_close


def test_dataset_graph_equals_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    n, ei = 60, awkward_graph(rng, 60, 400)
    path = save_dataset(tmp_path / "ds", partition_graph(ei, n, 3, 20))
    torch.manual_seed(0)
    layer = sagann.nn.GCNConv(5, 3)
    x = torch.randn(n, 5, requires_grad=True)
    on_disk = sagann.ChunkedGraph.from_dataset(path)
    in_ram = sagann.ChunkedGraph(ei, n, num_chunks=2)
    a, b = layer(on_disk, x), layer(in_ram, x)
    assert_rel_close(a, b)
    (ga,) = torch.autograd.grad(a.sum(), [x])
    (gb,) = torch.autograd.grad(b.sum(), [x])
    assert_rel_close(ga, gb)


def test_corrupt_dataset_refused(tmp_path):
    rng = np.random.default_rng(1)
    path = save_dataset(tmp_path / "ds", partition_graph(awkward_graph(rng, 20, 50), 20, 2))
    with open(path / "src_idx.npy", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(DatasetError, match="src_idx.npy"):
        sagann.ChunkedGraph.from_dataset(path)
