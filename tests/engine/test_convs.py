"""sagann.nn layers equal PyG's with the same weights, forward and backward, for any P."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sagann
from tests.engine.graphs import awkward_graph
from tests.engine.test_out_of_core import assert_rel_close

pyg = pytest.importorskip("torch_geometric.nn", reason="torch-geometric is a test extra")


def graph(n=40, e=300, seed=0):
    return n, awkward_graph(np.random.default_rng(seed), n, e)


def compare(ours, theirs, g, ei, x, extra_ours=(), extra_theirs=()):
    theirs.load_state_dict(ours.state_dict())
    a = ours(g, x, *extra_ours)
    b = theirs(x, torch.from_numpy(ei), *extra_theirs)
    assert_rel_close(a, b, what="output")
    probe = torch.randn(a.shape, generator=torch.Generator().manual_seed(0))
    leaves_a = [x] + list(ours.parameters()) + [t for t in extra_ours if t is not None and t.requires_grad]
    leaves_b = [x] + list(theirs.parameters()) + [t for t in extra_theirs if t is not None and t.requires_grad]
    ga = torch.autograd.grad((a * probe).sum(), leaves_a)
    gb = torch.autograd.grad((b * probe).sum(), leaves_b)
    for k, (u, v) in enumerate(zip(ga, gb)):
        assert_rel_close(u, v, what=f"gradient {k}")


@pytest.mark.parametrize("num_chunks", [1, 2, 3, 7])
@pytest.mark.parametrize("options", [{}, {"add_self_loops": False}, {"normalize": False}])
def test_gcn_matches_pyg(num_chunks, options):
    n, ei = graph(seed=num_chunks)
    torch.manual_seed(0)
    ours, theirs = sagann.nn.GCNConv(8, 5, **options), pyg.GCNConv(8, 5, **options)
    with torch.no_grad():
        ours.bias.normal_()
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, sub_chunk_nnz=16)
    compare(ours, theirs, g, ei, torch.randn(n, 8, requires_grad=True))


@pytest.mark.parametrize("num_chunks", [1, 3])
@pytest.mark.parametrize("improved", [False, True])
def test_gcn_edge_weight_matches_pyg(num_chunks, improved):
    n, ei = graph(seed=5)
    torch.manual_seed(0)
    ours, theirs = sagann.nn.GCNConv(6, 4, improved=improved), pyg.GCNConv(6, 4, improved=improved)
    w = torch.rand(ei.shape[1], requires_grad=True)
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, sub_chunk_nnz=16)
    compare(ours, theirs, g, ei, torch.randn(n, 6, requires_grad=True), (w,), (w,))


@pytest.mark.parametrize("num_chunks", [1, 2, 3, 7])
@pytest.mark.parametrize("aggr", ["mean", "sum", "max"])
def test_sage_matches_pyg(num_chunks, aggr):
    n, ei = graph(seed=10 + num_chunks)
    torch.manual_seed(0)
    ours, theirs = sagann.nn.SAGEConv(8, 5, aggr=aggr), pyg.SAGEConv(8, 5, aggr=aggr)
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, sub_chunk_nnz=16)
    compare(ours, theirs, g, ei, torch.randn(n, 8, requires_grad=True))


@pytest.mark.parametrize("num_chunks", [1, 2, 3, 7])
@pytest.mark.parametrize("train_eps", [False, True])
def test_gin_matches_pyg(num_chunks, train_eps):
    n, ei = graph(seed=20 + num_chunks)
    torch.manual_seed(0)
    mlp = lambda: torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))  # noqa: E731
    ours, theirs = sagann.nn.GINConv(mlp(), eps=0.25, train_eps=train_eps), pyg.GINConv(mlp(), eps=0.25, train_eps=train_eps)
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, sub_chunk_nnz=16)
    compare(ours, theirs, g, ei, torch.randn(n, 8, requires_grad=True))


def test_pyg_state_dict_loads():
    theirs = pyg.GCNConv(7, 3)
    ours = sagann.nn.GCNConv(7, 3)
    ours.load_state_dict(theirs.state_dict())
    assert set(ours.state_dict()) == set(theirs.state_dict())


def test_gcn_improved_without_weights_uses_weight_two_loops():
    """PyG ignores `improved` when no edge_weight is given; sagann applies A + 2I as the paper says."""
    n, ei = graph(seed=6)
    torch.manual_seed(0)
    ours, theirs = sagann.nn.GCNConv(6, 4, improved=True), pyg.GCNConv(6, 4, improved=True)
    theirs.load_state_dict(ours.state_dict())
    g = sagann.ChunkedGraph(ei, n, num_chunks=2)
    x = torch.randn(n, 6)
    assert_rel_close(ours(g, x), theirs(x, torch.from_numpy(ei), torch.ones(ei.shape[1])))


@pytest.mark.parametrize("num_chunks", [1, 3])
@pytest.mark.parametrize("d_in, d_out, x_grad", [(4, 9, True), (8, 8, False), (8, 3, False), (8, 3, True)])
def test_gcn_either_order_matches_pyg(num_chunks, d_in, d_out, x_grad):
    """Â (X W) or (Â X) W, whichever propagates fewer rows: the same outputs and gradients as PyG."""
    from sagann.engine.convs import aggregates_first

    n, ei = graph(seed=20 + d_in)
    torch.manual_seed(0)
    ours, theirs = sagann.nn.GCNConv(d_in, d_out), pyg.GCNConv(d_in, d_out)
    with torch.no_grad():
        ours.bias.normal_()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(n, d_in, requires_grad=x_grad)
    first = aggregates_first(ours, x, None)
    assert first == (d_in * (1 + x_grad) < 2 * d_out)  # rows propagated forward + backward
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, sub_chunk_nnz=16)
    _assert_same_as_pyg(ours, theirs, g, ei, x, x_grad)
    backward_edge_passes = [r for r in g.pass_log if r.phase == "backward"]
    assert (len(backward_edge_passes) == 0) == (first and not x_grad), g.pass_log
    assert "_aggregate_first" not in dict(ours.named_modules()) and set(ours.state_dict()) == {"lin.weight", "bias"}


def _assert_same_as_pyg(ours, theirs, g, ei, x, x_grad: bool) -> None:
    """Outputs and the gradients of x (when it needs one) and of the parameters, to 1e-5."""
    a, b = ours(g, x), theirs(x, torch.from_numpy(ei))
    assert_rel_close(a, b, what="output")
    probe = torch.randn(a.shape, generator=torch.Generator().manual_seed(0))
    leaves_a = ([x] if x_grad else []) + list(ours.parameters())
    leaves_b = ([x] if x_grad else []) + list(theirs.parameters())
    for k, (u, v) in enumerate(zip(torch.autograd.grad((a * probe).sum(), leaves_a), torch.autograd.grad((b * probe).sum(), leaves_b))):
        assert_rel_close(u, v, what=f"gradient {k}")


@pytest.mark.parametrize("num_chunks", [1, 3])
@pytest.mark.parametrize("aggr", ["mean", "sum"])
@pytest.mark.parametrize("d_in, d_out, x_grad", [(8, 3, True), (8, 3, False), (3, 8, True), (4, 4, True)])
@pytest.mark.parametrize("normalize", [False, True])
def test_sage_either_order_matches_pyg(num_chunks, aggr, d_in, d_out, x_grad, normalize):
    """aggr_j(x_j) W_l or aggr_j(x_j W_l), whichever propagates fewer rows: PyG's outputs and gradients."""
    from sagann.engine.convs import aggregates_first

    n, ei = graph(seed=30 + d_in)
    torch.manual_seed(0)
    ours, theirs = sagann.nn.SAGEConv(d_in, d_out, aggr=aggr, normalize=normalize), pyg.SAGEConv(d_in, d_out, aggr=aggr, normalize=normalize)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(n, d_in, requires_grad=x_grad)
    linear_first = not aggregates_first(ours, x, tie=True)
    assert linear_first == (d_out * 2 < d_in * (1 + x_grad))
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, sub_chunk_nnz=16)
    _assert_same_as_pyg(ours, theirs, g, ei, x, x_grad)
    assert set(ours.state_dict()) == set(theirs.state_dict())
