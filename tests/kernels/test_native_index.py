"""A forward's source ids kept in 16 bits and read so by the CPU kernels: the same results as int32 ids, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sagann import kernels
from sagann.kernels import attention
from sagann.chunks.partition import partition_graph
from sagann.kernels.graph import ChunkTensors, StreamedChunkTensors, kernel_index
from sagann.scheduler.devices import CpuDevice


def _send(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a))


def _chunks(seed: int, n: int, e: int, p: int, sub: int):
    rng = np.random.default_rng(seed)
    ei = rng.integers(0, n, (2, e))
    k = e // 10
    ei[:, :k] = ei[0, :k]  # self loops
    ei[:, k : 2 * k] = ei[:, :k]  # multi-edges
    return list(partition_graph(ei, n, p, sub_chunk_nnz=sub).sub_chunks())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.sampled_from([1, 7, 300, 40_000, 65_536]), e=st.integers(0, 3000), p=st.integers(1, 4),
       sub=st.integers(1, 2000), op=st.sampled_from(["copy_src", "src_mul_edge", "src_add_dst"]), reduce=st.sampled_from(["sum", "mean", "max"]))
def test_16_bit_source_ids_give_the_int32_results(seed, n, e, p, sub, op, reduce):
    """Empty chunks, isolated vertices, self loops, multi-edges, ids past 32,767 (the int16 sign bit, read unsigned)."""
    gen = torch.Generator().manual_seed(seed)
    for c in _chunks(seed, n, e, min(p, n), sub):
        ct = StreamedChunkTensors(c, _send, backward=False, native=True)
        ref = ChunkTensors.from_chunk(c)
        assert kernel_index(ct, "src_idx").dtype == (torch.int16 if c.fits_16_bits("src_idx") else torch.int32)
        src = torch.randn(c.num_src, 8, generator=gen)
        edge = torch.randn(c.nnz, 1, generator=gen) if op == "src_mul_edge" else None
        dst = torch.randn(c.num_dst, 8, generator=gen) if op == "src_add_dst" else None
        got = kernels.gspmm(ct, op, reduce, src=src, edge=edge, dst=dst, backend="cpu")
        want = kernels.gspmm(ref, op, reduce, src=src, edge=edge, dst=dst, backend="cpu")
        assert torch.equal(got[0], want[0])
        assert (got[1] is None) == (want[1] is None) and (got[1] is None or torch.equal(got[1], want[1]))


def test_ids_past_the_sign_bit_are_read_unsigned():
    """A sub-chunk of 40,000 distinct sources: its (compact) ids above 32,767 are negative as int16 and must still pick their rows."""
    n = 40_000
    ei = np.stack([np.arange(n), np.arange(n) % 3])
    (c,) = [s for s in partition_graph(ei, n, 1).sub_chunks() if s.nnz]
    ct = StreamedChunkTensors(c, _send, backward=False, native=True)
    assert kernel_index(ct, "src_idx").dtype == torch.int16 and int(kernel_index(ct, "src_idx").min()) < 0
    src = torch.randn(c.num_src, 4)
    got, _ = kernels.gspmm(ct, "copy_src", "sum", src=src, backend="cpu")
    want, _ = kernels.gspmm(ChunkTensors.from_chunk(c), "copy_src", "sum", src=src, backend="cpu")
    assert c.num_src == n
    assert torch.equal(got, want)
    torch.testing.assert_close(got, torch.zeros(3, 4).index_add_(0, torch.from_numpy(c.dst_idx).long(), src[torch.from_numpy(c.src_idx).long()]), rtol=1e-4, atol=1e-3)


def test_an_int32_read_widens_the_kept_ids_once_and_is_charged():
    """Something other than the 16-bit kernels reads ``src_idx``: it gets the int32 ids, made once and charged when made."""
    (c,) = [s for s in partition_graph(np.array([[0, 1, 2, 40_001], [3, 3, 4, 4]]), 50_000, 1).sub_chunks() if s.nnz]
    dev = CpuDevice(1 << 20, copy_transfers=True)
    with dev.scope() as scope:
        ct, _, nbytes = dev.chunk_index(c, backward=False, native=True)
        scope.charge(nbytes, "index arrays")
        ct.charge_later(scope)
        assert nbytes == c.dst_ptr.nbytes + c.src_idx.nbytes // 2 == dev.current_bytes
        wide = ct.src_idx
        assert wide.dtype == torch.int32 and torch.equal(wide, torch.from_numpy(c.src_idx))
        assert kernel_index(ct, "src_idx") is wide and ct.src_idx is wide
        assert dev.current_bytes == nbytes + c.src_idx.nbytes  # the 16-bit copy stays charged with the load


@pytest.mark.parametrize("narrow", [False, True])
def test_only_the_source_ids_stay_short_unless_every_array_narrows(narrow):
    """``native`` alone narrows the forward's source ids; with ``narrow`` the pointers cross in 16 bits too, and are widened."""
    (c,) = [s for s in partition_graph(np.array([[0, 1, 2], [3, 3, 4]]), 10, 1).sub_chunks() if s.nnz]
    sent: list[np.dtype] = []
    ct = StreamedChunkTensors(c, lambda a: sent.append(a.dtype) or _send(a), backward=False, native=True, narrow=narrow)
    assert ct.dst_ptr.dtype == torch.int32
    assert kernel_index(ct, "src_idx").dtype == torch.int16
    assert sent.count(np.dtype(np.int16)) == (2 if narrow else 1)
    assert c.sent_index_bytes(False, narrow, native=True) == ct.sent_bytes + c.src_rows.nbytes


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.sampled_from([1, 7, 300, 70_000]), e=st.integers(0, 3000), p=st.integers(1, 4),
       sub=st.integers(1, 2000), op=st.sampled_from(["copy_src", "src_mul_edge"]))
