"""Kept forward graphs on a budgeted device: no recompute in backward, the same gradients, nothing left on the device."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import sagann
from sagann.engine.offload import KeptGraph, _alias
from sagann.scheduler.policy import TransferCosts
from tests.engine.graphs import awkward_graph, graphs
from tests.engine.layers import GatedGCN, HookLayer
from tests.engine.test_out_of_core import assert_grads_close, assert_rel_close, outputs_and_grads
from tests.engine.whole_graph import whole_graph_layer
from tests.measured import assert_measured_within


class Counted(sagann.Layer):
    """An MLP ApplyVertex (hidden activations and a dropout mask to save) and a hook; counts their calls."""

    gather = "sum"

    def __init__(self, d_in, d_out, p_drop=0.0):
        super().__init__()
        self.hook = nn.Linear(d_in, d_in)
        self.mlp = nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Dropout(p_drop), nn.Linear(8, d_out))
        self.root = nn.Linear(d_in, d_out, bias=False)
        self.calls = {"apply_src": 0, "apply_vertex": 0}

    def apply_src(self, v):
        self.calls["apply_src"] += 1
        return self.hook(v)

    def apply_edge(self, e):
        return torch.relu(e.src_term)

    def apply_vertex(self, v, acc):
        self.calls["apply_vertex"] += 1
        return self.mlp(acc) + self.root(v)


def _graph(seed=0, n=40, e=200):
    rng = np.random.default_rng(seed)
    return n, awkward_graph(rng, n, e)


def run_counting(layer, ei, n, x, device, num_chunks, host_memory=None):
    """Outputs and gradients, and how many calls of each function backward added (0: nothing recomputed)."""
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, device=device, sub_chunk_nnz=17, backend="reference", host_memory=host_memory)
    seen = {}

    def forward(x_, e_):
        out = layer(g, x_)
        seen.update(layer.calls)
        return out

    out, grads = outputs_and_grads(layer, forward, x, None)
    assert device.peak_bytes <= g.planned_peak_bytes  # kept or recomputed, the plan holds the ledger
    return out, grads, {k: layer.calls[k] - seen[k] for k in seen}


@pytest.mark.parametrize("copy_transfers", [True, False])
def test_no_recompute_and_same_gradients(copy_transfers):
    n, ei = _graph()
    torch.manual_seed(0)
    layer = Counted(3, 4)
    x = torch.randn(n, 3, requires_grad=True)
    ref_out, ref_grads = outputs_and_grads(layer, lambda x_, e_: whole_graph_layer(layer, ei, x_), x, None)
    device = sagann.CpuDevice(200_000, copy_transfers=copy_transfers, meter=True)
    device._costs = TransferCosts(gather=0.0, block=0.0, compact=0.0)  # copying is free: always keep
    out, grads, recomputed = run_counting(layer, ei, n, x, device, num_chunks=4)
    assert_rel_close(out, ref_out, what="output")
    assert_grads_close(grads, ref_grads)
    assert recomputed == {"apply_src": 0, "apply_vertex": 0}
    assert_measured_within(device)


def test_recomputes_where_the_round_trip_costs_more():
    """A graph saving more than aliases is dropped when copying it costs more than its forward: backward recomputes."""
    n, ei = _graph(1)
    torch.manual_seed(0)
    layer = Counted(3, 4)
    x = torch.randn(n, 3, requires_grad=True)
    ref_out, ref_grads = outputs_and_grads(layer, lambda x_, e_: whole_graph_layer(layer, ei, x_), x, None)
    device = sagann.CpuDevice(200_000, copy_transfers=True)
    device._costs = TransferCosts(gather=1.0, block=1.0, compact=1.0)  # a second per byte
    out, grads, recomputed = run_counting(layer, ei, n, x, device, num_chunks=4)
    assert_rel_close(out, ref_out, what="output")
    assert_grads_close(grads, ref_grads)
    # the hook saves only its input rows (an alias: free) and stays kept; the MLP is recomputed per interval
    assert recomputed == {"apply_src": 0, "apply_vertex": 4}


def test_dropout_mask_of_a_kept_graph_is_the_forwards():
    """Kept or recomputed (replayed seed), backward uses the forward's dropout mask: the gradients agree."""
    n, ei = _graph(2)
    x = torch.randn(n, 3, requires_grad=True)
    results = []
    for block in (0.0, 1.0):  # 0: kept with its mask on the host; 1: recomputed under the replayed seed
        torch.manual_seed(0)
        layer = Counted(3, 4, p_drop=0.5).train()
        device = sagann.CpuDevice(200_000, copy_transfers=True)
        device._costs = TransferCosts(gather=block, block=block, compact=block)
        torch.manual_seed(5)
        out, grads, recomputed = run_counting(layer, ei, n, x, device, num_chunks=3)
        assert recomputed["apply_vertex"] == (0 if block == 0.0 else 3)
        results.append((out, grads))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    assert_grads_close(grads_a, grads_b)


