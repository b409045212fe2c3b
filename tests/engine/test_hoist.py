"""The ApplyEdge compiler: hoisting per-vertex terms changes where work runs, never the result."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sagann
from tests.engine.graphs import awkward_graph
from tests.engine.layers import GatedGCN
from tests.engine.test_out_of_core import assert_rel_close, outputs_and_grads
from tests.measured import assert_measured_within


def graph(n=120, e=900, seed=0):
    return n, awkward_graph(np.random.default_rng(seed), n, e)


def on_and_off(layer, n, ei, x, ed=None, num_chunks=3):
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, sub_chunk_nnz=64)
    layer.hoist = True
    on = outputs_and_grads(layer, lambda a, b: layer(g, a, b), x, ed)
    layer.hoist = False
    off = outputs_and_grads(layer, lambda a, b: layer(g, a, b), x, ed)
    layer.hoist = True
    assert_rel_close(on[0], off[0], what="output")
    for k, (a, b) in enumerate(zip(on[1], off[1])):
        assert_rel_close(a, b, what=f"gradient {k}")


@pytest.mark.parametrize("num_chunks", [1, 3])
def test_gated_gcn_same_result_and_no_per_edge_matmul(num_chunks):
    n, ei = graph()
    torch.manual_seed(0)
    layer = GatedGCN(8, 4)
    x = torch.randn(n, 8, requires_grad=True)
    on_and_off(layer, n, ei, x, num_chunks=num_chunks)
    rows = {"W_C": 0, "W_H": 0}
    hooks = [getattr(layer, k).register_forward_hook(lambda m, i, o, k=k: rows.__setitem__(k, rows[k] + i[0].shape[0])) for k in rows]
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks)
    with torch.no_grad():
        layer(g, x)
    for h in hooks:
        h.remove()
    assert rows == {"W_C": n, "W_H": n}, f"matmuls ran on {rows} rows; hoisted they run once per vertex ({n})"
    text = sagann.explain(layer)
    assert "per-edge matmuls: 2 -> 0" in text and "W_C(src)" in text and "W_H(dst)" in text


def test_untraceable_apply_edge_falls_back_with_one_warning():
    class Branchy(sagann.Layer):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def apply_edge(self, e):
            if e.src.sum() > 0:  # data-dependent Python control flow
                return self.lin(e.src)
            return -self.lin(e.src)

    n, ei = graph()
    layer = Branchy()
    x = torch.randn(n, 4, requires_grad=True)
    g = sagann.ChunkedGraph(ei, n, num_chunks=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = layer(g, x)
        layer(g, x)
    assert sum("cannot trace Branchy.apply_edge" in str(w.message) for w in caught) == 1
    layer.hoist = False
    assert_rel_close(out, layer(g, x))
    assert "tracing failed" in sagann.explain(layer)


def test_linear_of_source_becomes_the_fused_copy():
    class Lin(sagann.Layer):
        gather = "mean"

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 3)

        def apply_edge(self, e):
            return self.lin(e.src)

    n, ei = graph()
    torch.manual_seed(0)
    layer = Lin()
    on_and_off(layer, n, ei, torch.randn(n, 6, requires_grad=True))
    assert "fused gSpMM copy_src x mean" in sagann.explain(layer)


def test_weighted_source_term_becomes_src_mul_edge():
    class Weighted(sagann.Layer):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(5, 3)

        def apply_edge(self, e):
            return self.lin(e.src) * e.data

    n, ei = graph()
    torch.manual_seed(0)
    layer = Weighted()
    ed = torch.rand(ei.shape[1], requires_grad=True)
    on_and_off(layer, n, ei, torch.randn(n, 5, requires_grad=True), ed)
    assert "fused gSpMM src_mul_edge x sum" in sagann.explain(layer)


def test_dropout_stays_per_edge():
    class Dropped(sagann.Layer):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def apply_edge(self, e):
            return F.dropout(self.lin(e.src), 0.5, self.training)

    n, ei = graph()
    torch.manual_seed(0)
    layer = Dropped().train()
    text = None
    g = sagann.ChunkedGraph(ei, n, num_chunks=3)
    x = torch.randn(n, 4, requires_grad=True)
    torch.manual_seed(3)
    on = layer(g, x)
    text = sagann.explain(layer)
    layer.hoist = False
    torch.manual_seed(3)
    off = layer(g, x)
    assert "lin(src)" in text and "fused" not in text, "the linear map is hoisted, the dropout is not"
    assert_rel_close(on, off)


def test_user_written_attention_is_hoisted_and_exact():
    """GAT written per edge, the natural way, equals sagann.nn.GATConv (which hoists by hand)."""

    class NaturalGAT(sagann.Layer):
        gather = "softmax"

        def __init__(self, conv):
            super().__init__()
            self.conv = conv

        def apply_edge(self, e):
            c = self.conv
            hs = c.lin(e.src).view(-1, c.heads, c.out_channels)
            hd = c.lin(e.dst).view(-1, c.heads, c.out_channels)
            score = F.leaky_relu((hs * c.att_src).sum(-1) + (hd * c.att_dst).sum(-1), c.negative_slope)
            return score, hs.flatten(1)

        def apply_vertex(self, v, acc):
            return self.conv.apply_vertex(v, acc)

    n, ei = graph()
    torch.manual_seed(0)
    conv = sagann.nn.GATConv(6, 3, heads=2)
    natural = NaturalGAT(conv)
    x = torch.randn(n, 6, requires_grad=True)
    g = sagann.ChunkedGraph(ei, n, num_chunks=3)
    loops, _ = g.with_remaining_self_loops()
    assert_rel_close(natural(loops, x), conv(g, x))
    text = sagann.explain(natural)
    assert "-> 0" in text, text


def test_gated_gcn_conv_hoists_everything():
    n, ei = graph()
    torch.manual_seed(0)
    layer = sagann.nn.GatedGCNConv(8, 4)
    on_and_off(layer, n, ei, torch.randn(n, 8, requires_grad=True))
    assert "per-edge matmuls: 2 -> 0" in sagann.explain(layer)


@pytest.mark.parametrize("name", ["gcn", "sage", "gin", "gat", "ggcn", "mlp"])
def test_model_zoo_trains_out_of_core(name):
    from sagann.engine.models import build_model

    n, ei = graph(200, 1500)
    torch.manual_seed(0)
    model = build_model(name, 8, 8, 3)
    x, y = torch.randn(n, 8), torch.randint(0, 3, (n,))
    g = sagann.ChunkedGraph(ei, n, device=sagann.CpuDevice("150KB", meter=True))
    loss = F.cross_entropy(model(g, x), y)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    assert_measured_within(g.device, 150_000)


def test_explain_before_the_first_call_says_what_needs_one():
    """No call, no d_in: the terms tracing finds, and what only the input width decides."""
    class Gated(sagann.Layer):
        gather = "sum"

        def __init__(self):
            super().__init__()
            self.A, self.B = torch.nn.Linear(8, 8, bias=False), torch.nn.Linear(8, 8, bias=False)

        def apply_edge(self, e):
            return torch.sigmoid(self.A(e.dst) + self.B(e.src)) * e.src

        def apply_vertex(self, v, acc):
            return acc

    layer = Gated()
    text = sagann.explain(layer)
    assert "not called yet" in text and "B(src)" in text and "A(dst)" in text and "as written: 2" in text
    assert "needs a call" in text and "d_in=" in text
    after = sagann.explain(layer, d_in=8)
    assert "per-edge matmuls: 2 -> 0" in after  # the width settles it
