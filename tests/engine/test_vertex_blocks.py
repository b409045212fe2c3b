"""ApplyVertex and the hooks in row blocks: the same values and gradients as whole intervals, dropout replayed, within the budget."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import torch

import sagann
from sagann.engine import call as call_module
from sagann.scheduler.memory_model import BLOCK_HEADROOM, MAX_BLOCKS, _row_bytes, vertex_block_rows
from tests.engine.graphs import awkward_graph
from tests.engine.layers import Builtin, GatedGCN, HookLayer
from tests.engine.test_out_of_core import check_layer, make_inputs
from tests.measured import assert_measured_within


@pytest.fixture
def blocks_of_three(monkeypatch):
    """Every interval's ApplyVertex in blocks of at most 3 rows; counts the intervals that ran in several."""
    split = []
    monkeypatch.setattr(call_module, "vertex_block_rows", lambda rows, *a, **k: min(rows, 3))
    monkeypatch.setattr(call_module, "hook_block_rows", lambda rows, *a, **k: min(rows, 4))
    whole = call_module.LayerCall.vertex_blocks

    def counted(self, lo, hi):
        blocks = whole(self, lo, hi)
        split.append(len(blocks) > 1)
        return blocks

    monkeypatch.setattr(call_module.LayerCall, "vertex_blocks", counted)
    return split


CASES = {
    "gcn-like": (lambda: Builtin("src_mul_edge", "sum", 5, hooks=True), "src_mul_edge"),
    "sage": (lambda: sagann.nn.SAGEConv(5, 4), None),
    "max": (lambda: Builtin("copy_src", "max", 5), None),
    "gated-gcn": (lambda: GatedGCN(5, 4), None),
    "hooks": (lambda: HookLayer(5, 4, 3, "mean"), "edges"),
}


@pytest.mark.parametrize("num_chunks", [1, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_blocks_equal_whole_intervals(blocks_of_three, case, num_chunks):
    make, edges = CASES[case]
    rng = np.random.default_rng(2)
    n, ei = 40, awkward_graph(rng, 40, 160)
    torch.manual_seed(0)
    layer = make()
    x, ed = make_inputs(n, ei.shape[1], 5, edges if edges != "edges" else None)
    check_layer(layer, ei, n, x, ed if edges else None, num_chunks, None)
    assert any(blocks_of_three), "no interval ran in blocks"


def test_dropout_in_blocked_apply_vertex_is_replayed_in_backward(blocks_of_three):
    """Backward recomputes each block under the forward's seed: a central difference matches the gradient."""

    class Dropped(sagann.Layer):
        gather = "sum"
        apply_edge = sagann.fn.copy_src

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4, bias=False)

        def apply_vertex(self, v, acc):
            return torch.nn.functional.dropout(self.lin(acc), 0.5, self.training)

    rng = np.random.default_rng(0)
    n, ei = 20, awkward_graph(rng, 20, 100)
    layer = Dropped().train()
    g = sagann.ChunkedGraph(ei, n, num_chunks=2, device=sagann.CpuDevice("1MB"))
    x = torch.randn(n, 4, requires_grad=True)
    w, direction = torch.randn(n, 4), torch.randn(n, 4)

    def f(inp):
        torch.manual_seed(5)
        return (layer(g, inp) * w).sum()

    (gx,) = torch.autograd.grad(f(x), [x])
    assert any(blocks_of_three)
    h = 0.5
    with torch.no_grad():
        fd = (f(x + h * direction) - f(x - h * direction)) / (2 * h)
    assert abs(fd.item() - (gx * direction).sum().item()) <= 1e-4 * max(1.0, abs(fd.item()))


def test_block_rows_fit_the_budget_and_cover_the_interval_where_it_fits():
    from sagann.engine.layer import probe_layer
    from tests.engine.test_budget import _WideMLP

    shape = probe_layer(_WideMLP(), 4, None, torch.device("cpu"))
    rows, params = 1000, 2_000
    row_bytes = _row_bytes(shape)["backward apply_vertex"]
    assert vertex_block_rows(rows, shape, params, None) == rows
    assert vertex_block_rows(rows, shape, params, rows * 10 * row_bytes) == rows
    budgets = [int(rows * row_bytes * f) for f in (0.02, 0.3, 0.6, 0.9)]
    blocks = [vertex_block_rows(rows, shape, params, budget) for budget in budgets]
    assert blocks[0] == rows, "more than MAX_BLOCKS blocks: the whole interval, which does not fit (the planner takes a larger P)"
    assert blocks[1:] == sorted(blocks[1:]) and blocks[-1] < rows  # more rows a block as the budget grows
    recomputed = _row_bytes(dataclasses.replace(shape, recomputes=True))["backward apply_vertex"]  # blocks recompute: no kept graph
    assert recomputed < row_bytes, "a recompute holds the ReLU output its graph saves twice once"
    for budget, block in zip(budgets[1:], blocks[1:]):
        assert block * MAX_BLOCKS >= rows and BLOCK_HEADROOM * block * recomputed + 2 * params <= budget  # a block's recompute and gradients fit, twice


def test_a_budget_where_only_blocks_fit_trains_within_it(monkeypatch):
    """A GIN whose MLP holds wide hidden rows: the budget fits its edge stages, not whole intervals' ApplyVertex."""
    from sagann.chunks.synthetic import rmat

    split = []
    whole = call_module.LayerCall.vertex_blocks
    monkeypatch.setattr(call_module.LayerCall, "vertex_blocks", lambda self, lo, hi: split.append(len(whole(self, lo, hi)) > 1) or whole(self, lo, hi))
    n = 512
    ei = rmat(n, 8 * n, seed=3)
    torch.manual_seed(0)
    layer = sagann.nn.GINConv(torch.nn.Sequential(torch.nn.Linear(8, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8)))
    x = torch.randn(n, 8, requires_grad=True)
    ref = layer(sagann.ChunkedGraph(ei, n, num_chunks=1), x)
    (ref_gx,) = torch.autograd.grad((ref * ref).sum(), [x])
    device = sagann.CpuDevice("120KB", meter=True)
    g = sagann.ChunkedGraph(ei, n, device=device)
    out = layer(g, x)
    (gx,) = torch.autograd.grad((out * out).sum(), [x])
    assert any(split), "the budget did not need blocks: lower it"
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5) and torch.allclose(gx, ref_gx, rtol=1e-4, atol=1e-4)
    assert device.peak_bytes <= g.planned_peak_bytes <= device.memory_budget
    assert_measured_within(device)  # what torch allocated, not only what the ledger counted


