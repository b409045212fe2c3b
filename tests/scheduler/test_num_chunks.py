"""The smallest-P search on its own: a fake working set that shrinks with P."""
from __future__ import annotations

import dataclasses
import gc
import weakref

import pytest

from sagann.scheduler import num_chunks
from sagann.scheduler.memory_model import WorkingSet
from sagann.scheduler.num_chunks import BudgetTooSmall, choose_num_chunks


@dataclasses.dataclass
class _Part:
    num_chunks: int


@pytest.fixture
def shrinking(monkeypatch):
    """Working set 1000 // P bytes; every P tried is recorded."""
    tried = []
    monkeypatch.setattr(num_chunks, "working_set", lambda part, *a, **k: WorkingSet(1000 // part.num_chunks, "forward edge stage"))
    return tried, lambda p: tried.append(p) or _Part(p)


@pytest.mark.parametrize("budget,want", [(None, 1), (1000, 1), (500, 2), (90, 11), (34, 29)])
def test_the_smallest_p_that_fits(shrinking, budget, want):
    tried, make = shrinking
    part, ws = choose_num_chunks(make, 10_000, None, False, 0, budget)
    assert part.num_chunks == want and (budget is None or ws.peak_bytes <= budget)
    assert all(1000 // p > budget for p in tried if p < want), "every smaller P tried did not fit"


def test_a_lower_bound_rules_p_out_without_cutting_it(shrinking):
    tried, make = shrinking
    part, _ = choose_num_chunks(make, 10_000, None, False, 0, 100, lower_bound=lambda p: 1000 // p)
    assert part.num_chunks == 10 and all(1000 // p <= 100 for p in tried)


def test_no_p_fits_names_the_bytes_needed(shrinking):
    _, make = shrinking
    with pytest.raises(BudgetTooSmall, match="even 8 chunks need 125 bytes"):
        choose_num_chunks(make, 8, None, False, 0, 10)


def test_no_p_fits_names_parameters_that_alone_overrun_the_budget(shrinking):
    _, make = shrinking
    with pytest.raises(BudgetTooSmall, match="parameters and their gradients alone take 40 of them"):
        choose_num_chunks(make, 8, None, False, 20, 30)
    with pytest.raises(BudgetTooSmall) as small:  # parameters that fit are not blamed
        choose_num_chunks(make, 8, None, False, 2, 10)
    assert "parameters" not in str(small.value)


@pytest.mark.parametrize("budget,want", [(1000, 1), (500, 2), (90, 11), (34, 29)])
def test_the_search_holds_one_partition_at_a_time(shrinking, budget, want):
    """Host RSS: while a P is cut, no earlier candidate is still alive (the best is cut again if it was dropped)."""
    tried, make = shrinking
    alive: list[weakref.ref] = []

    def cut(p):
        gc.collect()
        held = sum(r() is not None for r in alive)
        assert held == 0, f"{held} partition(s) still held while P = {p} is cut"
        part = make(p)
        alive.append(weakref.ref(part))
        return part

    part, _ = choose_num_chunks(cut, 10_000, None, False, 0, budget)
    assert part.num_chunks == want


def _random_partition(num_chunks: int, sub: int):
    import numpy as np

    from sagann.chunks.partition import partition_graph

    edges = np.random.default_rng(0).integers(0, 2000, size=(2, 6000))
    return partition_graph(edges, 2000, num_chunks, sub)


def test_a_partition_of_many_small_sub_chunks_warns_once_it_is_chosen(monkeypatch):
    fine = _random_partition(40, 4)  # 1,600 chunks of ~4 edges
    monkeypatch.setattr(num_chunks, "FINE_SUB_CHUNKS", 1000)
    with pytest.warns(num_chunks.FinePartitionWarning, match=r"P = 40 intervals and [\d,]+ sub-chunks a pass, \d edges each"):
        assert num_chunks.warn_if_fine(fine, 1 << 20)
    assert not num_chunks.warn_if_fine(fine, None)  # no budget chose it: nothing to raise
    assert not num_chunks.warn_if_fine(_random_partition(4, 1 << 20), 1 << 20)  # few, large sub-chunks


def test_the_planner_warns_of_a_fine_partition_once(monkeypatch):
    import warnings

    import torch

    import sagann

    monkeypatch.setattr(num_chunks, "FINE_SUB_CHUNKS", 400)  # above the step calibration's 128
    monkeypatch.setattr(num_chunks, "FINE_EDGES", 10_000)
    edges = torch.randint(0, 600, (2, 3000), generator=torch.Generator().manual_seed(0))
    x = torch.randn(600, 32)
    layer = sagann.nn.GCNConv(32, 32)
    g = sagann.ChunkedGraph(edges, 600, num_chunks=8, sub_chunk_nnz=4, device=sagann.CpuDevice("8MB"))  # fixed: no timing decides it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            layer(g, x).sum().backward()
    fine = [w for w in caught if issubclass(w.category, num_chunks.FinePartitionWarning)]
    assert g.num_chunks > 1 and len(fine) == 1, [str(w.message) for w in caught]
    unbudgeted = sagann.ChunkedGraph(edges, 600, device=sagann.CpuDevice())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(unbudgeted, x).sum().backward()
    assert not [w for w in caught if issubclass(w.category, num_chunks.FinePartitionWarning)]
