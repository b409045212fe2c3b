"""CudaMeter's bookkeeping over torch's allocator statistics, checked against a stand-in allocator (no GPU needed)."""
from __future__ import annotations

import pytest
import torch

from sagann.scheduler.meter import CudaMeter


class FakeAllocator:
    """torch.cuda's allocated-bytes statistics: the bytes live now and their peak since the last reset."""

    def __init__(self):
        self.allocated = self.peak = 0

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n: int) -> None:
        self.allocated -= n

    def reset_peak(self, device=None) -> None:
        self.peak = self.allocated


@pytest.fixture
def allocator(monkeypatch):
    fake = FakeAllocator()
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: fake.allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: fake.peak)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset_peak)
    return fake


def test_a_pass_peak_leaves_out_what_was_there_before(allocator):
    meter = CudaMeter(torch.device("cuda", 0))
    allocator.alloc(500)  # the model's weights, the CUDA context's workspaces
    with meter.measure():
        allocator.alloc(100)
        allocator.free(100)
        allocator.alloc(40)
    assert meter.peak == 100 and meter.passes == 1


def test_a_paused_window_is_not_the_pass_peak(allocator):
    """A transfer-cost measurement inside a pass allocates more than the pass; only the pass's own bytes count."""
    meter = CudaMeter(torch.device("cuda", 0))
    with meter.measure():
        allocator.alloc(100)
        with meter.paused():
            allocator.alloc(4000)
            allocator.free(4000)
        allocator.alloc(50)
    assert meter.peak == 150


def test_the_peak_before_a_pause_is_kept(allocator):
    meter = CudaMeter(torch.device("cuda", 0))
    with meter.measure():
        allocator.alloc(300)
        allocator.free(280)
        with meter.paused():
            allocator.alloc(4000)
            allocator.free(4000)
        allocator.alloc(10)
    assert meter.peak == 300


def test_without_a_pause_the_window_counts(allocator):
    meter = CudaMeter(torch.device("cuda", 0))
    with meter.measure():
        allocator.alloc(100)
        allocator.alloc(4000)
        allocator.free(4000)
    assert meter.peak == 4100


def test_a_pause_outside_a_pass_changes_nothing(allocator):
    meter = CudaMeter(torch.device("cuda", 0))
    with meter.paused():
        allocator.alloc(4000)
    assert meter.peak == 0 and meter.passes == 0
    with meter.measure():
        allocator.alloc(7)
    assert meter.peak == 7
