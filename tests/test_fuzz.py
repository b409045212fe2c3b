"""Fuzzing partition + layers: any graph, P, budget, sub-chunk size, schedule and device; out-of-core equals in-memory.

Random graphs come with the awkward parts (empty chunks, isolated vertices,
self loops, multi-edges, no edges at all); they are partitioned in memory or
on disk (``partition_edge_list`` then ``ChunkedGraph.from_dataset``), with a
fixed P or the P a budget allows, and run under every schedule option on
devices that share or copy host memory, sometimes with one allocation refused
(out of memory: the pass re-plans). Values and gradients must equal the
layer on the whole graph (user layers) or at P=1 on an unlimited device
(GCN, GAT, GraphSAGE-max) within 1e-5, and every device byte be released.

The number of examples comes from the hypothesis profile (tests/conftest.py):
``ci`` by default, ``HYPOTHESIS_PROFILE=long`` by hand.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import given, strategies as st

import sagann
from sagann.chunks.external import PartitionConfig, partition_edge_list
from sagann.engine.replan import device_oom
from sagann.scheduler.devices import BudgetExceeded
from tests.engine.graphs import graphs
from tests.engine.layers import Builtin, GatedGCN, HookLayer
from tests.engine.test_out_of_core import assert_grads_close, assert_rel_close, outputs_and_grads
from tests.engine.whole_graph import whole_graph_layer
from tests.measured import assert_measured_within

D = 3
USER_LAYERS = ("hooks", "gated", "builtin")


def _layer(kind: str, gather: str):
    """The layer and its edge data width (None: no edge data)."""
    torch.manual_seed(0)
    return {
        "hooks": lambda: (HookLayer(D, 4, 2, gather), 2),
        "gated": lambda: (GatedGCN(D, 4), None),
        "builtin": lambda: (Builtin("src_mul_edge", gather, D), 1),
        "gcn": lambda: (sagann.nn.GCNConv(D, 4), None),
        "gat": lambda: (sagann.nn.GATConv(D, 2, heads=2), None),
        "sage-max": lambda: (sagann.nn.SAGEConv(D, 4, aggr="max"), None),
    }[kind]()


def _call(layer, g, x, edge_data):
    return layer(g, x) if edge_data is None else layer(g, x, edge_data)


def _inputs(n: int, e: int, d_edge: int | None):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, D, generator=gen, requires_grad=True)
    if d_edge is None:
        return x, None
    ed = torch.randn(e, d_edge, generator=gen) if d_edge > 1 else torch.randn(e, generator=gen)
    return x, ed.requires_grad_(True)


def _refuse_one_charge(device, k: int) -> None:
    """The device's k-th allocation fails once, as if it ran out of memory."""
    real, count = device.ledger.charge, {"n": 0}

    def charge(nbytes, what):
        count["n"] += 1
        if count["n"] == k:
            raise BudgetExceeded(f"{device.name}: injected out of memory (allocation {k})")
        real(nbytes, what)

    device.ledger.charge = charge


@given(
    graph=graphs(),
    kind=st.sampled_from(USER_LAYERS + ("gcn", "gat", "sage-max")),
    gather=st.sampled_from(["sum", "mean", "max", "min"]),
    fixed_chunks=st.one_of(st.none(), st.integers(1, 9)),
    budget_fraction=st.sampled_from([0.15, 0.3, 0.6, 1.0]),
    sub=st.sampled_from([1, 3, 17, None]),
    prefetch=st.sampled_from([None, 0, 1, 3]),
    transfer=st.sampled_from(["auto", "selective", "full"]),
    order=st.sampled_from(["natural", "profile"]),
    copy_transfers=st.booleans(),
    on_disk=st.booleans(),
    refuse=st.one_of(st.none(), st.integers(1, 40)),
)
def test_fuzz_out_of_core_equals_in_memory(graph, kind, gather, fixed_chunks, budget_fraction, sub, prefetch, transfer, order, copy_transfers, on_disk, refuse):
    n, ei = graph
    layer, d_edge = _layer(kind, gather)
    x, ed = _inputs(n, ei.shape[1], d_edge)
    if kind in USER_LAYERS:
        ref = outputs_and_grads(layer, lambda a, b: whole_graph_layer(layer, ei, a, b), x, ed)
    else:
        whole = sagann.ChunkedGraph(ei, n, num_chunks=1)
        ref = outputs_and_grads(layer, lambda a, b: _call(layer, whole, a, b), x, ed)

    budget = None
    if fixed_chunks is None:  # P from a budget: a fraction of the in-memory working set
        free = sagann.ChunkedGraph(ei, n, sub_chunk_nnz=sub)
        _call(layer, free, x.detach(), None if ed is None else ed.detach())
        budget = max(int(free.planned_peak_bytes * budget_fraction), 1)
    device = sagann.CpuDevice(budget, copy_transfers=copy_transfers, meter=True)
    schedule = sagann.ScheduleConfig(prefetch=prefetch, transfer=transfer, order=order)
    with tempfile.TemporaryDirectory() as tmp:
        if on_disk:
            np.save(Path(tmp) / "e.npy", ei)
            config = PartitionConfig(num_chunks=fixed_chunks or 1, sub_chunk_nnz=sub or 1 << 20, num_vertices=n, host_memory="1GB")
            partition_edge_list(Path(tmp) / "e.npy", Path(tmp) / "ds", config)
            g = sagann.ChunkedGraph.from_dataset(Path(tmp) / "ds", device=device, schedule=schedule)
        else:
            g = sagann.ChunkedGraph(ei, n, num_chunks=fixed_chunks, device=device, sub_chunk_nnz=sub, schedule=schedule)
        if refuse is not None:
            _refuse_one_charge(device, refuse)
        try:
            got = outputs_and_grads(layer, lambda a, b: _call(layer, g, a, b), x, ed)
        except sagann.BudgetTooSmall as err:  # only when the planner finds nothing that fits, before running
            assert budget is not None and "no partition fits" in str(err) or "num_chunks=" in str(err) or "plan with prefetch" in str(err), err
            assert device.current_bytes == 0
            return
        except Exception as err:  # the refused allocation (maybe via the loader) where P is fixed or the finest
            if device_oom(err) is None:
                raise
            assert refuse is not None and any("could not re-plan" in note for note in getattr(err, "__notes__", [])), err
            assert device.current_bytes == 0
            return
    assert_rel_close(got[0], ref[0], what="output")
    assert_grads_close(got[1], ref[1])
    assert device.current_bytes == 0, "every device allocation was released"
    if budget is not None:
        assert_measured_within(device, budget)
