"""Fused GAT attention kernels equal the oracle: softmax partials and gradients, on random chunks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sagann.kernels import ChunkTensors
from sagann.kernels.attention import attention_backward, attention_partials, output_corrections


@st.composite
def chunks(draw):
    """A chunk with empty rows, isolated sources, self loops, multi-edges; heads and width."""
    num_dst = draw(st.integers(1, 9))
    num_src = draw(st.integers(1, 9))
    m = draw(st.integers(0, 40))
    src = draw(st.lists(st.integers(0, num_src - 1), min_size=m, max_size=m))
    dst = draw(st.lists(st.integers(0, num_dst - 1), min_size=m, max_size=m))
    g = ChunkTensors.from_coo(np.asarray(src, np.int64), np.asarray(dst, np.int64), num_src, num_dst)[0]
    heads = draw(st.sampled_from([1, 2, 4]))
    d = draw(st.sampled_from([1, 3, 8]))
    slope = draw(st.sampled_from([0.0, 0.2, 1.0]))
    return g, heads, d, slope, draw(st.integers(0, 2**16))


def _terms(g, heads, d, seed, spread=3.0):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randn(g.num_src, heads * d + heads, generator=gen)
    src[:, heads * d :] *= spread  # scores of varied sizes: the max matters
    return src, torch.randn(g.num_dst, heads, generator=gen) * spread


def _close(a, b, what, floor: float = 0.0):
    """Within 1e-5 of the scale (the tensor's, or ``floor``): softmax gradients cancel to ~0, leaving fp32 noise there."""
    scale = max(float(b.abs().max()) if b.numel() else 0.0, floor)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=max(1e-6, 1e-5 * scale), msg=lambda m: f"{what}: {m}")


@given(case=chunks(), block=st.booleans())
@settings(max_examples=150, deadline=None)
def test_partials_equal_the_oracle(case, block):
    g, heads, d, slope, seed = case
    src, dst = _terms(g, heads, d, seed)
    want = attention_partials(g, src, dst, heads, slope, backend="reference")
    rows = None
    if block:  # the sources as rows of a bigger block, read in place
        rows = torch.randperm(g.num_src + 3, generator=torch.Generator().manual_seed(seed))[: g.num_src]
        big = torch.randn(g.num_src + 3, src.shape[1])
        big[rows] = src
        src = big
    for backend in ("reference", "cpu"):
        got = attention_partials(g, src, dst, heads, slope, src_rows=rows, backend=backend)
        for name, a, b in zip("mla", got, want):
            empty = torch.isinf(b)
            assert torch.equal(empty, torch.isinf(a)), f"{backend} {name}: rows without edges"
            _close(a.masked_fill(empty, 0), b.masked_fill(empty, 0), f"{backend} {name}")


@given(case=chunks(), cuts=st.lists(st.integers(0, 40), max_size=3))
@settings(max_examples=150, deadline=None)
def test_partials_merged_into_running_sums_equal_the_whole_chunk(case, cuts):
    """Edges split into sub-chunks (some empty), each merged online into running (m, l, a): the whole chunk's partials."""
    g, heads, d, slope, seed = case
    src, dst = _terms(g, heads, d, seed)
    want = attention_partials(g, src, dst, heads, slope, backend="reference")
    csc_src, csc_dst = g.src_idx.long().numpy(), g.dst_idx.long().numpy()
    edges = np.arange(g.nnz)
    bounds = sorted({0, g.nnz, *(min(c, g.nnz) for c in cuts)})
    for backend in ("reference", "cpu"):
        run = (torch.full((g.num_dst, heads), float("-inf")), torch.zeros(g.num_dst, heads), torch.zeros(g.num_dst, heads * d))
        for lo, hi in zip(bounds, bounds[1:] or [0]):
            part = edges[lo:hi]
            sub = ChunkTensors.from_coo(csc_src[part], csc_dst[part], g.num_src, g.num_dst)[0]
            assert attention_partials(sub, src, dst, heads, slope, backend=backend, into=run) is run
        for name, a, b in zip("mla", run, want):
            empty = torch.isinf(b)
            assert torch.equal(empty, torch.isinf(a)), f"{backend} {name}: rows without edges"
            _close(a.masked_fill(empty, 0), b.masked_fill(empty, 0), f"{backend} {name}")


def test_partials_into_rejects_a_wrong_accumulator():
    g = ChunkTensors.from_coo(np.array([0, 1]), np.array([1, 0]), 2, 2)[0]
    src, dst = torch.randn(2, 6), torch.randn(2, 2)
    good = (torch.full((2, 2), float("-inf")), torch.zeros(2, 2), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="into's a"):
        attention_partials(g, src, dst, 2, backend="cpu", into=good[:2] + (torch.zeros(2, 4, dtype=torch.float64),))
    with pytest.raises(ValueError, match="into must be a tuple"):
        attention_partials(g, src, dst, 2, backend="cpu", into=good[:2])


