"""The CUDA backend against the torch reference: values, winners, gradients.

Not collected by a plain ``pytest`` run (the name has no ``test_`` prefix):
``test_cuda_sim.py`` runs this file in a child process with
``NUMBA_ENABLE_CUDASIM=1``, which must be set before numba is imported. Run
it by hand with::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/kernels/cuda_cases.py   # simulator, CPU tensors
    python -m pytest tests/kernels/cuda_cases.py                          # a real GPU, CUDA tensors

Without the simulator and without a GPU every test here is skipped. The
simulator runs each CUDA thread as a Python thread (~0.1 ms): graphs stay
tiny (<= 30 rows, <= 100 edges, d <= 8). ``_SEGMENT`` is lowered to 1-4
edges in most tests so that heavy rows take the split paths (atomics for
sums and gradients, partials + a combine pass for max/min).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import cuda

from sagann import kernels
from sagann.kernels import MESSAGE_OPS, REDUCERS, ChunkTensors, op_spec
from sagann.kernels import cuda as backend
from sagann.kernels.attention import attention_backward, attention_partials, output_corrections

if not (backend.SIMULATOR or cuda.is_available()):
    pytest.skip("no CUDA device and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

pytestmark = pytest.mark.cuda_sim
DEVICE = "cpu" if backend.SIMULATOR else "cuda"
DEFAULT_SEGMENT = backend._SEGMENT
EDGE_SHAPES = ("vec", "col", "full")  # [nnz], [nnz, 1], [nnz, d]
EDGE_OPS = tuple(op for op in MESSAGE_OPS if "edge" in op_spec(op).operands)
# (op, edge shape) pairs: ops that read no edge still get one, which must be ignored.
CONFIGS = [(op, es) for op in MESSAGE_OPS for es in (EDGE_SHAPES if op in EDGE_OPS else ("col",))]


@pytest.fixture(autouse=True)
def row_array(monkeypatch):
    """Every case fills the run-row array (graphs here are tiny; the real threshold would leave it unused)."""
    monkeypatch.setattr(backend, "ROW_ARRAY_MIN_ROWS", 0)


@pytest.fixture
def segment(monkeypatch):
    """Set the backend's segment length (edges per work item) for one test."""

    def set_segment(n: int) -> None:
        monkeypatch.setattr(backend, "_SEGMENT", n)

    return set_segment


def _graph(src, dst, num_src: int, num_dst: int, device: str = "cpu") -> ChunkTensors:
    return ChunkTensors.from_coo(np.asarray(src, np.int64), np.asarray(dst, np.int64), num_src, num_dst, device)[0]


def _values(rng: np.random.Generator, shape: tuple, kind: str, dtype=torch.float32) -> torch.Tensor:
    """``normal`` floats, or ``grid`` values (multiples of 1/4) that make exact ties likely."""
    a = rng.integers(-8, 9, size=shape) / 4.0 if kind == "grid" else rng.standard_normal(shape)
    return torch.tensor(a, dtype=dtype)


def _inputs(g: ChunkTensors, d: int, edge_shape: str, kind: str, seed: int, dtype=torch.float32) -> dict:
    rng = np.random.default_rng(seed)
    edge = {"vec": (g.nnz,), "col": (g.nnz, 1), "full": (g.nnz, d)}[edge_shape]
    return {
        "src": _values(rng, (g.num_src, d), kind, dtype),
        "edge": _values(rng, edge, kind, dtype),
        "dst": _values(rng, (g.num_dst, d), kind, dtype),
    }


def _on(g: ChunkTensors, device: str) -> ChunkTensors:
    if device == "cpu":
        return g
    fields = ("dst_ptr", "dst_idx", "src_idx", "src_ptr", "src_perm")
    return ChunkTensors(*(getattr(g, f).to(device) for f in fields), g.num_src, g.num_dst)


def _run(backend_name: str, g, op, reduce, inputs, seed: int, loss: str = "weighted", device: str = "cpu"):
    """Forward (gspmm, or gsddmm when ``reduce`` is None) and backward on ``device``; results on the CPU."""
    g = _on(g, device)
    leaves = {k: v.detach().to(device).requires_grad_() for k, v in inputs.items()}
    if reduce is None:
        out, arg = kernels.gsddmm(g, op, **leaves, backend=backend_name), None
    else:
        out, arg = kernels.gspmm(g, op, reduce, **leaves, backend=backend_name)
    if out.requires_grad:
        if loss == "weighted":
            w = _values(np.random.default_rng(seed + 1), tuple(out.shape), "normal", out.dtype).to(device)
            (out * w).sum().backward()
        else:  # a non-contiguous (expanded) output gradient
            out.sum().backward()
    grads = {k: None if v.grad is None else v.grad.cpu() for k, v in leaves.items()}
    return out.detach().cpu(), None if arg is None else arg.cpu(), grads


