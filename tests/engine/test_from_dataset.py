"""A graph opened from a dataset directory trains exactly like the in-memory graph."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sagann
from sagann.chunks import DatasetError, partition_graph, save_dataset
from sagann.chunks.files import FAULT_ENV
from sagann.chunks.partition import CHUNK_ARRAYS
from sagann.scheduler.host import mapped
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


@pytest.fixture
def no_edge_list(monkeypatch):
    """Fail any rebuild of a whole [2, E] edge list from a partition."""
    def refuse(self):
        raise AssertionError("the [2, E] edge list was rebuilt in RAM")

    monkeypatch.setattr(sagann.chunks.partition.GraphPartition, "edge_index", refuse)


@pytest.mark.parametrize("model", ["gcn", "gat"])
@pytest.mark.parametrize("host_memory", [None, "4KB"])
def test_dataset_graph_trains_without_its_edge_list(tmp_path, no_edge_list, model, host_memory):
    """Self loops, GCN weights, re-cuts to the device budget's P and the forecast all read chunks."""
    rng = np.random.default_rng(3)
    n, ei = 80, awkward_graph(rng, 80, 600)
    path = save_dataset(tmp_path / "ds", partition_graph(ei, n, 2, 64))
    make = (lambda: sagann.nn.GCNConv(6, 4)) if model == "gcn" else (lambda: sagann.nn.GATConv(6, 2, heads=2))
    torch.manual_seed(0)
    layer = make()
    torch.manual_seed(0)
    twin = make()
    x = torch.randn(n, 6, requires_grad=True)
    on_disk = sagann.ChunkedGraph.from_dataset(path, device=sagann.CpuDevice("16KB"), host_memory=host_memory)
    out = layer(on_disk, x)
    (grad,) = torch.autograd.grad(out.square().sum(), [x])
    cut = on_disk.with_remaining_self_loops()[0].partition
    assert (cut.num_chunks, cut.sub_chunk_nnz) != (2, 64), "the self-loop graph was re-cut to the budget's plan"
    assert on_disk.edges_in_chunks() is not None
    in_ram = sagann.ChunkedGraph(ei, n, num_chunks=1)
    want = twin(in_ram, x)
    (want_grad,) = torch.autograd.grad(want.square().sum(), [x])
    assert_rel_close(out, want)
    assert_rel_close(grad, want_grad)


def test_weighted_gcn_on_a_dataset_graph_reads_chunks(tmp_path, no_edge_list):
    rng = np.random.default_rng(4)
    n, ei = 50, awkward_graph(rng, 50, 300)
    path = save_dataset(tmp_path / "ds", partition_graph(ei, n, 3, 32))
    w = torch.rand(ei.shape[1]) + 0.1
    torch.manual_seed(0)
    layer = sagann.nn.GCNConv(3, 2)
    x = torch.randn(n, 3)
    got = layer(sagann.ChunkedGraph.from_dataset(path), x, w)
    want = layer(sagann.ChunkedGraph(ei, n), x, w)
    assert_rel_close(got, want)


def test_forecast_of_a_dataset_graph_reads_chunks(tmp_path, no_edge_list):
    from sagann.engine.foresight import forecast_epoch
    from sagann.engine.models import build_model

    rng = np.random.default_rng(5)
    n, ei = 400, awkward_graph(rng, 400, 3000)
    path = save_dataset(tmp_path / "ds", partition_graph(ei, n, 2))
    model = build_model("gcn", 8, 8, 3)
    forecast = forecast_epoch(model, sagann.ChunkedGraph.from_dataset(path, device=sagann.CpuDevice("64KB")), 8, sample_edges=500)
    assert forecast is not None and forecast.plan.epoch_seconds > 0


def _file_backed_everywhere(part) -> bool:
    return all(mapped(getattr(c, name)) for c in part.sub_chunks() for name in CHUNK_ARRAYS)


@pytest.mark.parametrize("model", ["gcn", "gin"])
def test_partitions_cut_from_a_dataset_are_file_backed(tmp_path, model):
    """Without a host budget too: re-cut in RAM, they would hold anonymous memory a run reading the dataset's own partition does not."""
    rng = np.random.default_rng(4)
    n, ei = 80, awkward_graph(rng, 80, 600)
    path = save_dataset(tmp_path / "ds", partition_graph(ei, n, 2, 64))
    torch.manual_seed(0)
    layer = sagann.nn.GCNConv(32, 4) if model == "gcn" else sagann.nn.GINConv(torch.nn.Linear(32, 4))
    x = torch.randn(n, 32)
    on_disk = sagann.ChunkedGraph.from_dataset(path, device=sagann.CpuDevice("6KB"))
    out = layer(on_disk, x)
    g = on_disk.with_remaining_self_loops()[0] if model == "gcn" else on_disk
    assert (g.partition.num_chunks, g.partition.sub_chunk_nnz) != (2, 64), "re-cut to the budget's plan"
    assert _file_backed_everywhere(g.partition)
    assert on_disk.host.stats()["spilled_bytes_total"] == 0, "nothing spilled: the arrays were never RAM's to hold"
    assert_rel_close(out, layer(sagann.ChunkedGraph(ei, n, num_chunks=1), x))


def test_partitions_cut_from_a_dataset_stay_in_ram_when_the_disk_is_full(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    n, ei = 80, awkward_graph(rng, 80, 600)
    path = save_dataset(tmp_path / "ds", partition_graph(ei, n, 2, 64))
    monkeypatch.setenv(FAULT_ENV, "spill:1")
    layer = sagann.nn.GINConv(torch.nn.Linear(32, 4))
    x = torch.randn(n, 32)
    on_disk = sagann.ChunkedGraph.from_dataset(path, device=sagann.CpuDevice("6KB"))
    with pytest.warns(RuntimeWarning, match="stay in RAM"):
        out = layer(on_disk, x)
    assert (on_disk.partition.num_chunks, on_disk.partition.sub_chunk_nnz) != (2, 64)
    assert not any(mapped(c.src_perm) for c in on_disk.partition.sub_chunks())
    assert_rel_close(out, layer(sagann.ChunkedGraph(ei, n, num_chunks=1), x))
