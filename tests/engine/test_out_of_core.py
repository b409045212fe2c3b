"""Out-of-core equals in-memory: every layer, any P and sub-chunk size, values and gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import sagann
from sagann.chunks.types import EdgeChunk
from sagann.scheduler.memory_model import backward_chunk
from tests.engine.graphs import awkward_graph, graphs
from tests.engine.layers import Builtin, GatedGCN, HookLayer, edge_data_for
from tests.engine.whole_graph import dense_aggregate, whole_graph_layer
from tests.measured import assert_measured_within


def assert_rel_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, what: str = "", floor: float = 1e-6) -> None:
    """Max abs difference within rtol of the reference's scale (fp32 sums reorder across chunks).

    ``floor`` bounds the scale from below: a gradient that is itself the
    cancellation of large terms is judged against the pass's scale.
    """
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    scale = max(b.abs().max().item() if b.numel() else 0.0, floor)
    err = (a - b).abs().max().item() if b.numel() else 0.0
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol} x scale {scale:.3g}"


def assert_grads_close(grads, ref_grads) -> None:
    """Each gradient within 1e-5 of its scale, the scale being at least 1% of the largest gradient."""
    largest = max((r.abs().max().item() for r in ref_grads if r.numel()), default=0.0)
    for k, (a, b) in enumerate(zip(grads, ref_grads)):
        assert_rel_close(a, b, what=f"gradient {k}", floor=max(0.01 * largest, 1e-6))


def outputs_and_grads(layer, run, x, edge_data):
    out = run(x, edge_data)
    torch.manual_seed(1)
    probe = torch.randn(out.shape)
    inputs = [x] + ([edge_data] if edge_data is not None else []) + [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * probe).sum(), inputs, allow_unused=True)
    return out.detach(), [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]


def check_layer(layer, ei, n, x, edge_data, num_chunks, sub_chunk_nnz, backend="reference", budget=None, copy_transfers=False):
    device = sagann.CpuDevice(budget, meter=budget is not None, copy_transfers=copy_transfers)
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, device=device, sub_chunk_nnz=sub_chunk_nnz, backend=backend)
    ref_out, ref_grads = outputs_and_grads(layer, lambda x_, e_: whole_graph_layer(layer, ei, x_, e_), x, edge_data)
    out, grads = outputs_and_grads(layer, lambda x_, e_: layer(g, x_, e_), x, edge_data)
    assert_rel_close(out, ref_out, what="output")
    assert_grads_close(grads, ref_grads)
    if budget is not None:
        assert_measured_within(device)
    return g


def make_inputs(n, e, d, op=None, seed=0, d_edge=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, requires_grad=True)
    ed = edge_data_for(op, e, d, gen) if op else torch.randn(e, d_edge, generator=gen)
    if ed is not None:
        ed.requires_grad_(True)
    return x, ed


@pytest.mark.parametrize("num_chunks", [1, 2, 3, 7])
@pytest.mark.parametrize("sub_chunk_nnz", [5, None])
def test_gated_gcn(num_chunks, sub_chunk_nnz):
    rng = np.random.default_rng(num_chunks)
    n, ei = 30, awkward_graph(rng, 30, 150)
    torch.manual_seed(0)
    layer = GatedGCN(6, 5)
    x, _ = make_inputs(n, ei.shape[1], 6)
    check_layer(layer, ei, n, x, None, num_chunks, sub_chunk_nnz)


@pytest.mark.parametrize("gather", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("num_chunks", [1, 2, 3, 7])
def test_hooks_and_edge_features(gather, num_chunks):
    rng = np.random.default_rng(10 + num_chunks)
    n, ei = 25, awkward_graph(rng, 25, 120)
    torch.manual_seed(0)
    layer = HookLayer(4, 6, 3, gather)
    x, ed = make_inputs(n, ei.shape[1], 4)
    check_layer(layer, ei, n, x, ed, num_chunks, 7)


OPS = list(sagann.kernels.MESSAGE_OPS)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("gather", ["sum", "mean", "max", "min"])
def test_builtins(op, gather):
    rng = np.random.default_rng(3)
    n, ei = 20, awkward_graph(rng, 20, 90)
    torch.manual_seed(0)
    layer = Builtin(op, gather, 5, hooks=op in ("src_mul_edge", "src_add_dst"))
    x, ed = make_inputs(n, ei.shape[1], 5, op)
    check_layer(layer, ei, n, x, ed, 3, 6)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_dense_reference_aggregation(reduce):
    """The engine's gather equals a dense per-vertex loop (independent of the kernels)."""
    rng = np.random.default_rng(4)
    n, ei = 18, awkward_graph(rng, 18, 70)
    layer = Builtin("copy_src", reduce, 3)
    layer.apply_vertex = lambda v, acc: acc
    x = torch.randn(n, 3)
    g = sagann.ChunkedGraph(ei, n, num_chunks=4, sub_chunk_nnz=4, backend="reference")
    assert_rel_close(layer(g, x), dense_aggregate(ei, x, reduce), what=reduce)


