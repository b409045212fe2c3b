"""The seeded random stream a layer call runs its user functions under."""
import threading

import pytest
import torch

from sagann.engine.call import SeededCpuStream


def test_draws_follow_the_seed_and_leave_the_stream_where_it_was():
    torch.manual_seed(123)
    expected_after = torch.rand(4)
    torch.manual_seed(123)
    with SeededCpuStream(7, None):
        inside = torch.rand(5)
    assert torch.equal(inside, torch.rand(5, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(torch.rand(4), expected_after)


def test_an_error_inside_restores_the_stream_and_releases_the_lock():
    lock = threading.RLock()
    torch.manual_seed(5)
    expected_after = torch.rand(3)
    torch.manual_seed(5)
    with pytest.raises(RuntimeError, match="boom"):
        with SeededCpuStream(11, lock):
            torch.rand(2)
            raise RuntimeError("boom")
    assert torch.equal(torch.rand(3), expected_after)
    taken = []
    t = threading.Thread(target=lambda: taken.append(lock.acquire(timeout=5)))
    t.start()
    t.join()
    assert taken == [True]


def test_the_lock_is_held_inside():
    lock = threading.RLock()
    with SeededCpuStream(1, lock):
        taken = []
        t = threading.Thread(target=lambda: taken.append(lock.acquire(timeout=0.05)))
        t.start()
        t.join()
        assert taken == [False]
