"""Measured load and compute seconds per chunk, the input of profile-guided ordering."""
from __future__ import annotations

import threading
from typing import Hashable

SMOOTHING = 0.5  # weight of the newest measurement: drift is followed within a few passes


class CostTable:
    """Exponentially smoothed ``(load_seconds, compute_seconds)`` per (pass key, chunk key)."""

    def __init__(self):
        self._table: dict[Hashable, dict[Hashable, tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def update(self, pass_key: Hashable, chunk_key: Hashable, load: float, compute: float) -> None:
        with self._lock:
            table = self._table.setdefault(pass_key, {})
            old = table.get(chunk_key)
            if old is not None:
                load = SMOOTHING * load + (1 - SMOOTHING) * old[0]
                compute = SMOOTHING * compute + (1 - SMOOTHING) * old[1]
            table[chunk_key] = (load, compute)

    def get(self, pass_key: Hashable, chunk_key: Hashable) -> tuple[float, float] | None:
        with self._lock:
            return self._table.get(pass_key, {}).get(chunk_key)

    def clear(self) -> None:
        with self._lock:
            self._table.clear()
