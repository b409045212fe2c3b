"""The numpy alias numba-cuda still names is put back only where numpy lacks it."""
from __future__ import annotations

import numpy as np

from sagann.kernels import _numba_compat


def test_a_removed_row_stack_is_restored_as_vstack(monkeypatch):
    monkeypatch.delattr(np, "row_stack", raising=False)
    assert _numba_compat.restore_removed_numpy_aliases() == ["row_stack"]
    assert np.row_stack is np.vstack
    assert _numba_compat.restore_removed_numpy_aliases() == []


def test_a_numpy_that_still_has_it_is_left_alone(monkeypatch):
    def own(tup):
        return np.vstack(tup)

    monkeypatch.setattr(np, "row_stack", own, raising=False)
    assert _numba_compat.restore_removed_numpy_aliases() == []
    assert np.row_stack is own
