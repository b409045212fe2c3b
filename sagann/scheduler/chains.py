"""Several devices: who owns which destination intervals, and chains that forward V_i device to device.

Ownership
---------
Each device owns a contiguous run of destination intervals, balanced by
the edges that land in them (plus one per vertex, as the intervals
themselves are balanced): :func:`assign_intervals`. A device computes
the chunks E_ij of its own columns j only, so every edge is computed on
exactly one device, and a vertex's output row is written by one device.

Chains
------
Devices under one PCIe switch (or joined by NVLink) form a **chain**
(NeuGraph, section 4.3). All devices of a chain walk the source
intervals in lockstep; V_i crosses the host link once, into the first
device of the chain that needs it, and is forwarded from there to each
further device that needs it (a device-to-device copy). Without chains
every device fetches V_i from the host itself, so the host link carries
V_i once per device instead of once per chain.

:class:`ChainRelay` does the forwarding for one pass. Each device of the
chain registers, in order, the *sync keys* of the blocks it will need
(forward: ``(round, i)``, the round being the position of the device's
destination column in its plan; backward: ``(i,)``); a producer thread
walks the union of the keys in ascending order, loads each V_i once and
hands every needing device its own copy through a one-slot inbox. A
device's loader takes its blocks in the order it registered them. The
inboxes are bounded, so a slow device holds its chain back (lockstep)
instead of letting blocks pile up; nothing waits on a device further
down the chain, so there is no cycle and no deadlock. Any failure (the
producer's, or a device's) aborts the relay, and every waiter raises
within ``POLL_SECONDS``.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np
import torch

from sagann import profiler
from sagann.scheduler.devices import Device, Scope
from sagann.scheduler.executor import load_in_pieces, widen
from sagann.units import tensor_bytes

POLL_SECONDS = 0.05


def assign_intervals(weights: Sequence[float], num_devices: int) -> list[list[int]]:
    """Contiguous runs of intervals, one per device, with balanced total weight.

    ``weights[j]`` is the work of destination interval j (its in-edges plus
    its vertices). A device may own no interval when there are fewer
    intervals (with work) than devices.
    """
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or np.any(w < 0):
        raise ValueError("weights must be a 1-D array of non-negative numbers")
    prefix = np.concatenate([[0.0], np.cumsum(w)])
    total = prefix[-1]
    cuts = [0]
    for k in range(1, num_devices):
        # the first interval boundary at or past k/D of the work (never before the previous cut)
        target = total * k / num_devices
        cut = int(np.searchsorted(prefix, target, side="left"))
        if cut > 0 and target - prefix[cut - 1] < prefix[cut] - target:
            cut -= 1  # the nearer boundary
        cuts.append(min(max(cut, cuts[-1]), len(w)))
    cuts.append(len(w))
    return [list(range(cuts[k], cuts[k + 1])) for k in range(num_devices)]


class LinkCounter:
    """Bytes of source blocks (V_i sent whole) that multi-device passes moved: over the host link, and device to device."""

    def __init__(self):
        self.host_bytes = 0
        self.peer_bytes = 0
        self._lock = threading.Lock()

    def add(self, host_bytes: int, peer_bytes: int) -> None:
        with self._lock:
            self.host_bytes += host_bytes
            self.peer_bytes += peer_bytes

    def reset(self) -> None:
        with self._lock:
            self.host_bytes = self.peer_bytes = 0

    def __repr__(self) -> str:
        return f"LinkCounter(host_bytes={self.host_bytes:,}, peer_bytes={self.peer_bytes:,})"


class RelayAborted(RuntimeError):
    """The chain relay was stopped (another device or the producer failed)."""


@dataclass
class Delivery:
    """One device's copy of V_i's source rows, charged to that device's ledger through ``scope``."""

    key: Hashable
    scope: Scope
    tensors: dict[str, torch.Tensor]
    host_bytes: int  # bytes of this copy that crossed the host link (0 for a chain hop)
    peer_bytes: int  # bytes of this copy received from another device


