"""The numba CPU backend against the torch reference: values, winners, gradients."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sagann import kernels
from sagann.kernels import MESSAGE_OPS, REDUCERS, ChunkTensors, op_spec
from sagann.kernels import _cpu_kernels as K

EDGE_SHAPES = ("vec", "col", "full")  # [nnz], [nnz, 1], [nnz, d]
EDGE_OPS = tuple(op for op in MESSAGE_OPS if "edge" in op_spec(op).operands)
# (op, edge shape) pairs: ops that read no edge still get one, which must be ignored.
CONFIGS = [(op, es) for op in MESSAGE_OPS for es in (EDGE_SHAPES if op in EDGE_OPS else ("col",))]


def _graph(src, dst, num_src: int, num_dst: int) -> ChunkTensors:
    return ChunkTensors.from_coo(np.asarray(src, np.int64), np.asarray(dst, np.int64), num_src, num_dst)[0]


def _values(rng: np.random.Generator, shape: tuple, kind: str, dtype=torch.float32) -> torch.Tensor:
    """``normal`` floats, or ``grid`` values (multiples of 1/4) that make exact ties likely."""
    if kind == "grid":
        a = rng.integers(-8, 9, size=shape) / 4.0
    else:
        a = rng.standard_normal(shape)
    return torch.tensor(a, dtype=dtype)


def _inputs(g: ChunkTensors, d: int, edge_shape: str, kind: str, seed: int, dtype=torch.float32) -> dict:
    rng = np.random.default_rng(seed)
    edge = {"vec": (g.nnz,), "col": (g.nnz, 1), "full": (g.nnz, d)}[edge_shape]
    return {
        "src": _values(rng, (g.num_src, d), kind, dtype),
        "edge": _values(rng, edge, kind, dtype),
        "dst": _values(rng, (g.num_dst, d), kind, dtype),
    }


def _run(backend: str, g: ChunkTensors, op: str, reduce: str | None, inputs: dict, seed: int, loss: str = "weighted"):
    """Forward (gspmm, or gsddmm when ``reduce`` is None) and backward; returns out, arg, grads."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    if reduce is None:
        out, arg = kernels.gsddmm(g, op, **leaves, backend=backend), None
    else:
        out, arg = kernels.gspmm(g, op, reduce, **leaves, backend=backend)
    if out.requires_grad:
        if loss == "weighted":
            w = _values(np.random.default_rng(seed + 1), tuple(out.shape), "normal", out.dtype)
            (out * w).sum().backward()
        else:  # a non-contiguous (expanded) output gradient
            out.sum().backward()
    return out.detach(), arg, {k: v.grad for k, v in leaves.items()}


def _check(g, op, reduce, inputs, seed=0, rtol=1e-5, atol=1e-6, loss="weighted"):
    ref = _run("reference", g, op, reduce, inputs, seed, loss)
    cpu = _run("cpu", g, op, reduce, inputs, seed, loss)
    torch.testing.assert_close(cpu[0], ref[0], rtol=rtol, atol=atol)
    if reduce in ("max", "min"):
        assert cpu[1].dtype == torch.int64
        assert torch.equal(cpu[1], ref[1]), "max/min winners differ"
    else:
        assert cpu[1] is None and ref[1] is None
    for name in ("src", "edge", "dst"):
        r, c = ref[2][name], cpu[2][name]
        assert (r is None) == (c is None), f"grad of {name}: reference {r is not None}, cpu {c is not None}"
        if r is not None:
            torch.testing.assert_close(c, r, rtol=rtol, atol=atol, msg=lambda m: f"grad of {name}: {m}")


# A graph with every awkward case: empty rows (0, 5), isolated vertex 6, self
# loops (2->2, 4->4), multi-edges (1->3 three times, 2->2 twice), a heavy row 3.
FIXED_SRC = [1, 1, 1, 0, 2, 3, 4, 2, 2, 4, 0, 5, 3, 1, 2]
FIXED_DST = [3, 3, 3, 3, 3, 3, 3, 2, 2, 4, 1, 1, 7, 7, 7]


@pytest.fixture(scope="module")
def fixed_graph() -> ChunkTensors:
    return _graph(FIXED_SRC, FIXED_DST, 8, 8)


@pytest.mark.parametrize("kind", ["normal", "grid"])
@pytest.mark.parametrize("reduce", REDUCERS)
@pytest.mark.parametrize("op,edge_shape", CONFIGS)
def test_gspmm_fixed(fixed_graph, op, edge_shape, reduce, kind):
    _check(fixed_graph, op, reduce, _inputs(fixed_graph, 3, edge_shape, kind, seed=7))