def test_a_pass_with_no_edges_loads_each_block_alone(monkeypatch):
    """No edge stage holds the column, so each ApplyVertex block loads its own rows: larger blocks, the same values, within the budget."""
    from sagann.engine import forward

    deferred = []
    opened = forward._open_column
    monkeypatch.setattr(forward, "_open_column", lambda *a, **k: deferred.append(k.get("defer", False)) or opened(*a, **k))
    n = 2048
    ei = np.zeros((2, 0), dtype=np.int64)
    torch.manual_seed(0)
    layer = sagann.nn.GINConv(torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)))
    x = torch.randn(n, 8, requires_grad=True)
    ref = layer(sagann.ChunkedGraph(ei, n, num_chunks=1), x)
    ref_grads = torch.autograd.grad((ref * ref).sum(), [x, *layer.parameters()])
    device = sagann.CpuDevice("160KB", meter=True)
    g = sagann.ChunkedGraph(ei, n, device=device)
    out = layer(g, x)
    grads = torch.autograd.grad((out * out).sum(), [x, *layer.parameters()])
    assert any(deferred), "no interval ran in blocks: lower the budget"
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(grads, ref_grads))
    assert device.peak_bytes <= g.planned_peak_bytes <= device.memory_budget
    assert_measured_within(device)


def test_blocks_of_a_pass_with_no_edges_fill_the_room_a_held_column_took():
    from sagann.engine.layer import probe_layer
    from sagann.scheduler.memory_model import _apply_row_bytes, _held_row_bytes

    # a call without backward (inference): the forward's blocks alone, which the held column's rows (its accumulator) bind
    shape = dataclasses.replace(probe_layer(sagann.nn.SAGEConv(64, 64), 64, None, torch.device("cpu")), backward=False)
    rows, params, budget = 10_000, 40_000, 8_000_000
    held_whole, edgeless = vertex_block_rows(rows, shape, params, budget), vertex_block_rows(rows, shape, params, budget, edgeless=True)
    assert rows > edgeless > held_whole, "each block holds only its own rows"
    per_row = _held_row_bytes(shape) + _apply_row_bytes(shape)
    assert BLOCK_HEADROOM * edgeless * per_row + 2 * params <= budget, "a block's own rows, output and scratch fit, twice"
    assert vertex_block_rows(rows, shape, params, 10**9, edgeless=True) == rows, "one block where the interval fits"


@pytest.fixture
def block_counts(monkeypatch):
    """How many blocks each ``vertex_blocks`` call cut (a test clears it between runs)."""
    counts = []
    whole = call_module.LayerCall.vertex_blocks
    monkeypatch.setattr(call_module.LayerCall, "vertex_blocks", lambda self, lo, hi: counts.append(len(whole(self, lo, hi))) or whole(self, lo, hi))
    return counts