def test_a_source_major_backward_reads_16_bit_rows_as_int32_ones(seed, n, e, p, sub, op):
    """The source gradient from ``src_dst`` kept in 16 bits (not widened by the backend's checks) equals the int32 one."""
    gen = torch.Generator().manual_seed(seed)
    for c in _chunks(seed, n, e, min(p, n), sub):
        ct = StreamedChunkTensors(c, _send, backward=True, source_major=True, native=True)
        ref = ChunkTensors.from_chunk(c, source_major=True)
        short = c.fits_16_bits("src_dst")
        grad = torch.randn(c.num_dst, 8, generator=gen)
        src = torch.randn(c.num_src, 8, generator=gen)
        edge = torch.randn(c.nnz, 1, generator=gen)[torch.from_numpy(c.src_perm).long()] if op == "src_mul_edge" else None
        got = kernels.gspmm_sum_backward(ct, op, grad, src=src, edge=edge, needs=("src",), backend="cpu", edge_order="source_major")
        want = kernels.gspmm_sum_backward(ref, op, grad, src=src, edge=edge, needs=("src",), backend="cpu", edge_order="source_major")
        assert torch.equal(got[0], want[0])
        assert kernel_index(ct, "src_dst").dtype == (torch.int16 if short else torch.int32)
        assert "dst_idx" not in vars(ct), "the source-major kernels ran (the CSC ones read dst_idx)"


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.sampled_from([1, 7, 300, 70_000]), e=st.integers(0, 3000), p=st.integers(1, 4),
       sub=st.integers(1, 2000), heads=st.sampled_from([1, 3]))
def test_an_attention_backward_reads_source_major_rows_in_16_bits(seed, n, e, p, sub, heads):
    """The fused attention's gradients from ``src_dst`` alone (16-bit where it fits) equal those read through the
    permutation, bit for bit (the same edges in the same order), and neither the permutation nor ``dst_idx`` is sent."""
    gen = torch.Generator().manual_seed(seed)
    d = 4
    for c in _chunks(seed, n, e, min(p, n), sub):
        ct = StreamedChunkTensors(c, _send, backward=True, source_major=True, native=True)
        ref = ChunkTensors.from_chunk(c)
        assert ref.src_dst is None
        src = torch.randn(c.num_src, heads * d + heads, generator=gen)
        dst = torch.randn(c.num_dst, heads, generator=gen)
        m, l, a = attention.attention_partials(ref, src, dst, heads, 0.2, backend="cpu")
        m = m.masked_fill(torch.isinf(m), 0.0)
        out = (a.view(-1, heads, d) / l.clamp(min=1e-30).unsqueeze(-1)).view(a.shape)
        grad = torch.randn(c.num_dst, heads * d, generator=gen)
        got = attention.attention_backward(ct, grad, out, m, l, src, dst, heads, negative_slope=0.2, backend="cpu")
        want = attention.attention_backward(ref, grad, out, m, l, src, dst, heads, negative_slope=0.2, backend="cpu")
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert kernel_index(ct, "src_dst").dtype == (torch.int16 if c.fits_16_bits("src_dst") else torch.int32)
        assert "dst_idx" not in vars(ct) and "src_perm" not in vars(ct), "the permuted arrays were read"