def _check(g, op, reduce, inputs, seed=0, rtol=1e-5, atol=1e-6, loss="weighted"):
    ref = _run("reference", g, op, reduce, inputs, seed, loss)
    got = _run("cuda", g, op, reduce, inputs, seed, loss, device=DEVICE)
    torch.testing.assert_close(got[0], ref[0], rtol=rtol, atol=atol)
    if reduce in ("max", "min"):
        assert got[1].dtype == torch.int64
        assert torch.equal(got[1], ref[1]), f"max/min winners differ:\n{got[1]}\n{ref[1]}"
    else:
        assert got[1] is None and ref[1] is None
    for name in ("src", "edge", "dst"):
        r, c = ref[2][name], got[2][name]
        assert (r is None) == (c is None), f"grad of {name}: reference {r is not None}, cuda {c is not None}"
        if r is not None:
            torch.testing.assert_close(c, r, rtol=rtol, atol=atol, msg=lambda m: f"grad of {name}: {m}")


# Every awkward case: empty rows (0, 5), isolated vertex 6, self loops (2->2,
# 4->4), multi-edges (1->3 three times, 2->2 twice), a heavy row 3 (7 edges:
# 4 segments of 2) and row 7 (3 edges: 2 segments).
FIXED_SRC = [1, 1, 1, 0, 2, 3, 4, 2, 2, 4, 0, 5, 3, 1, 2]
FIXED_DST = [3, 3, 3, 3, 3, 3, 3, 2, 2, 4, 1, 1, 7, 7, 7]


@pytest.fixture(scope="module")
def fixed_graph() -> ChunkTensors:
    return _graph(FIXED_SRC, FIXED_DST, 8, 8)


def test_the_backend_probe_compiles_and_agrees():
    backend.probe()


@pytest.mark.parametrize("reduce", REDUCERS)
@pytest.mark.parametrize("op,edge_shape", [("copy_src", "col"), ("src_mul_dst", "col"), ("src_add_edge", "full")])
def test_a_call_below_the_row_array_threshold_searches_its_rows(fixed_graph, segment, monkeypatch, op, edge_shape, reduce):
    """Small sub-chunks skip the row array: the kernels' binary search gives the same values, winners and gradients."""
    monkeypatch.setattr(backend, "ROW_ARRAY_MIN_ROWS", 1 << 30)
    segment(2)
    _check(fixed_graph, op, reduce, _inputs(fixed_graph, 3, edge_shape, "grid", seed=11))


@pytest.mark.parametrize("seg", [2, DEFAULT_SEGMENT])
@pytest.mark.parametrize("kind", ["normal", "grid"])
@pytest.mark.parametrize("reduce", REDUCERS)
@pytest.mark.parametrize("op,edge_shape", CONFIGS)
def test_gspmm_fixed(fixed_graph, segment, op, edge_shape, reduce, kind, seg):
    segment(seg)
    _check(fixed_graph, op, reduce, _inputs(fixed_graph, 3, edge_shape, kind, seed=7))


@pytest.mark.parametrize("kind", ["normal", "grid"])
@pytest.mark.parametrize("op,edge_shape", CONFIGS)
def test_gsddmm_fixed(fixed_graph, segment, op, edge_shape, kind):
    segment(2)  # for the backward's row-parallel kernels
    _check(fixed_graph, op, None, _inputs(fixed_graph, 3, edge_shape, kind, seed=11))


@pytest.mark.parametrize("reduce", REDUCERS)
def test_skewed_rectangular_graph(segment, reduce):
    """A heavy destination and a heavy source, each cut into many segments."""
    segment(4)
    rng = np.random.default_rng(3)
    num_src, num_dst, nnz = 12, 30, 60
    dst = np.minimum(rng.zipf(1.6, nnz) - 1, num_dst - 1)
    src = np.minimum(rng.zipf(1.8, nnz) - 1, num_src - 1)
    g = _graph(src, dst, num_src, num_dst)
    assert np.diff(g.dst_ptr.numpy()).max() > 12 and np.diff(g.src_ptr.numpy()).max() > 12
    for op, edge_shape in [("copy_src", "col"), ("src_mul_edge", "vec"), ("src_sub_dst", "col")]:
        _check(g, op, reduce, _inputs(g, 4, edge_shape, "grid", seed=5), atol=1e-5)


