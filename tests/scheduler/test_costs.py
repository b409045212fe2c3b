"""The cost table: a chunk's warm-up run is replaced by its second, later runs are smoothed; the pass log's predictions
rest on settled times only."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import sagann
from sagann.scheduler.costs import SMOOTHING, CostTable


def test_the_warm_up_run_is_replaced_then_runs_are_smoothed():
    t = CostTable()
    assert t.get("pass", "E00") is None and not t.settled("pass", "E00")
    t.update("pass", "E00", 1.0, 30.0)  # the first run: compiling, cold caches
    assert t.get("pass", "E00") == (1.0, 30.0) and not t.settled("pass", "E00")
    t.update("pass", "E00", 0.2, 2.0)
    assert t.get("pass", "E00") == (0.2, 2.0) and t.settled("pass", "E00"), "the warm-up run is forgotten, not averaged in"
    t.update("pass", "E00", 0.4, 4.0)
    assert t.get("pass", "E00") == (SMOOTHING * 0.4 + (1 - SMOOTHING) * 0.2, SMOOTHING * 4.0 + (1 - SMOOTHING) * 2.0)
    assert not t.settled("pass", "E01") and not t.settled("other pass", "E00")


class _FirstEpochSlow(sagann.Layer):
    """A user layer whose ApplyEdge is slow in the first epoch only, as a first run is where kernels compile."""

    gather = "sum"
    warming = True

    def apply_edge(self, e):
        if bool(e.src.shape[0] >= 0) and self.warming:  # a Python test on a tensor: not traced (warned of), run as written
            time.sleep(0.005)
        return e.src * 0.5

    def apply_vertex(self, v, acc):
        return acc + v


def test_pass_log_predicts_from_the_third_run_on_and_never_clamps_to_zero():
    """A pass's first run pays for compiling: predicted from it, the second run read several times its time, and the
    residual learned from that pinned the next runs' predictions at 0 ms for epochs."""
    n = 2048
    edges = np.random.default_rng(0).integers(0, n, (2, 20_000))
    g = sagann.ChunkedGraph(edges, n, device=sagann.CpuDevice("200KB", copy_transfers=True))
    layer, x = _FirstEpochSlow(), torch.randn(n, 16, requires_grad=True)
    per_epoch = []
    with pytest.warns(UserWarning, match="cannot trace"):
        for _ in range(5):
            start = len(g.pass_log)
            layer(g, x).sum().backward()
            layer.warming = False
            per_epoch.append(g.pass_log[start:])
    assert g.num_chunks > 1 and all(len(p) == len(per_epoch[0]) > 0 for p in per_epoch)
    assert all(math.isnan(r.model_seconds) for p in per_epoch[:2] for r in p), "nothing predicted from a warm-up run"
    assert all(r.model_seconds > 0 for p in per_epoch[2:] for r in p if r.steps), [r.model_seconds for p in per_epoch for r in p]
