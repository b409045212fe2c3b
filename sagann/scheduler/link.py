"""An emulated host link: CPU devices that share one queue their transfers as a switch's uplink would."""
from __future__ import annotations

import threading
import time

from sagann.units import format_bytes, parse_bytes


class EmulatedLink:
    """An emulated host link of ``bandwidth`` bytes/s; CpuDevices given the same one share it (a switch's uplink).

    A transfer holds the link for bytes / bandwidth (sleeping, GIL
    released, for what its copy did not already take), so transfers of
    devices sharing a link queue behind each other.
    """

    def __init__(self, bandwidth: int | str, name: str = "link"):
        self.bandwidth = parse_bytes(bandwidth)
        self.name = name
        self._lock = threading.Lock()

    def occupy(self, nbytes: int, spent: float) -> None:
        """Hold the link for ``nbytes`` of transfer, ``spent`` seconds of which the copy already took."""
        with self._lock:
            rest = nbytes / self.bandwidth - spent
            if rest > 0:
                time.sleep(rest)

    def __repr__(self) -> str:
        return f"EmulatedLink({self.name!r}, {format_bytes(self.bandwidth)}/s)"