@pytest.mark.parametrize("reduce", REDUCERS + (None,))
def test_feature_tiles(fixed_graph, segment, monkeypatch, reduce):
    """Two lanes per item: d = 3 takes two feature tiles, and feature reductions stride over lanes."""
    segment(2)
    monkeypatch.setattr(backend, "_WARP", 2)
    for op, edge_shape in [
        ("src_mul_edge", "col"), ("src_mul_dst", "col"),
        ("src_dot_dst", "col"), ("copy_edge", "full"),
    ]:
        _check(fixed_graph, op, reduce, _inputs(fixed_graph, 3, edge_shape, "grid", seed=12))


@pytest.mark.parametrize("reduce", ["max", "min"])
def test_ties_across_segments_go_to_the_first_position(segment, reduce):
    """Ten equal messages in one row, cut into segments of 3: the winner is the row's first edge."""
    segment(3)
    g = _graph([0] * 10 + [1, 0], [1] * 10 + [0, 0], 2, 3)
    x = torch.tensor([[2.0, -1.0], [5.0, 5.0]])
    _check(g, "copy_src", reduce, {"src": x, "edge": torch.ones(g.nnz), "dst": torch.ones(3, 2)})
    out, arg = kernels.gspmm(_on(g, DEVICE), "copy_src", reduce, src=x.to(DEVICE), backend="cuda")
    assert torch.equal(arg.cpu()[1], torch.tensor([2, 2]))  # row 1's edges sit at CSC positions 2..11


@pytest.mark.parametrize("reduce", REDUCERS)
def test_no_edges(reduce):
    g = _graph([], [], 3, 4)
    for op, edge_shape in CONFIGS:
        _check(g, op, reduce, _inputs(g, 2, edge_shape, "normal", seed=1))
        _check(g, op, None, _inputs(g, 2, edge_shape, "normal", seed=1))
    out, arg = kernels.gspmm(_on(g, DEVICE), "copy_src", reduce, src=torch.ones(3, 2, device=DEVICE), backend="cuda")
    assert torch.equal(out.cpu(), torch.zeros(4, 2))
    if arg is not None:
        assert torch.equal(arg.cpu(), torch.full((4, 2), -1))


def test_empty_vertex_sets():
    g = _graph([], [], 0, 0)
    for reduce in REDUCERS:
        _check(g, "src_add_dst", reduce, _inputs(g, 3, "col", "normal", seed=2))


@pytest.mark.parametrize("reduce", REDUCERS)
def test_expanded_output_gradient(fixed_graph, segment, reduce):
    """``out.sum().backward()`` hands the kernel a stride-0 gradient."""
    segment(2)
    for op in ("src_mul_dst", "src_mul_edge"):
        _check(fixed_graph, op, reduce, _inputs(fixed_graph, 4, "vec", "normal", seed=4), loss="sum")


def test_only_some_inputs_require_grad(fixed_graph):
    inputs = {k: v.to(DEVICE) for k, v in _inputs(fixed_graph, 3, "full", "normal", seed=9).items()}
    g = _on(fixed_graph, DEVICE)
    src = inputs["src"].requires_grad_()
    out, _ = kernels.gspmm(g, "src_mul_edge", "sum", src=src, edge=inputs["edge"], backend="cuda")
    out.sum().backward()
    assert src.grad is not None and inputs["edge"].grad is None
    out, _ = kernels.gspmm(g, "copy_src", "max", src=inputs["dst"], backend="cuda")
    assert not out.requires_grad


def test_float64(fixed_graph, segment):
    segment(2)
    inputs = _inputs(fixed_graph, 3, "vec", "normal", seed=6, dtype=torch.float64)
    for reduce in ("sum", "max"):
        _check(fixed_graph, "src_mul_edge", reduce, inputs, rtol=1e-12, atol=1e-12)
    _check(fixed_graph, "src_dot_dst", None, inputs, rtol=1e-12, atol=1e-12)