@pytest.mark.parametrize("kind", ["normal", "grid"])
@pytest.mark.parametrize("op,edge_shape", CONFIGS)
def test_gsddmm_fixed(fixed_graph, op, edge_shape, kind):
    _check(fixed_graph, op, None, _inputs(fixed_graph, 3, edge_shape, kind, seed=11))


@pytest.mark.parametrize("reduce", REDUCERS)
def test_rectangular_larger_graph(reduce):
    """More rows than parallel blocks, skewed degrees, a rectangular chunk."""
    rng = np.random.default_rng(3)
    num_src, num_dst, nnz = 150, 400, 6000
    dst = np.minimum(rng.zipf(1.5, nnz) - 1, num_dst - 1)
    src = rng.integers(0, num_src, nnz)
    g = _graph(src, dst, num_src, num_dst)
    for op, edge_shape in [("copy_src", "col"), ("src_mul_edge", "vec"), ("src_mul_edge", "full"), ("src_sub_dst", "col")]:
        _check(g, op, reduce, _inputs(g, 16, edge_shape, "grid", seed=5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduce", REDUCERS)
def test_no_edges(reduce):
    g = _graph([], [], 3, 4)
    for op, edge_shape in CONFIGS:
        _check(g, op, reduce, _inputs(g, 2, edge_shape, "normal", seed=1))
        _check(g, op, None, _inputs(g, 2, edge_shape, "normal", seed=1))
    out, arg = kernels.gspmm(g, "copy_src", reduce, src=torch.ones(3, 2), backend="cpu")
    assert torch.equal(out, torch.zeros(4, 2))
    if arg is not None:
        assert torch.equal(arg, torch.full((4, 2), -1))


def test_empty_vertex_sets():
    g = _graph([], [], 0, 0)
    for reduce in REDUCERS:
        _check(g, "src_add_dst", reduce, _inputs(g, 3, "col", "normal", seed=2))


@pytest.mark.parametrize("reduce", REDUCERS)
def test_expanded_output_gradient(fixed_graph, reduce):
    """``out.sum().backward()`` hands the kernel a stride-0 gradient."""
    for op in ("src_mul_dst", "src_mul_edge"):
        _check(fixed_graph, op, reduce, _inputs(fixed_graph, 4, "vec", "normal", seed=4), loss="sum")


def test_only_some_inputs_require_grad(fixed_graph):
    inputs = _inputs(fixed_graph, 3, "full", "normal", seed=9)
    src = inputs["src"].requires_grad_()
    out, _ = kernels.gspmm(fixed_graph, "src_mul_edge", "sum", src=src, edge=inputs["edge"], backend="cpu")
    out.sum().backward()
    assert src.grad is not None and inputs["edge"].grad is None
    out, _ = kernels.gspmm(fixed_graph, "copy_src", "max", src=inputs["dst"], backend="cpu")
    assert not out.requires_grad


def test_float64(fixed_graph):
    inputs = _inputs(fixed_graph, 3, "vec", "normal", seed=6, dtype=torch.float64)
    for reduce in ("sum", "max"):
        _check(fixed_graph, "src_mul_edge", reduce, inputs, rtol=1e-12, atol=1e-12)
    out, _ = kernels.gspmm(fixed_graph, "copy_src", "mean", src=inputs["src"], backend="cpu")
    assert out.dtype == torch.float64


def test_float16_computed_in_float32(fixed_graph):
    inputs = _inputs(fixed_graph, 3, "col", "grid", seed=8)
    half = {k: v.half().requires_grad_() for k, v in inputs.items()}
    out, _ = kernels.gspmm(fixed_graph, "src_mul_edge", "sum", src=half["src"], edge=half["edge"], backend="cpu")
    want, _ = kernels.gspmm(fixed_graph, "src_mul_edge", "sum", src=inputs["src"], edge=inputs["edge"])
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, want.half())
    out.float().sum().backward()
    assert half["src"].grad.dtype == torch.float16 and half["edge"].grad.shape == half["edge"].shape


def test_nan_messages_win_max_and_min():
    """A NaN message propagates to the output, at its first position.

    Deliberately not held to the reference, which turns such rows into
    (0, -1) as if they had no edges.
    """
    g = _graph([0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 1], 3, 2)
    nan = float("nan")
    x = torch.tensor([[1.0, nan], [nan, 2.0], [3.0, nan]])
    for reduce in ("max", "min"):
        out, arg = kernels.gspmm(g, "copy_src", reduce, src=x, backend="cpu")
        assert torch.isnan(out).all()
        assert torch.equal(arg, torch.tensor([[1, 0], [4, 3]]))


def test_concurrent_calls_from_threads():
    """Engine threads call kernels concurrently (nogil); results must not mix."""
    rng = np.random.default_rng(0)
    graphs = [_graph(rng.integers(0, 50, 2000), rng.integers(0, 60, 2000), 50, 60) for _ in range(2)]
    xs = [torch.randn(50, 8) for _ in graphs]
    want = [kernels.gspmm(g, "copy_src", "max", src=x, backend="reference") for g, x in zip(graphs, xs)]
    errors = []

    def work(i):
        try:
            for _ in range(20):
                out, arg = kernels.gspmm(graphs[i], "copy_src", "max", src=xs[i], backend="cpu")
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
        (lambda g: kernels.gspmm(g, "src_mul_edge", "sum", src=torch.ones(8, 2), backend="cpu"), "needs `edge`"),
        (lambda g: kernels.gspmm(g, "copy_src", "sum", src=torch.ones(7, 2), backend="cpu"), "shape"),
        (lambda g: kernels.gspmm(g, "copy_src", "prod", src=torch.ones(8, 2), backend="cpu"), "known reducers"),
        (lambda g: kernels.gsddmm(g, "src_pow_dst", src=torch.ones(8, 2), backend="cpu"), "known ops"),
        (
            lambda g: kernels.gspmm(g, "src_add_dst", "sum", src=torch.ones(8, 2), dst=torch.ones(8, 3), backend="cpu"),
            "width",
        ),
        (
            lambda g: kernels.gsddmm(g, "src_mul_edge", src=torch.ones(8, 2), edge=torch.ones(g.nnz, 3), backend="cpu"),
            "width",
        ),
    ],
)
def test_errors_name_the_fix(fixed_graph, call, match):
    with pytest.raises(ValueError, match=match):
        call(fixed_graph)


