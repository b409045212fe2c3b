"""Progress inside an epoch: the executor reports each pass and each chunk step to the watchers installed here.

An out-of-core epoch on a tight budget can run hundreds of thousands of
chunk steps; a bar that moves once per epoch says nothing for minutes. The
executor calls :func:`pass_began`, :func:`step_done` and :func:`pass_ended`
(three calls, nothing else); a watcher turns them into a bar or log lines.
With no watcher installed each call is one empty-list check.

:class:`PassProgress` is the watcher ``sagann train`` installs: a tqdm bar
per pass (chunks done / total, bytes moved, ETA) on a terminal, and a
plain line every ``every`` seconds otherwise (a log file, CI). Several
devices running one pass in threads count into the same line.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Protocol, TextIO

from sagann.units import format_bytes

__all__ = ["PassProgress", "Watcher", "pass_began", "pass_ended", "step_done", "watch"]

_watchers: list["Watcher"] = []
_lock = threading.Lock()


class Watcher(Protocol):
    """What the executor tells: ``key`` identifies one device's pass (its executor)."""

    def began(self, key: int, name: str, phase: str, steps: int) -> None: ...

    def stepped(self, key: int, nbytes: int) -> None: ...

    def ended(self, key: int) -> None: ...


@contextlib.contextmanager
def watch(watcher: Watcher) -> Iterator[Watcher]:
    """Report the passes run inside the block to ``watcher``."""
    with _lock:
        _watchers.append(watcher)
    try:
        yield watcher
    finally:
        with _lock:
            _watchers.remove(watcher)
        close = getattr(watcher, "close", None)
        if close is not None:
            close()


def pass_began(executor, plan) -> None:
    """A pass of ``plan.num_steps`` chunk steps starts on ``executor``'s device."""
    if not _watchers:
        return
    for w in tuple(_watchers):
        w.began(id(executor), executor.name, plan.phase, plan.num_steps)


def step_done(executor, nbytes: int) -> None:
    """One chunk step of ``executor``'s pass finished, having moved ``nbytes`` to the device."""
    if not _watchers:
        return
    for w in tuple(_watchers):
        w.stepped(id(executor), nbytes)


def pass_ended(executor) -> None:
    """``executor``'s pass closed (finished or failed)."""
    if not _watchers:
        return
    for w in tuple(_watchers):
        w.ended(id(executor))


@dataclass
class _Pass:
    name: str
    phase: str
    steps: int
    done: int = 0
    nbytes: int = 0


class PassProgress:
    """A bar per pass on a terminal (``tty=True``), else a line every ``every`` seconds on ``stream``.

    A line reads ``GCNConv forward: 1,204/16,384 chunks (7%), 38.2 MB moved,
    4.0 s, ETA 50 s``; a pass that printed any line also prints its last.
    """

    def __init__(self, tty: bool | None = None, every: float = 5.0, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else bool(tty)
        self.every = float(every)
        self._active: dict[int, _Pass] = {}
        self._lock = threading.Lock()
        self._t0 = self._last = 0.0
        self._logged = ""  # the last line printed in this pass
        self._bar = None

    # ---- the Watcher protocol -----------------------------------------------------------------
    def began(self, key: int, name: str, phase: str, steps: int) -> None:
        with self._lock:
            if not self._active:
                self._t0 = self._last = time.perf_counter()
                self._logged = ""
            self._active[key] = _Pass(name, phase, int(steps))
            if self.tty:
                self._update_bar()

    def stepped(self, key: int, nbytes: int) -> None:
        with self._lock:
            p = self._active.get(key)
            if p is None:
                return
            p.done += 1
            p.nbytes += int(nbytes)
            if self.tty:
                self._update_bar()
            elif time.perf_counter() - self._last >= self.every:
                self._log()

    def ended(self, key: int) -> None:
        with self._lock:
            if key not in self._active:
                return
            if not self.tty and self._logged and len(self._active) == 1:
                self._log()  # the pass's last line: it finished
            del self._active[key]
            if not self._active:
                self._close_bar()

    def close(self) -> None:
        with self._lock:
            self._active.clear()
            self._close_bar()

    # ---- output ---------------------------------------------------------------------------------
    def _totals(self) -> tuple[str, int, int, int]:
        passes = list(self._active.values())
        names = sorted({f"{p.name} {p.phase}" for p in passes})
        what = names[0] if len(names) == 1 else ", ".join(names)
        devices = f" on {len(passes)} devices" if len(passes) > 1 else ""
        return what + devices, sum(p.done for p in passes), sum(p.steps for p in passes), sum(p.nbytes for p in passes)

    def line(self) -> str:
        """The current pass's progress as one line."""
        what, done, total, nbytes = self._totals()
        elapsed = time.perf_counter() - self._t0
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        eta = f", ETA {elapsed * (total - done) / done:.0f} s" if done and total > done else ""
        return f"{what}: {done:,}/{total:,} chunks{pct}, {format_bytes(nbytes)} moved, {elapsed:.1f} s{eta}"

    def _log(self) -> None:
        self._last = time.perf_counter()
        line = self.line()
        if line != self._logged:
            self._logged = line
            print(line, file=self.stream, flush=True)

    def _update_bar(self) -> None:
        from tqdm.auto import tqdm

        what, done, total, nbytes = self._totals()
        if self._bar is None:
            self._bar = tqdm(total=total, desc=what, unit="chunk", leave=False, file=self.stream, dynamic_ncols=True)
        bar = self._bar
        bar.set_postfix_str(f"{format_bytes(nbytes)} moved", refresh=False)
        if bar.total != total or bar.desc != what:  # another device joined the pass
            bar.total = total
            bar.set_description_str(what, refresh=False)
            bar.n = done
            bar.refresh()
        else:
            bar.update(done - bar.n)  # redraws at most every tqdm mininterval

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.refresh()  # the pass's last state, even where it ran faster than tqdm redraws
            self._bar.close()
            self._bar = None
