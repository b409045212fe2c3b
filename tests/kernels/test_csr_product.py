"""The sparse CSR product path of the cuda backend (``_csr_product``), on CPU tensors, against the reference.

torch runs the same CSR product on the CPU as on a GPU (there with
cuSPARSE), so the index arithmetic (block columns, the transposed matrix,
source-major weights, accumulation in place) is checked here on every
machine; ``cuda_cases.py`` runs the backend's dispatch to it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sagann import kernels
from sagann.kernels import ChunkTensors
from sagann.kernels import _csr_product as CSR
from sagann.kernels.ops import OPS

OPS_UNDER_TEST = {"copy_src": CSR.UNIT_CODE, "src_mul_edge": OPS["src_mul_edge"].scalar_code}


@st.composite
def chunks(draw):
    """A chunk with empty rows, isolated vertices, self loops and multi-edges (or no edges at all)."""
    num_dst = draw(st.integers(0, 9))
    num_src = draw(st.integers(0, 9))
    src, dst = [], []
    if num_src and num_dst:
        m = draw(st.integers(0, 30))
        src = draw(st.lists(st.integers(0, num_src - 1), min_size=m, max_size=m))
        dst = draw(st.lists(st.integers(0, num_dst - 1), min_size=m, max_size=m))
        dup = draw(st.lists(st.integers(0, max(m - 1, 0)), max_size=4)) if m else []
        src, dst = src + [src[i] for i in dup], dst + [dst[i] for i in dup]
        if num_src == num_dst:
            loops = draw(st.lists(st.integers(0, num_dst - 1), max_size=3))
            src, dst = src + loops, dst + loops
    g, _ = ChunkTensors.from_coo(np.array(src, np.int64), np.array(dst, np.int64), num_src, num_dst)
    op = draw(st.sampled_from(sorted(OPS_UNDER_TEST)))
    d = draw(st.sampled_from([1, 4]))
    seed = draw(st.integers(0, 2**16))
    return g, op, d, seed


def _operands(g: ChunkTensors, d: int, seed: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(g.num_src, d, generator=gen, dtype=dtype), torch.randn(g.nnz, generator=gen, dtype=dtype)


def _edge(op: str, edge: torch.Tensor):
    return edge if op == "src_mul_edge" else None


@given(case=chunks(), block=st.booleans(), into=st.booleans())
@settings(max_examples=60, deadline=None)
def test_forward_sum_matches_the_reference(case, block, into):
    g, op, d, seed = case
    src, edge = _operands(g, d, seed)
    want, _ = kernels.gspmm(g, op, "sum", src=src, edge=_edge(op, edge), backend="reference")
    rows = None
    if block:  # the chunk's sources are rows of a larger block, in a shuffled order
        extra = 3
        rows = torch.randperm(g.num_src + extra, generator=torch.Generator().manual_seed(seed))[: g.num_src]
        big = torch.randn(g.num_src + extra, d, generator=torch.Generator().manual_seed(seed + 1))
        big[rows] = src
        src = big
    acc = torch.randn(g.num_dst, d, generator=torch.Generator().manual_seed(seed + 2)) if into else None
    before = None if acc is None else acc.clone()
    got = CSR.forward_sum(g, OPS_UNDER_TEST[op], src, _edge(op, edge), src_rows=rows, into=acc)
    if into:
        assert got is acc
        want = want + before
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@given(case=chunks(), source_major=st.booleans(), with_src_dst=st.booleans())
@settings(max_examples=60, deadline=None)
def test_src_gradient_matches_autograd(case, source_major, with_src_dst):
    g, op, d, seed = case
    src, edge = _operands(g, d, seed)
    leaf = src.clone().requires_grad_()
    out, _ = kernels.gspmm(g, op, "sum", src=leaf, edge=_edge(op, edge), backend="reference")
    grad = torch.randn(g.num_dst, d, generator=torch.Generator().manual_seed(seed + 3))
    if out.requires_grad:
        out.backward(grad)
    want = leaf.grad if leaf.grad is not None else torch.zeros_like(src)
    if with_src_dst:
        g = dataclasses.replace(g, src_dst=g.dst_idx[g.src_perm.long()])
    weights = edge[g.src_perm.long()] if source_major else edge
    got = CSR.src_grad(g, OPS_UNDER_TEST[op], grad, _edge(op, weights), source_major=source_major)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", sorted(OPS_UNDER_TEST))
def test_float64_stays_float64(op):
    g, _ = ChunkTensors.from_coo(np.array([0, 1, 1]), np.array([1, 0, 1]), 2, 2)
    src, edge = _operands(g, 3, 0, torch.float64)
    got = CSR.forward_sum(g, OPS_UNDER_TEST[op], src, _edge(op, edge))
    want, _ = kernels.gspmm(g, op, "sum", src=src, edge=_edge(op, edge), backend="reference")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want)


def test_which_calls_are_eligible():
    scalar = OPS["src_mul_edge"].scalar_code
    assert CSR.eligible(CSR.UNIT_CODE, "sum", torch.float32) and CSR.eligible(scalar, "mean", torch.float64)
    assert not CSR.eligible(CSR.UNIT_CODE, "max", torch.float32)
    assert not CSR.eligible(OPS["src_mul_edge"].code, "sum", torch.float32)  # edge rows as wide as src: a numba kernel
    assert not CSR.eligible(OPS["src_add_dst"].code, "sum", torch.float32)
    assert not CSR.eligible(CSR.UNIT_CODE, "sum", torch.float16)


def test_more_entries_than_the_matrix_has_cells_go_to_the_numba_kernels():
    assert CSR.fits(4, 2, 2) and not CSR.fits(4, 1, 3) and CSR.fits(0, 0, 5)


def test_scratch_is_charged_for_exactly_the_product_ops():
    assert CSR.scratch_bytes_per_edge("copy_src", 0) == 8
    assert CSR.scratch_bytes_per_edge("src_mul_edge", 1) == 4
    assert CSR.scratch_bytes_per_edge("src_mul_edge", 4) == 0
    assert CSR.scratch_bytes_per_edge("src_add_dst", 0) == 0


def test_the_cuda_backend_declares_its_scratch_and_the_memory_model_charges_it(monkeypatch):
    from sagann import fn
    from sagann.engine.run import _with_backend_bytes
    from sagann.scheduler.memory_model import LayerShape, edge_scratch_bytes

    cuda = kernels.get_backend("cuda")  # importable without a GPU; its kernels then refuse to run
    monkeypatch.setattr(cuda, "CSR_PRODUCT", True)
    shape = LayerShape(
        d_in=8, d_edge=0, d_src_term=0, d_dst_term=0, d_msg=8, d_out=8, gather="sum", builtin=fn.copy_src,
        uses_src=True, uses_dst=False, uses_src_term=False, uses_dst_term=False, uses_edge=False,
    )
    charged = _with_backend_bytes(shape, "cuda")
    assert charged.kernel_scratch == 8
    assert kernels.source_major_backward("cuda", "copy_src", 0) and kernels.source_major_backward("cuda", "src_mul_edge", 1)
    assert not kernels.source_major_backward("cuda", "src_mul_edge", 4) and not kernels.source_major_backward("cuda", "src_add_dst", 0)
    assert edge_scratch_bytes(100, charged, fused=True) == edge_scratch_bytes(100, shape, fused=True) + 800
    assert _with_backend_bytes(shape, "cpu").kernel_scratch == 0  # the numba CPU kernels hold nothing per edge
    monkeypatch.setattr(cuda, "CSR_PRODUCT", False)
    assert _with_backend_bytes(charged, "cuda").kernel_scratch == 0
    assert not kernels.source_major_backward("cuda", "copy_src", 0)  # the numba kernels read CSC order


def test_a_fused_sum_or_mean_backward_holds_its_scratch_once():
    """Its backward kernels run without a recompute (a mean is a sum scaled by the in-degree): the scratch once, not twice."""
    from sagann import fn
    from sagann.scheduler.memory_model import LayerShape, backward_scratch_times

    base = dict(d_in=8, d_edge=0, d_src_term=0, d_dst_term=0, d_msg=8, d_out=8, builtin=fn.copy_src,
                uses_src=True, uses_dst=False, uses_src_term=False, uses_dst_term=False, uses_edge=False)
    assert backward_scratch_times(LayerShape(gather="sum", **base), fused=True) == 1
    assert backward_scratch_times(LayerShape(gather="mean", **base), fused=True) == 1
    assert backward_scratch_times(LayerShape(gather="max", **base), fused=True) == 2  # recomputed under autograd
    assert backward_scratch_times(LayerShape(gather="sum", **base), fused=False) == 2
