"""Numba kernel that makes an index array on the device from one that crossed (see ``kernels.graph``)."""
from __future__ import annotations

from numba import njit


@njit(nogil=True, cache=True)
def expand_pointer(ptr, out):
    """``out[ptr[r]:ptr[r + 1]] = r`` for every row: each entry's row (``dst_idx`` from ``dst_ptr``)."""
    for r in range(ptr.shape[0] - 1):
        for e in range(ptr[r], ptr[r + 1]):
            out[e] = r