def test_float16_computed_in_float32(fixed_graph):
    inputs = _inputs(fixed_graph, 3, "col", "grid", seed=8)
    half = {k: v.half().to(DEVICE).requires_grad_() for k, v in inputs.items()}
    g = _on(fixed_graph, DEVICE)
    out, _ = kernels.gspmm(g, "src_mul_edge", "sum", src=half["src"], edge=half["edge"], backend="cuda")
    want, _ = kernels.gspmm(fixed_graph, "src_mul_edge", "sum", src=inputs["src"], edge=inputs["edge"])
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.cpu(), want.half())
    out.float().sum().backward()
    assert half["src"].grad.dtype == torch.float16 and half["edge"].grad.shape == half["edge"].shape


def test_nan_messages_win_max_and_min(segment):
    """A NaN message propagates to the output at its first position (as the CPU backend), split rows too."""
    g = _graph([0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 1], 3, 2)
    nan = float("nan")
    x = torch.tensor([[1.0, nan], [nan, 2.0], [3.0, nan]], device=DEVICE)
    for seg in (1, 2, DEFAULT_SEGMENT):
        segment(seg)
        for reduce in ("max", "min"):
            out, arg = kernels.gspmm(_on(g, DEVICE), "copy_src", reduce, src=x, backend="cuda")
            assert torch.isnan(out).all()
            assert torch.equal(arg.cpu(), torch.tensor([[1, 0], [4, 3]]))


def test_concurrent_calls_from_threads():
    """Engine threads call kernels concurrently; results must not mix (the simulator serialises launches)."""
    rng = np.random.default_rng(0)
    graphs = [_on(_graph(rng.integers(0, 6, 20), rng.integers(0, 5, 20), 6, 5), DEVICE) for _ in range(2)]
    xs = [torch.randn(6, 2, device=DEVICE) for _ in graphs]
    want = [kernels.gspmm(g, "copy_src", "max", src=x, backend="reference") for g, x in zip(graphs, xs)]
    errors = []

    def work(i):
        try:
            for _ in range(3):
                out, arg = kernels.gspmm(graphs[i], "copy_src", "max", src=xs[i], backend="cuda")
                assert torch.equal(out, want[i][0]) and torch.equal(arg, want[i][1])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda g: kernels.gspmm(g, "src_mul_edge", "sum", src=torch.ones(8, 2), backend="cuda"), "needs `edge`"),
        (lambda g: kernels.gspmm(g, "copy_src", "sum", src=torch.ones(7, 2), backend="cuda"), "shape"),
        (lambda g: kernels.gspmm(g, "copy_src", "prod", src=torch.ones(8, 2), backend="cuda"), "known reducers"),
        (lambda g: kernels.gsddmm(g, "src_pow_dst", src=torch.ones(8, 2), backend="cuda"), "known ops"),
        (
            lambda g: kernels.gspmm(
                g, "src_add_dst", "sum", src=torch.ones(8, 2), dst=torch.ones(8, 3), backend="cuda"
            ),
            "width",
        ),
    ],
)
def test_errors_name_the_fix(fixed_graph, call, match):
    g = _on(fixed_graph, DEVICE)
    with pytest.raises(ValueError, match=match) as info:
        with torch.device(DEVICE):
            call(g)
    if match not in ("known reducers", "known ops"):  # those come from the shared op/reducer checks
        assert "sagann.kernels.cuda.gs" in str(info.value)


@pytest.mark.skipif(not backend.SIMULATOR, reason="the simulator's placement rule")
def test_simulator_wants_cpu_tensors(fixed_graph):
    with pytest.raises(ValueError, match="the chunk is on meta; under the CUDA simulator"):
        kernels.gspmm(_on(fixed_graph, "meta"), "copy_src", "sum", src=torch.ones(8, 2, device="meta"), backend="cuda")


