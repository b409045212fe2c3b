"""Layer chaining in any module: one layer's ApplyVertex, the activations and the next layer's apply_src as one pass."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sagann
from sagann.engine.models import GCN
from sagann.engine.pending import PendingRows
from tests.engine.graphs import awkward_graph, graphs
from tests.engine.test_out_of_core import assert_rel_close


class EdgeWeighted(sagann.Layer):
    """A user layer written per edge: the compiler hoists ``lin(e.src)`` to apply_src, so it can be chained into."""

    gather = "sum"
    apply_vertex_reads_v = False

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin = torch.nn.Linear(d_in, d_out, bias=False)
        self.bias = torch.nn.Parameter(torch.randn(d_out))

    def apply_edge(self, e):
        return self.lin(e.src) * e.data

    def apply_vertex(self, v, acc):
        return acc + self.bias


class MeanWithRoot(sagann.Layer):
    """A user first layer: a builtin mean (so its Gather is cached), an ApplyVertex reading v and acc."""

    gather = "mean"
    apply_edge = sagann.fn.copy_src

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin = torch.nn.Linear(2 * d_in, d_out)

    def apply_vertex(self, v, acc):
        return self.lin(torch.cat([v, acc], dim=1))


class TwoLayers(torch.nn.Module):
    """A user's own two-layer stack: plain torch around two sagann layers."""

    def __init__(self, first: torch.nn.Module, second: torch.nn.Module, act=F.relu, also_skip: bool = False):
        super().__init__()
        self.first, self.second, self.act, self.also_skip = first, second, act, also_skip

    def forward(self, g, x, w=None):
        h = self.first(g, x)
        z = F.dropout(self.act(h), 0.5, self.training)
        out = self.second(g, z) if w is None else self.second(g, z, w)
        if self.also_skip:  # the hidden rows used again, besides the next layer
            out = out + h[:, : out.shape[1]] * 0.5
        return out


def _model(first: str, second: str, d: int, h: int, c: int, also_skip: bool = False) -> TwoLayers:
    a = sagann.nn.GCNConv(d, h) if first == "gcn" else MeanWithRoot(d, h)
    b = sagann.nn.GCNConv(h, c) if second == "gcn" else EdgeWeighted(h, c)
    return TwoLayers(a, b, also_skip=also_skip)


def _run(model, g, x, w, calls: int = 3):
    """Outputs and parameter gradients of the last of ``calls`` calls (the first two note x and cache its Gather)."""
    for _ in range(calls):
        model.zero_grad()
        out = model(g, x) if w is None else model(g, x, w)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach().clone(), [p.grad.clone() for p in model.parameters()]


def _same(a, b, what: str) -> None:
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert_rel_close(out_a, out_b, what=f"{what}: output")
    for k, (ga, gb) in enumerate(zip(grads_a, grads_b)):
        assert_rel_close(ga, gb, what=f"{what}: gradient {k}", floor=1e-4)


def _chained(g) -> bool:
    return any("+act+lin" in r.layer for r in g.pass_log)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=graphs(max_vertices=30, max_edges=120), p=st.integers(1, 6), first=st.sampled_from(["gcn", "mean"]), second=st.sampled_from(["gcn", "edge"]), skip=st.booleans(), cache=st.booleans())
def test_chained_equals_unchained_on_random_graphs(graph, p, first, second, skip, cache):
    # cache: the first layer's ApplyVertex is a pass of its own (cached Gather); else its streamed call waits
    # from the second call (the first shows the engine that its output feeds a layer that chains)
    n, ei = graph
    d, h, c = 5, 9, 3  # a GCN second layer (in 9 > out 3) multiplies first: it chains
    x = torch.randn(n, d)
    w = torch.rand(ei.shape[1], 1) if second == "edge" else None
    runs = []
    for on in (True, False):
        torch.manual_seed(1)
        model = _model(first, second, d, h, c, also_skip=skip).eval()  # eval: the dropout between is the identity
        g = sagann.ChunkedGraph(ei, n, num_chunks=min(p, n), schedule=sagann.ScheduleConfig(cache_gather=cache))
        with sagann.chaining(on):
            runs.append(_run(model, g, x, w))
        assert _chained(g) == on, f"chaining {'on' if on else 'off'}: pass names {[r.layer for r in g.pass_log]}"
    _same(*runs, what=f"P={min(p, n)} {first}->{second}{' +skip' if skip else ''}{'' if cache else ' streamed'}")


