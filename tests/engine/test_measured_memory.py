"""Device memory as the allocator hands it out stays within the budget the planner planned for.

``device.peak_bytes`` is the ledger's count, which ``MemoryLedger.charge``
keeps under the budget by raising first: an assert on it cannot fail. These
tests check ``device.measured_peak_bytes`` instead, counted by the meter
(sagann.scheduler.meter) from the storages torch really allocates during
each pass; where it exceeds the budget, the memory model is wrong.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sagann
from sagann.chunks.types import EdgeChunk
from sagann.engine import probe
from sagann.scheduler import memory_model
from sagann.scheduler.meter import CpuMeter, allocated_peak
from tests.engine.graphs import awkward_graph
from tests.engine.test_out_of_core import assert_rel_close
from tests.measured import MARGIN, assert_measured_within


D = 16
N, E = 400, 3200


class WideTemporary(sagann.Layer):
    """A user ApplyEdge whose temporary is ``K`` times wider than its messages (and saved by tanh for backward)."""

    gather = "sum"
    K = 16

    def __init__(self, d_in, d_out):
        super().__init__()
        self.lin = torch.nn.Linear(d_in, d_out)

    def apply_edge(self, e):
        wide = torch.tanh((e.src + e.dst).repeat(1, self.K))  # [E, K * d], reads both ends: not hoisted
        return wide.view(wide.shape[0], self.K, -1).mean(1)

    def apply_vertex(self, v, acc):
        return self.lin(acc)


class WideVertex(WideTemporary):
    """A user ApplyVertex whose temporary is ``K`` times wider than its output (the zoo's GCN chained into an MLP is one)."""

    K = 64

    def apply_edge(self, e):
        return e.src

    def apply_vertex(self, v, acc):
        wide = acc.repeat(1, self.K).mul(2.0)  # two [n, K * d] tensors at once, neither saved for backward
        return self.lin(wide.view(wide.shape[0], self.K, -1).mean(1))


MODELS = {
    "gcn": lambda: sagann.nn.GCNConv(D, D),
    "sage": lambda: sagann.nn.SAGEConv(D, D),
    "gin": lambda: sagann.nn.GINConv(torch.nn.Sequential(torch.nn.Linear(D, 32), torch.nn.ReLU(), torch.nn.Linear(32, D))),
    "gat": lambda: sagann.nn.GATConv(D, 4, heads=4),
    "ggcn": lambda: sagann.nn.GatedGCNConv(D, D),
    "wide-temporary": lambda: WideTemporary(D, D),
    "wide-vertex": lambda: WideVertex(D, D),
}


def _graph(seed: int = 0):
    return awkward_graph(np.random.default_rng(seed), N, E)


def _measure(make, num_chunks: int, seed: int = 0, schedule=None, copy_transfers: bool = False):
    """Budget = the plan's working set at ``num_chunks``; returns (budget, forward, backward) measured and ledger peaks."""
    ei = _graph(seed)
    torch.manual_seed(seed)
    layer = make()
    x = torch.randn(N, D, requires_grad=True)
    free = sagann.ChunkedGraph(ei, N, num_chunks=num_chunks, schedule=schedule, device=sagann.CpuDevice(copy_transfers=copy_transfers))
    ref = layer(free, x)
    budget = free.working_set.peak_bytes
    dev = sagann.CpuDevice(budget, meter=True, copy_transfers=copy_transfers)
    g = sagann.ChunkedGraph(ei, N, num_chunks=num_chunks, device=dev, schedule=schedule)
    out = layer(g, x)
    assert_rel_close(out, ref)  # metering changes no result
    fwd = (dev.measured_peak_bytes, dev.peak_bytes)
    dev.reset_peak()
    out.sum().backward()
    bwd = (dev.measured_peak_bytes, dev.peak_bytes)
    assert dev.meter.passes >= 2 and dev.current_bytes == 0
    return budget, fwd, bwd


@pytest.mark.parametrize("num_chunks", [1, 3, 8])
@pytest.mark.parametrize("model", list(MODELS))
def test_measured_peak_within_the_budget(model, num_chunks):
    budget, (fwd, fwd_ledger), (bwd, bwd_ledger) = _measure(MODELS[model], num_chunks)
    limit = budget * (1 + MARGIN)
    assert 0 < fwd <= limit, f"forward measured {fwd:,} B over the {budget:,} B budget (ledger {fwd_ledger:,})"
    assert 0 < bwd <= limit, f"backward measured {bwd:,} B over the {budget:,} B budget (ledger {bwd_ledger:,})"


@pytest.mark.parametrize("model", ["gcn", "gat", "ggcn"])
def test_measured_peak_within_the_budget_copying_loads(model, monkeypatch):
    """A device that copies its loads runs sparse backward sub-chunks over their rows with edges: so planned, so measured."""
    made, compacted = [], EdgeChunk.compacted
    monkeypatch.setattr(EdgeChunk, "compacted", lambda c: made.append(c.id) or compacted(c))
    budget, (fwd, fwd_ledger), (bwd, bwd_ledger) = _measure(MODELS[model], 16, copy_transfers=True)
    assert made, "no sub-chunk ran compacted: the graph is too dense for the check"
    limit = budget * (1 + MARGIN)
    assert 0 < fwd <= limit, f"forward measured {fwd:,} B over the {budget:,} B budget (ledger {fwd_ledger:,})"
    assert 0 < bwd <= limit, f"backward measured {bwd:,} B over the {budget:,} B budget (ledger {bwd_ledger:,})"


@pytest.mark.parametrize("model", ["gcn", "sage", "gat"])
def test_measured_peak_within_the_budget_with_16_bit_transfers(model):
    """The host's 16-bit copies of the rows a pass sends are host memory, not the device's."""
    schedule = sagann.ScheduleConfig(transfer_dtype=torch.bfloat16)
    budget, (fwd, fwd_ledger), (bwd, bwd_ledger) = _measure(MODELS[model], 8, schedule=schedule)
    limit = budget * (1 + MARGIN)
    assert 0 < fwd <= limit, f"forward measured {fwd:,} B over the {budget:,} B budget (ledger {fwd_ledger:,})"
    assert 0 < bwd <= limit, f"backward measured {bwd:,} B over the {budget:,} B budget (ledger {bwd_ledger:,})"


def test_the_check_fails_when_the_planner_is_told_a_smaller_scratch_factor(monkeypatch):
    """No room for ApplyEdge's temporaries in the model: the ledger still holds (it charges the same model), the meter does not."""
    monkeypatch.setattr(memory_model, "EDGE_SCRATCH", 0)
    monkeypatch.setattr(probe, "edge_bytes_per_edge", lambda *args: (0, 0))  # the probe's measurement, unseen
    budget, (fwd, fwd_ledger), (bwd, bwd_ledger) = _measure(MODELS["wide-temporary"], 3)
    assert fwd_ledger <= budget and bwd_ledger <= budget, "the ledger cannot see it: it charges the planner's model"
    assert max(fwd, bwd) > budget * (1 + MARGIN), f"measured {fwd:,} / {bwd:,} B within {budget:,} B: the check cannot fail"


def test_the_check_fails_when_the_planner_is_not_told_apply_vertexs_temporaries(monkeypatch):
    """Only the output-sized scratch of the model for a wide ApplyVertex: the ledger holds, the meter does not."""
    monkeypatch.setattr(probe, "temp_bytes_per_row", lambda *args: 0)  # the probe's measurement, unseen
    budget, (fwd, fwd_ledger), _ = _measure(MODELS["wide-vertex"], 1)
    assert fwd_ledger <= budget, "the ledger cannot see it: it charges the planner's model"
    assert fwd > budget * (1 + MARGIN), f"measured {fwd:,} B within {budget:,} B: the check cannot fail"


def test_the_probe_measures_a_user_apply_vertexs_temporaries():
    shape = probe.probe_layer(WideVertex(D, D), D, None, torch.device("cpu"))
    wide = 4 * WideVertex.K * D  # bytes per row of one [n, K * d] tensor
    assert shape.vertex_temp >= 2 * wide - 4 * D, "the repeat and the product are alive at once (beyond the output)"
    assert probe.temp_bytes_per_row(lambda v, acc: acc * 2, (D, D), torch.device("cpu")) == 0, "an output-sized op holds nothing more"


def test_the_probe_measures_a_user_apply_edges_temporaries():
    shape = probe.probe_layer(WideTemporary(D, D), D, None, torch.device("cpu"))
    wide = 4 * WideTemporary.K * D  # bytes per edge of one [E, K * d] tensor
    assert shape.edge_temp >= 2 * wide, "the sum's repeat and tanh's output are alive at once"
    assert shape.edge_grad_temp >= 3 * wide, "what tanh saves, its gradient and the repeat's"


def test_the_probe_measures_what_a_parameter_free_hook_saves():
    """Under the probe's no_grad, inputs made without grad saved nothing: tanh's output was not counted."""
    with torch.no_grad():
        per_row = probe.saved_bytes_per_row(lambda v: torch.tanh(v.repeat(1, 8)), (4,), [], torch.device("cpu"))
    assert per_row == (4 * 8 * 4, 4 * 8 * 4), "tanh's output, saved once: every save and the distinct storages agree"


def test_allocated_peak_counts_what_is_alive_at_once():
    def work():
        a = torch.empty(1000)  # 4000 B
        b = torch.empty(2000)  # 8000 B, with a: 12000
        del a
        c = torch.empty(500)  # 2000 B, with b: 10000
        return b, c

    assert allocated_peak(work) == 12000
    assert allocated_peak(lambda: torch.ones(10).add_(1)) == 40, "in place: no new storage"
    assert allocated_peak(lambda: torch.ones(10).view(2, 5)[0]) == 40, "views share their base's storage"


def test_results_in_tuples_and_lists_and_out_arguments():
    """Every tensor an op returns is found, in a tuple or from a list argument; an ``out=`` result or a view is no new storage."""

    def sort():
        a = torch.rand(1000)  # 4000 B
        return torch.sort(a)  # values 4000 B and int64 indices 8000 B

    def cat():
        a, b = torch.ones(100), torch.ones(200)  # 400 + 800 B
        return torch.cat([a, b])  # 1200 B

    def into():
        a, c = torch.ones(100), torch.empty(100)  # 400 + 400 B
        return torch.add(a, a, out=c)

    def stacked():
        a = torch.ones(10)  # 40 B
        return torch.stack(tensors=[a, a], dim=0)  # 80 B, its list a keyword argument

    assert allocated_peak(sort) == 16000
    assert allocated_peak(cat) == 2400
    assert allocated_peak(into) == 800
    assert allocated_peak(lambda: torch.split(torch.ones(1000), 100)) == 4000, "split's pieces are views"
    assert allocated_peak(stacked) == 120


def test_storages_that_outlive_a_pass_are_the_hosts():
    meter, kept = CpuMeter(), []
    with meter.measure():
        torch.empty(3000)  # a temporary: 12000 B
        kept.append(torch.empty(100_000))  # an output handed to the host
    assert meter.peak == 12000 and meter.passes == 1
    before = torch.empty(50_000)
    with meter.measure():
        del before  # freeing what the pass did not allocate gives nothing back
        torch.empty(1000)
    assert meter.peak == 12000
    meter.reset_peak()
    assert meter.peak == 0


def test_loads_in_the_loader_thread_are_measured():
    """With prefetching, gathers of source rows run in the loader thread: the meter must count them there."""
    ei = _graph(1)
    torch.manual_seed(0)
    layer = sagann.nn.SAGEConv(D, D)
    x = torch.randn(N, D)
    peaks = {}
    for prefetch in (0, 2):
        dev = sagann.CpuDevice(meter=True, copy_transfers=True)
        g = sagann.ChunkedGraph(ei, N, num_chunks=4, device=dev, schedule=sagann.ScheduleConfig(prefetch=prefetch))
        with torch.no_grad():
            layer(g, x)
        peaks[prefetch] = dev.measured_peak_bytes
    assert peaks[2] >= peaks[0] > 0, f"{peaks}: loads ahead hold more, never less"


def test_metering_is_off_unless_asked(monkeypatch):
    monkeypatch.delenv("SAGANN_METER", raising=False)
    dev = sagann.CpuDevice("1MB")
    g = sagann.ChunkedGraph(np.array([[0, 1], [1, 2]]), 3, device=dev)
    sagann.nn.SAGEConv(4, 4)(g, torch.randn(3, 4))
    assert dev.meter is None and dev.measured_peak_bytes is None and dev.peak_bytes > 0
    monkeypatch.setenv("SAGANN_METER", "1")
    assert sagann.CpuDevice("1MB").meter is not None


def _streamed_run(model: str, monkeypatch=None, conservative: bool = False, csc_only: bool = False):
    """One training call under 1/8 of the in-memory peak (the planner's choice of P and sub-chunks), metered.

    Average degree 100: the edges, not the rows, fill the budget (as on the Reddit-shaped graph)."""
    ei = awkward_graph(np.random.default_rng(1), N, 40000)
    torch.manual_seed(0)
    layer = MODELS[model]()
    x = torch.randn(N, D, requires_grad=True)
    free = sagann.ChunkedGraph(ei, N)
    layer(free, x).sum().backward()
    if conservative:  # the backend no longer says what its sum backward holds: every index array is counted
        from sagann.kernels import cpu
        monkeypatch.delattr(cpu, "sum_backward_bytes_per_edge")
    if csc_only:  # sized as if the chunks kept no source-major destinations (a file-backed partition's)
        from sagann.engine import run
        monkeypatch.setattr(run, "_keeps_source_major", lambda g: False)
    dev = sagann.CpuDevice(free.working_set.peak_bytes // 8, copy_transfers=True, meter=True)
    g = sagann.ChunkedGraph(ei, N, device=dev)
    layer(g, x).sum().backward()
    return g, dev


@pytest.mark.parametrize("model", ["gcn", "gin"])
def test_a_direct_sum_backward_is_sized_by_what_its_kernels_hold(model, monkeypatch, caplog):
    """The CPU kernels' count of a sum backward's bytes per edge takes fewer, wider sub-chunks than counting every
    index array, and the meter finds the device within the budget: no pass ran out of memory and re-planned."""
    g, dev = _streamed_run(model)
    assert g.num_chunks > 1 and "ran out of memory" not in caplog.text
    assert_measured_within(dev)
    tight = sum(r.steps for r in g.pass_log)
    wide, _ = _streamed_run(model, monkeypatch, conservative=True)
    assert tight < sum(r.steps for r in wide.pass_log)


def test_a_sum_backward_that_reads_no_source_rows_still_plans_their_gradient(caplog):
    """The plan of a sum's source gradient sends no source rows, but holds V_i's gradient accumulator: counted, the
    backward's plan fits as planned (before, a pass that held every destination row ran out of memory and re-planned)."""
    rng = np.random.default_rng(0)
    n, ei = 2000, awkward_graph(rng, 2000, 12000)
    torch.manual_seed(0)
    layer = sagann.nn.SAGEConv(32, 16)
    x = torch.randn(n, 32, requires_grad=True)
    free = sagann.ChunkedGraph(ei, n)
    layer(free, x)
    dev = sagann.CpuDevice(free.working_set.peak_bytes // 6, meter=True)
    g = sagann.ChunkedGraph(ei, n, device=dev)
    layer(g, x).sum().backward()
    assert g.num_chunks > 1 and "ran out of memory" not in caplog.text
    assert_measured_within(dev)


@pytest.mark.parametrize("model", ["gcn", "gin"])
def test_a_source_major_backward_is_sized_by_the_one_array_it_sends(model, monkeypatch, caplog):
    """A backward that computes the source gradient alone sends each edge's destination in source-major order and
    nothing else per edge: sized so, it takes fewer steps than sized for the three CSC arrays, and the meter still
    finds the device within the budget."""
    g, dev = _streamed_run(model)
    assert "ran out of memory" not in caplog.text
    assert_measured_within(dev)
    assert any(r.phase == "backward" and r.steps for r in g.pass_log)
    csc, csc_dev = _streamed_run(model, monkeypatch, csc_only=True)
    assert_measured_within(csc_dev)
    assert sum(r.steps for r in g.pass_log) < sum(r.steps for r in csc.pass_log)


def test_the_backward_sizing_mirrors_the_backwards_source_major_choice():
    """Counted at one array per edge only where the backward really runs source-major: the source gradient alone
    (an op that reads destinations needs theirs too), and destinations kept in that order on the host."""
    from sagann import fn
    from sagann.engine import run

    class AddDst(sagann.Layer):
        gather = "sum"
        apply_edge = fn.src_add_dst

        def apply_vertex(self, v, acc):
            return acc

    dev = torch.device("cpu")
    x = torch.randn(4, 8)
    gin = run.layer_shape(sagann.nn.GINConv(torch.nn.Linear(8, 8)), x, None, dev).with_grads(True, True, False)
    assert run._with_backend_bytes(gin, "cpu", True).sum_backward_edge == 4
    assert run._with_backend_bytes(gin, "cpu", False).sum_backward_edge == 12
    add_dst = run.layer_shape(AddDst(), x, None, dev).with_grads(True, True, False)
    assert run._with_backend_bytes(add_dst, "cpu", True).sum_backward_edge == 12


def test_a_wide_attention_column_is_finished_in_place():
    """A softmax column's rows divided by their sums make no row-sized temporaries: on a dense graph under a tight
    budget the column is most of the working set, and four uncharged [rows, heads * d] tensors there ran past it
    (measured 1.34x the budget)."""
    n, e, d = 800, 60000, 128
    ei = awkward_graph(np.random.default_rng(0), n, e)
    torch.manual_seed(0)
    layer = sagann.nn.GATConv(D, d // 4, heads=4)
    x = torch.randn(n, D, requires_grad=True)
    schedule = sagann.ScheduleConfig(partition_rule="smallest")  # the fewest intervals: the widest columns
    free = sagann.ChunkedGraph(ei, n, num_chunks=1, schedule=schedule)
    ref = layer(free, x)
    ref.sum().backward()
    dev = sagann.CpuDevice(free.device.peak_bytes // 16, meter=True)
    out = layer(sagann.ChunkedGraph(ei, n, device=dev, schedule=schedule), x)
    assert_rel_close(out, ref)
    assert_measured_within(dev)
