"""This process's anonymous resident memory, as the OS counts it: read once, or its peak sampled by a thread."""
from __future__ import annotations

import threading


def anon_rss_bytes() -> int | None:
    """This process's anonymous resident memory (``RssAnon``), None where /proc does not say."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class AnonMeter:
    """Peak anonymous RSS of this process, sampled by a thread: what the OS charges, not what sagann counted."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak_bytes = anon_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sagann-anon-meter", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        now = anon_rss_bytes()
        if now is not None:
            self.peak_bytes = max(self.peak_bytes or 0, now)

    def read(self) -> int | None:
        """The peak so far, including now."""
        self._sample()
        return self.peak_bytes

    def __enter__(self) -> "AnonMeter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
