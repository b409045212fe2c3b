"""Forward steps that carry a column's small chunks merged compute what the in-memory layer does, within the budget."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sagann
from sagann.chunks.synthetic import rmat
from sagann.engine.models import build_model
from sagann.scheduler import batching
from tests.engine.layers import Builtin
from tests.engine.test_out_of_core import check_layer, make_inputs
from tests.measured import assert_measured_within


@pytest.fixture
def merges(monkeypatch):
    """The sub-chunks merged while the test runs (by the ids of what each merges)."""
    made = []
    real = batching.merge_chunks

    def spy(chunks):
        m = real(chunks)
        made.append(m)
        return m

    monkeypatch.setattr(batching, "merge_chunks", spy)
    return made


def _skewed(n: int = 600, e: int = 6000, seed: int = 0):
    """Four in five edges leave the first fifth of the vertices: at P = 5 each column's first chunk is big, the rest
    small (whatever the intervals' balance), so small chunks merge under the big one's bytes."""
    rng = np.random.default_rng(seed)
    src = np.where(rng.random(e) < 0.8, rng.integers(0, n // 5, e), rng.integers(0, n, e))
    ei = np.stack([src, rng.integers(0, n, e)])
    return n, np.concatenate([ei, np.stack([np.arange(n), np.arange(n)])], axis=1)  # self loops: every vertex with an edge


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("op,gather,hooks", [("copy_src", "sum", False), ("copy_src", "mean", False), ("src_mul_dst", "sum", False), ("copy_src", "sum", True)])
@pytest.mark.parametrize("copy_transfers", [False, True])
def test_merged_forward_steps_equal_the_in_memory_layer(merges, backend, op, gather, hooks, copy_transfers):
    """Values and gradients within 1e-5 of the whole-graph layer, with merged steps in the forward (a sum, a mean, a
    message reading destination rows, a source hook's terms); backward runs the chunks as cut."""
    n, ei = _skewed()
    torch.manual_seed(0)
    layer = Builtin(op, gather, 6, hooks=hooks)
    x, _ = make_inputs(n, ei.shape[1], 6)
    g = check_layer(layer, ei, n, x, None, 5, 10**6, backend=backend, copy_transfers=copy_transfers)
    assert merges, "no forward step carried merged chunks"
    forward = [r for r in g.pass_log if r.phase == "forward" and r.steps]
    assert forward and all(r.steps < 25 for r in forward), [r.steps for r in forward]  # 25 chunks, fewer steps


@pytest.mark.parametrize("model", ["gcn", "sage", "gin"])
def test_merged_steps_keep_the_measured_peak_within_the_budget(merges, model):
    """A tight budget on a skewed graph, loads copied: the device's measured peak stays within the budget while the
    forward passes carry merged chunks."""
    n = 2000
    ei = rmat(n, 30_000, seed=1)  # cut by rows' bytes, R-MAT's low-id chunks hold most edges
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(0))
    probe = sagann.ChunkedGraph(ei, n, num_chunks=1, device=sagann.CpuDevice(meter=True))
    torch.manual_seed(0)
    whole = build_model(model, 16, 16, 3)
    whole(probe, x).sum().backward()
    budget = probe.device.measured_peak_bytes // 8
    device = sagann.CpuDevice(budget, meter=True, copy_transfers=True)
    g = sagann.ChunkedGraph(ei, n, device=device)
    torch.manual_seed(0)
    m = build_model(model, 16, 16, 3)
    m(g, x).sum().backward()
    assert g.num_chunks > 2 and merges
    assert_measured_within(device)