def _final(g, src, dst, heads, slope):
    """The whole chunk's softmax: final max, sum and normalised output (as the engine saves them)."""
    m, l, a = attention_partials(g, src, dst, heads, slope)
    d = a.shape[1] // heads
    out = (a.view(-1, heads, d) / l.clamp(min=1e-30).unsqueeze(-1)).view(a.shape)
    return m.masked_fill(torch.isinf(m), 0.0), l, out


@given(case=chunks(), into=st.booleans(), source_major=st.booleans())
@settings(max_examples=150, deadline=None)
def test_backward_equals_autograd_through_the_softmax(case, into, source_major):
    """``source_major``: the chunk carries each edge's destination in source-major order (as the engine sends it)."""
    g, heads, d, slope, seed = case
    if source_major:
        g = dataclasses.replace(g, src_dst=g.dst_idx[g.src_perm.long()])
    src, dst = _terms(g, heads, d, seed)
    m, l, out = _final(g, src, dst, heads, slope)
    grad = torch.randn(g.num_dst, heads * d, generator=torch.Generator().manual_seed(seed + 1))
    # the truth: autograd through a plain softmax over each row's edges
    s_leaf, t_leaf = src.clone().requires_grad_(True), dst.clone().requires_grad_(True)
    w = heads * d
    s_idx, d_idx = g.src_idx.long(), g.dst_idx.long()
    score = torch.nn.functional.leaky_relu(s_leaf[s_idx, w:] + t_leaf[d_idx], slope)
    mx = score.new_full((g.num_dst, heads), float("-inf")).scatter_reduce(0, d_idx.unsqueeze(-1).expand(-1, heads), score, "amax")
    e = torch.exp(score - mx[d_idx])
    alpha = e / torch.zeros(g.num_dst, heads).index_add(0, d_idx, e)[d_idx]
    truth = torch.zeros(g.num_dst, heads, d).index_add(0, d_idx, alpha.unsqueeze(-1) * s_leaf[s_idx, :w].view(-1, heads, d)).view(g.num_dst, w)
    want_src, want_dst = torch.autograd.grad(truth, [s_leaf, t_leaf], grad, allow_unused=True) if g.nnz else (torch.zeros_like(src), torch.zeros_like(dst))
    for backend in ("reference", "cpu"):
        kw = {}
        if into:
            kw["src_rows"] = torch.randperm(g.num_src + 2, generator=torch.Generator().manual_seed(seed))[: g.num_src]
            kw["src_out"] = torch.randn(g.num_src + 2, w + heads, generator=torch.Generator().manual_seed(seed + 2))
            before = kw["src_out"].clone()
        got_src, got_dst = attention_backward(g, grad, out, m, l, src, dst, heads, negative_slope=slope, backend=backend, **kw)
        if into:
            assert got_src is None
            before[kw["src_rows"]] += want_src
            _close(kw["src_out"], before, f"{backend} src_out")
        else:
            _close(got_src, want_src, f"{backend} d_src_term")
        # a row's score gradients sum to ~0 (softmax is shift-invariant): judge them on the pass's scale
        _close(got_dst, want_dst, f"{backend} d_dst_term", floor=float(want_src.abs().max()) if want_src.numel() else 0.0)


@given(case=chunks())
@settings(max_examples=60, deadline=None)
def test_a_linear_score_leaves_no_destination_gradient(case):
    """Slope 1: the score is linear in the destination term, which then shifts a row's scores alike, and softmax
    ignores shifts: its gradient is exactly zero, not a residue of cancelling terms."""
    g, heads, d, _, seed = case
    src, dst = _terms(g, heads, d, seed)
    m, l, out = _final(g, src, dst, heads, 1.0)
    grad = torch.randn(g.num_dst, heads * d, generator=torch.Generator().manual_seed(seed + 1))
    for backend in ("reference", "cpu"):
        _, got_dst = attention_backward(g, grad, out, m, l, src, dst, heads, negative_slope=1.0, backend=backend)
        assert torch.equal(got_dst, torch.zeros_like(dst)), backend