def test_a_user_stack_chains_as_the_gcn_model_does_and_moves_fewer_bytes():
    rng = np.random.default_rng(7)
    n, d, h, c = 120, 16, 32, 4
    ei = awkward_graph(rng, n, 900)
    x = torch.randn(n, d)

    def bytes_in(make, on: bool) -> tuple[int, torch.Tensor, sagann.ChunkedGraph]:
        torch.manual_seed(0)
        model = make().eval()
        dev = sagann.CpuDevice(copy_transfers=True)
        fixed = sagann.ScheduleConfig(transfer="selective", order="natural")  # no choice made on measured times
        g = sagann.ChunkedGraph(ei, n, device=dev, num_chunks=3, schedule=fixed)
        with sagann.chaining(on):
            for _ in range(2):  # note x, then cache its Gather
                model(g, x)
            before = dev.bytes_in
            out = model(g, x) + 0  # + 0: pending rows are computed now
            moved = dev.bytes_in - before  # the forward's: backward's keep-or-recompute choice rests on measured times
            out.sum().backward()
        return moved, out.detach(), g

    user = lambda: TwoLayers(sagann.nn.GCNConv(d, h), sagann.nn.GCNConv(h, c))  # noqa: E731
    zoo = lambda: GCN(d, h, c, num_layers=2, dropout=0.5)  # noqa: E731
    user_on, out_on, g_on = bytes_in(user, True)
    user_off, out_off, g_off = bytes_in(user, False)
    zoo_on, zoo_out, _ = bytes_in(zoo, True)
    assert _chained(g_on) and not _chained(g_off)
    assert user_off - user_on == n * h * 4, (user_on, user_off)  # the hook pass's load of relu(h) goes
    assert user_on == zoo_on, f"user stack {user_on} B, GCN model {zoo_on} B"
    assert_rel_close(out_on, out_off, what="user stack output")
    assert_rel_close(out_on, zoo_out, what="same weights as the GCN model")
    text = sagann.explain(TwoLayers(sagann.nn.GCNConv(d, h), sagann.nn.GCNConv(h, c)))
    assert "first -> second: can chain (4-wide rows cross the link)" in text, text


