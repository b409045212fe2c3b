"""The partition's numba sorts and compactions equal their numpy definitions."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sagann.chunks._sorting import compact_sources


@settings(max_examples=80, deadline=None)
@given(num_rows=st.integers(1, 5000), sources=st.lists(st.integers(0, 10**6), max_size=300))
def test_compact_sources_is_unique_inverse_and_a_stable_source_major_order(num_rows, sources):
    """Both ways of listing the rows (read off the interval, or sorted from the few seen) give numpy's answer."""
    src = np.asarray([s % num_rows for s in sources], np.int64)
    rows, idx, ptr, perm = compact_sources(src, num_rows)
    want_rows, want_idx = np.unique(src, return_inverse=True)
    assert np.array_equal(rows, want_rows) and np.array_equal(idx, want_idx.reshape(-1))
    assert np.array_equal(perm, np.argsort(want_idx.reshape(-1), kind="stable"))
    assert np.array_equal(ptr, np.concatenate([[0], np.cumsum(np.bincount(want_idx.reshape(-1), minlength=len(want_rows)))]))
    assert all(a.dtype == np.int32 for a in (rows, idx, ptr, perm))
