"""Forward steps that carry a column's small chunks merged compute what the in-memory layer does, within the budget."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sagann
from sagann.chunks.synthetic import rmat
from sagann.engine.models import build_model
from sagann.scheduler import batching
from tests.engine.layers import Builtin
from sagann.scheduler import ScheduleConfig
from tests.engine.test_out_of_core import assert_grads_close, assert_rel_close, check_layer, make_inputs, outputs_and_grads
from tests.engine.whole_graph import whole_graph_layer
from tests.measured import assert_measured_within


@pytest.fixture
def merges(monkeypatch):
    """The sub-chunks merged while the test runs: a forward column's and a backward source row's."""
    made = {"column": [], "row": []}
    for kind, name in (("column", "merge_chunks"), ("row", "merge_row_chunks")):
        real = getattr(batching, name)
        monkeypatch.setattr(batching, name, lambda chunks, real=real, kind=kind: made[kind].append(real(chunks)) or made[kind][-1])
    return made


def _skewed(n: int = 600, e: int = 6000, seed: int = 0):
    """Nineteen in twenty edges leave the first fifth of the vertices: at P = 5 each column's first chunk is big, the rest
    small (whatever the intervals' balance), so small chunks merge under the big one's bytes."""
    rng = np.random.default_rng(seed)
    src = np.where(rng.random(e) < 0.95, rng.integers(0, n // 5, e), rng.integers(0, n, e))
    ei = np.stack([src, rng.integers(0, n, e)])
    return n, np.concatenate([ei, np.stack([np.arange(n), np.arange(n)])], axis=1)  # self loops: every vertex with an edge


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("op,gather,hooks", [("copy_src", "sum", False), ("copy_src", "mean", False), ("src_mul_dst", "sum", False), ("copy_src", "sum", True)])
@pytest.mark.parametrize("copy_transfers", [False, True])
def test_merged_forward_steps_equal_the_in_memory_layer(merges, backend, op, gather, hooks, copy_transfers):
    """Values and gradients within 1e-5 of the whole-graph layer, with merged steps in the forward (a sum, a mean, a
    message reading destination rows, a source hook's terms) and, where loads are copies, in the backward."""
    n, ei = _skewed()
    torch.manual_seed(0)
    layer = Builtin(op, gather, 6, hooks=hooks)
    x, _ = make_inputs(n, ei.shape[1], 6)
    g = check_layer(layer, ei, n, x, None, 5, 10**6, backend=backend, copy_transfers=copy_transfers)
    assert merges["column"], "no forward step carried merged chunks"
    forward = [r for r in g.pass_log if r.phase == "forward" and r.steps]
    assert forward and all(r.steps < 25 for r in forward), [r.steps for r in forward]  # 25 chunks, fewer steps
    if not copy_transfers:  # a view device's backward reads destination rows in place: its chunks run as cut
        assert not merges["row"]
    elif backend == "cpu" and op == "copy_src":  # a sum's source gradient alone: selective steps, rows gathered
        assert merges["row"], "no backward step carried merged chunks"


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("op", ["copy_src", "src_mul_dst"])
def test_merged_backward_steps_equal_the_in_memory_layer(merges, backend, op):
    """Selective transfers on a copying device: a source row's chunks merged over their rows with an edge, across
    destination intervals, give the in-memory gradients, the destination rows' too (``src_mul_dst``)."""
    n, ei = _skewed()
    torch.manual_seed(0)
    layer = Builtin(op, "sum", 6)
    x, _ = make_inputs(n, ei.shape[1], 6)
    g = sagann.ChunkedGraph(ei, n, num_chunks=5, sub_chunk_nnz=10**6, device=sagann.CpuDevice(copy_transfers=True), backend=backend,
                            schedule=ScheduleConfig(transfer="selective"))
    ref_out, ref_grads = outputs_and_grads(layer, lambda x_, e_: whole_graph_layer(layer, ei, x_, e_), x, None)
    out, grads = outputs_and_grads(layer, lambda x_, e_: layer(g, x_, e_), x, None)
    assert_rel_close(out, ref_out, what="output")
    assert_grads_close(grads, ref_grads)
    assert merges["row"] and any(m.num_dst < m.dst_rows[-1] + 1 for m in merges["row"])  # rows with edges, across intervals
    backward = [r for r in g.pass_log if r.phase == "backward" and r.steps]
    assert backward and all(r.steps < 25 for r in backward), [r.steps for r in backward]


@pytest.mark.parametrize("model", ["gcn", "sage", "gin"])
def test_merged_steps_keep_the_measured_peak_within_the_budget(merges, model):
    """A tight budget on a skewed graph, loads copied: the device's measured peak stays within the budget while the
    forward passes carry merged chunks."""
    n = 2000
    ei = rmat(n, 30_000, seed=1)  # cut by rows' bytes, R-MAT's low-id chunks hold most edges
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(0))
    probe = sagann.ChunkedGraph(ei, n, num_chunks=1, device=sagann.CpuDevice(meter=True))
    torch.manual_seed(0)
    whole = build_model(model, 16, 16, 3)
    whole(probe, x).sum().backward()
    budget = probe.device.measured_peak_bytes // 8
    device = sagann.CpuDevice(budget, meter=True, copy_transfers=True)
    g = sagann.ChunkedGraph(ei, n, device=device)
    torch.manual_seed(0)
    m = build_model(model, 16, 16, 3)
    m(g, x).sum().backward()
    assert g.num_chunks > 2 and merges["column"] and merges["row"]
    assert_measured_within(device)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("copy_transfers", [False, True])
def test_merged_attention_steps_equal_one_chunk_in_memory(merges, backend, copy_transfers):
    """GAT: a merged sub-chunk's softmax terms join its rows' running maxima and sums like any sub-chunk's; values and
    gradients as one chunk in memory (a softmax has no dense reference)."""
    n, ei = _skewed()
    torch.manual_seed(0)
    layer = sagann.nn.GATConv(6, 3, heads=2, add_self_loops=False)
    x, _ = make_inputs(n, ei.shape[1], 6)
    g = sagann.ChunkedGraph(ei, n, num_chunks=5, sub_chunk_nnz=10**6, device=sagann.CpuDevice(copy_transfers=copy_transfers), backend=backend,
                            schedule=ScheduleConfig(transfer="selective"))
    whole = sagann.ChunkedGraph(ei, n, num_chunks=1, backend=backend)
    ref_out, ref_grads = outputs_and_grads(layer, lambda x_, e_: layer(whole, x_, e_), x, None)
    out, grads = outputs_and_grads(layer, lambda x_, e_: layer(g, x_, e_), x, None)
    assert_rel_close(out, ref_out, what="output")
    assert_grads_close(grads, ref_grads)
    assert merges["column"] and bool(merges["row"]) == copy_transfers