class ChainRelay:
    """Forward source blocks host -> first needing device -> next needing device ... for one pass.

    Args:
        devices: the chain, in forwarding order.
        interval: ``interval(i) -> (lo, hi)``, the host rows of V_i.
        label: shown in errors and profiler spans (layer name and phase).
    """

    def __init__(self, devices: Sequence[Device], interval: Callable[[int], tuple[int, int]], label: str = "", phase: str = "forward"):
        if len({id(d) for d in devices}) != len(devices):
            raise ValueError("a chain lists a device twice")
        self.devices = list(devices)
        self.interval = interval
        self.label, self.phase = label, phase
        self._requests: list[list[tuple[Hashable, int]] | None] = [None] * len(self.devices)
        self._inbox = [queue.Queue(maxsize=1) for _ in self.devices]
        self._host: dict[str, torch.Tensor] | None = None
        self._names: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.host_bytes = 0
        self.peer_bytes = 0

    # ---- the devices' side ----------------------------------------------------------------
    def register(self, position: int, requests: Sequence[tuple[Hashable, int]], host: dict[str, torch.Tensor], names: Sequence[str]) -> None:
        """Device ``position`` will take blocks ``(sync_key, i)`` in this (ascending) order.

        The producer starts once every device of the chain has registered
        (a device with nothing to fetch registers an empty list).
        """
        keys = [k for k, _ in requests]
        if any(not (a < b) for a, b in zip(keys, keys[1:])):
            raise ValueError(f"chain relay {self.label}: device {position} must request blocks in strictly ascending key order, got {keys}")
        with self._lock:
            if self._requests[position] is not None:
                raise RuntimeError(f"chain relay {self.label}: device {position} registered twice")
            if requests:
                if self._host is None:
                    self._host, self._names = host, tuple(names)
                elif tuple(names) != self._names:
                    raise RuntimeError(f"chain relay {self.label}: devices disagree on the fields to forward ({self._names} vs {tuple(names)})")
            self._requests[position] = list(requests)
            ready = all(r is not None for r in self._requests)
            if ready and self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._produce, name=f"sagann-chain {self.label}", daemon=True)
                self._thread.start()

    def take(self, position: int, key: Hashable, cancel: threading.Event | None = None) -> Delivery:
        """The next block for device ``position``; must be the one it registered next."""
        inbox = self._inbox[position]
        while True:
            if self._error is not None:
                raise RelayAborted(f"chain relay {self.label}: forwarding failed: {self._error}") from self._error
            if self._stop.is_set() or (cancel is not None and cancel.is_set()):
                raise RelayAborted(f"chain relay {self.label}: stopped")
            try:
                item = inbox.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if item.key != key:
                item.scope.close()
                raise RuntimeError(f"chain relay {self.label}: device {position} expected block {key!r} but {item.key!r} came (plans out of step)")
            return item

    def abort(self) -> None:
        """Stop forwarding; waiting devices raise :class:`RelayAborted`."""
        self._stop.set()

    def close(self) -> None:
        """Stop the producer, wait for it, and release every block nobody took."""
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                self._drain()
                self._thread.join(timeout=POLL_SECONDS)
        self._drain()

    def _drain(self) -> None:
        for inbox in self._inbox:
            while True:
                try:
                    inbox.get_nowait().scope.close()
                except queue.Empty:
                    break

    # ---- the producer ----------------------------------------------------------------------
    def _put(self, position: int, item: Delivery) -> bool:
        while not self._stop.is_set():
            try:
                self._inbox[position].put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            needs: dict[Hashable, list[int]] = {}
            interval_of: dict[Hashable, int] = {}
            for pos, reqs in enumerate(self._requests):
                for key, i in reqs:
                    needs.setdefault(key, []).append(pos)
                    if interval_of.setdefault(key, i) != i:
                        raise RuntimeError(f"chain relay {self.label}: key {key!r} names two intervals")
            for key in sorted(needs):
                if self._stop.is_set():
                    return
                if not self._forward(key, interval_of[key], needs[key]):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the devices
            self._error = exc
            self._stop.set()

    def _forward(self, key: Hashable, i: int, needers: list[int]) -> bool:
        """Load V_i into the first needing device and hop it along; hand each needer its copy."""
        lo, hi = self.interval(i)
        prev: dict[str, torch.Tensor] | None = None
        prev_dev: Device | None = None
        copies: list[tuple[int, Delivery]] = []
        try:
            for pos in needers:
                dev = self.devices[pos]
                scope = Scope(dev)
                try:
                    with dev.loading():  # a GPU queues the relay's copies on its copy stream, like the loader's
                        if prev is None:  # the head's loader reports these bytes in its own h2d span
                            # 16-bit rows (ScheduleConfig.transfer_dtype) cross the host link so and are widened here,
                            # once: the chain forwards float32 rows, as every device's kernels read them
                            rows = {n: self._host[n][lo:hi] for n in self._names}
                            tensors = {n: widen(scope, load_in_pieces(scope, t, f"{n} block V_{i} (chain head)"), f"{n} block V_{i} widened") for n, t in rows.items()}
                            nbytes = sum(tensor_bytes(t) for t in rows.values())
                            item = Delivery(key, scope, tensors, nbytes, 0)
                            self.host_bytes += nbytes
                        else:
                            nbytes = sum(tensor_bytes(t) for t in prev.values())
                            with profiler.span("d2d", dev.name, "chain", chunk=(i,), nbytes=nbytes, layer=self.label, phase=self.phase):
                                tensors = {n: scope.load_peer(prev[n], prev_dev, f"{n} block V_{i} from {prev_dev.name}") for n in self._names}
                            item = Delivery(key, scope, tensors, 0, nbytes)
                            self.peer_bytes += nbytes
                except BaseException:
                    scope.close()
                    raise
                copies.append((pos, item))
                prev, prev_dev = tensors, dev
            # every hop is made before any copy is handed over: a device may free its copy as soon as it has it
            while copies:
                pos, item = copies[0]
                if not self._put(pos, item):
                    return False
                copies.pop(0)
            return True
        finally:
            for _, item in copies:
                item.scope.close()


