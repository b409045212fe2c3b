"""ScheduleConfig(transfer_dtype=...): input rows cross the link in 16 bits, kernels compute in float32."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sagann
from sagann.engine.models import GAT, GCN, GraphSAGE

N = 600
EDGES = np.random.default_rng(3).integers(0, N, (2, 6000))
# norm-wise relative error of outputs and gradients against float32 transfers: bfloat16 keeps 8 bits of
# mantissa (2^-8 = 0.4 % per element), float16 11 bits. Gradients are not proportional to the rounding: an
# attention score near zero may cross the LeakyReLU's kink (GAT's attention vectors: 5.8e-3 in float16)
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 1e-2}


def _run(model_cls, width: int, dtype, **schedule):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, width, generator=gen)
    torch.manual_seed(0)
    model = model_cls(width, width, 8, dropout=0.0)
    cfg = sagann.ScheduleConfig(transfer_dtype=dtype, cache_gather=False, **schedule)
    g = sagann.ChunkedGraph(EDGES, N, num_chunks=4, sub_chunk_nnz=256, device=sagann.CpuDevice("64MB", copy_transfers=True), schedule=cfg)
    out = model(g, x)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()], sum(r.bytes_moved for r in g.pass_log)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("model_cls", [GCN, GraphSAGE, GAT])
def test_sixteen_bit_transfers_stay_within_the_stated_tolerance(model_cls, dtype):
    ref_out, ref_grads, _ = _run(model_cls, 16, None)
    out, grads, _ = _run(model_cls, 16, dtype)
    assert out.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    assert _rel(out, ref_out) < TOLERANCE[dtype]
    for g, r in zip(grads, ref_grads):
        assert _rel(g, r) < TOLERANCE[dtype]
    assert _rel(out, ref_out) > 0, "the rows did cross in 16 bits"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_rows_bytes_halve(dtype):
    """Same plans at width d and 2d: the extra bytes of the wider rows are half as many in 16 bits (index arrays are not rows)."""
    fixed = {"transfer": "selective", "tile": 1, "prefetch": 0, "order": "natural", "partition_rule": "smallest"}
    full = [_run(GraphSAGE, d, None, **fixed)[2] for d in (32, 64)]
    half = [_run(GraphSAGE, d, dtype, **fixed)[2] for d in (32, 64)]
    assert full[1] > full[0]
    assert 2 * (half[1] - half[0]) == full[1] - full[0]
    assert half[1] < 0.75 * full[1]


def test_transfer_dtype_must_be_sixteen_bit_float():
    with pytest.raises(ValueError, match="transfer_dtype"):
        sagann.ScheduleConfig(transfer_dtype=torch.int8)
    assert sagann.ScheduleConfig(transfer_dtype=torch.bfloat16).transfer_dtype is torch.bfloat16


@pytest.mark.parametrize("model_cls", [GCN, GraphSAGE, GAT])
def test_a_training_step_sends_about_half_the_bytes(model_cls):
    """Everything a step sends crosses in 16 bits: rows, edge data, saved activations, and index arrays that fit."""
    sent = {}
    for dtype in (None, torch.bfloat16):
        dev = sagann.CpuDevice("64MB", copy_transfers=True)
        torch.manual_seed(0)
        model = model_cls(32, 32, 8, dropout=0.0)
        cfg = sagann.ScheduleConfig(transfer_dtype=dtype, transfer="selective", tile=1, prefetch=0, order="natural", partition_rule="smallest")
        g = sagann.ChunkedGraph(EDGES, N, num_chunks=4, sub_chunk_nnz=256, device=dev, schedule=cfg)
        x = torch.randn(N, 32, generator=torch.Generator().manual_seed(0))
        model(g, x).square().mean().backward()  # plans and keeps what it learns
        before = dev.bytes_in
        model(g, x).square().mean().backward()
        sent[dtype] = dev.bytes_in - before
    assert sent[torch.bfloat16] <= 0.55 * sent[None], sent


def test_16_bit_rows_are_widened_piece_by_piece():
    """An interval's 16-bit rows cross in pieces into its float32 rows: one piece of 16-bit rows is alive beside them, not
    all (the model counts the float32 rows alone). Measured by what torch allocated; the values are the rounded rows."""
    from sagann.scheduler.executor import WIDEN_PIECES, load_narrowed
    from sagann.scheduler.meter import allocated_peak

    dev = sagann.CpuDevice(copy_transfers=True)
    host = torch.randn(4096, 32)
    out = []

    def load():
        with dev.scope() as scope:
            out.append(load_narrowed(scope, host, torch.bfloat16, "rows"))

    peak = allocated_peak(load)
    wide, piece = host.numel() * 4, host.numel() * 2 // WIDEN_PIECES
    assert wide <= peak <= wide + piece
    assert torch.equal(out[0], host.to(torch.bfloat16).float())
    assert dev.bytes_in == host.numel() * 2  # what crossed: the 16-bit rows


def test_16_bit_source_rows_are_gathered_and_widened_piece_by_piece():
    """A sub-chunk's 16-bit source rows, gathered a piece at a time into its float32 rows (ChunkInputs): one piece alive beside them."""
    from sagann.scheduler.executor import WIDEN_PIECES, in_pieces, widened_in_pieces
    from sagann.scheduler.meter import allocated_peak

    dev = sagann.CpuDevice(copy_transfers=True)
    host = torch.randn(5000, 32).to(torch.bfloat16)
    index = torch.randperm(5000, generator=torch.Generator().manual_seed(0))[:3000].to(torch.int32)
    assert in_pieces(host, index.numel()) and not in_pieces(host.float(), index.numel()) and not in_pieces(host, 2 * WIDEN_PIECES - 1)
    out = []

    def load():
        with dev.scope() as scope:
            out.append(widened_in_pieces(scope, (index.numel(), 32), "rows", lambda lo, hi: dev.gather_in(host, index[lo:hi])))

    peak = allocated_peak(load)
    wide, piece = index.numel() * 32 * 4, -(-index.numel() // WIDEN_PIECES) * 32 * 2
    assert wide <= peak <= wide + piece
    assert torch.equal(out[0], host[index.long()].float())