@settings(max_examples=40, deadline=None)
@given(
    graph=graphs(),
    num_chunks=st.integers(1, 9),
    sub_chunk_nnz=st.sampled_from([1, 3, 17, None]),
    gather=st.sampled_from(["sum", "mean", "max", "min"]),
    which=st.sampled_from(["hooks", "gated", "builtin"]),
)
def test_property_out_of_core_equals_in_memory(graph, num_chunks, sub_chunk_nnz, gather, which):
    n, ei = graph
    torch.manual_seed(0)
    if which == "hooks":
        layer, op = HookLayer(3, 4, 2, gather), None
    elif which == "gated":
        layer, op = GatedGCN(3, 4), None
    else:
        layer, op = Builtin("src_mul_edge", gather, 3), "src_mul_edge"
    x, ed = make_inputs(n, ei.shape[1], 3, op, d_edge=2)
    check_layer(layer, ei, n, x, ed if which != "gated" else None, num_chunks, sub_chunk_nnz)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("which", ["copy_src", "gated", "hooks_max", "gat"])
def test_sparse_sub_chunks_run_backward_over_their_rows_with_edges(which, backend, monkeypatch):
    """A sub-chunk that reaches at most half its rows runs backward over those alone (their rows gathered, its
    destinations renumbered, their gradients added back at them) on a device that copies its loads: values and
    gradients as in memory, where loads are views of host memory and nothing is compacted."""
    made, compacted_of = [], EdgeChunk.compacted
    monkeypatch.setattr(EdgeChunk, "compacted", lambda c: made.append(c.id) or compacted_of(c))
    rng = np.random.default_rng(5)
    n, ei = 120, awkward_graph(rng, 120, 100)
    torch.manual_seed(0)
    op = "copy_src" if which == "copy_src" else None
    layer = {"copy_src": lambda: Builtin("copy_src", "sum", 4), "gated": lambda: GatedGCN(4, 3), "hooks_max": lambda: HookLayer(4, 5, 3, "max"),
             "gat": lambda: sagann.nn.GATConv(4, 3, heads=2, add_self_loops=False)}[which]()
    x, ed = make_inputs(n, ei.shape[1], 4, op)
    ed = ed if which in ("copy_src", "hooks_max") else None
    g = sagann.ChunkedGraph(ei, n, num_chunks=6, device=sagann.CpuDevice(copy_transfers=True), backend=backend)
    whole = sagann.ChunkedGraph(ei, n, num_chunks=1, backend=backend)  # GAT's softmax has no dense reference: one chunk in memory
    ref_out, ref_grads = outputs_and_grads(layer, lambda x_, e_: layer(whole, x_, e_), x, ed)
    out, grads = outputs_and_grads(layer, lambda x_, e_: layer(g, x_, e_), x, ed)
    assert_rel_close(out, ref_out, what="output")
    assert_grads_close(grads, ref_grads)
    compacted = {c.id for c in g.partition.sub_chunks() if backward_chunk(c) is not c}
    assert compacted and set(made) == compacted  # the backward ran every sparse sub-chunk compacted, and only those
    made.clear()
    views = sagann.ChunkedGraph(ei, n, num_chunks=6, backend=backend)
    outputs_and_grads(layer, lambda x_, e_: layer(views, x_, e_), x, ed)
    assert not made


def test_dropout_in_apply_edge_is_replayed_in_backward():
    """Recomputation in backward must see the forward's dropout masks.

    The layer is linear in x for a fixed mask, so a central difference under
    the same seed equals the directional derivative up to rounding; a
    backward that drew fresh masks would disagree by O(1).
    """

    class Dropped(sagann.Layer):
        gather = "sum"

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4, bias=False)

        def apply_edge(self, e):
            return torch.nn.functional.dropout(self.lin(e.src), 0.5, self.training)

        def apply_vertex(self, v, acc):
            return torch.nn.functional.dropout(acc, 0.3, self.training)

    rng = np.random.default_rng(0)
    n, ei = 20, awkward_graph(rng, 20, 100)
    layer = Dropped().train()
    g = sagann.ChunkedGraph(ei, n, num_chunks=3, sub_chunk_nnz=8, backend="reference")
    x = torch.randn(n, 4, requires_grad=True)
    w = torch.randn(n, 4)
    direction = torch.randn(n, 4)

    def f(inp):
        torch.manual_seed(5)
        return (layer(g, inp) * w).sum()

    (gx,) = torch.autograd.grad(f(x), [x])
    h = 0.5
    with torch.no_grad():
        fd = (f(x + h * direction) - f(x - h * direction)) / (2 * h)
    assert abs(fd.item() - (gx * direction).sum().item()) <= 1e-4 * max(1.0, abs(fd.item()))
    torch.manual_seed(5)
    other = layer(g, x)
    torch.manual_seed(6)
    assert not torch.equal(other, layer(g, x)), "different seeds must give different masks"