@st.composite
def cases(draw):
    """A random chunk with empty rows, isolated vertices, self loops and multi-edges; a random segment length."""
    square = draw(st.booleans())
    num_dst = draw(st.integers(0, 7))
    num_src = num_dst if square else draw(st.integers(0, 7))
    src, dst = [], []
    if num_src and num_dst:
        m = draw(st.integers(0, 16))
        src = draw(st.lists(st.integers(0, num_src - 1), min_size=m, max_size=m))
        dst = draw(st.lists(st.integers(0, num_dst - 1), min_size=m, max_size=m))
        dup = draw(st.lists(st.integers(0, max(m - 1, 0)), max_size=4)) if m else []
        src, dst = src + [src[i] for i in dup], dst + [dst[i] for i in dup]
        if square:
            loops = draw(st.lists(st.integers(0, num_dst - 1), max_size=3))
            src, dst = src + loops, dst + loops
    g = _graph(src, dst, num_src, num_dst)
    op, edge_shape = draw(st.sampled_from(CONFIGS))
    reduce = draw(st.sampled_from(REDUCERS + (None,)))  # None: gsddmm
    d = draw(st.sampled_from([1, 3, 5]))
    kind = draw(st.sampled_from(["normal", "grid"]))
    seed = draw(st.integers(0, 2**16))
    seg = draw(st.sampled_from([1, 2, 3, DEFAULT_SEGMENT]))
    return g, op, reduce, _inputs(g, d, edge_shape, kind, seed), seed, seg


@given(case=cases())
@settings(max_examples=15, deadline=None)
def test_matches_reference_on_random_chunks(case):
    g, op, reduce, inputs, seed, seg = case
    old = backend._SEGMENT
    backend._SEGMENT = seg  # not the fixture: hypothesis runs many examples per test call
    try:
        _check(g, op, reduce, inputs, seed)
    finally:
        backend._SEGMENT = old


@given(case=cases(), into_buffer=st.booleans())
@settings(max_examples=10, deadline=None)
def test_direct_sum_backward_matches_autograd(case, into_buffer):
    """``gspmm_sum_backward`` (no recompute), optionally accumulating into rows of a larger buffer."""
    g, op, _, inputs, seed, seg = case
    if op == "src_dot_dst":
        op = "copy_src"
    ref_out, _ = kernels.gspmm(g, op, "sum", **inputs, backend="reference")
    grad = _values(np.random.default_rng(seed + 1), tuple(ref_out.shape), "normal")
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out, _ = kernels.gspmm(g, op, "sum", **leaves, backend="reference")
    if out.requires_grad:
        out.backward(grad)
    src_out = src_rows = None
    if into_buffer:
        src_out = torch.randn(g.num_src + 2, inputs["src"].shape[1], generator=torch.Generator().manual_seed(seed))
        before = src_out.clone()
        src_rows = torch.randperm(g.num_src + 2, generator=torch.Generator().manual_seed(seed + 2))[: g.num_src]
        src_out, src_rows = src_out.to(DEVICE), src_rows.to(DEVICE)
    old = backend._SEGMENT
    backend._SEGMENT = seg
    try:
        got = kernels.gspmm_sum_backward(_on(g, DEVICE), op, grad.to(DEVICE), **{k: v.to(DEVICE) for k, v in inputs.items()}, src_out=src_out, src_rows=src_rows, backend="cuda")
    finally:
        backend._SEGMENT = old
    for name, value in zip(("src", "edge", "dst"), got):
        want = leaves[name].grad
        if name == "src" and into_buffer and want is not None:
            assert value is None
            expected = before.clone()
            expected[src_rows.cpu()] += want
            torch.testing.assert_close(src_out.cpu(), expected, rtol=1e-5, atol=1e-6)
        elif want is None:
            assert value is None or not value.any(), f"{op}: unexpected grad of {name}"
        else:
            torch.testing.assert_close(value.cpu(), want, rtol=1e-5, atol=1e-6, msg=lambda m: f"grad of {name}: {m}")


# ---------------------------------------------------------------- sparse CSR product

PRODUCT_CONFIGS = [("copy_src", "col"), ("src_mul_edge", "vec"), ("src_mul_edge", "col"), ("src_mul_edge", "full")]


@pytest.mark.parametrize("product", [True, False])
@pytest.mark.parametrize("reduce", REDUCERS)
@pytest.mark.parametrize("op,edge_shape", PRODUCT_CONFIGS)
def test_csr_product_and_numba_kernels_agree_with_the_reference(fixed_graph, monkeypatch, op, edge_shape, reduce, product):
    """Sums of copy_src and scalar src_mul_edge take the CSR product where it is on; the rest keep the numba kernels."""
    monkeypatch.setattr(backend, "CSR_PRODUCT", product)
    _check(fixed_graph, op, reduce, _inputs(fixed_graph, 3, edge_shape, "normal", seed=5))


