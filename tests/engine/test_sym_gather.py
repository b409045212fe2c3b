"""The 'sym' gather (D^-1/2 A D^-1/2, no per-edge weight) equals its dense definition, in memory and out of core, any P."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sagann
from sagann import fn
from sagann.engine.call import degree_scales
from sagann.scheduler.devices import CpuDevice
from tests.engine.graphs import awkward_graph, graphs
from tests.engine.test_out_of_core import assert_rel_close


def dense_sym(ei: np.ndarray, n: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 with A[dst, src] counting multi-edges, D the in-degrees, 0 where a vertex has none (PyG's gcn_norm)."""
    a = torch.zeros(n, n, dtype=torch.float64)
    a.index_put_((torch.from_numpy(ei[1]), torch.from_numpy(ei[0])), torch.ones(ei.shape[1], dtype=torch.float64), accumulate=True)
    deg = a.sum(1)
    dinv = deg.pow(-0.5).masked_fill(deg == 0, 0.0)
    return dinv[:, None] * a * dinv[None, :]


class SymOnInputs(sagann.Layer):
    """``Â x``: the sym gather on the raw input rows (ApplyVertex reads acc alone)."""

    gather = "sym"
    apply_edge = fn.copy_src
    apply_vertex_reads_v = False


class SymProjected(sagann.Layer):
    """``Â (x W) * w_e``-weighted messages: a hook at the sources and a weight per edge besides the degrees."""

    gather = "sym"
    apply_edge = fn.src_mul_edge

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin = torch.nn.Linear(d_in, d_out)

    def apply_src(self, v):
        return self.lin(v)

    def apply_vertex(self, v, acc):
        return torch.tanh(acc) + v[:, :1]  # reads v: its gradient is not a source's


def run(layer, ei, n, x, edata, num_chunks, budget):
    device = CpuDevice(budget, copy_transfers=budget is not None)
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, device=device)
    out = layer(g, x, edata)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    leaves = [t for t in (x, edata, *layer.parameters()) if t is not None and t.requires_grad]
    return out, torch.autograd.grad((out * probe).sum(), leaves), g


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.integers(1, 6), st.sampled_from([None, 6_000, 20_000]))
def test_sym_on_inputs_equals_dense(graph, num_chunks, budget):
    n, ei = graph
    x = torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).float().requires_grad_(True)
    out, (gx,), _ = run(SymOnInputs(), ei, n, x, None, num_chunks, budget)
    a = dense_sym(ei, n)
    assert_rel_close(out, (a @ x.double()).float(), what="output")
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    assert_rel_close(gx, (a.T @ probe.double()).float(), what="input gradient")


@pytest.mark.parametrize("num_chunks, budget", [(1, None), (3, None), (4, 30_000), (None, 20_000)])
def test_sym_with_hooks_and_edge_weights_equals_dense(num_chunks, budget):
    n = 50
    ei = awkward_graph(np.random.default_rng(3), n, 400)
    torch.manual_seed(0)
    layer = SymProjected(6, 4)
    x = torch.randn(n, 6, requires_grad=True)
    w = torch.rand(ei.shape[1], requires_grad=True)
    out, grads, _ = run(layer, ei, n, x, w, num_chunks, budget)

    # the definition: acc[d] = dinv[d] * sum over edges s->d of dinv[s] * w_e * (x W + b)[s]
    a = dense_sym(ei, n).float()
    deg = torch.zeros(n).index_add_(0, torch.from_numpy(ei[1]), torch.ones(ei.shape[1]))
    dinv = deg.pow(-0.5).masked_fill(deg == 0, 0.0)
    src, dst = torch.from_numpy(ei[0]), torch.from_numpy(ei[1])
    msg = layer.lin(x)[src] * (w * dinv[src] * dinv[dst])[:, None]
    ref = torch.tanh(torch.zeros(n, 4).index_add(0, dst, msg)) + x[:, :1]
    assert torch.count_nonzero(a) > 0
    assert_rel_close(out, ref, what="output")
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    ref_grads = torch.autograd.grad((ref * probe).sum(), [x, w, *layer.parameters()])
    for k, (u, v) in enumerate(zip(grads, ref_grads)):
        assert_rel_close(u, v, what=f"gradient {k}")


def test_degree_scales():
    src, dst = degree_scales("sym", np.array([0, 1, 4]))
    assert torch.equal(src, dst) and torch.allclose(src.flatten(), torch.tensor([0.0, 1.0, 0.5]))
    assert degree_scales("mean", np.array([0, 2]))[0] is None
    assert torch.allclose(degree_scales("mean", np.array([0, 2]))[1].flatten(), torch.tensor([1.0, 0.5]))
    assert degree_scales("sum", np.array([3])) == (None, None)


def test_sym_needs_a_message_linear_in_the_source():
    class Bad(sagann.Layer):
        gather = "sym"
        apply_edge = fn.src_add_dst

    n, ei = 6, np.array([[0, 1, 2], [1, 2, 3]])
    with pytest.raises(ValueError, match="gather='sym'.*copy_src"):
        Bad()(sagann.ChunkedGraph(ei, n), torch.randn(n, 3))


def test_sym_on_raw_inputs_needs_apply_vertex_not_reading_v():
    class ReadsV(sagann.Layer):
        gather = "sym"
        apply_edge = fn.copy_src

        def apply_vertex(self, v, acc):
            return v + acc

    n, ei = 6, np.array([[0, 1, 2], [1, 2, 3]])
    with pytest.raises(ValueError, match="apply_vertex_reads_v = False"):
        ReadsV()(sagann.ChunkedGraph(ei, n), torch.randn(n, 3))


def test_gcn_with_unit_weights_makes_and_sends_no_edge_weights():
    """GCNConv's default (normalised unit weights) runs the sym gather: no weight per edge in RAM, 4 bytes an edge fewer sent."""
    n = 400
    ei = awkward_graph(np.random.default_rng(0), n, 6000)
    x = torch.randn(n, 8)

    def epoch(edge_weight):
        torch.manual_seed(0)
        conv = sagann.nn.GCNConv(8, 8)
        g = sagann.ChunkedGraph(ei, n, num_chunks=3, device=CpuDevice(200_000, copy_transfers=True))
        out = conv(g, x.requires_grad_(True), edge_weight)
        out.square().sum().backward()
        return out, g

    sym_out, sym_g = epoch(None)
    weighted_out, weighted_g = epoch(torch.ones(ei.shape[1]))  # the same Â, normalised per edge
    assert_rel_close(sym_out, weighted_out, what="output")
    loops = sym_g.with_remaining_self_loops()[0]
    assert not any("gcn_norm" in k for k in loops._derived)
    assert sym_g.device.bytes_in < weighted_g.device.bytes_in - 4 * ei.shape[1]


def test_explain_says_what_gcn_runs_without_weights():
    text = sagann.explain(sagann.nn.GCNConv(16, 8), 16)
    assert "without edge_weight: gather=sym" in text and "copy_src" in text
    assert "gather=sym" not in sagann.explain(sagann.nn.GCNConv(16, 8, improved=True), 16)