def test_explain_lists_the_links_of_a_users_module():
    rng = np.random.default_rng(3)
    n = 50
    ei = awkward_graph(rng, n, 300)
    x = torch.randn(n, 6)

    class Three(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = sagann.nn.GCNConv(6, 12), sagann.nn.GCNConv(12, 5), sagann.nn.SAGEConv(5, 3)

        def forward(self, g, x):
            return self.c(g, F.relu(self.b(g, F.relu(self.a(g, x)))))

    model = Three().eval()
    g = sagann.ChunkedGraph(ei, n, num_chunks=2)
    for _ in range(3):
        model(g, x).sum().backward()
    text = sagann.explain(model)
    assert text.startswith("Three: 3 sagann layers"), text
    assert "a -> b: chained on the last call (relu between): 5-wide rows crossed the link instead of 12-wide ones" in text, text
    assert "b -> c: not chained on the last call" in text or "b -> c: does not chain" in text, text
    assert "it reads its input through" in text or "no per-vertex source pre-transform" in text, text
    assert "input: read only through apply_src (5 wide)" in sagann.explain(model.b)


def test_dropout_in_training_runs_between_unchained_with_the_callers_random_draws():
    rng = np.random.default_rng(5)
    n = 40
    ei = awkward_graph(rng, n, 200)
    x = torch.randn(n, 6)
    runs = []
    for on in (True, False):
        torch.manual_seed(2)
        model = _model("gcn", "gcn", 6, 10, 3).train()
        g = sagann.ChunkedGraph(ei, n, num_chunks=2)
        with sagann.chaining(on):
            runs.append(_run(model, g, x, None))
        assert not _chained(g)
    _same(*runs, what="dropout between layers")


def test_gcn_chain_layers_false_turns_chaining_off_and_pending_rows_act_as_tensors():
    rng = np.random.default_rng(6)
    n = 40
    ei = awkward_graph(rng, n, 200)
    x = torch.randn(n, 6)
    g = sagann.ChunkedGraph(ei, n, num_chunks=2)
    model = GCN(6, 8, 3, dropout=0.0)
    model.chain_layers = False
    for _ in range(3):
        model(g, x)
    assert not _chained(g)
    conv, g = sagann.nn.GCNConv(6, 4), sagann.ChunkedGraph(ei, n, num_chunks=2)
    with torch.no_grad():
        outs = [conv(g, x) for _ in range(3)]  # the third runs on the cached Gather: pending rows
    assert isinstance(outs[2], PendingRows) and not isinstance(outs[0], PendingRows)
    assert outs[2].shape == (n, 4) and not outs[2].requires_grad
    assert_rel_close(outs[2][:, 1:], outs[0][:, 1:], what="indexing computes them")
    assert str(outs[2]) == str(outs[2].value())
    assert type(outs[2] + 0) is torch.Tensor
    np.testing.assert_allclose(F.relu(outs[2]).numpy(), F.relu(outs[0]).numpy(), rtol=1e-5, atol=1e-6)


def test_a_pending_output_keeps_the_callers_random_stream_and_guards_its_inputs():
    rng = np.random.default_rng(8)
    n = 40
    ei = awkward_graph(rng, n, 200)
    x = torch.randn(n, 6)

    class DrawsBetween(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = sagann.nn.GCNConv(6, 10), sagann.nn.GCNConv(10, 3)

        def forward(self, g, x):
            h = self.a(g, x)
            noise = torch.rand(4)  # the caller's own draw between the two calls
            return self.b(g, F.relu(h)), noise

    runs = []
    for on in (True, False):
        torch.manual_seed(4)
        model = DrawsBetween().train()
        g = sagann.ChunkedGraph(ei, n, num_chunks=2)
        with sagann.chaining(on):
            for _ in range(3):
                out, noise = model(g, x)
        runs.append((out.detach(), noise, torch.rand(2)))
        assert _chained(g) == on
    (out_a, noise_a, after_a), (out_b, noise_b, after_b) = runs
    assert torch.equal(noise_a, noise_b) and torch.equal(after_a, after_b), "the caller's stream moved as unchained"
    assert_rel_close(out_a, out_b, what="output")
    conv, g = sagann.nn.GCNConv(6, 4), sagann.ChunkedGraph(ei, n, num_chunks=2)
    with torch.no_grad():
        pending = [conv(g, x) for _ in range(3)][-1]
        conv.lin.weight.mul_(2)  # an optimizer step before the output was read
    with pytest.raises(RuntimeError, match="changed in place since the call"):
        pending + 0


@pytest.mark.parametrize("layers,cache", [(2, False), (3, True), (3, False)])
def test_streamed_layers_chain_from_the_second_call(layers, cache):
    # a streamed layer whose output fed a layer that chains waits from then on: its ApplyVertex, the ReLU and
    # the next layer's matmul run as one ApplyVertex at the end of its edge stage
    rng = np.random.default_rng(9)
    n, d, h, c = 150, 12, 24, 3
    ei = awkward_graph(rng, n, 1000)
    x, y = torch.randn(n, d), torch.randint(0, c, (n,))
    runs = []
    for on in (True, False):
        torch.manual_seed(0)
        model = GCN(d, h, c, num_layers=layers, dropout=0.0)
        dev = sagann.CpuDevice(copy_transfers=True)
        fixed = sagann.ScheduleConfig(cache_gather=cache, transfer="selective", order="natural")
        g = sagann.ChunkedGraph(ei, n, device=dev, num_chunks=3, schedule=fixed)
        with sagann.chaining(on):
            for _ in range(3):
                model.zero_grad()
                before = dev.bytes_in
                out = model(g, x)
                moved = dev.bytes_in - before  # the forward's (backward's keep-or-recompute rests on measured times)
                F.cross_entropy(out, y).backward()
        chained = [r.layer for r in g.pass_log if "+act+lin" in r.layer and r.phase == "forward"]
        runs.append((model, moved, chained))
    (m_on, bytes_on, chained_on), (m_off, bytes_off, chained_off) = runs
    assert len(chained_on) >= layers - 1 and not chained_off
    assert bytes_off - bytes_on == (layers - 1) * n * h * 4, (bytes_on, bytes_off)  # each link: one hidden tensor less
    for a, b in zip(m_on.parameters(), m_off.parameters()):
        assert_rel_close(a.grad, b.grad, what="gradient", floor=1e-4)
    text = sagann.explain(m_on)
    assert text.count("chained on the last call") == layers - 1, text


def test_a_streamed_layer_used_besides_the_next_one_stops_waiting():
    rng = np.random.default_rng(10)
    n = 60
    ei = awkward_graph(rng, n, 300)
    x = torch.randn(n, 5)
    model = _model("gcn", "gcn", 5, 9, 3, also_skip=True).eval()  # eval: the dropout between is the identity
    g = sagann.ChunkedGraph(ei, n, num_chunks=2, schedule=sagann.ScheduleConfig(cache_gather=False))
    ref = _model("gcn", "gcn", 5, 9, 3, also_skip=True).eval()
    ref.load_state_dict(model.state_dict())
    for k in range(4):
        got = _run(model, g, x, None, calls=1)
        with sagann.chaining(False):
            _same(got, _run(ref, g, x, None, calls=1), what=f"call {k}")
    forward = [r.layer for r in g.pass_log if r.phase == "forward"]
    assert sum("+act+lin" in name for name in forward) == 1, "chained once, then the layer runs at once (no second edge stage)"
