"""Prefetching: a loader thread runs load jobs ahead of the consumer, a bounded number at a time.

Mechanism only; what to load and in which order is the planner's. Invariants:

* at most ``depth`` loaded items wait for the consumer, plus one the loader
  holds while it waits to queue it, plus the one in use
  (:func:`live_sub_chunks`): the plan budgets exactly that;
* an exception in the loader reaches the consumer at its next ``next()``,
  wrapped with the job's label, and within ``POLL_SECONDS`` if the consumer
  is already waiting;
* if the consumer stops early (an exception of its own, a break), the loader
  is told to stop, is joined, and every item it loaded but nobody consumed is
  released through ``release`` — nothing leaks, nothing hangs.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")
POLL_SECONDS = 0.05
JOIN_SECONDS = 10.0


def live_sub_chunks(depth: int) -> int:
    """Items alive at once: ``depth`` queued, one the loader holds while its put waits, one in use."""
    return depth + 2 if depth > 0 else 1


def pipelining(prefetch: int | str | None, overlaps: bool) -> bool | None:
    """Does a pass prefetch (``ScheduleConfig.prefetch``; ``overlaps``: its loads can run beside compute)? False: no;
    True: a fixed depth > 0; None: as deep as the budget allows."""
    if prefetch is None:
        return None if overlaps else False
    if prefetch == "max":
        return None
    return prefetch > 0


def planned_in_flight(prefetch: int | str | None, overlaps: bool) -> int:
    """Sub-chunks a partition's working set first counts at once (:func:`pipelining`): a fixed depth's, one
    prefetched for "as deep as fits", none queued where loads cannot overlap."""
    pipelined = pipelining(prefetch, overlaps)
    return live_sub_chunks(0 if pipelined is False else prefetch if pipelined is True else 1)


class LoaderError(RuntimeError):
    """A load job failed in the loader thread; ``__cause__`` is the original exception."""


class _Failed:
    def __init__(self, label: str, exc: BaseException):
        self.label, self.exc = label, exc


_DONE = object()


class Prefetcher(Generic[T]):
    """Iterate over ``(label, job)`` pairs, yielding ``job()`` results loaded ``depth`` ahead.

    ``depth=0`` runs each job in the consumer's thread when it is needed (no
    overlap): the same code path with pipelining off.
    """

    def __init__(
        self,
        jobs: Iterable[tuple[str, Callable[[], T]]],
        depth: int,
        release: Callable[[T], Any] = lambda item: None,
        name: str = "sagann-loader",
    ):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self._jobs, self.depth, self._release = iter(jobs), depth, release
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        label = "?"
        try:
            for label, job in self._jobs:
                if self._stop.is_set():
                    return
                item = job()
                if not self._put(item):
                    self._release(item)
                    return
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(_Failed(label, exc))
        finally:
            self._close_jobs()

    def _close_jobs(self) -> None:
        """Close a generator of jobs, so its own clean-up (``finally``) runs in the loading thread."""
        close = getattr(self._jobs, "close", None)
        if close is not None:
            close()

    def __iter__(self) -> Iterator[T]:
        return _Stream(self)

    def _iterate(self) -> Iterator[T]:
        try:
            if self._thread is None:
                for label, job in self._jobs:
                    try:
                        held = [job()]
                    except Exception as exc:
                        raise LoaderError(f"loading {label} failed: {exc}") from exc
                    # handed over, not kept: this frame waits at the yield until the consumer asks for the next
                    # item, which may be after it has opened the next column; what it holds stays alive till then
                    yield held.pop()
                self._close_jobs()
                return
            while True:
                try:
                    item = self._queue.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    if not self._thread.is_alive():
                        raise LoaderError("the loader thread stopped without a result") from None
                    continue
                if item is _DONE:
                    return
                if isinstance(item, _Failed):
                    raise LoaderError(f"loading {item.label} failed: {item.exc}") from item.exc
                held, item = [item], None
                yield held.pop()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the loader, wait for it, and release what it loaded that nobody used."""
        self._stop.set()
        if self._thread is None:
            self._close_jobs()
            return
        while self._thread.is_alive():
            self._drain()
            self._thread.join(timeout=POLL_SECONDS)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _DONE and not isinstance(item, _Failed):
                self._release(item)


class _Stream(Generic[T]):
    """The consumer's side of a :class:`Prefetcher`: an iterator whose ``close()`` always stops the loader.

    A bare generator closed before its first ``next()`` never runs its
    ``finally``; a consumer that fails before taking its first item (say, out
    of memory while allocating an accumulator) would leave the loader thread
    blocked and its loaded items charged to the device.
    """

    def __init__(self, owner: Prefetcher[T]):
        self._owner, self._items = owner, owner._iterate()

    def __iter__(self) -> "_Stream[T]":
        return self

    def __next__(self) -> T:
        return next(self._items)

    def close(self) -> None:
        self._items.close()
        self._owner.close()