def test_integer_features_rejected(fixed_graph):
    with pytest.raises(TypeError, match="floating"):
        kernels.gspmm(fixed_graph, "copy_src", "sum", src=torch.ones(8, 2, dtype=torch.int64), backend="cpu")


@given(
    ptr=st.lists(st.integers(0, 50), min_size=1, max_size=30).map(lambda x: np.cumsum([0] + x).astype(np.int32)),
    nblocks=st.integers(1, 40),
)
@settings(max_examples=60, deadline=None)
def test_balanced_bounds(ptr, nblocks):
    bounds = K.balanced_bounds(ptr, nblocks)
    rows = len(ptr) - 1
    assert bounds[0] == 0 and bounds[-1] == rows and len(bounds) == nblocks + 1
    assert np.all(np.diff(bounds) >= 0)
    cost = ptr.astype(np.int64) + np.arange(rows + 1)
    heaviest_row = int(np.max(np.diff(cost)))
    block_cost = cost[bounds[1:]] - cost[bounds[:-1]]
    assert block_cost.max() <= cost[-1] // nblocks + 1 + heaviest_row


@st.composite
def cases(draw):
    """A random chunk with empty rows, isolated vertices, self loops and multi-edges."""
    square = draw(st.booleans())
    num_dst = draw(st.integers(0, 9))
    num_src = num_dst if square else draw(st.integers(0, 9))
    src, dst = [], []
    if num_src and num_dst:
        m = draw(st.integers(0, 25))
        src = draw(st.lists(st.integers(0, num_src - 1), min_size=m, max_size=m))
        dst = draw(st.lists(st.integers(0, num_dst - 1), min_size=m, max_size=m))
        dup = draw(st.lists(st.integers(0, max(m - 1, 0)), max_size=6)) if m else []
        src, dst = src + [src[i] for i in dup], dst + [dst[i] for i in dup]
        if square:
            loops = draw(st.lists(st.integers(0, num_dst - 1), max_size=4))
            src, dst = src + loops, dst + loops
    g = _graph(src, dst, num_src, num_dst)
    op, edge_shape = draw(st.sampled_from(CONFIGS))
    reduce = draw(st.sampled_from(REDUCERS + (None,)))  # None: gsddmm
    d = draw(st.sampled_from([1, 3, 8]))
    kind = draw(st.sampled_from(["normal", "grid"]))
    seed = draw(st.integers(0, 2**16))
    return g, op, reduce, _inputs(g, d, edge_shape, kind, seed), seed


@given(case=cases())
@settings(max_examples=300, deadline=None)
def test_matches_reference_on_random_chunks(case):
    g, op, reduce, inputs, seed = case
    _check(g, op, reduce, inputs, seed)