@given(case=cases(), product=st.booleans(), into=st.booleans(), source_major=st.booleans())
@settings(max_examples=20, deadline=None)
def test_block_reads_accumulation_and_source_major_weights(case, product, into, source_major):
    """``gspmm(src_rows=, out=)`` and ``gspmm_sum_backward(edge_order='source_major')`` through both paths."""
    g, _, _, inputs, seed, _ = case
    op = "src_mul_edge" if seed % 2 else "copy_src"
    gen = torch.Generator().manual_seed(seed)
    edge = torch.randn(g.nnz, generator=gen)  # one weight per edge (the cases may draw wider edge rows)
    rows = torch.randperm(g.num_src + 2, generator=gen)[: g.num_src]
    block = torch.randn(g.num_src + 2, inputs["src"].shape[1], generator=gen)
    block[rows] = inputs["src"]
    want, _ = kernels.gspmm(g, op, "sum", src=inputs["src"], edge=edge, backend="reference")
    acc = torch.randn(want.shape, generator=gen) if into else None
    expected = want + acc if into else want
    old = backend.CSR_PRODUCT
    backend.CSR_PRODUCT = product  # not monkeypatch: hypothesis runs many examples per test call
    try:
        dg = _on(g, DEVICE)
        with torch.no_grad():
            got, _ = kernels.gspmm(dg, op, "sum", src=block.to(DEVICE), edge=edge.to(DEVICE), src_rows=rows.to(DEVICE), out=None if acc is None else acc.to(DEVICE), backend="cuda")
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-6)
        grad = torch.randn(want.shape, generator=gen)
        leaf = inputs["src"].clone().requires_grad_()
        out, _ = kernels.gspmm(g, op, "sum", src=leaf, edge=edge, backend="reference")
        if out.requires_grad:
            out.backward(grad)
        want_src = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        perm = g.src_perm.long()
        if source_major:
            dg = ChunkTensors(dg.dst_ptr, dg.dst_idx, dg.src_idx, dg.src_ptr, dg.src_perm, g.num_src, g.num_dst, src_dst=dg.dst_idx[dg.src_perm.long()])
        weights = edge[perm] if source_major else edge
        d_src, _, _ = kernels.gspmm_sum_backward(
            dg, op, grad.to(DEVICE), edge=weights.to(DEVICE), needs=("src",), backend="cuda", edge_order="source_major" if source_major else "csc"
        )
        torch.testing.assert_close(d_src.cpu(), want_src, rtol=1e-5, atol=1e-6)
    finally:
        backend.CSR_PRODUCT = old


# ---------------------------------------------------------------- fused attention


@st.composite
def attention_cases(draw):
    """A chunk with empty rows, isolated sources, self loops and multi-edges; heads, width, slope, a block map."""
    num_dst = draw(st.integers(1, 7))
    num_src = draw(st.integers(1, 7))
    m = draw(st.integers(0, 18))
    src = draw(st.lists(st.integers(0, num_src - 1), min_size=m, max_size=m))
    dst = draw(st.lists(st.integers(0, num_dst - 1), min_size=m, max_size=m))
    dup = draw(st.lists(st.integers(0, max(m - 1, 0)), max_size=3)) if m else []
    src, dst = src + [src[i] for i in dup], dst + [dst[i] for i in dup]
    loops = draw(st.lists(st.integers(0, min(num_src, num_dst) - 1), max_size=2))
    g = _graph(src + loops, dst + loops, num_src, num_dst)
    heads = draw(st.sampled_from([1, 2, 3]))
    d = draw(st.sampled_from([1, 2, 5]))
    slope = draw(st.sampled_from([0.0, 0.2, 1.0]))
    return g, heads, d, slope, draw(st.integers(0, 2**16)), draw(st.booleans())


def _attention_terms(g, heads, d, seed):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randn(g.num_src, heads * d + heads, generator=gen)
    src[:, heads * d :] *= 3.0  # scores of varied sizes: the max matters
    return src, torch.randn(g.num_dst, heads, generator=gen) * 3.0


def _attention_close(a, b, what, floor: float = 0.0):
    scale = max(float(b.abs().max()) if b.numel() else 0.0, floor)
    torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=max(1e-6, 1e-5 * scale), msg=lambda m: f"{what}: {m}")


