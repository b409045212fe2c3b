"""The prefetcher: order kept, errors surface fast with their label, nothing leaks or hangs."""
from __future__ import annotations

import threading
import time

import pytest

from sagann.scheduler.pipeline import LoaderError, Prefetcher


def jobs(n, fail_at=None, delay=0.0):
    def make(k):
        def job():
            time.sleep(delay)
            if k == fail_at:
                raise ValueError(f"boom at {k}")
            return k

        return job

    return [(f"job {k}", make(k)) for k in range(n)]


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_order_is_kept(depth):
    assert list(Prefetcher(jobs(20), depth)) == list(range(20))


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_loader_error_surfaces_with_label(depth):
    with pytest.raises(LoaderError, match="job 5 failed: boom at 5") as info:
        list(Prefetcher(jobs(10, fail_at=5), depth))
    assert isinstance(info.value.__cause__, ValueError)


def test_error_surfaces_within_a_second_while_consumer_waits():
    def slow_then_fail():
        time.sleep(0.2)
        raise RuntimeError("disk gone")

    t0 = time.perf_counter()
    with pytest.raises(LoaderError, match="disk gone"):
        for _ in Prefetcher([("a", lambda: 1), ("b", slow_then_fail)], 2):
            pass
    assert time.perf_counter() - t0 < 1.0 + 0.2


def test_consumer_failure_stops_loader_and_releases_unused_items():
    released, made = [], []
    lock = threading.Lock()

    def make(k):
        def job():
            with lock:
                made.append(k)
            return k

        return job

    p = Prefetcher([(str(k), make(k)) for k in range(100)], depth=4, release=released.append)
    with pytest.raises(KeyError):
        for item in p:
            if item == 2:
                raise KeyError("consumer broke")
    assert p._thread is not None and not p._thread.is_alive()
    consumed = {0, 1, 2}
    assert set(made) == consumed | set(released), "every loaded item was consumed or released"
    assert len(made) <= 3 + 4 + 1, "the loader never ran more than depth ahead"


def test_early_break_releases():
    released = []
    p = Prefetcher(jobs(50, delay=0.001), depth=3, release=released.append)
    for item in p:
        if item == 1:
            break
    p.close()
    assert not p._thread.is_alive()


def test_negative_depth_rejected():
    with pytest.raises(ValueError, match="depth"):
        Prefetcher([], -1)


def test_loader_runs_while_consumer_works():
    """With depth >= 1, job k+1 starts while the consumer still holds item k (real overlap)."""
    started = [threading.Event() for _ in range(6)]

    def make(k):
        def job():
            started[k].set()
            return k

        return job

    for item in Prefetcher([(str(k), make(k)) for k in range(6)], depth=1):
        if item + 1 < 6:
            assert started[item + 1].wait(timeout=5), f"job {item + 1} did not start while item {item} was held"


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_live_items_never_exceed_the_planned_count(depth):
    """At most live_sub_chunks(depth) items exist between load and release (what the planner budgets)."""
    from sagann.scheduler.pipeline import live_sub_chunks

    lock, live, peak = threading.Lock(), [0], [0]

    class Item:
        def __init__(self):
            with lock:
                live[0] += 1
                peak[0] = max(peak[0], live[0])

        def close(self):
            with lock:
                live[0] -= 1

    for item in Prefetcher([(str(k), Item) for k in range(40)], depth, release=Item.close):
        time.sleep(0.002)  # a slow consumer lets the loader fill everything it may
        item.close()
    assert peak[0] <= live_sub_chunks(depth)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_an_item_the_consumer_dropped_is_freed_before_the_next_load(depth):
    """The prefetcher keeps no reference to what it handed out: a sub-chunk's memory goes when its consumer is done, not after
    the next sub-chunk has loaded (with depth 0 that made two sub-chunks' loads live where the plan counts one)."""
    import weakref

    from sagann.scheduler.pipeline import live_sub_chunks

    class Item:
        pass

    alive, peak = weakref.WeakSet(), [0]

    def make():
        peak[0] = max(peak[0], len(alive) + 1)  # the items alive while this one is made, and this one
        item = Item()
        alive.add(item)
        return item

    for item in Prefetcher([(str(k), make) for k in range(30)], depth):
        time.sleep(0.002)  # a slow consumer lets a loader thread fill everything it may
        del item
    assert peak[0] <= live_sub_chunks(depth)


@pytest.mark.parametrize("depth", [0, 2])
def test_the_stream_holds_no_item_between_two_next_calls(depth):
    """Between handing an item out and the consumer's next ``next()``, the prefetcher keeps no reference to it: a column's last
    sub-chunk (and the column's rows its inputs point at) goes when the consumer drops it, even if the consumer then opens the
    next column before asking for more (a 35 % overrun of the budget, measured, while the generator sat at its yield)."""
    import gc
    import weakref

    class Item:
        pass

    stream = iter(Prefetcher([(str(k), Item) for k in range(4)], depth))
    for _ in range(3):
        ref = weakref.ref(next(stream))
        gc.collect()
        assert ref() is None, "the stream kept the item it handed out"
    stream.close()


def test_closing_before_the_first_item_stops_the_loader_and_releases():
    """A consumer that fails before its first next() (e.g. out of memory on its own buffers) still stops the loader."""
    released = []
    stream = iter(Prefetcher(jobs(20), depth=3, release=released.append))
    time.sleep(0.2)  # the loader fills the queue and blocks
    stream.close()
    p = stream._owner
    assert not p._thread.is_alive()
    assert sorted(released) == list(range(len(released))) and len(released) >= 3, "what was loaded was released"
