"""``gspmm_sum_backward``: the direct (no recompute) backward of sum gSpMM against autograd on the reference."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sagann import kernels
from sagann.kernels import ChunkTensors

OPS = [("copy_src", "col"), ("copy_edge", "vec"), ("copy_edge", "full"), ("src_mul_edge", "vec"), ("src_mul_edge", "col"), ("src_mul_edge", "full"), ("src_add_dst", "col"), ("src_sub_dst", "col"), ("src_mul_dst", "col")]
READS = {"copy_src": ("src",), "copy_edge": ("edge",), "src_mul_edge": ("src", "edge")}


def _autograd_grads(g, op, inputs, grad):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out, _ = kernels.gspmm(g, op, "sum", **leaves, backend="reference")
    if out.requires_grad:
        out.backward(grad)
    return {k: v.grad for k, v in leaves.items()}


@st.composite
def cases(draw):
    """A random chunk with empty rows, isolated vertices, self loops and multi-edges."""
    num_dst = draw(st.integers(0, 9))
    num_src = draw(st.integers(0, 9))
    m = draw(st.integers(0, 30)) if num_src and num_dst else 0
    src = draw(st.lists(st.integers(0, max(num_src - 1, 0)), min_size=m, max_size=m))
    dst = draw(st.lists(st.integers(0, max(num_dst - 1, 0)), min_size=m, max_size=m))
    dup = draw(st.lists(st.integers(0, m - 1), max_size=5)) if m else []
    src, dst = src + [src[i] for i in dup], dst + [dst[i] for i in dup]
    g = ChunkTensors.from_coo(np.asarray(src, np.int64), np.asarray(dst, np.int64), num_src, num_dst)[0]
    op, edge_shape = draw(st.sampled_from(OPS))
    d = draw(st.sampled_from([1, 3, 8]))
    seed = draw(st.integers(0, 2**16))
    return g, op, edge_shape, d, seed


def _inputs(g, d, edge_shape, seed):
    gen = torch.Generator().manual_seed(seed)
    edge = {"vec": (g.nnz,), "col": (g.nnz, 1), "full": (g.nnz, d)}[edge_shape]
    return {"src": torch.randn(g.num_src, d, generator=gen), "edge": torch.randn(edge, generator=gen), "dst": torch.randn(g.num_dst, d, generator=gen)}


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@given(case=cases(), into_buffer=st.booleans())
@settings(max_examples=120, deadline=None)
def test_direct_backward_matches_autograd(backend, case, into_buffer):
    g, op, edge_shape, d, seed = case
    inputs = _inputs(g, d, edge_shape, seed)
    width = inputs["edge"].shape[1] if op == "copy_edge" and inputs["edge"].dim() == 2 else (1 if op == "copy_edge" else d)
    grad = torch.randn(g.num_dst, width, generator=torch.Generator().manual_seed(seed + 1))
    want = _autograd_grads(g, op, inputs, grad)
    reads = READS.get(op, ("src", "dst"))
    src_out = src_rows = None
    if into_buffer:  # accumulate into rows of a larger tensor that already holds values
        rows = 3 + g.num_src
        src_out = torch.randn(rows, d, generator=torch.Generator().manual_seed(seed + 2))
        before = src_out.clone()
        src_rows = torch.randperm(rows, generator=torch.Generator().manual_seed(seed + 3))[: g.num_src].to(torch.int32)
    got = dict(zip(("src", "edge", "dst"), kernels.gspmm_sum_backward(g, op, grad, **inputs, src_out=src_out, src_rows=src_rows, backend=backend)))
    for name in ("src", "edge", "dst"):
        if name not in reads:
            assert got[name] is None, f"{op} does not read {name}"
            continue
        expected = want[name] if want[name] is not None else torch.zeros_like(inputs[name])
        if name == "src" and into_buffer:
            assert got["src"] is None
            full = before.clone()
            full[src_rows.long()] += expected
            torch.testing.assert_close(src_out, full, rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(got[name], expected, rtol=1e-5, atol=1e-6, msg=lambda m: f"grad of {name}: {m}")


def test_needs_selects_the_gradients():
    g = ChunkTensors.from_coo(np.array([0, 1, 1]), np.array([1, 0, 1]), 2, 2)[0]
    inputs = {"src": torch.randn(2, 4), "edge": torch.randn(3), "dst": torch.randn(2, 4)}
    d_src, d_edge, d_dst = kernels.gspmm_sum_backward(g, "src_mul_edge", torch.randn(2, 4), **inputs, needs=("edge",), backend="cpu")
    assert d_src is None and d_dst is None and d_edge.shape == (3,)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"op": "src_dot_dst"}, "no direct backward"),
        ({"grad": torch.randn(3, 4)}, "grad must be a"),
        ({"src_out": torch.zeros(5, 4, dtype=torch.float64), "src_rows": torch.arange(2)}, "src_out must be"),
        ({"src_out": torch.zeros(5, 4), "src_rows": torch.arange(3)}, "src_rows must be"),
    ],
)
def test_bad_calls_name_the_problem(kwargs, match):
    g = ChunkTensors.from_coo(np.array([0, 1, 1]), np.array([1, 0, 1]), 2, 2)[0]
    call = {"op": "copy_src", "grad": torch.randn(2, 4), "src": torch.randn(2, 4), "dst": torch.randn(2, 4)} | kwargs
    with pytest.raises(ValueError, match=match):
        kernels.gspmm_sum_backward(g, call.pop("op"), call.pop("grad"), **call, backend="cpu")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@given(case=cases())
@settings(max_examples=60, deadline=None)
def test_src_may_be_left_out_for_its_own_gradient(backend, case):
    g, op, edge_shape, d, seed = case
    if "src" not in READS.get(op, ("src", "dst")) or op == "copy_edge":
        return
    inputs = _inputs(g, d, edge_shape, seed)
    grad = torch.randn(g.num_dst, d, generator=torch.Generator().manual_seed(seed + 1))
    with_src = kernels.gspmm_sum_backward(g, op, grad, **inputs, needs=("src",), backend=backend)[0]
    without = kernels.gspmm_sum_backward(g, op, grad, edge=inputs["edge"], dst=inputs["dst"], needs=("src",), backend="cpu")[0]
    torch.testing.assert_close(without, with_src, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "cpu", "cpu-grad"])
@given(case=cases(), reduce=st.sampled_from(["sum", "mean", "max", "min"]))
@settings(max_examples=80, deadline=None)
def test_src_rows_reads_a_block_in_place(backend, case, reduce):
    """gspmm(src=block, src_rows=rows) equals gspmm on the compacted rows, values, winners and (under autograd) gradients."""
    g, op, edge_shape, d, seed = case
    inputs = _inputs(g, d, edge_shape, seed)
    gen = torch.Generator().manual_seed(seed + 5)
    block = torch.randn(g.num_src + 4, d, generator=gen)
    rows = torch.randperm(g.num_src + 4, generator=gen)[: g.num_src]
    block[rows] = inputs["src"]
    want, want_arg = kernels.gspmm(g, op, reduce, **inputs, backend="reference")
    name = backend.removesuffix("-grad")
    if backend.endswith("-grad"):
        leaf = block.clone().requires_grad_()
        got, arg = kernels.gspmm(g, op, reduce, src=leaf, edge=inputs["edge"], dst=inputs["dst"], src_rows=rows, backend=name)
        if got.requires_grad:
            got.sum().backward()
            ref_leaf = inputs["src"].clone().requires_grad_()
            ref, _ = kernels.gspmm(g, op, reduce, src=ref_leaf, edge=inputs["edge"], dst=inputs["dst"], backend="reference")
            if ref.requires_grad:
                ref.sum().backward()
            expected = torch.zeros_like(block)
            if ref_leaf.grad is not None:
                expected[rows] = ref_leaf.grad
            torch.testing.assert_close(leaf.grad if leaf.grad is not None else torch.zeros_like(block), expected, rtol=1e-5, atol=1e-6)
    else:
        got, arg = kernels.gspmm(g, op, reduce, src=block, edge=inputs["edge"], dst=inputs["dst"], src_rows=rows.to(torch.int32), backend=name)
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    assert (arg is None) == (want_arg is None) and (arg is None or torch.equal(arg, want_arg))


@pytest.mark.parametrize(
    "rows, match",
    [(torch.arange(3), r"src_rows must be an int32/int64 \[num_src=2\]"), (torch.tensor([0, 9]), r"must lie in \[0, 4\)"), (torch.tensor([0.0, 1.0]), "int32/int64")],
)
def test_bad_src_rows_name_the_problem(rows, match):
    g = ChunkTensors.from_coo(np.array([0, 1, 1]), np.array([1, 0, 1]), 2, 2)[0]
    with pytest.raises(ValueError, match=match):
        kernels.gspmm(g, "copy_src", "sum", src=torch.randn(4, 3), src_rows=rows, backend="cpu")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@given(case=cases(), block=st.booleans())
@settings(max_examples=60, deadline=None)
def test_out_accumulates_the_sum(backend, case, block):
    """gspmm(..., out=acc) adds the sum into acc (in the kernel on the CPU backend), with or without a source block."""
    g, op, edge_shape, d, seed = case
    inputs = _inputs(g, d, edge_shape, seed)
    want, _ = kernels.gspmm(g, op, "sum", **inputs, backend="reference")
    acc = torch.randn(want.shape, generator=torch.Generator().manual_seed(seed + 7))
    expected = acc + want
    extra = {}
    if block:
        rows = torch.randperm(g.num_src + 3, generator=torch.Generator().manual_seed(seed))[: g.num_src]
        big = torch.zeros(g.num_src + 3, d)
        big[rows] = inputs["src"]
        inputs = dict(inputs, src=big)
        extra["src_rows"] = rows
    with torch.no_grad():
        got, arg = kernels.gspmm(g, op, "sum", **inputs, out=acc, backend=backend, **extra)
    assert got is acc and arg is None
    torch.testing.assert_close(acc, expected, rtol=1e-5, atol=1e-6)


def test_out_refuses_autograd_and_other_reducers():
    g = ChunkTensors.from_coo(np.array([0, 1, 1]), np.array([1, 0, 1]), 2, 2)[0]
    src = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="does not record autograd"):
        kernels.gspmm(g, "copy_src", "sum", src=src, out=torch.zeros(2, 3), backend="cpu")
    with pytest.raises(ValueError, match="sums only"):
        kernels.gspmm(g, "copy_src", "max", src=src.detach(), out=torch.zeros(2, 3), backend="cpu")


SRC_GRAD_OPS = [("copy_src", "col"), ("src_mul_edge", "vec"), ("src_mul_edge", "col"), ("src_mul_edge", "full"), ("src_add_dst", "col"), ("src_sub_dst", "col"), ("src_mul_dst", "col")]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("op, edge_shape", SRC_GRAD_OPS)
@pytest.mark.parametrize("with_src_dst", [True, False])
@given(case=cases(), d=st.sampled_from([3, 8]), into_buffer=st.booleans())
@settings(max_examples=25, deadline=None)
def test_source_major_edges_give_the_same_src_gradient(backend, op, edge_shape, with_src_dst, case, d, into_buffer):
    """edge_order='source_major' (edge weights as edge[src_perm], with or without g.src_dst) equals CSC order.

    With ``g.src_dst`` the CPU backend runs its sequential kernel for
    copy_src, src_add/sub_dst and scalar src_mul_edge; the rest, and the
    reference, put the edges back in CSC order.
    """
    import dataclasses

    g, _, _, _, seed = case
    inputs = _inputs(g, d, edge_shape, seed)
    grad = torch.randn(g.num_dst, d, generator=torch.Generator().manual_seed(seed + 1))
    sm = dataclasses.replace(g, src_dst=g.dst_idx[g.src_perm.long()].contiguous()) if with_src_dst else g
    edge_sm = inputs["edge"][g.src_perm.long()]
    kw = {}
    if into_buffer:
        rows = 2 + g.num_src
        kw["src_rows"] = torch.randperm(rows, generator=torch.Generator().manual_seed(seed + 3))[: g.num_src]
        out_csc, out_sm = (torch.randn(rows, d, generator=torch.Generator().manual_seed(seed + 2)) for _ in range(2))
        out_sm.copy_(out_csc)
    operands = {"src": inputs["src"], "dst": inputs["dst"]}
    want = kernels.gspmm_sum_backward(g, op, grad, **operands, edge=inputs["edge"], needs=("src",), backend=backend, **({"src_out": out_csc} | kw if into_buffer else {}))[0]
    got = kernels.gspmm_sum_backward(sm, op, grad, **operands, edge=edge_sm, needs=("src",), backend=backend, edge_order="source_major", **({"src_out": out_sm} | kw if into_buffer else {}))[0]
    if into_buffer:
        torch.testing.assert_close(out_sm, out_csc, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_source_major_edges_refuse_an_edge_gradient():
    g = ChunkTensors.from_coo(np.array([0, 1, 1]), np.array([1, 0, 1]), 2, 2)[0]
    for backend in ("reference", "cpu"):
        with pytest.raises(ValueError, match="no edge gradient"):
            kernels.gspmm_sum_backward(g, "src_mul_edge", torch.randn(2, 4), src=torch.randn(2, 4), edge=torch.randn(3), backend=backend, edge_order="source_major")
        with pytest.raises(ValueError, match="edge_order must be"):
            kernels.gspmm_sum_backward(g, "copy_src", torch.randn(2, 4), src=torch.randn(2, 4), backend=backend, edge_order="csr")


def test_the_cpu_backend_counts_one_array_per_edge_for_a_source_major_backward():
    from sagann.kernels import cpu

    assert cpu.sum_backward_bytes_per_edge("copy_src", 0, False) == 12  # src_idx, src_perm, dst_idx
    assert cpu.sum_backward_bytes_per_edge("copy_src", 0, False, source_major=True) == 4  # src_dst alone
    assert cpu.sum_backward_bytes_per_edge("src_mul_edge", 1, False, source_major=True) == 8  # and the edge weight
    # an edge gradient reads the edges in CSC order: the three arrays, the data and its gradient
    assert cpu.sum_backward_bytes_per_edge("src_mul_edge", 1, True, source_major=True) == 20


def _rows_of_many_lengths():
    """A chunk whose destination rows (and source rows) have 0, 1, 3, 15, 16, 17 and 40 edges."""
    lengths = [0, 1, 3, 15, 16, 17, 40]
    rng = np.random.default_rng(4)
    dst = np.repeat(np.arange(len(lengths)), lengths)
    src = np.repeat(rng.permutation(len(lengths)), lengths)  # every source row's out-degree is one of the lengths too
    src = np.where(rng.random(dst.size) < 0.2, rng.integers(0, len(lengths), dst.size), src)  # and some scattered
    order = rng.permutation(dst.size)  # edges not in row order
    return ChunkTensors.from_coo(src[order], dst[order], len(lengths), len(lengths))[0]


def _widths_at_the_vector_edges():
    """Widths either side of one vector and of one register tile of the CPU gather-sum (float32)."""
    from sagann.kernels._row_gather import TILE_VECTORS, VECTOR_BYTES

    lanes = VECTOR_BYTES // 4
    tile = lanes * TILE_VECTORS
    return [1, 5, lanes - 1, lanes, lanes + 1, tile - 1, tile, tile + 1, 2 * tile + 3]


@pytest.mark.parametrize("edge_order", ["csc", "source_major"])
@pytest.mark.parametrize("op,edge_shape", [("copy_src", "col"), ("src_mul_edge", "vec"), ("src_mul_edge", "col"), ("src_add_dst", "col")])
@pytest.mark.parametrize("d", _widths_at_the_vector_edges())
def test_rows_and_widths_at_the_vector_edges(op, edge_shape, d, edge_order):
    """Forward sums, mean and the direct backward (CSC order or source-major) on rows of many lengths,
    at widths where the gather-sum's vectors and register tiles begin and end."""
    g = _rows_of_many_lengths()
    inputs = _inputs(g, d, edge_shape, seed=d)
    for reduce in ("sum", "mean"):
        want, _ = kernels.gspmm(g, op, reduce, **inputs, backend="reference")
        got, _ = kernels.gspmm(g, op, reduce, **inputs, backend="cpu")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grad = torch.randn(g.num_dst, d, generator=torch.Generator().manual_seed(d))
    want = _autograd_grads(g, op, inputs, grad)["src"]
    edge = inputs["edge"]
    if edge_order == "source_major":
        g = dataclasses.replace(g, src_dst=g.dst_idx[g.src_perm.long()])
        edge = edge[g.src_perm.long()]
    got = kernels.gspmm_sum_backward(g, op, grad, src=inputs["src"], edge=edge, dst=inputs["dst"], needs=("src",), backend="cpu", edge_order=edge_order)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
