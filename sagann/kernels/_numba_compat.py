"""Keep numba-cuda compiling on a numpy newer than it knows.

numba-cuda 0.30 registers, when its first kernel compiles, an overload of
``np.row_stack``: an alias of ``np.vstack`` that numpy deprecated in 2.0 and
removed in 2.5. On numpy >= 2.5 that first compile fails with ``module
'numpy' has no attribute 'row_stack'``. Restoring the alias (the same
function numpy itself pointed it at) is all numba-cuda needs; it is put
back only where numpy lacks it, and only when sagann's CUDA kernels load.
"""
from __future__ import annotations

import numpy as np


def restore_removed_numpy_aliases() -> list[str]:
    """Put back the numpy aliases numba-cuda still names; returns the names restored (empty when none was missing)."""
    restored = []
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack
        restored.append("row_stack")
    return restored
