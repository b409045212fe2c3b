"""Whole models out of core, over random graphs, widths, depths, budgets, devices and schedules: one training step equals in memory.

``tests/test_fuzz.py`` draws single layers over every schedule option; this
draws what a user runs: a GCN, GraphSAGE, GIN or GAT of one to three layers,
a budget that is a fraction (1/2 to 1/32) of the model's own in-memory
peak, one to three devices (with or without a chain), and an automatic or
configured prefetch depth. The step's outputs and gradients must equal the
in-memory step's within 1e-5 (the gradients as one vector: a parameter
whose true gradient cancels to ~0, such as a last GAT layer's destination
attention, carries only rounding), and every device's peak, as its
allocator meter measured it, must stay within its budget. A budget no
partition fits is an answer, not a failure; so is a multi-device plan
that does not fit its configured depth (several devices share one
partition and are not re-planned).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import sagann
from sagann.chunks.synthetic import rmat
from sagann.engine.models import GAT, GCN, GIN, GraphSAGE
from sagann.scheduler.num_chunks import PassPlanTooLarge
from tests.measured import assert_measured_within

MODELS = {"gcn": GCN, "sage": GraphSAGE, "gin": GIN, "gat": GAT}
CLASSES = 5


def _graph(rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """R-MAT, uniform, a few hubs taking every edge, or edges among a quarter of the vertices (the rest isolated)."""
    kind, n = rng.integers(4), int(rng.integers(20, 400))
    m = int(n * rng.integers(1, 16))
    if kind == 0:
        ei = rmat(n, m, seed=int(rng.integers(1 << 30)))
    elif kind == 1:
        ei = np.stack([rng.integers(0, n, m), rng.integers(0, n, m)])
    elif kind == 2:
        ei = np.stack([rng.integers(0, n, m), rng.integers(0, 3, m)])
    else:
        ei = rng.integers(0, n // 4 + 1, (2, m))
    return np.asarray(ei, dtype=np.int64), n


def _step(model, g, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad()
    out = model(g, x)
    F.cross_entropy(out, y).backward()
    return out.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@given(seed=st.integers(0, 2**31 - 1))
def test_a_training_step_out_of_core_equals_in_memory(seed):
    rng = np.random.default_rng(seed)
    ei, n = _graph(rng)
    name = str(rng.choice(list(MODELS)))
    d, hidden, layers = int(rng.choice([3, 8, 16, 33])), int(rng.choice([4, 8, 16])) * (4 if name == "gat" else 1), int(rng.integers(1, 4))
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    y = torch.randint(0, CLASSES, (n,), generator=torch.Generator().manual_seed(seed + 1))
    cache = bool(rng.integers(2))

    def model():
        torch.manual_seed(0)
        return MODELS[name](d, hidden, CLASSES, num_layers=layers, dropout=0.0)

    mem = sagann.CpuDevice()
    ref_out, ref_grad = _step(model(), sagann.ChunkedGraph(ei, n, num_chunks=1, device=mem, schedule=sagann.ScheduleConfig(cache_gather=cache)), x, y)
    budget = max(1, mem.peak_bytes // int(rng.choice([2, 4, 8, 16, 32])))
    ndev = int(rng.choice([1, 1, 2, 3]))
    devices = [sagann.CpuDevice(budget, copy_transfers=bool(rng.integers(2)), name=f"dev{k}", meter=True) for k in range(ndev)]
    topology = [list(range(ndev))] if ndev > 1 and rng.random() < 0.5 else None
    prefetch = [None, 0, 1, 2, "max"][int(rng.integers(5))]
    schedule = sagann.ScheduleConfig(cache_gather=cache, prefetch=prefetch, order=str(rng.choice(["profile", "natural"])))
    try:
        g = sagann.ChunkedGraph(ei, n, device=devices if ndev > 1 else devices[0], schedule=schedule, topology=topology)
        out, grad = _step(model(), g, x, y)
    except PassPlanTooLarge:
        assert ndev > 1 and prefetch not in (None, "max"), "one device re-plans, and an automatic depth is lowered until its plan fits"
        return
    except sagann.BudgetTooSmall as exc:
        assert "no partition fits" in str(exc), exc
        return
    assert _rel(out, ref_out) <= 1e-5, f"output: {_rel(out, ref_out):.2e}"
    assert _rel(grad, ref_grad) <= 1e-5, f"gradients: {_rel(grad, ref_grad):.2e}"
    for dev in devices:
        assert dev.current_bytes == 0, f"{dev.name} still holds {dev.current_bytes} bytes"
        assert_measured_within(dev)