def test_the_destination_gradient_of_a_saturated_row_is_accurate():
    """Rows of a thousand edges, whose score gradients sum to nearly zero: within 1e-5 of float64 autograd."""
    torch.manual_seed(0)
    heads, d, slope, num_src, num_dst, degree = 4, 16, 0.2, 2000, 40, 1000
    src_ids = torch.randint(0, num_src, (num_dst * degree,)).numpy()
    g = ChunkTensors.from_coo(src_ids, np.repeat(np.arange(num_dst), degree), num_src, num_dst)[0]
    src, dst = _terms(g, heads, d, 1)
    m, l, out = _final(g, src, dst, heads, slope)
    grad = torch.randn(g.num_dst, heads * d)

    def autograd_dst(dtype):
        s, t = src.to(dtype), dst.to(dtype).requires_grad_(True)
        w, s_idx, d_idx = heads * d, g.src_idx.long(), g.dst_idx.long()
        score = torch.nn.functional.leaky_relu(s[s_idx, w:] + t[d_idx], slope)
        top = score.new_full((num_dst, heads), float("-inf")).scatter_reduce(0, d_idx.unsqueeze(-1).expand(-1, heads), score, "amax")
        e = torch.exp(score - top[d_idx])
        alpha = e / e.new_zeros(num_dst, heads).index_add(0, d_idx, e)[d_idx]
        outs = e.new_zeros(num_dst, heads, d).index_add(0, d_idx, alpha.unsqueeze(-1) * s[s_idx, :w].view(-1, heads, d))
        return torch.autograd.grad(outs.view(num_dst, w), t, grad.to(dtype))[0]

    truth = autograd_dst(torch.float64)
    error = lambda got: float((got.double() - truth).abs().max() / truth.abs().max())  # noqa: E731
    for backend in ("reference", "cpu"):
        _, got = attention_backward(g, grad, out, m, l, src, dst, heads, negative_slope=slope, backend=backend)
        assert error(got) < 1e-5, (backend, error(got))


def test_bad_calls_name_the_problem():
    g = ChunkTensors.from_coo(np.array([0, 1]), np.array([1, 0]), 2, 2)[0]
    src, dst = torch.randn(2, 6), torch.randn(2, 2)
    with pytest.raises(ValueError, match="dst_term must be"):
        attention_partials(g, src, torch.randn(2, 3), 2)
    with pytest.raises(ValueError, match="src_term must be"):
        attention_partials(g, torch.randn(2, 3), dst, 2)
    with pytest.raises(ValueError, match="unknown backend"):
        attention_partials(g, src, dst, 2, backend="tpu")
    with pytest.raises(ValueError, match="float32"):
        attention_partials(g, src.double(), dst.double(), 2)


@given(case=chunks())
@settings(max_examples=80, deadline=None)
def test_backward_from_corrections_equals_backward_from_output_rows(case):
    """The rows' corrections made once (as a pass makes them for all its sub-chunks) give the very gradients that the
    output rows give, bit for bit: the same float64 dot per row and head."""
    g, heads, d, slope, seed = case
    src, dst = _terms(g, heads, d, seed)
    m, l, out = _final(g, src, dst, heads, slope)
    grad = torch.randn(g.num_dst, heads * d, generator=torch.Generator().manual_seed(seed + 1))
    corr = output_corrections(grad, out, heads)
    per_head = (grad.double() * out.double()).view(-1, heads, d).sum(-1)
    torch.testing.assert_close(corr, per_head, rtol=1e-12, atol=1e-12)
    want = attention_backward(g, grad, out, m, l, src, dst, heads, negative_slope=slope, backend="cpu")
    got = attention_backward(g, grad, None, m, l, src, dst, heads, negative_slope=slope, backend="cpu", corrections=corr)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(corr, output_corrections(grad, out, heads)), "the corrections were overwritten"
    into = torch.full((g.num_dst, heads), float("nan"), dtype=torch.float64)
    assert output_corrections(grad, out, heads, into=into) is into and torch.equal(into, corr)


def test_corrections_are_refused_where_the_backend_reads_output_rows():
    g = ChunkTensors.from_coo(np.array([0, 1]), np.array([1, 0]), 2, 2)[0]
    src, dst = torch.randn(2, 6), torch.randn(2, 2)
    grad, m, l = torch.randn(2, 4), torch.zeros(2, 2), torch.ones(2, 2)
    corr = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="reads the output rows"):
        attention_backward(g, grad, None, m, l, src, dst, 2, backend="reference", corrections=corr)
    with pytest.raises(ValueError, match="float64"):
        attention_backward(g, grad, None, m, l, src, dst, 2, backend="cpu", corrections=corr.float())
    with pytest.raises(ValueError, match="out must be"):
        attention_backward(g, grad, None, m, l, src, dst, 2, backend="cpu")
    with pytest.raises(ValueError, match="corrections must be"):
        attention_backward(g, grad, None, m, l, src, dst, 2, backend="cpu", corrections=corr[:1])
    with pytest.raises(ValueError, match="into must be"):
        output_corrections(grad, grad, 2, into=torch.zeros(2, 2))