def chain_of(chains: Sequence[Sequence[int]], num_devices: int) -> list[tuple[int, int]]:
    """``(chain index, position in chain)`` of each device; every device in exactly one chain."""
    where: list[tuple[int, int] | None] = [None] * num_devices
    for c, chain in enumerate(chains):
        for pos, d in enumerate(chain):
            if not (0 <= d < num_devices):
                raise ValueError(f"chain {c} names device {d}, but there are {num_devices} devices")
            if where[d] is not None:
                raise ValueError(f"device {d} is in two chains ({where[d][0]} and {c})")
            where[d] = (c, pos)
    missing = [d for d, w in enumerate(where) if w is None]
    if missing:
        raise ValueError(f"devices {missing} are in no chain; every device must be in exactly one (a chain may have one device)")
    return where  # type: ignore[return-value]


def resolve_devices(device) -> list[Device]:
    """The devices of a graph: None -> one unlimited CpuDevice; a device; or a list of distinct devices."""
    from sagann.scheduler.devices import CpuDevice

    if device is None:
        return [CpuDevice()]
    if isinstance(device, Device):
        return [device]
    if isinstance(device, (list, tuple)):
        devices = list(device)
        if not devices:
            raise ValueError("device=[] names no device; pass one device or a non-empty list")
        for k, d in enumerate(devices):
            if not isinstance(d, Device):
                raise TypeError(f"device[{k}] must be a sagann device such as sagann.CpuDevice('64MB'), got {d!r}")
        for k, d in enumerate(devices):
            for m in range(k):
                if devices[m] is d:
                    raise ValueError(f"device[{m}] and device[{k}] are the same device object; make one device per logical device")
        _number_unnamed(devices)
        names = [d.name for d in devices]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"several devices are named {', '.join(map(repr, dup))}; give each its own name (e.g. CpuDevice(name='cpu1'))")
        return devices
    raise TypeError(f"device must be a sagann device such as sagann.CpuDevice('64MB'), or a list of them, got {device!r}")


def _number_unnamed(devices: list[Device]) -> None:
    """Devices left with a default name that another device of the list shares are numbered by position (cpu0, cpu1, ...)."""
    names = [d.name for d in devices]
    clashing = [d for d in devices if d.auto_named and names.count(d.name) > 1]
    taken = {d.name for d in devices if d not in clashing}
    for d in clashing:
        stem = d.name.rstrip("0123456789") or "device"
        k = 0
        while f"{stem}{k}" in taken:
            k += 1
        d.rename(f"{stem}{k}")
        taken.add(d.name)


def resolve_chains(devices: Sequence[Device], topology) -> list[list[int]]:
    """Chains as lists of device positions (see ``ChunkedGraph``'s ``topology`` argument)."""
    n = len(devices)
    if topology is None:
        return [[k] for k in range(n)]
    names = [d.name for d in devices]
    if isinstance(topology, (list, tuple)) and all(isinstance(c, (list, tuple)) for c in topology):
        chains = []
        for c in topology:
            chain = []
            for d in c:
                if isinstance(d, str):
                    if d not in names:
                        raise ValueError(f"a chain names device {d!r}, but the devices are {', '.join(names)}")
                    chain.append(names.index(d))
                elif isinstance(d, (int, np.integer)) and not isinstance(d, bool):
                    chain.append(int(d))
                else:
                    raise TypeError(f"a chain lists device names or positions, got {d!r}")
            if chain:
                chains.append(chain)
        chain_of(chains, n)
        return chains
    from sagann.scheduler.topology import load

    topo = load(topology)
    chains = [[names.index(name) for name in chain] for chain in topo.chains(names)]
    chain_of(chains, n)
    return chains
