"""A Gather over unchanged inputs that need no gradient is computed once and reused (sagann.engine.constant)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import sagann
from sagann.engine.models import GCN, GIN, GraphSAGE
from tests.engine.graphs import awkward_graph, graphs
from tests.engine.test_out_of_core import assert_rel_close
from tests.measured import assert_measured_within


class MaxOfNeighbours(sagann.Layer):
    """A user layer: builtin messages, a max Gather, an ApplyVertex that reads v and acc."""

    gather = "max"
    apply_edge = sagann.fn.src_mul_edge

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin = torch.nn.Linear(2 * d_in, d_out)

    def apply_vertex(self, v, acc):
        return self.lin(torch.cat([v, acc], dim=1))


def _graph(ei, n, cache: bool, device=None, **kw):
    return sagann.ChunkedGraph(ei, n, device=device, schedule=sagann.ScheduleConfig(cache_gather=cache), **kw)


def _train(model, g, x, y, epochs=4, edge_data=None):
    """Losses and final parameters of a few Adam epochs (same seed: same initial weights)."""
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(epochs):
        opt.zero_grad()
        out = model(g, x) if edge_data is None else model(g, x, edge_data)
        loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), [p.detach().clone() for p in model.parameters()]


def _assert_same_training(a, b) -> None:
    """Two ``_train`` results: losses and final parameters within 1e-5."""
    (loss_a, params_a), (loss_b, params_b) = a, b
    assert_rel_close(loss_a, loss_b, what="losses")
    for k, (pa, pb) in enumerate(zip(params_a, params_b)):
        assert_rel_close(pa, pb, what=f"parameter {k}")


def _first_layer_forward_chunks(g) -> list[int]:
    """Edge chunks of each forward pass of the first layer call of every epoch (0: an edgeless pass)."""
    return [r.chunks for r in g.pass_log if r.phase == "forward"]


@pytest.mark.parametrize("model_cls", [GCN, GraphSAGE, GIN])
@pytest.mark.parametrize("setting", ["p1", "chunked", "budget", "two_devices"])
def test_models_train_the_same_with_and_without_the_cache(model_cls, setting):
    rng = np.random.default_rng(0)
    n, d, classes = 60, 12, 4
    ei = awkward_graph(rng, n, 500)
    x, y = torch.randn(n, d), torch.randint(0, classes, (n,))
    kw = {"p1": dict(num_chunks=1), "chunked": dict(num_chunks=4, sub_chunk_nnz=32), "budget": {}, "two_devices": {}}[setting]

    def device():
        if setting == "budget":
            return sagann.CpuDevice("24KB")
        if setting == "two_devices":
            return [sagann.CpuDevice(name="a"), sagann.CpuDevice(name="b")]
        return None

    runs = []
    for cache in (True, False):
        torch.manual_seed(3)
        model = model_cls(d, 16, classes, dropout=0.0)
        runs.append((_train(model, _graph(ei, n, cache, device(), **kw), x, y)))
    _assert_same_training(*runs)


def test_first_layer_streams_no_edges_from_the_second_call():
    rng = np.random.default_rng(1)
    n = 50
    ei = awkward_graph(rng, n, 400)
    x, y = torch.randn(n, 8), torch.randint(0, 3, (n,))
    torch.manual_seed(0)
    g = _graph(ei, n, True, num_chunks=3)
    model = GCN(8, 16, 3, dropout=0.0)
    _train(model, g, x, y, epochs=3)
    chunks = _first_layer_forward_chunks(g)  # two layers per epoch: [layer 1, layer 2] x 3 (+ the cache's propagation)
    assert chunks[0] > 0 and chunks[1] > 0, "epoch 1 streams both layers"
    assert chunks[-2] == 0 and chunks[-1] > 0, f"epoch 3: layer 1 runs on the cached Gather, layer 2 streams ({chunks})"
    backward_chunks = [r.chunks for r in g.pass_log if r.phase == "backward"]
    assert backward_chunks[-1] == 0, "layer 1's backward has no edge pass either"
    assert len(chunks) == 7, f"one extra forward pass (the propagation), in epoch 2: {chunks}"


def test_never_cached_when_off_or_inputs_change():
    rng = np.random.default_rng(2)
    n = 40
    ei = awkward_graph(rng, n, 300)
    x, y = torch.randn(n, 6), torch.randint(0, 3, (n,))
    for make_x, cache in ((lambda: x, False), (lambda: x.clone(), True)):
        g = _graph(ei, n, cache, num_chunks=2)
        model = GCN(6, 8, 3, dropout=0.0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(g, make_x()), y).backward()
            opt.step()
        assert 0 not in _first_layer_forward_chunks(g), "a fresh x every call (or the cache off) always streams"


def test_dropout_on_the_inputs_never_caches():
    rng = np.random.default_rng(3)
    n = 40
    ei = awkward_graph(rng, n, 300)
    g = _graph(ei, n, True, num_chunks=2)
    model = GCN(6, 8, 3, dropout=0.5).train()
    x = torch.randn(n, 6)
    for _ in range(3):
        model(g, x).sum().backward()
    assert 0 not in _first_layer_forward_chunks(g)
    model.eval()
    with torch.no_grad():
        outs = [model(g, x) for _ in range(3)]
    assert 0 in _first_layer_forward_chunks(g), "in eval mode dropout is off: the third call reuses the Gather"
    assert_rel_close(outs[2], outs[0], what="eval output on the cache")


def test_in_place_change_of_the_inputs_recomputes():
    rng = np.random.default_rng(4)
    n = 30
    ei = awkward_graph(rng, n, 200)
    g = _graph(ei, n, True, num_chunks=2)
    layer = sagann.nn.SAGEConv(5, 7)
    x = torch.randn(n, 5)
    for _ in range(3):
        layer(g, x)
    x.mul_(2.0).add_(1.0)
    ref = layer(_graph(ei, n, False, num_chunks=2), x)
    assert_rel_close(layer(g, x), ref, what="output after x changed in place")
    assert_rel_close(layer(g, x), ref, what="output on the recomputed cache")


def test_inputs_needing_a_gradient_are_never_cached():
    rng = np.random.default_rng(5)
    n = 30
    ei = awkward_graph(rng, n, 200)
    g = _graph(ei, n, True, num_chunks=2)
    layer = sagann.nn.GINConv(torch.nn.Linear(4, 4))
    x = torch.randn(n, 4, requires_grad=True)
    for _ in range(3):
        layer(g, x).sum().backward()
    assert 0 not in _first_layer_forward_chunks(g)
    assert x.grad is not None and x.grad.abs().sum() > 0


@settings(max_examples=25, deadline=None)
@given(graph=graphs(), num_chunks=st.integers(1, 5), budget=st.sampled_from([None, "8KB"]), width=st.integers(1, 6))
def test_property_cached_gather_equals_streamed(graph, num_chunks, budget, width):
    """A user layer with a max Gather and edge data: outputs and parameter gradients on the third call, cached or not."""
    n, ei = graph
    x = torch.randn(n, width, generator=torch.Generator().manual_seed(n))
    w = torch.rand(ei.shape[1], 1, generator=torch.Generator().manual_seed(7))
    results = []
    for cache in (True, False):
        torch.manual_seed(0)
        layer = MaxOfNeighbours(width, 3)
        kw = {} if budget else dict(num_chunks=num_chunks, sub_chunk_nnz=8)
        g = _graph(ei, n, cache, sagann.CpuDevice(budget) if budget else None, **kw)
        for _ in range(2):
            layer(g, x, w)
        out = layer(g, x, w)
        grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
        results.append((out, grads))
    assert_rel_close(results[0][0], results[1][0], what="output")
    for a, b in zip(results[0][1], results[1][1]):
        assert_rel_close(a, b, what="parameter gradient")


def test_config_validates_cache_gather():
    with pytest.raises(ValueError, match="cache_gather must be True or False"):
        sagann.ScheduleConfig(cache_gather="yes")


def _wide_first_layer():
    """A graph whose 64-wide features set P (an 8-wide hidden layer after them), its data, and a 2-layer GCN's
    in-memory working-set peak there: ``(ei, n, d, classes, x, y, peak)``."""
    rng = np.random.default_rng(4)
    n, d, classes = 1500, 64, 3
    ei = awkward_graph(rng, n, 12000)
    x, y = torch.randn(n, d), torch.randint(0, classes, (n,))
    probe = _graph(ei, n, False)
    torch.manual_seed(0)
    _train(GCN(d, 8, classes, num_layers=2, dropout=0.0), probe, x, y, epochs=1)
    return ei, n, d, classes, x, y, probe.working_set.peak_bytes


def test_evaluation_calls_cached_beside_streamed_training_calls_leave_the_partition_settled(monkeypatch):
    """Dropout gives the first layer a fresh input every epoch, so its training calls stream while its
    evaluation calls (the same input each epoch) get cached: P must not coarsen for the cached ones and
    grow back at the next training call, re-cutting the graph every epoch."""
    from sagann.scheduler.planner import Planner

    ei, n, d, classes, x, y, peak = _wide_first_layer()
    g = _graph(ei, n, True, device=sagann.CpuDevice(peak // 6, copy_transfers=True))
    cuts = [0]
    real = Planner._cut

    def counted(self, *a, **k):
        part = real(self, *a, **k)
        cuts[0] += part is not self._partition
        return part

    monkeypatch.setattr(Planner, "_cut", counted)
    torch.manual_seed(0)
    model = GCN(d, 8, classes, num_layers=2, dropout=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    per_epoch = []
    for _ in range(5):
        cuts[0] = 0
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(g, x), y).backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            model(g, x)
        per_epoch.append(cuts[0])
    assert g.num_chunks > 1
    assert per_epoch[2:] == [0, 0, 0], f"partitions cut per epoch {per_epoch}"


def _train_watching_p(model, g, x, y, epochs=4):
    """P after each of a few Adam epochs, and their losses (the caller seeds the model's initial weights)."""
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    chunks, losses = [], []
    for _ in range(epochs):
        opt.zero_grad()
        loss = F.cross_entropy(model(g, x), y)
        loss.backward()
        opt.step()
        chunks.append(g.num_chunks)
        losses.append(loss.detach())
    return chunks, torch.stack(losses)


def test_the_graph_coarsens_once_the_wide_first_layer_is_cached():
    """The first epoch streams the 64-wide features at the P they need; from the cached epoch on the
    8-wide second layer alone sets P, and the graph moves to the smaller P that fits it, training the same."""
    ei, n, d, classes, x, y, peak = _wide_first_layer()
    torch.manual_seed(0)
    ref_losses, ref_params = _train(GCN(d, 8, classes, num_layers=2, dropout=0.0), _graph(ei, n, False), x, y, epochs=4)
    budget = peak // 10
    dev = sagann.CpuDevice(budget, copy_transfers=True, meter=True)
    g = _graph(ei, n, True, device=dev)
    torch.manual_seed(0)
    model = GCN(d, 8, classes, num_layers=2, dropout=0.0)
    chunks, losses = _train_watching_p(model, g, x, y)
    assert chunks[0] > 1 and chunks[-1] < chunks[0], f"P per epoch {chunks}"
    assert chunks[1:] == [chunks[1]] * 3, "one coarsening, then the graph settles"
    assert_rel_close(losses, ref_losses, what="losses")
    for a, b in zip(model.parameters(), ref_params):
        assert_rel_close(a.detach(), b, what="parameters")
    assert dev.current_bytes == 0
    assert_measured_within(dev, budget)


@pytest.mark.parametrize("layers", [2, 3])
@pytest.mark.parametrize("setting", ["p1", "budget", "two_devices"])
def test_a_cached_gcn_layer_chains_into_the_next_ones_matmul(layers, setting):
    # from the third call the first layer, ReLU and the second layer's XW run as one vertex pass
    rng = np.random.default_rng(4)
    n, d, classes = 80, 12, 3
    ei = awkward_graph(rng, n, 600)
    x, y = torch.randn(n, d), torch.randint(0, classes, (n,))
    device = {"p1": lambda: None, "budget": lambda: sagann.CpuDevice("24KB", copy_transfers=True), "two_devices": lambda: [sagann.CpuDevice(name="a"), sagann.CpuDevice(name="b")]}[setting]
    runs = []
    for chain in (True, False):
        torch.manual_seed(3)
        model = GCN(d, 16, classes, num_layers=layers, dropout=0.0)
        model.chain_layers = chain
        g = _graph(ei, n, True, device(), **({"num_chunks": 1} if setting == "p1" else {}))
        runs.append((_train(model, g, x, y, epochs=4), [r.layer for r in g.pass_log]))
    (chained, names_c), (unchained, names_u) = runs
    assert any("+act+lin" in name for name in names_c) and not any("+act+lin" in name for name in names_u)
    _assert_same_training(chained, unchained)


def test_chaining_waits_for_no_dropout_and_runs_in_eval():
    rng = np.random.default_rng(5)
    n = 60
    ei = awkward_graph(rng, n, 400)
    x, y = torch.randn(n, 8), torch.randint(0, 3, (n,))
    torch.manual_seed(0)
    model = GCN(8, 16, 3, dropout=0.5)
    g = _graph(ei, n, True, num_chunks=3)
    _train(model, g, x, y, epochs=3)
    assert not any("+act+lin" in r.layer for r in g.pass_log), "dropout runs between the layers in training: nothing chains"
    model.eval()
    with torch.no_grad():
        model.chain_layers = False
        model(g, x)  # notes x; the next call caches its Gather
        plain = model(g, x)
        model.chain_layers = True
        chained = model(g, x)
    assert any("+act+lin" in r.layer for r in g.pass_log)
    assert_rel_close(chained, plain, what="eval output")


def test_under_a_host_budget_the_partition_in_hand_is_kept():
    """A coarser partition would be cut in RAM outside the host budget: with one, the graph keeps its P after the
    first layer's Gather is cached, and trains the same."""
    ei, n, d, classes, x, y, peak = _wide_first_layer()
    budget = peak // 10
    runs = {}
    for host in (None, "64MB"):
        g = sagann.ChunkedGraph(ei, n, device=sagann.CpuDevice(budget), host_memory=host)
        torch.manual_seed(0)
        chunks, losses = _train_watching_p(GCN(d, 8, classes, num_layers=2, dropout=0.0), g, x, y)
        runs[host] = chunks, losses
    assert runs[None][0][-1] < runs[None][0][0], "without a host budget the graph coarsens"
    assert runs["64MB"][0] == [runs["64MB"][0][0]] * 4 and runs["64MB"][0][0] > 1, f"P per epoch {runs['64MB'][0]}"
    assert_rel_close(runs["64MB"][1], runs[None][1], what="losses")