@settings(max_examples=25, deadline=None)
@given(graph=graphs(), num_chunks=st.integers(1, 7), which=st.sampled_from(["counted", "gated", "hooks"]), copy_transfers=st.booleans())
def test_property_kept_graphs_equal_in_memory(graph, num_chunks, which, copy_transfers):
    n, ei = graph
    torch.manual_seed(0)
    layer = {"counted": lambda: Counted(3, 4), "gated": lambda: GatedGCN(3, 4), "hooks": lambda: HookLayer(3, 4, 2, "max")}[which]()
    x = torch.randn(n, 3, requires_grad=True)
    ed = torch.randn(ei.shape[1], 2, requires_grad=True) if which == "hooks" else None
    ref_out, ref_grads = outputs_and_grads(layer, lambda x_, e_: whole_graph_layer(layer, ei, x_, e_), x, ed)
    device = sagann.CpuDevice(10**7, copy_transfers=copy_transfers)
    device._costs = TransferCosts(gather=0.0, block=0.0, compact=0.0)
    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, device=device, backend="reference")
    out, grads = outputs_and_grads(layer, lambda x_, e_: layer(g, x_, e_) if e_ is not None else layer(g, x_), x, ed)
    assert_rel_close(out, ref_out, what="output")
    assert_grads_close(grads, ref_grads)


def test_sealed_graph_holds_host_tensors_only():
    w = nn.Parameter(torch.randn(4, 3))
    rows_host = torch.randn(6, 3)
    rows_dev = rows_host.clone()  # a "device" copy of the host rows
    kept = KeptGraph([w])
    leaf = rows_dev.detach().requires_grad_()
    kept.keep_inputs(leaf)
    with torch.enable_grad(), kept.hooks():
        out = torch.tanh(torch.nn.functional.linear(leaf, w))  # saves leaf (alias), w.t() (param), tanh's output (copied)
    plain = rows_dev.detach().requires_grad_()
    expected = torch.autograd.grad(torch.tanh(torch.nn.functional.linear(plain, w)), [plain, w], torch.ones(6, 4))
    kept.handle = torch.autograd.graph.get_gradient_edge(out)

    class Device:
        def copy_out(self, t, host):
            host.copy_(t)

    class Host:
        def empty(self, shape, dtype, what):
            return torch.empty(shape, dtype=dtype)

    assert kept.copy_bytes([(rows_dev, rows_host)]) == out.numel() * 4
    assert kept.seal([(rows_dev, rows_host)], Device(), Host()) == out.numel() * 4
    assert leaf.numel() == 0  # the leaf's memory is gone; autograd needs only its identity
    assert all(s.t is None or s.kept for s in kept._saved)
    del out
    loads = []

    class Scope:
        def load(self, host, what):
            loads.append(host.shape)
            return host.clone()

    kept.scope = Scope()
    got = torch.autograd.grad(kept.handle, [leaf, w], torch.ones(6, 4))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert sorted(loads) == [torch.Size([6, 3]), torch.Size([6, 4])]


def test_a_dropped_graph_lets_go_of_its_saved_tensors_without_the_garbage_collector():
    """The graph and its KeptGraph reference each other: dropped, the saved device tensors go at once."""
    import gc
    import weakref

    w = nn.Parameter(torch.randn(4, 3))
    kept = KeptGraph([w])
    leaf = torch.randn(6, 3).requires_grad_()
    kept.keep_inputs(leaf)
    with torch.enable_grad(), kept.hooks():
        hidden = torch.nn.functional.linear(leaf, w)
        out = torch.tanh(hidden)  # saves its output: a device tensor only the graph holds once ``out`` goes
    kept.handle = torch.autograd.graph.get_gradient_edge(out)
    saved = weakref.ref(next(s.t for s in kept._saved if s.t is not None and s.t.shape == (6, 4)))
    del out, hidden, leaf
    gc.disable()
    try:
        kept.drop()
        assert saved() is None, "a dropped graph still holds a saved device tensor"
    finally:
        gc.enable()


