"""Streamed index arrays: what a pass sends, what the device makes, and that both equal the chunk's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sagann.chunks.partition import partition_graph
from sagann.chunks.types import sent_names
from sagann.kernels.graph import ARRAYS as NAMES, ChunkTensors, StreamedChunkTensors, expand_pointer


def _subs(seed: int, n: int, e: int, p: int, sub: int):
    rng = np.random.default_rng(seed)
    ei = rng.integers(0, n, (2, e))
    ei[:, : e // 10] = ei[0, : e // 10]  # self loops
    return list(partition_graph(ei, n, p, sub_chunk_nnz=sub).sub_chunks())


class _Link:
    """A send function that records what crossed."""

    def __init__(self):
        self.sent: list[int] = []

    def __call__(self, a: np.ndarray) -> torch.Tensor:
        self.sent.append(a.nbytes)
        return torch.from_numpy(np.array(a))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 60), e=st.integers(0, 400), p=st.integers(1, 5), sub=st.integers(1, 80),
       backward=st.booleans(), source_major=st.booleans(), narrow=st.booleans(), derive=st.booleans())
def test_streamed_arrays_equal_the_chunks(seed, n, e, p, sub, backward, source_major, narrow, derive):
    """Empty chunks, empty rows, self loops and multi-edges: every array read equals the host chunk's (sent in 16 bits or not, made on the device or sent)."""
    source_major = source_major and backward
    for c in _subs(seed, n, e, min(p, n), sub):
        link = _Link()
        ct = StreamedChunkTensors(c, link, backward=backward, source_major=source_major, narrow=narrow, derive=derive)
        sent_now = sum(link.sent)
        assert sent_now + c.src_rows.nbytes == c.sent_index_bytes(backward, narrow, source_major)
        assert len(link.sent) == len(sent_names(backward, source_major))
        ref = ChunkTensors.from_chunk(c, "cpu", source_major=source_major)
        sizes = {"dst_ptr": c.num_dst + 1, "src_ptr": c.num_src + 1}
        assert ct.nbytes == sum(4 * sizes.get(m, c.nnz) for m in sent_names(backward, source_major))  # what is on the device now, as int32
        assert ct.nnz == ref.nnz and (ct.num_src, ct.num_dst) == (ref.num_src, ref.num_dst)
        for name in NAMES:
            a, b = getattr(ct, name), getattr(ref, name)
            assert (a is None) == (b is None), name
            if a is not None:
                assert a.dtype == torch.int32 and torch.equal(a, b), name
        # every other array read is sent then, once, except dst_idx on a device that makes it
        later = sum(4 * ({"src_ptr": c.num_src + 1}.get(m, c.nnz)) // (2 if narrow and c.fits_16_bits(m) else 1)
                    for m in ("dst_idx", "src_idx", "src_ptr", "src_perm") if m not in sent_names(backward, source_major) and not (m == "dst_idx" and derive))
        assert ct.sent_bytes == sum(link.sent) == sent_now + later
        assert [getattr(ct, m) for m in NAMES[:-1]] and ct.sent_bytes == sent_now + later  # a second read sends nothing
        assert ct.nbytes == ref.nbytes  # every array read: all of them on the device


def test_each_array_crosses_in_16_bits_where_its_values_fit():
    """A dense chunk: source ids (below num_src) fit in 16 bits, positions among 70,000 edges do not."""
    rng = np.random.default_rng(0)
    ei = rng.integers(0, 100, (2, 70_000))
    (c,) = partition_graph(ei, 100, 1, sub_chunk_nnz=1 << 20).sub_chunks()
    assert c.fits_16_bits("src_idx") and not c.fits_16_bits("src_perm") and not c.fits_16_bits("dst_ptr")
    link = _Link()
    ct = StreamedChunkTensors(c, link, backward=True, narrow=True)
    assert link.sent == [c.dst_ptr.nbytes, c.src_idx.nbytes // 2, c.src_ptr.nbytes, c.src_perm.nbytes]
    ref = ChunkTensors.from_chunk(c)
    for name in NAMES[:-1]:
        assert getattr(ct, name).dtype == torch.int32 and torch.equal(getattr(ct, name), getattr(ref, name)), name


def test_positions_between_2_15_and_2_16_cross_unsigned():
    """40,000 edges: pointers and the source-major order reach past 32,767, yet cross in 16 bits and come back exact."""
    rng = np.random.default_rng(1)
    ei = rng.integers(0, 100, (2, 40_000))
    (c,) = partition_graph(ei, 100, 1, sub_chunk_nnz=1 << 20).sub_chunks()
    assert c.src_perm.max() >= 1 << 15 and all(c.fits_16_bits(n) for n in ("dst_ptr", "src_idx", "src_ptr", "src_perm", "src_dst"))
    link = _Link()
    ct = StreamedChunkTensors(c, link, backward=True, source_major=True, narrow=True)
    assert sum(link.sent) + c.src_rows.nbytes == c.sent_index_bytes(True, True, True)
    ref = ChunkTensors.from_chunk(c, "cpu", source_major=True)
    for name in NAMES:
        assert getattr(ct, name).dtype == torch.int32 and torch.equal(getattr(ct, name), getattr(ref, name)), name


def test_a_forward_pass_sends_only_pointers_and_source_ids():
    c = next(s for s in _subs(1, 50, 600, 2, 100) if s.nnz)
    link = _Link()
    ct = StreamedChunkTensors(c, link, backward=False, derive=True)
    assert sum(link.sent) == c.dst_ptr.nbytes + c.src_idx.nbytes
    assert [t.data_ptr() for t in ct.present()] == [ct.dst_ptr.data_ptr(), ct.src_idx.data_ptr()]
    ct.dst_idx  # made on the device
    assert sum(link.sent) == c.dst_ptr.nbytes + c.src_idx.nbytes and len(ct.present()) == 3


@pytest.mark.parametrize("rows", [[0], [0, 0, 0], [0, 3, 3, 7], [0, 0, 5, 5, 9, 9]])
def test_expand_pointer_gives_each_entrys_row(rows):
    ptr = torch.tensor(rows, dtype=torch.int32)
    want = torch.repeat_interleave(torch.arange(len(rows) - 1), (ptr[1:] - ptr[:-1]).long()).int()
    assert torch.equal(expand_pointer(ptr, rows[-1]), want)


def test_an_array_read_after_the_load_is_charged_when_it_is_made():
    """The ledger holds what is on the device: a forward charges pointers and source ids, and dst_idx only once a kernel reads it."""
    from sagann.scheduler.devices import CpuDevice, BudgetExceeded

    c = next(s for s in _subs(2, 50, 600, 2, 100) if s.nnz)
    dev = CpuDevice(1 << 20, copy_transfers=True)
    with dev.scope() as scope:
        ct, _, nbytes = dev.chunk_index(c, backward=False)
        scope.charge(nbytes, "index arrays")
        ct.charge_later(scope)
        assert nbytes == c.dst_ptr.nbytes + c.src_idx.nbytes == dev.current_bytes
        ct.dst_idx
        assert dev.current_bytes == nbytes + c.dst_idx.nbytes
        ct.dst_idx  # made once, charged once
        assert dev.current_bytes == nbytes + c.dst_idx.nbytes
    tight = CpuDevice(c.dst_ptr.nbytes + c.src_idx.nbytes, copy_transfers=True)
    with tight.scope() as scope:
        ct, _, nbytes = tight.chunk_index(c, backward=False)
        scope.charge(nbytes, "index arrays")
        ct.charge_later(scope)
        with pytest.raises(BudgetExceeded, match="dst_idx"):
            ct.dst_idx
