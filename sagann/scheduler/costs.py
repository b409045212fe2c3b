"""Measured load and compute seconds per chunk, the input of profile-guided ordering."""
from __future__ import annotations

import threading
from typing import Hashable

SMOOTHING = 0.5  # weight of the newest measurement: drift is followed within a few passes


class CostTable:
    """Exponentially smoothed ``(load_seconds, compute_seconds)`` per (pass key, chunk key), and per pass key what a
    step cost beyond the time model (the pass log's predictions add it).

    A chunk's first measurement is a warm-up: it carries the kernels' compiling, first-touch page faults and cold
    caches (a GCN pass's first run took 30 ms where later ones took 1-4). Its second measurement replaces it instead
    of being averaged with it, and :meth:`settled` tells whether a chunk's times come from after the warm-up.
    """

    def __init__(self):
        self._table: dict[Hashable, dict[Hashable, tuple[float, float, int]]] = {}
        self._residual: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def update(self, pass_key: Hashable, chunk_key: Hashable, load: float, compute: float) -> None:
        with self._lock:
            table = self._table.setdefault(pass_key, {})
            old = table.get(chunk_key)
            runs = 1 if old is None else old[2] + 1
            if old is not None and old[2] > 1:
                load = SMOOTHING * load + (1 - SMOOTHING) * old[0]
                compute = SMOOTHING * compute + (1 - SMOOTHING) * old[1]
            table[chunk_key] = (load, compute, runs)

    def get(self, pass_key: Hashable, chunk_key: Hashable) -> tuple[float, float] | None:
        with self._lock:
            hit = self._table.get(pass_key, {}).get(chunk_key)
            return None if hit is None else hit[:2]

    def settled(self, pass_key: Hashable, chunk_key: Hashable) -> bool:
        """Have this chunk's times been measured after its warm-up run?"""
        with self._lock:
            hit = self._table.get(pass_key, {}).get(chunk_key)
            return hit is not None and hit[2] > 1

    def step_residual(self, pass_key: Hashable) -> float | None:
        """Seconds a step of this pass cost beyond the model's prediction, smoothed; None before it ran once."""
        with self._lock:
            return self._residual.get(pass_key)

    def learn_step_residual(self, pass_key: Hashable, seconds: float) -> None:
        with self._lock:
            old = self._residual.get(pass_key)
            self._residual[pass_key] = seconds if old is None else SMOOTHING * seconds + (1 - SMOOTHING) * old

    def clear(self) -> None:
        with self._lock:
            self._table.clear()
            self._residual.clear()