def _hook_layer_runs(runs: list, n: int, seed: int, counts: list) -> list:
    """A hook layer's output and gradients for each ``(device, num_chunks)``, with the most blocks an interval took and the peak."""
    ei = awkward_graph(np.random.default_rng(seed), n, 5 * n)
    torch.manual_seed(0)
    layer = HookLayer(6, 5, 4, "sum")
    x, ed = torch.randn(n, 6, requires_grad=True), torch.randn(ei.shape[1], 4)
    out = []
    for device, num_chunks in runs:
        counts.clear()
        y = layer(sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, device=device), x, ed)
        grads = torch.autograd.grad((y * y).sum(), [x, *layer.parameters()])
        out.append((y, grads, max(counts), device.peak_bytes))
    return out


def _same(run, ref) -> bool:
    return torch.allclose(run[0], ref[0], rtol=1e-5, atol=1e-5) and all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(run[1], ref[1]))


def test_blocks_the_caches_hold_where_the_budget_allows_whole_intervals(block_counts):
    """A device's ``vertex_block_bytes`` caps ApplyVertex and hook blocks below what the budget allows: same values, fewer bytes held."""
    devices = [(sagann.CpuDevice(), 1), (sagann.CpuDevice("64MB"), 2), (sagann.CpuDevice("64MB", vertex_block_bytes=8 << 10), 2)]
    ref, roomy, capped = _hook_layer_runs(devices, 300, 4, block_counts)
    assert _same(roomy, ref) and _same(capped, ref)
    assert roomy[2] == 1, "64MB holds every interval whole"
    assert capped[2] > 1, "the cap splits what the budget would hold whole"
    assert capped[3] <= roomy[3]


def test_blocks_the_caches_hold_without_a_budget_too(block_counts):
    """In memory (no budget) a CPU device runs ApplyVertex and the hooks in cache-sized blocks as well: the same values
    and gradients as whole intervals (``vertex_block_bytes=None``), no more device bytes at the peak."""
    whole, blocked = _hook_layer_runs([(sagann.CpuDevice(vertex_block_bytes=None), 1), (sagann.CpuDevice(vertex_block_bytes=8 << 10), 1)], 400, 5, block_counts)
    assert whole[2] == 1 and blocked[2] > 1, "no budget: whole intervals only where blocks are unbounded"
    assert _same(blocked, whole)
    assert blocked[3] <= whole[3]


def test_vertex_block_bytes_must_be_positive():
    with pytest.raises(ValueError, match="vertex_block_bytes"):
        sagann.CpuDevice(vertex_block_bytes=0)
    assert sagann.CpuDevice(vertex_block_bytes="1MiB").vertex_block_bytes == 1 << 20


def test_cache_block_rows_fit_the_bytes_given():
    from sagann.engine.layer import probe_layer
    from sagann.scheduler.memory_model import cache_block_rows
    from tests.engine.test_budget import _WideMLP

    shape = probe_layer(_WideMLP(), 4, None, torch.device("cpu"))
    per_row = _row_bytes(dataclasses.replace(shape, recomputes=True))["backward apply_vertex"]
    assert cache_block_rows(shape, False, None) is None
    assert cache_block_rows(shape, False, 100 * per_row) == 100
    assert cache_block_rows(shape, False, 1) == 1, "at least a row"


def test_only_a_cpu_device_bounds_its_blocks_by_its_caches():
    assert sagann.CpuDevice().vertex_block_bytes == 8 << 20
    assert sagann.scheduler.devices.Device.vertex_block_bytes is None  # a GPU's blocks are as large as its budget allows


class _TwoMaps(sagann.Layer):
    """An ApplyVertex that saves only its inputs and parameters (two linear maps, as GraphSAGE's); counts its calls."""

    gather = "sum"

    def __init__(self, d_in, d_out):
        super().__init__()
        self.lin = torch.nn.Linear(d_in, d_out)
        self.root = torch.nn.Linear(d_in, d_out, bias=False)
        self.calls = {"apply_vertex": 0}

    def apply_edge(self, e):
        return e.src

    def apply_vertex(self, v, acc):
        self.calls["apply_vertex"] += 1
        return self.lin(acc) + self.root(v)


