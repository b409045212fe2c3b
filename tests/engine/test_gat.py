"""GAT across chunks is exact: online softmax forward, saved-output backward, equal to PyG."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import sagann
from sagann.scheduler import ScheduleConfig
from tests.engine.graphs import awkward_graph, graphs
from tests.engine.test_out_of_core import assert_rel_close
from tests.measured import assert_measured_within

pyg = pytest.importorskip("torch_geometric.nn", reason="torch-geometric is a test extra")


def hub_graph(n: int = 48, seed: int = 0) -> np.ndarray:
    """Random edges plus a hub (vertex 0) fed by every vertex, so its in-edges span every source chunk;
    the last 4 vertices have no in-edges at all."""
    ei = awkward_graph(np.random.default_rng(seed), n - 4, 200)
    hub = np.stack([np.arange(n), np.zeros(n, dtype=np.int64)])
    return np.concatenate([ei, hub], axis=1)


def compare(ours, theirs, g, ei, x):
    """Ours is within 1e-5 relative of the float64 truth, or at least as close to it as PyG's fp32.

    The second clause covers sums dominated by cancellation (attention
    parameter gradients on tiny graphs), where no fp32 summation order can
    promise 1e-5 of a near-zero result; there ours must not be worse than PyG.
    """
    theirs.load_state_dict(ours.state_dict())
    truth = copy.deepcopy(theirs).double()
    edges = torch.from_numpy(ei)
    a, b = ours(g, x), theirs(x, edges)
    x64 = x.detach().double().requires_grad_(x.requires_grad)
    t = truth(x64, edges)
    assert_rel_close(a, b, what="output")
    probe = torch.randn(a.shape, generator=torch.Generator().manual_seed(1))
    ga = torch.autograd.grad((a * probe).sum(), [x] + list(ours.parameters()))
    gb = torch.autograd.grad((b * probe).sum(), [x] + list(theirs.parameters()))
    gt = torch.autograd.grad((t * probe.double()).sum(), [x64] + list(truth.parameters()))
    largest = max(w.abs().max().item() for w in gt if w.numel())
    for k, (u, v, w) in enumerate(zip(ga, gb, gt)):
        ours_err, pyg_err = (u.double() - w).abs().max().item(), (v.double() - w).abs().max().item()
        # a gradient that is itself cancellation noise is judged against 1% of the largest one
        scale = max(w.abs().max().item() if w.numel() else 0.0, 0.01 * largest, 1e-12)
        assert ours_err <= pyg_err or ours_err <= 1e-5 * scale, f"gradient {k}: error {ours_err:.3g} vs PyG's {pyg_err:.3g}, scale {scale:.3g}"


@pytest.mark.parametrize("num_chunks", [1, 3, 8])
@pytest.mark.parametrize("heads,concat", [(1, True), (3, True), (2, False)])
@pytest.mark.parametrize("add_self_loops", [True, False])
def test_gat_matches_pyg(num_chunks, heads, concat, add_self_loops):
    n = 48
    ei = hub_graph(n, seed=num_chunks)
    torch.manual_seed(0)
    ours = sagann.nn.GATConv(8, 4, heads=heads, concat=concat, add_self_loops=add_self_loops)
    theirs = pyg.GATConv(8, 4, heads=heads, concat=concat, add_self_loops=add_self_loops)
    with torch.no_grad():
        ours.bias.normal_()
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, sub_chunk_nnz=16)
    compare(ours, theirs, g, ei, torch.randn(n, 8, requires_grad=True))
    graph = g.with_remaining_self_loops()[0] if add_self_loops else g
    sources_of_hub = {c.id.i for c in graph.partition.sub_chunks() if (c.global_dst() == 0).any()}
    assert sources_of_hub == set(range(num_chunks)), "the hub's in-edges span every source chunk"
    assert np.bincount(ei[1], minlength=n)[-4:].sum() == 0, "and some vertices have no in-edges"


def test_gat_large_scores_do_not_overflow():
    """The running max keeps exp() in range even when scores are huge, in every chunk order."""
    n, ei = 30, hub_graph(30, seed=3)
    torch.manual_seed(0)
    ours, theirs = sagann.nn.GATConv(4, 2, heads=2), pyg.GATConv(4, 2, heads=2)
    with torch.no_grad():
        ours.att_src.mul_(200.0)
    theirs.load_state_dict(ours.state_dict())
    g = sagann.ChunkedGraph(ei, n, num_chunks=5, sub_chunk_nnz=5)
    x = torch.randn(n, 4, requires_grad=True)
    a, b = ours(g, x), theirs(x, torch.from_numpy(ei))
    assert torch.isfinite(a).all()
    assert_rel_close(a, b, what="output")
    ga, *gparams = torch.autograd.grad(a.sum(), [x] + list(ours.parameters()))
    (gb,) = torch.autograd.grad(b.sum(), [x])
    assert_rel_close(ga, gb, what="input gradient")
    # the saturated softmax leaves the attention gradients at fp32 noise: require them finite
    assert all(torch.isfinite(t).all() for t in gparams)


@settings(max_examples=25, deadline=None)
@given(
    graph=graphs(),
    num_chunks=st.integers(1, 8),
    sub=st.sampled_from([1, 4, None]),
    prefetch=st.sampled_from([0, 2]),
    transfer=st.sampled_from(["selective", "full"]),
    order=st.sampled_from(["natural", "profile"]),
)
def test_gat_property(graph, num_chunks, sub, prefetch, transfer, order):
    n, ei = graph
    torch.manual_seed(0)
    ours, theirs = sagann.nn.GATConv(3, 2, heads=2), pyg.GATConv(3, 2, heads=2)
    cfg = ScheduleConfig(prefetch=prefetch, transfer=transfer, order=order)
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, sub_chunk_nnz=sub, schedule=cfg)
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(2), requires_grad=True)
    ours(g, x)  # one pass first, so profile ordering has measurements
    compare(ours, theirs, g, ei, x)


def test_gat_under_a_budget():
    n, ei = 800, hub_graph(800, seed=5)
    torch.manual_seed(0)
    ours, theirs = sagann.nn.GATConv(16, 8, heads=4), pyg.GATConv(16, 8, heads=4)
    x = torch.randn(n, 16, requires_grad=True)
    free = sagann.ChunkedGraph(ei, n)
    ours(free, x)
    dev = sagann.CpuDevice(free.working_set.peak_bytes // 8, meter=True)
    g = sagann.ChunkedGraph(ei, n, device=dev)
    compare(ours, theirs, g, ei, x)
    assert g.num_chunks > 1
    assert_measured_within(dev)


def test_softmax_gather_rejects_a_builtin_and_a_bad_return():
    class Builtin(sagann.Layer):
        gather = "softmax"
        apply_edge = sagann.fn.copy_src

    class NoScores(sagann.Layer):
        gather = "softmax"

        def apply_edge(self, e):
            return e.src

    g = sagann.ChunkedGraph(np.array([[0, 1], [1, 2]]), 3)
    with pytest.raises(ValueError, match=r"returns \(scores, messages\)"):
        Builtin()(g, torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"must return \(scores \[E, heads\], messages"):
        NoScores()(g, torch.randn(3, 2))


def test_the_backward_sends_each_rows_corrections_not_its_output_row(monkeypatch):
    """Out of core, the fused backward's destination rows carry ``heads`` doubles of correction in place of
    ``heads * d`` output floats: fewer bytes, the same gradients."""
    from sagann.kernels import attention

    ei, n = awkward_graph(np.random.default_rng(3), 300, 4000), 300
    torch.manual_seed(0)
    layer = sagann.nn.GATConv(16, 16, heads=4)
    x = torch.randn(n, 16, requires_grad=True)

    def run(corrections: bool):
        monkeypatch.setattr(attention, "takes_corrections", lambda backend: corrections and backend == "cpu")
        lay, xx = copy.deepcopy(layer), x.detach().clone().requires_grad_(True)
        g = sagann.ChunkedGraph(ei, n, num_chunks=4, sub_chunk_nnz=300, device=sagann.CpuDevice(copy_transfers=True))
        lay(g, xx).square().sum().backward()
        sent = sum(r.bytes_moved for r in g.pass_log if r.phase == "backward")
        return sent, xx.grad, [p.grad for p in lay.parameters()]

    (sent, gx, gp), (sent_rows, gx_rows, gp_rows) = run(True), run(False)
    assert sent < sent_rows
    assert torch.equal(gx, gx_rows) and all(torch.equal(a, b) for a, b in zip(gp, gp_rows))