def _check_attention(g, heads, d, slope, seed, block):
    """Forward partials and backward (both ways of returning the source gradient) against the reference."""
    src, dst = _attention_terms(g, heads, d, seed)
    rows = None
    if block:  # the sources as rows of a bigger block, read in place
        rows = torch.randperm(g.num_src + 3, generator=torch.Generator().manual_seed(seed))[: g.num_src]
        big = torch.randn(g.num_src + 3, src.shape[1])
        big[rows] = src
        fwd_src = big
    else:
        fwd_src = src
    want = attention_partials(g, fwd_src, dst, heads, slope, src_rows=rows, backend="reference")
    gd = _on(g, DEVICE)
    dev_rows = None if rows is None else rows.to(DEVICE)
    got = attention_partials(gd, fwd_src.to(DEVICE), dst.to(DEVICE), heads, slope, src_rows=dev_rows, backend="cuda")
    for name, a, b in zip("mla", got, want):
        assert a.device.type == DEVICE
        empty = torch.isinf(b)
        assert torch.equal(empty, torch.isinf(a.cpu())), f"{name}: rows without edges"
        _attention_close(a.cpu().masked_fill(empty, 0), b.masked_fill(empty, 0), f"partials {name}")
    m, l, a = want
    out = (a.view(-1, heads, d) / l.clamp(min=1e-30).unsqueeze(-1)).view(a.shape)
    m = m.masked_fill(torch.isinf(m), 0.0)
    grad = torch.randn(g.num_dst, heads * d, generator=torch.Generator().manual_seed(seed + 1))
    ref_src, ref_dst = attention_backward(g, grad, out, m, l, src, dst, heads, negative_slope=slope, backend="reference")
    on = lambda t: t.to(DEVICE)  # noqa: E731
    got_src, got_dst = attention_backward(gd, on(grad), on(out), on(m), on(l), on(src), on(dst), heads, negative_slope=slope, backend="cuda")
    floor = float(ref_src.abs().max()) if ref_src.numel() else 0.0
    _attention_close(got_src, ref_src, "d_src_term")
    _attention_close(got_dst, ref_dst, "d_dst_term", floor=floor)  # a row's score gradients sum to ~0
    # the rows' corrections made once on the host (as a pass makes them) in place of the output rows
    corr = output_corrections(grad, out, heads)
    got_src, got_dst = attention_backward(gd, on(grad), None, on(m), on(l), on(src), on(dst), heads, negative_slope=slope, backend="cuda", corrections=on(corr))
    _attention_close(got_src, ref_src, "d_src_term (corrections)")
    _attention_close(got_dst, ref_dst, "d_dst_term (corrections)", floor=floor)
    into_rows = torch.randperm(g.num_src + 2, generator=torch.Generator().manual_seed(seed + 3))[: g.num_src]
    buffer = torch.randn(g.num_src + 2, heads * d + heads, generator=torch.Generator().manual_seed(seed + 2))
    expected = buffer.clone()
    expected[into_rows] += ref_src
    buffer = buffer.to(DEVICE)
    none, got_dst = attention_backward(
        gd, on(grad), on(out), on(m), on(l), on(src), on(dst), heads, negative_slope=slope, backend="cuda",
        src_out=buffer, src_rows=into_rows.to(DEVICE),
    )
    assert none is None
    _attention_close(buffer, expected, "src_out", floor=floor)
    _attention_close(got_dst, ref_dst, "d_dst_term (src_out)", floor=floor)
    wide = torch.zeros(g.num_src + 2, 2 * (heads * d + heads), device=DEVICE)
    strided = wide[:, ::2]  # not contiguous: the kernel cannot write it in place
    attention_backward(gd, on(grad), on(out), on(m), on(l), on(src), on(dst), heads, negative_slope=slope, backend="cuda",
                       src_out=strided, src_rows=into_rows.to(DEVICE))
    want_strided = torch.zeros(g.num_src + 2, heads * d + heads)
    want_strided[into_rows] += ref_src
    _attention_close(strided, want_strided, "src_out (strided)", floor=floor)


def test_attention_fixed_graph(fixed_graph):
    """Empty rows, an isolated vertex, self loops, multi-edges and a heavy row; several heads, with and without a block map."""
    for heads, d, block in ((1, 3, False), (2, 2, True), (3, 1, False)):
        _check_attention(fixed_graph, heads, d, 0.2, seed=heads, block=block)


def test_attention_feature_tiles(fixed_graph, monkeypatch):
    """Two lanes per item: columns of one head span two tiles, and the head's first lane sits in either."""
    monkeypatch.setattr(backend, "_WARP", 2)
    _check_attention(fixed_graph, 2, 3, 0.2, seed=5, block=True)