@pytest.mark.parametrize("copy_transfers", [True, False])
def test_blocks_keep_the_graphs_that_save_only_host_rows(blocks_of_three, copy_transfers):
    """A block whose graph saves its input rows and aggregates alone is kept (no copy): backward runs no ApplyVertex
    for it; so is a source hook's that saves only its input. One that saves hidden activations (an MLP) is
    recomputed, block by block. All equal whole intervals."""
    from tests.engine.test_offload import Counted, run_counting
    from tests.engine.test_out_of_core import assert_grads_close, assert_rel_close, outputs_and_grads
    from tests.engine.whole_graph import whole_graph_layer

    rng = np.random.default_rng(4)
    n, ei = 40, awkward_graph(rng, 40, 160)
    # which functions backward must not call again: all of _TwoMaps'; Counted's hook (a Linear), not its MLP
    for make, kept in ((lambda: _TwoMaps(3, 4), {"apply_vertex": True}), (lambda: Counted(3, 4), {"apply_src": True, "apply_vertex": False})):
        torch.manual_seed(0)
        layer = make()
        x = torch.randn(n, 3, requires_grad=True)
        ref_out, ref_grads = outputs_and_grads(layer, lambda x_, e_: whole_graph_layer(layer, ei, x_), x, None)
        device = sagann.CpuDevice(200_000, copy_transfers=copy_transfers, meter=True)
        blocks_of_three.clear()
        out, grads, recomputed = run_counting(layer, ei, n, x, device, num_chunks=3)
        assert any(blocks_of_three), "no interval ran in blocks"
        assert_rel_close(out, ref_out, what="output")
        assert_grads_close(grads, ref_grads)
        assert {k: recomputed[k] == 0 for k in kept} == kept, (type(layer).__name__, recomputed)
        assert_measured_within(device)


def test_under_a_host_budget_blocks_recompute(blocks_of_three):
    """A host budget bounds RSS, and kept block graphs took it past that bound: there every block is recomputed,
    copy-free or not, with the same results."""
    from tests.engine.test_offload import Counted, run_counting
    from tests.engine.test_out_of_core import assert_grads_close, assert_rel_close, outputs_and_grads
    from tests.engine.whole_graph import whole_graph_layer

    rng = np.random.default_rng(4)
    n, ei = 40, awkward_graph(rng, 40, 160)
    for make, names in ((lambda: _TwoMaps(3, 4), ("apply_vertex",)), (lambda: Counted(3, 4), ("apply_src", "apply_vertex"))):
        torch.manual_seed(0)
        layer = make()
        x = torch.randn(n, 3, requires_grad=True)
        ref_out, ref_grads = outputs_and_grads(layer, lambda x_, e_: whole_graph_layer(layer, ei, x_), x, None)
        blocks_of_three.clear()
        device = sagann.CpuDevice(200_000, copy_transfers=True)
        out, grads, recomputed = run_counting(layer, ei, n, x, device, num_chunks=3, host_memory="1GB")
        assert any(blocks_of_three), "no interval ran in blocks"
        assert_rel_close(out, ref_out, what="output")
        assert_grads_close(grads, ref_grads)
        assert all(recomputed[k] > 0 for k in names), (type(layer).__name__, recomputed)


def test_every_interval_and_block_counts_as_a_vertex_step(blocks_of_three):
    """``g.vertex_steps`` counts ApplyVertex runs, forward and backward: one an interval, one a block where they split."""
    n, ei = 40, awkward_graph(np.random.default_rng(3), 40, 160)
    x = torch.randn(n, 5, requires_grad=True)
    layer = Builtin("copy_src", "sum", 5)  # no hooks: ApplyVertex alone runs per vertex
    g = sagann.ChunkedGraph(ei, n, num_chunks=2, device=sagann.CpuDevice(copy_transfers=True))
    layer(g, x).sum().backward()
    per_phase = {phase: count for (_, phase), count in g.vertex_steps.counts().items()}
    blocks = sum(-(-(hi - lo) // 3) for _, lo, hi in g.partition.intervals())
    assert per_phase == {"forward": blocks, "backward": blocks}
    assert g.vertex_steps.total == 2 * blocks


def test_the_rows_a_backward_evaluates_again_are_counted_with_the_forward_rows(blocks_of_three):
    """``g.vertex_steps.work()``: every row ApplyVertex and the hook ran forward (with its time), and in backward the
    rows recomputed, as many as the functions were called on again; in memory (graphs kept) none are."""
    from tests.engine.test_offload import Counted

    rng = np.random.default_rng(4)
    n, ei = 40, awkward_graph(rng, 40, 160)
    x = torch.randn(n, 3, requires_grad=True)
    for device, host_memory, recomputes in ((sagann.CpuDevice(), None, False), (sagann.CpuDevice(200_000, copy_transfers=True), "1GB", True)):
        torch.manual_seed(0)
        layer = Counted(3, 4)
        g = sagann.ChunkedGraph(ei, n, num_chunks=3, device=device, host_memory=host_memory)
        layer(g, x).sum().backward()
        work = g.vertex_steps.work()
        for fn in ("apply_vertex", "apply_src"):
            (key,) = [k for k in work["forward_rows"] if k[1] == fn]  # (the layer's name, fn)
            assert work["forward_rows"][key] == n and work["forward_seconds"][key] > 0
            assert work["recomputed_rows"].get(key, 0) == (n if recomputes else 0), (fn, work)
