"""A discrete-event replay of multi-device passes on a topology: projected (simulated) epoch times.

Calibration (:func:`calibrate`) reads what one measured epoch on one device
left in a graph's logs (``ChunkedGraph.step_log`` / ``call_log``, written
by the multi-device path, so build the calibration graph with a list of
one device): per chunk E_ij its compute seconds and the bytes it moved
(V_i's block, other rows, index arrays), per pass the ApplyVertex/hook
seconds, and the epoch's remainder (loss, optimizer, Python). Calibrate
with ``ScheduleConfig(transfer="full", order="natural")``: that is what a
chain runs, so the chunks and blocks the replay moves are the measured ones.

:func:`simulate` replays the workload on named devices of a
:class:`~sagann.scheduler.topology.Topology`:

* ownership of destination intervals as the engine assigns it (edges plus
  vertices, contiguous, ``assign_intervals``);
* per device, its chunks in the engine's order: a loader that runs up to
  ``prefetch`` chunks ahead of compute (the pipeline's bound), compute in
  order;
* every transfer occupies a link for ``bytes / bandwidth``, first come
  first served: a device's host link (devices under one switch share its
  uplink), and device-to-device links into the receiving device;
* with chains, one relay per chain loads each V_i once into the first
  device that needs it and forwards it device to device, one key at a
  time, each device holding at most one undelivered block (as
  ``ChainRelay``); a device keeps a block across its chunks of one row;
* each device's ApplyVertex/hook work scales with the vertices it owns;
  the remainder of the epoch is serial; compute seconds are multiplied by
  ``compute_scale`` (1: the calibration device's speed).

Everything it returns is a projection, labelled ``simulated``; the
validation against real runs with throttled virtual links is
``benchmarks/simulator_validation.py`` (docs/benchmarks.md).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence


from sagann.scheduler.chains import assign_intervals
from sagann.scheduler.topology import Topology

FORWARD, BACKWARD = "forward", "backward"


@dataclass(frozen=True)
class SimChunk:
    i: int
    j: int
    nnz: int
    block_bytes: int  # V_i's rows sent whole (0: selective)
    other_bytes: int  # selective source rows, edge rows, destination rows
    index_bytes: int  # index arrays
    compute_seconds: float
    load_overhead: float = 0.0  # measured loader seconds beyond the link time (host work: gathers, Python)


@dataclass(frozen=True)
class SimPass:
    call: int
    name: str
    phase: str
    chunks: tuple[SimChunk, ...]  # in the order the calibration ran them
    prefetch: int
    edge_seconds: float  # measured edge-stage wall on the calibration device
    vertex_seconds: float  # measured rest of the phase (ApplyVertex, hooks, write-back), less its host-link time
    bounds: tuple[int, ...]  # interval bounds of the pass's partition
    vertex_bytes: int = 0  # host-link bytes of that rest (destination rows, accumulators, gradients)

    @property
    def num_vertices(self) -> int:
        return int(self.bounds[-1])


@dataclass
class Workload:
    """One epoch, measured on one device, as the simulator replays it."""

    passes: list[SimPass]
    epoch_seconds: float  # measured
    rest_seconds: float  # epoch time outside the layer passes (serial)


@dataclass
class Projection:
    """A simulated epoch: never a measurement."""

    label: str
    devices: list[str]
    chains: list[list[str]]
    epoch_seconds: float
    pass_seconds: list[float]
    host_bytes: int
    peer_bytes: int
    kind: str = field(default="simulated", init=False)

    def __str__(self) -> str:
        chains = " | ".join(" -> ".join(c) for c in self.chains)
        return f"[simulated] {self.label}: {self.epoch_seconds:.3f} s/epoch, host link {self.host_bytes / 1e6:.1f} MB, device-to-device {self.peer_bytes / 1e6:.1f} MB ({chains})"


def calibrate(g, epoch_seconds: float, link_bandwidth: float | None = None, index_over_link: bool = False) -> Workload:
    """A :class:`Workload` from the logs of exactly one measured epoch on ``g`` (a graph on a list of one device).

    Clear ``g.step_log`` and ``g.call_log`` before the epoch you time.
    ``link_bandwidth`` (bytes/s of the calibration device's host link) lets
    each chunk's measured load time be split into link time and the rest
    (host-side work the replay keeps); None: loads are link time only.
    ``index_over_link``: did the index arrays cross that link (a GPU: yes;
    a CPU virtual device: no)?
    """
    devices = {r.device for r in g.call_log}
    if len(devices) != 1:
        raise ValueError(f"calibrate from a run on one device (a list of one), got call records of {sorted(devices) or 'none'}: build the graph with device=[sagann.CpuDevice(...)]")
    if not g.step_log:
        raise ValueError("the graph's step_log is empty: run one epoch (forward and backward) on it first")
    steps = defaultdict(list)
    for s in g.step_log:
        link_s = 0.0 if link_bandwidth is None else (s.block_bytes + s.other_bytes + (s.index_bytes if index_over_link else 0)) / link_bandwidth
        steps[(s.call, s.phase)].append(SimChunk(s.key[0], s.key[1], s.nnz, s.block_bytes, s.other_bytes, s.index_bytes, s.compute_seconds, max(s.load_seconds - link_s, 0.0)))
    passes = []
    for r in g.call_log:
        chunks = tuple(steps.get((r.call, r.phase), ())) if r.edge_stage else ()
        vertex_bytes = max(r.host_bytes - sum(c.block_bytes + c.other_bytes + (c.index_bytes if index_over_link else 0) for c in chunks), 0)
        rest = max(r.total_seconds - r.edge_seconds, 0.0)
        if link_bandwidth is not None:
            rest = max(rest - vertex_bytes / link_bandwidth, 0.0)
        else:
            vertex_bytes = 0  # no link model: all of it is compute
        passes.append(SimPass(r.call, r.name, r.phase, chunks, r.prefetch, r.edge_seconds, rest, tuple(r.bounds), vertex_bytes))
    in_passes = sum(r.total_seconds for r in g.call_log)
    return Workload(passes, epoch_seconds, max(epoch_seconds - in_passes, 0.0))


def _owners(p: SimPass, num_devices: int) -> list[list[int]]:
    P = len(p.bounds) - 1
    weights = [float(p.bounds[j + 1] - p.bounds[j]) for j in range(P)]
    for c in p.chunks:
        weights[c.j] += c.nnz
    return assign_intervals(weights, num_devices)


class _Links:
    """First-come first-served links: a transfer occupies its link for bytes / bandwidth."""

    def __init__(self):
        self.free: dict[str, float] = defaultdict(float)
        self.bytes: dict[str, int] = defaultdict(int)

    def send(self, link: str, bandwidth: float, nbytes: int, ready: float) -> float:
        if nbytes <= 0:
            return ready
        start = max(ready, self.free[link])
        self.free[link] = start + nbytes / bandwidth
        self.bytes[link] += nbytes
        return self.free[link]


def _simulate_pass(p: SimPass, topo: Topology, names: list[str], chains: list[list[int]], index_over_link: bool, compute_scale: float, links: _Links) -> float:
    D = len(names)
    owners = _owners(p, D)
    owner = {j: k for k, cols in enumerate(owners) for j in cols}
    chain_of = {k: c for c in chains for k in c}
    per_dev: list[list[tuple[tuple, SimChunk]]] = [[] for _ in range(D)]
    for c in p.chunks:
        k = owner[c.j]
        key = (owners[k].index(c.j), c.i) if p.phase == FORWARD else (c.i,)
        per_dev[k].append((key, c))
    for lst in per_dev:
        lst.sort(key=lambda kc: (kc[0], kc[1].j))
    items = sorted(((key, k, n, c) for k, lst in enumerate(per_dev) for n, (key, c) in enumerate(lst)), key=lambda t: (t[0], t[1], t[2]))
    depth = p.prefetch
    loader_free = [0.0] * D
    c_start: list[list[float]] = [[] for _ in range(D)]
    c_end: list[list[float]] = [[] for _ in range(D)]
    # chain relays: deliveries per (chain, key), the producer's clock, and when each device took its last key
    needers: dict[tuple[int, tuple], list[int]] = defaultdict(list)
    for k, lst in enumerate(per_dev):
        chain = chain_of[k]
        if len(chain) < 2:
            continue
        for key, c in lst:
            if c.block_bytes and k not in needers[(id(chain), key)]:
                needers[(id(chain), key)].append(k)
    delivered: dict[tuple[int, tuple], dict[int, float]] = {}
    producer_free: dict[int, float] = defaultdict(float)
    last_take: dict[int, float] = defaultdict(float)
    taken: set[tuple[int, tuple]] = set()

    def host(k: int) -> tuple[str, float]:
        return topo.host_link(names[k])

    def deliver(chain: list[int], key: tuple, block: int) -> dict[int, float]:
        ck = (id(chain), key)
        if ck not in delivered:
            who = sorted(needers[ck], key=chain.index)
            t = max([producer_free[id(chain)]] + [last_take[k] for k in who])  # one undelivered block per device
            out = {}
            prev = None
            for k in who:
                if prev is None:
                    t = links.send(*host(k), block, t)
                else:
                    bw = topo.peer_bandwidth(names[prev], names[k])
                    if bw is None:  # no peer path: through the host (down, then up)
                        t = links.send(*host(k), block, links.send(*host(prev), block, t))
                    else:
                        t = links.send(f"peer:{names[k]}", bw, block, t)
                out[k] = t
                prev = k
            producer_free[id(chain)] = t
            delivered[ck] = out
        return delivered[ck]

    for key, k, n, c in items:
        if depth == 0:
            ready = max(loader_free[k], c_end[k][n - 1] if n > 0 else 0.0)
        else:
            ready = max(loader_free[k], c_start[k][n - 1 - depth] if n - 1 - depth >= 0 else 0.0)
        t = ready
        chain = chain_of[k]
        if c.block_bytes:
            if len(chain) > 1:
                if (k, key) not in taken:
                    t = max(t, deliver(chain, key, c.block_bytes)[k])
                    taken.add((k, key))
                    last_take[k] = t
            else:
                t = links.send(*host(k), c.block_bytes, t)
        t = links.send(*host(k), c.other_bytes + (c.index_bytes if index_over_link else 0), t) + c.load_overhead * compute_scale
        loader_free[k] = t
        start = max(t, c_end[k][n - 1] if n > 0 else 0.0)
        c_start[k].append(start)
        c_end[k].append(start + c.compute_seconds * compute_scale)
    n_all = p.num_vertices or 1
    times = []
    for k in range(D):
        owned = sum(int(p.bounds[j + 1] - p.bounds[j]) for j in owners[k])
        edge = c_end[k][-1] if c_end[k] else 0.0
        share = owned / n_all
        # the rest of the phase: its host-link bytes (queued on the device's link), then its compute
        done = links.send(*host(k), int(p.vertex_bytes * share), edge) if p.vertex_bytes else edge
        times.append(done + p.vertex_seconds * compute_scale * share)
    return max(times) if times else 0.0


def scale_workload(workload: Workload, edges: float, vertices: float) -> Workload:
    """The workload of a graph ``edges`` times as many edges and ``vertices`` times as many vertices, same P (an extrapolation).

    Linear in what each part streams: a chunk's edges, compute and index
    bytes grow with ``edges``; V_i's blocks, the vertex work and its bytes,
    the interval bounds and the serial remainder (loss, optimizer) with
    ``vertices``. Caches, occupancy and launch overheads do not scale
    linearly on a real device: what :func:`simulate` makes of the result is
    an extrapolated projection, to be labelled so.
    """
    if edges <= 0 or vertices <= 0:
        raise ValueError(f"scale factors must be positive, got edges={edges}, vertices={vertices}")

    def chunk(c: SimChunk) -> SimChunk:
        return SimChunk(c.i, c.j, round(c.nnz * edges), round(c.block_bytes * vertices), round(c.other_bytes * edges), round(c.index_bytes * edges), c.compute_seconds * edges, c.load_overhead * edges)

    passes = [
        SimPass(p.call, p.name, p.phase, tuple(chunk(c) for c in p.chunks), p.prefetch, p.edge_seconds * edges, p.vertex_seconds * vertices,
                tuple(round(b * vertices) for b in p.bounds), round(p.vertex_bytes * vertices))
        for p in workload.passes
    ]
    in_passes = workload.epoch_seconds - workload.rest_seconds
    return Workload(passes, in_passes * edges + workload.rest_seconds * vertices, workload.rest_seconds * vertices)


def simulate(
    workload: Workload,
    topology: Topology,
    devices: Sequence[str] | None = None,
    chains: bool = True,
    index_over_link: bool = True,
    compute_scale: float = 1.0,
    label: str = "",
) -> Projection:
    """Project one epoch of ``workload`` on ``devices`` of ``topology`` (all of them by default).

    Args:
        chains: forward V_i along the topology's chains (else every device reads the host).
        index_over_link: count the chunks' index arrays as host-link traffic (as a GPU would);
            False for a CPU virtual device, whose index arrays are host memory.
        compute_scale: compute seconds relative to the calibration device.
    """
    names = topology.device_names if devices is None else list(devices)
    chain_names = topology.chains(names) if chains else [[n] for n in names]
    chain_pos = [[names.index(n) for n in c] for c in chain_names]
    if compute_scale <= 0:
        raise ValueError(f"compute_scale must be positive, got {compute_scale}")
    per_pass, host, peer = [], 0, 0
    for p in workload.passes:  # passes run one after another: every pass starts with idle links
        links = _Links()
        per_pass.append(_simulate_pass(p, topology, names, chain_pos, index_over_link, compute_scale, links))
        host += sum(b for link, b in links.bytes.items() if not link.startswith("peer:"))
        peer += sum(b for link, b in links.bytes.items() if link.startswith("peer:"))
    epoch = sum(per_pass) + workload.rest_seconds
    return Projection(label or f"{len(names)} devices of {topology.name}{' with chains' if chains else ''}", names, chain_names, epoch, per_pass, host, peer)
