"""ScheduleConfig(narrow_index=...): index arrays cross in 16 bits where they fit; lossless, so results are bit for bit equal."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sagann
from sagann.engine.models import GAT, GCN, GIN, GraphSAGE
from tests.measured import assert_measured_within

N = 500
EDGES = np.random.default_rng(5).integers(0, N, (2, 5000))


def _step(model_cls, device, **schedule):
    """One training step: output, parameter gradients, and the bytes the device received.

    P, the sub-chunks, the transfers, the order and the tile are fixed: the time model's choices rest on costs measured
    in this process, which a busy machine moves, and a different plan sends different rows."""
    torch.manual_seed(0)
    model = model_cls(16, 16, 4, dropout=0.0)
    cfg = sagann.ScheduleConfig(cache_gather=False, transfer="selective", order="natural", tile=1, **schedule)
    g = sagann.ChunkedGraph(EDGES, N, num_chunks=3, sub_chunk_nnz=300, device=device, schedule=cfg)
    x = torch.randn(N, 16, generator=torch.Generator().manual_seed(1))
    before = device.bytes_in
    out = model(g, x)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()], device.bytes_in - before


@pytest.mark.parametrize("model_cls", [GCN, GraphSAGE, GIN, GAT])
def test_narrow_index_arrays_change_bytes_not_results(model_cls):
    wide = _step(model_cls, sagann.CpuDevice("64MB", copy_transfers=True))
    narrow = _step(model_cls, sagann.CpuDevice("64MB", copy_transfers=True), narrow_index=True)
    assert torch.equal(narrow[0], wide[0])
    for a, b in zip(narrow[1], wide[1]):
        assert torch.equal(a, b)
    assert narrow[2] < wide[2], "the index arrays crossed in 16 bits"


def test_index_arrays_narrow_with_16_bit_rows_unless_told():
    assert not sagann.ScheduleConfig().narrows_index
    assert sagann.ScheduleConfig(transfer_dtype=torch.bfloat16).narrows_index
    assert not sagann.ScheduleConfig(transfer_dtype=torch.bfloat16, narrow_index=False).narrows_index
    assert sagann.ScheduleConfig(narrow_index=True).narrows_index


def test_16_bit_rows_with_wide_index_arrays_send_more():
    sent = [_step(GCN, sagann.CpuDevice("64MB", copy_transfers=True), transfer_dtype=torch.bfloat16, narrow_index=n)[2] for n in (None, False)]
    assert sent[0] < sent[1]


@pytest.mark.parametrize("bad", [1, 0, "yes"])
def test_narrow_index_must_be_none_or_a_bool(bad):
    with pytest.raises(ValueError, match="narrow_index"):
        sagann.ScheduleConfig(narrow_index=bad)


@pytest.mark.parametrize("num_edges", [40_000, 70_000])
def test_arrays_past_the_signed_range_or_past_16_bits_cross_intact(num_edges):
    """One chunk of 40,000 edges: pointers and the source-major order reach past 32,767 (the sign bit of int16, read
    back unsigned); of 70,000: past 65,535, so they cross as int32 while the source ids (below 300) narrow."""
    n = 300
    edges = np.random.default_rng(0).integers(0, n, (2, num_edges))
    runs = []
    for narrow in (False, True):
        torch.manual_seed(0)
        model = GraphSAGE(8, 8, 2, dropout=0.0)
        dev = sagann.CpuDevice("256MB", copy_transfers=True)
        g = sagann.ChunkedGraph(edges, n, num_chunks=1, device=dev, schedule=sagann.ScheduleConfig(cache_gather=False, narrow_index=narrow))
        x = torch.randn(n, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
        out = model(g, x)
        out.square().sum().backward()
        runs.append((out.detach(), x.grad, [p.grad for p in model.parameters()], dev.bytes_in))
        assert max(c.nnz for c in g.partition.sub_chunks()) > 32_768
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][2], runs[1][2]))
    assert runs[1][3] < runs[0][3]


@pytest.mark.parametrize("model_cls", [GCN, GraphSAGE, GIN, GAT])
def test_source_ids_read_in_16_bits_by_default_change_bytes_not_results(model_cls):
    """By default a forward's source ids cross in 16 bits for the CPU gSpMM that reads them so (none for GAT's attention)."""
    wide = _step(model_cls, sagann.CpuDevice("64MB", copy_transfers=True), narrow_index=False)
    native = _step(model_cls, sagann.CpuDevice("64MB", copy_transfers=True))
    assert torch.equal(native[0], wide[0])
    for a, b in zip(native[1], wide[1]):
        assert torch.equal(a, b)
    if model_cls is not GAT:  # (GAT's bytes move with its timed choice of full or selective transfers)
        assert native[2] < wide[2]


def test_16_bit_source_ids_let_a_budget_hold_larger_sub_chunks():
    """Two bytes an edge fewer in the forward's plan: a dense graph under the same budget takes fewer steps, within the budget."""
    n, budget = 1000, 450_000
    edges = np.random.default_rng(3).integers(0, n, (2, 100_000))
    runs = {}
    for narrow in (False, None):
        torch.manual_seed(0)
        model = GCN(16, 16, 4, dropout=0.0)
        dev = sagann.CpuDevice(budget, copy_transfers=True, meter=True)
        g = sagann.ChunkedGraph(edges, n, device=dev, schedule=sagann.ScheduleConfig(cache_gather=False, narrow_index=narrow))
        x = torch.randn(n, 16, generator=torch.Generator().manual_seed(1))
        out = model(g, x)
        out.square().mean().backward()
        assert_measured_within(dev, budget)  # what the allocator handed out, not the ledger's own count
        runs[narrow] = (out.detach(), sum(r.steps for r in g.pass_log if r.phase == "forward"))
    torch.testing.assert_close(runs[None][0], runs[False][0], rtol=1e-5, atol=1e-6)  # other sub-chunks: another summation order
    assert runs[None][1] < runs[False][1]
