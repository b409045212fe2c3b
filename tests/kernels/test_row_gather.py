"""The IR gather-sum against a float64 loop: every flag combination, widths at the vector and tile edges, both float dtypes."""
from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from sagann.kernels import _row_gather as R

# name -> (permuted, mapped, weighted)
GATHERS = {
    "sum_rows": (False, False, False),
    "sum_mapped_rows": (False, True, False),
    "sum_weighted_rows": (False, False, True),
    "sum_weighted_mapped_rows": (False, True, True),
    "sum_permuted_rows": (True, False, False),
    "sum_weighted_permuted_rows": (True, False, True),
}


@njit
def _call(which, out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows):
    if which == 0:
        R.sum_rows(out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows)
    elif which == 1:
        R.sum_mapped_rows(out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows)
    elif which == 2:
        R.sum_weighted_rows(out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows)
    elif which == 3:
        R.sum_weighted_mapped_rows(out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows)
    elif which == 4:
        R.sum_permuted_rows(out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows)
    else:
        R.sum_weighted_permuted_rows(out, x, idx, perm, w, ptr, r0, r1, rmap, out_rows)


def _widths(itemsize: int) -> list[int]:
    lanes = R.VECTOR_BYTES // itemsize
    tile = lanes * R.TILE_VECTORS
    return [1, 3, lanes - 1, lanes, lanes + 1, 2 * lanes + 5, tile - 1, tile, tile + 1, 2 * tile + lanes + 3]


CASES = [(dtype, d) for dtype in (np.float32, np.float64) for d in _widths(np.dtype(dtype).itemsize)]


@pytest.mark.parametrize("name", list(GATHERS))
@pytest.mark.parametrize("dtype,d", CASES)
@pytest.mark.parametrize("rows_mapped", [False, True])
def test_gather_matches_a_float64_loop(name, dtype, d, rows_mapped):
    permuted, mapped, weighted = GATHERS[name]
    rng = np.random.default_rng(d * 7 + list(GATHERS).index(name))
    num_rows, num_ids, x_rows, out_rows_total = 8, 11, 19, 13
    degree = rng.integers(0, 6, num_rows)
    degree[2], degree[3] = 0, 41  # an empty row and a long one
    ptr = np.concatenate([[0], np.cumsum(degree)]).astype(np.int64)
    nnz = int(ptr[-1])
    idx = rng.integers(0, num_ids if mapped else x_rows, nnz).astype(np.uint16 if mapped else np.int32)  # the 16-bit ids a stream keeps
    perm = rng.permutation(nnz).astype(np.int32) if permuted else np.empty(0, np.int32)
    w = rng.standard_normal((nnz, 2)).astype(dtype) if weighted else np.empty((0, 0), dtype)
    x = rng.standard_normal((x_rows, d)).astype(dtype)
    rmap = rng.integers(0, x_rows, num_ids).astype(np.int32) if mapped else np.empty(0, np.int32)
    out_rows = rng.permutation(out_rows_total)[:num_rows].astype(np.int32) if rows_mapped else np.empty(0, np.int32)
    out = rng.standard_normal((out_rows_total if rows_mapped else num_rows, d)).astype(dtype)
    want = out.astype(np.float64)
    first, stop = 1, num_rows - 1  # rows outside the block stay as they were
    for r in range(first, stop):
        o = out_rows[r] if rows_mapped else r
        for p in range(ptr[r], ptr[r + 1]):
            q = perm[p] if permuted else p
            source = rmap[idx[q]] if mapped else idx[q]
            want[o] += x[source].astype(np.float64) * (float(w[q, 0]) if weighted else 1.0)
    _call(list(GATHERS).index(name), out, x, idx, perm, w, ptr, first, stop, rmap, out_rows)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)


def test_a_view_with_a_row_stride_is_refused():
    """Rows are read at a stride of the width: a column slice must not compile into wrong reads."""
    x = np.zeros((4, 8), np.float32)[:, :4]
    out = np.zeros((2, 4), np.float32)
    none = np.empty(0, np.int32)
    with pytest.raises(Exception, match="sum_rows"):
        _call(0, out, x, none, none, np.empty((0, 0), np.float32), np.zeros(3, np.int64), 0, 2, none, none)


def test_kernels_refuse_rows_narrower_than_out():
    """The gather reads as many columns of an input row as ``out`` has: a narrower input is an error, not a read past its rows."""
    from sagann.kernels import _cpu_kernels as K

    ptr, idx = np.array([0, 2], np.int64), np.array([0, 1], np.int32)
    bounds, none, empty = K.balanced_bounds(ptr, 1), np.empty(0, np.int32), np.empty((0, 0), np.float32)
    narrow, out = np.ones((2, 3), np.float32), np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match="widths differ"):
        K.spmm_sum(K.COPY_SRC, narrow, empty, empty, idx, ptr, bounds, np.empty(0, np.float32), out, none)
    grad, src_out = np.ones((2, 3), np.float32), np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="widths differ"):
        K.grad_src(K.COPY_SRC, K.ROW, grad, np.empty((0, 0), np.int32), empty, empty, np.array([0, 1], np.int32), ptr, none, bounds, none, src_out)