def test_attention_no_edges():
    g = _graph([], [], 3, 4)
    _check_attention(g, 2, 2, 0.2, seed=1, block=False)


@given(case=attention_cases())
@settings(max_examples=12, deadline=None)
def test_attention_matches_reference_on_random_chunks(case):
    _check_attention(*case)


@pytest.mark.parametrize("chunks, budget", [(1, None), (3, None), (3, "20KB")])
def test_gat_layer_through_the_engine(chunks, budget):
    """GATConv on a ChunkedGraph with backend='cuda' equals backend='reference': block maps and src_out accumulation included."""
    import sagann
    from sagann import profiler

    rng = np.random.default_rng(0)
    n = 24
    ei = np.concatenate([rng.integers(0, n, size=(2, 70)), np.array([[3, 3, 5], [3, 3, 7]])], axis=1)  # self loop, multi-edge
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(1))
    results = []
    for name in ("reference", "cuda"):
        torch.manual_seed(0)
        # the simulator runs on CPU tensors; on a GPU the fused kernels run on a CudaDevice
        device = sagann.CudaDevice(budget) if name == "cuda" and not backend.SIMULATOR else sagann.CpuDevice(budget)
        layer = sagann.nn.GATConv(6, 3, heads=2).to(device.torch_device)
        g = sagann.ChunkedGraph(ei, n, num_chunks=chunks, device=device, backend=name)
        xx = x.clone().requires_grad_(True)
        with profiler.profile(nvtx=False) as prof:
            out = layer(g, xx)
            probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
            grads = torch.autograd.grad((out * probe).sum(), [xx, *layer.parameters()])
        if name == "cuda":  # the fused kernels ran (the reference runs the layer's own torch code)
            assert sum(prof.counters(kernels.CALL_COUNTER + "cuda").values()) > 0
        results.append((out.detach().cpu(), [t.cpu() for t in grads], g))
    (ref, ref_grads, _), (got, got_grads, g) = results
    assert g.with_remaining_self_loops()[0].num_chunks == chunks
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("product", [True, False])
@pytest.mark.parametrize("layer_name", ["gcn", "sage-sum", "sage-mean"])
@pytest.mark.parametrize("chunks, budget", [(1, None), (3, "40KB")])
def test_sum_layers_through_the_engine(monkeypatch, layer_name, chunks, budget, product):
    """GCN and SAGE with backend='cuda' equal backend='reference', out of core too: the CSR product's forward
    (block reads, accumulation) and its source-major backward inside the passes, or the numba kernels."""
    import sagann

    from sagann.kernels import _csr_product as CSR

    monkeypatch.setattr(backend, "CSR_PRODUCT", product)
    calls = []
    for fn in ("forward_sum", "src_grad"):  # which paths ran
        real = getattr(CSR, fn)
        monkeypatch.setattr(CSR, fn, lambda *a, _real=real, _fn=fn, **k: calls.append((_fn, k.get("source_major", False))) or _real(*a, **k))
    rng = np.random.default_rng(3)
    n = 30
    ei = np.concatenate([rng.integers(0, n, size=(2, 90)), np.array([[4, 4, 6], [4, 4, 9]])], axis=1)  # self loop, multi-edge
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(1))
    make = {
        "gcn": lambda: sagann.nn.GCNConv(6, 5),
        "sage-sum": lambda: sagann.nn.SAGEConv(6, 5, aggr="sum"),
        "sage-mean": lambda: sagann.nn.SAGEConv(6, 5),
    }[layer_name]
    results = []
    for name in ("reference", "cuda"):
        torch.manual_seed(0)
        device = sagann.CudaDevice(budget) if name == "cuda" and not backend.SIMULATOR else sagann.CpuDevice(budget)
        layer = make().to(device.torch_device)
        g = sagann.ChunkedGraph(ei, n, num_chunks=chunks, device=device, backend=name)
        xx = x.clone().requires_grad_(True)
        out = layer(g, xx)
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        grads = torch.autograd.grad((out * probe).sum(), [xx, *layer.parameters()])
        results.append((out.detach().cpu(), [t.cpu() for t in grads]))
    (ref, ref_grads), (got, got_grads) = results
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if not product:
        assert not calls
    else:  # a mean is a sum and a division by the whole in-degree: its backward runs the sum's kernels too
        assert ("forward_sum", False) in calls and ("src_grad", True) in calls, calls