def test_graphs_recomputed_in_backward_leave_nothing_behind(monkeypatch):
    """A kept graph whose round trip costs more is dropped: every tensor it saved is freed, at every call."""
    import weakref

    saved = []
    real = KeptGraph._pack

    def pack(self, t):
        saved.append(weakref.ref(t))
        return real(self, t)

    monkeypatch.setattr(KeptGraph, "_pack", pack)
    n, ei = _graph(1)
    torch.manual_seed(0)
    layer = Counted(3, 4)
    x = torch.randn(n, 3, requires_grad=True)
    device = sagann.CpuDevice(200_000, copy_transfers=True)
    device._costs = TransferCosts(gather=1.0, block=1.0, compact=1.0)  # a second per byte: the MLP's graphs are dropped
    g = sagann.ChunkedGraph(ei, n, num_chunks=4, device=device, backend="reference")
    for _ in range(2):
        layer(g, x).sum().backward()
    assert saved
    alive = [w() for w in saved if w() is not None and not isinstance(w(), nn.Parameter) and w().numel() > 0]
    assert not alive, f"{len(alive)} tensor(s) saved by dropped or used graphs are still alive: {[tuple(t.shape) for t in alive]}"


def test_a_hook_pass_lets_go_of_each_blocks_rows_before_the_next_loads(monkeypatch):
    """Each interval's loaded input rows are gone before the next interval's load: one interval's rows at a time."""
    import weakref

    from sagann.engine import forward

    n, ei = _graph(3, n=60, e=300)
    torch.manual_seed(0)
    layer = Counted(3, 4)
    x = torch.randn(n, 3, requires_grad=True)
    held, loads = [], 0
    real = forward.load_narrowed

    def load(scope, rows, dtype, what):
        nonlocal loads
        if sys._getframe(1).f_code.co_name != "hook_pass":
            return real(scope, rows, dtype, what)
        alive = [w for w in held if w() is not None]
        assert not alive, f"{len(alive)} earlier block(s) of the hook pass still held while {what} loads"
        t = real(scope, rows, dtype, what)
        held.append(weakref.ref(t))
        loads += 1
        return t

    monkeypatch.setattr(forward, "load_narrowed", load)
    device = sagann.CpuDevice(200_000, copy_transfers=True)
    device._costs = TransferCosts(gather=0.0, block=0.0, compact=0.0)  # copying is free: every graph is kept
    g = sagann.ChunkedGraph(ei, n, num_chunks=4, device=device, backend="reference")
    layer(g, x).sum().backward()
    assert loads >= 4


def test_unpack_before_seal_or_outside_backward_is_an_error():
    kept = KeptGraph([])
    leaf = torch.randn(3, 2, requires_grad=True)
    with torch.enable_grad(), kept.hooks():
        out = (leaf * leaf).sum()
    with pytest.raises(RuntimeError, match="before it was sealed"):
        torch.autograd.grad(out, [leaf], retain_graph=True)

    class Host:
        def empty(self, shape, dtype, what):
            return torch.empty(shape, dtype=dtype)

    class Device:
        def copy_out(self, t, host):
            host.copy_(t)

    kept.seal([], Device(), Host())
    with pytest.raises(RuntimeError, match="outside a backward scope"):
        torch.autograd.grad(out, [leaf])


def test_alias_maps_views_to_the_same_view_of_host_rows():
    host = torch.arange(24.0).reshape(6, 4)
    dev = host.clone()
    assert _alias(dev, [(dev, host)]) is host
    view = _alias(dev[2:5, 1:3], [(dev, host)])
    assert torch.equal(view, host[2:5, 1:3])
    assert torch.equal(_alias(dev.t(), [(dev, host)]), host.t())
    assert _alias(dev.clone(), [(dev, host)]) is None  # other memory: not an alias
    assert _alias(dev.double(), [(dev, host)]) is None


class _SymTanh(sagann.Layer):
    """A 'sym' gather whose source hook saves its own output (tanh): the host rows it writes are then scaled."""

    gather = "sym"
    apply_vertex_reads_v = False
    apply_edge = sagann.fn.copy_src

    def __init__(self, d_in, d_out):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def apply_src(self, v):
        return torch.tanh(self.lin(v))

    def apply_vertex(self, v, acc):
        return acc


def test_a_kept_hook_graph_of_a_sym_gather_does_not_read_its_scaled_rows():
    """The host rows of a sym gather's source hook are scaled after the hook ran: its kept graph must not take them
    for the output tanh saved. The gradients equal the in-memory run's."""
    n, ei = _graph(3)
    torch.manual_seed(0)
    layer = _SymTanh(3, 4)
    x = torch.randn(n, 3, requires_grad=True)
    ref_out, ref_grads = outputs_and_grads(layer, lambda x_, e_: layer(sagann.ChunkedGraph(ei, n, num_chunks=1), x_), x, None)
    device = sagann.CpuDevice(200_000, copy_transfers=True)
    device._costs = TransferCosts(gather=0.0, block=0.0, compact=0.0)  # copying is free: always keep
    g = sagann.ChunkedGraph(ei, n, num_chunks=3, device=device)
    out, grads = outputs_and_grads(layer, lambda x_, e_: layer(g, x_), x, None)
    assert_rel_close(out, ref_out, what="output")
    assert_grads_close(grads, ref_grads)
