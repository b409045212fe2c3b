"""Topology of a multi-device box: devices, PCIe switches, NVLink, bandwidths -> chains.

A topology comes from a JSON spec (shipped ones: :func:`shipped`), from
``nvidia-smi topo -m`` output (:func:`parse_nvidia_smi_topo`), or from the
GPUs of this host (:func:`detect`). The spec::

    {
      "name": "neugraph-pcie-8gpu",
      "host_bandwidth": "16GB",            # bytes/s of a device's own host link (not under a switch)
      "devices": [{"name": "gpu0", "memory": "11GB", "flops": 11e12}, ...],   # or just names
      "switches": [{"name": "sw0", "devices": ["gpu0", ...],
                    "uplink_bandwidth": "16GB",   # switch <-> host, shared by its devices
                    "peer_bandwidth": "12GB",     # device <-> device through the switch
                    "peer_access": true}],        # false: no P2P, hops go through the host
      "nvlink": [{"devices": ["gpu0", "gpu1"], "bandwidth": "25GB"}]
    }

Bandwidths are bytes per second, written as ints or strings (``"12GB"``).
**Chains** are the groups of devices that can pass data to each other
without the host link: devices under one switch with peer access, and
devices joined by NVLink (transitively). Within a group the chain follows
NVLink where it can (the widest link first), else spec order.
"""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

from sagann.units import parse_bytes

# Defaults when nothing better is known: effective PCIe 3.0 x16 and NVLink 2.0 per link (V100), bytes/s
PCIE_BANDWIDTH = 12 * 10**9
NVLINK_BANDWIDTH_PER_LINK = 25 * 10**9


class TopologyError(ValueError):
    """A topology spec is malformed or does not match the devices given."""


@dataclass(frozen=True)
class TopoDevice:
    name: str
    memory: int | None = None  # bytes
    flops: float | None = None  # for the simulator; None: calibrate from a measured run


@dataclass(frozen=True)
class Switch:
    name: str
    devices: tuple[str, ...]
    uplink_bandwidth: int
    peer_bandwidth: int
    peer_access: bool = True


@dataclass(frozen=True)
class NvLink:
    a: str
    b: str
    bandwidth: int


@dataclass(frozen=True)
class Topology:
    name: str
    devices: tuple[TopoDevice, ...]
    switches: tuple[Switch, ...] = ()
    nvlinks: tuple[NvLink, ...] = ()
    host_bandwidth: int = PCIE_BANDWIDTH
    description: str = ""
    _index: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        _validate(self)

    # ---- queries ---------------------------------------------------------------------------
    @property
    def device_names(self) -> list[str]:
        return [d.name for d in self.devices]

    def switch_of(self, name: str) -> Switch | None:
        for s in self.switches:
            if name in s.devices:
                return s
        return None

    def nvlink_bandwidth(self, a: str, b: str) -> int:
        return sum(l.bandwidth for l in self.nvlinks if {l.a, l.b} == {a, b})

    def host_link(self, name: str) -> tuple[str, int]:
        """The link ``name`` reaches the host through: (link id, bytes/s); devices under one switch share it."""
        s = self.switch_of(name)
        return (f"uplink:{s.name}", s.uplink_bandwidth) if s is not None else (f"host:{name}", self.host_bandwidth)

    def peer_bandwidth(self, a: str, b: str) -> int | None:
        """Bytes/s of a direct a -> b copy (NVLink, else through a shared switch); None: only through the host."""
        nv = self.nvlink_bandwidth(a, b)
        if nv:
            return nv
        s = self.switch_of(a)
        if s is not None and s.peer_access and b in s.devices:
            return s.peer_bandwidth
        return None

    def chains(self, names: Sequence[str] | None = None) -> list[list[str]]:
        """Chains over ``names`` (default: every device), each in forwarding order."""
        names = self.device_names if names is None else list(names)
        unknown = [n for n in names if n not in self.device_names]
        if unknown:
            raise TopologyError(f"topology {self.name!r} has no device named {', '.join(map(repr, unknown))}; its devices are {', '.join(self.device_names)}")
        if len(set(names)) != len(names):
            raise TopologyError(f"device names must be distinct, got {names}")
        order = {n: k for k, n in enumerate(self.device_names)}
        chosen = sorted(names, key=order.__getitem__)
        parent = {n: n for n in chosen}

        def find(n):
            while parent[n] != n:
                parent[n] = parent[parent[n]]
                n = parent[n]
            return n

        for a in chosen:
            for b in chosen:
                if a < b and self.peer_bandwidth(a, b) is not None:
                    parent[find(a)] = find(b)
        groups: dict[str, list[str]] = {}
        for n in chosen:
            groups.setdefault(find(n), []).append(n)
        return [self._path(g) for g in sorted(groups.values(), key=lambda g: order[g[0]])]

    def _path(self, group: list[str]) -> list[str]:
        """Greedy walk: from the first device, to the unvisited NVLink peer with the widest link, else the next in order."""
        path, left = [group[0]], group[1:]
        while left:
            here = path[-1]
            nv = [(self.nvlink_bandwidth(here, n), -k, n) for k, n in enumerate(left) if self.nvlink_bandwidth(here, n)]
            nxt = max(nv)[2] if nv else left[0]
            path.append(nxt)
            left.remove(nxt)
        return path

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "host_bandwidth": self.host_bandwidth,
            "devices": [{k: v for k, v in (("name", d.name), ("memory", d.memory), ("flops", d.flops)) if v is not None} for d in self.devices],
            "switches": [{"name": s.name, "devices": list(s.devices), "uplink_bandwidth": s.uplink_bandwidth, "peer_bandwidth": s.peer_bandwidth, "peer_access": s.peer_access} for s in self.switches],
            "nvlink": [{"devices": [l.a, l.b], "bandwidth": l.bandwidth} for l in self.nvlinks],
        }

    def __str__(self) -> str:
        lines = [f"{self.name}: {len(self.devices)} devices, {len(self.switches)} switches, {len(self.nvlinks)} NVLink connections"]
        for chain in self.chains():
            lines.append("  chain " + " -> ".join(chain))
        return "\n".join(lines)


def _validate(t: Topology) -> None:
    where = f"topology {t.name!r}"
    if not t.devices:
        raise TopologyError(f"{where}: no devices")
    names = [d.name for d in t.devices]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TopologyError(f"{where}: device names must be distinct; repeated: {', '.join(dup)}")
    known = set(names)
    seen: dict[str, str] = {}
    for s in t.switches:
        for n in s.devices:
            if n not in known:
                raise TopologyError(f"{where}: switch {s.name!r} names unknown device {n!r}; devices are {', '.join(names)}")
            if n in seen:
                raise TopologyError(f"{where}: device {n!r} is under two switches ({seen[n]!r} and {s.name!r})")
            seen[n] = s.name
        for what, bw in (("uplink_bandwidth", s.uplink_bandwidth), ("peer_bandwidth", s.peer_bandwidth)):
            if bw <= 0:
                raise TopologyError(f"{where}: switch {s.name!r} {what} must be positive")
    for l in t.nvlinks:
        for n in (l.a, l.b):
            if n not in known:
                raise TopologyError(f"{where}: an NVLink names unknown device {n!r}; devices are {', '.join(names)}")
        if l.a == l.b:
            raise TopologyError(f"{where}: an NVLink joins {l.a!r} to itself")
        if l.bandwidth <= 0:
            raise TopologyError(f"{where}: NVLink {l.a}-{l.b} bandwidth must be positive")
    if t.host_bandwidth <= 0:
        raise TopologyError(f"{where}: host_bandwidth must be positive")


def _bw(value, what: str, default: int | None = None) -> int:
    if value is None:
        if default is None:
            raise TopologyError(f"{what} is missing")
        return default
    try:
        return int(parse_bytes(value))
    except ValueError as exc:
        raise TopologyError(f"{what}: {exc}") from None


_KEYS = {"name", "description", "host_bandwidth", "devices", "switches", "nvlink"}


def from_dict(spec: dict) -> Topology:
    """A :class:`Topology` from a spec (see the module docstring); errors name the bad field."""
    if not isinstance(spec, dict):
        raise TopologyError(f"a topology spec must be a JSON object, got {type(spec).__name__}")
    name = str(spec.get("name", "topology"))
    extra = set(spec) - _KEYS
    if extra:
        raise TopologyError(f"topology {name!r}: unknown keys {sorted(extra)}; known: {sorted(_KEYS)}")
    raw = spec.get("devices")
    if not isinstance(raw, list) or not raw:
        raise TopologyError(f"topology {name!r}: 'devices' must be a non-empty list of names or {{'name': ...}} objects")
    devices = []
    for k, d in enumerate(raw):
        if isinstance(d, str):
            devices.append(TopoDevice(d))
        elif isinstance(d, dict) and isinstance(d.get("name"), str):
            extra = set(d) - {"name", "memory", "flops"}
            if extra:
                raise TopologyError(f"topology {name!r}: device {d['name']!r} has unknown keys {sorted(extra)}")
            mem = None if d.get("memory") is None else _bw(d["memory"], f"device {d['name']!r} memory")
            flops = d.get("flops")
            if flops is not None and (not isinstance(flops, (int, float)) or flops <= 0):
                raise TopologyError(f"topology {name!r}: device {d['name']!r} flops must be a positive number")
            devices.append(TopoDevice(d["name"], mem, None if flops is None else float(flops)))
        else:
            raise TopologyError(f"topology {name!r}: devices[{k}] must be a name or an object with a 'name', got {d!r}")
    host_bw = _bw(spec.get("host_bandwidth"), f"topology {name!r} host_bandwidth", PCIE_BANDWIDTH)
    switches = []
    for k, s in enumerate(spec.get("switches", [])):
        if not isinstance(s, dict) or not isinstance(s.get("devices"), list):
            raise TopologyError(f"topology {name!r}: switches[{k}] must be an object with a 'devices' list")
        extra = set(s) - {"name", "devices", "uplink_bandwidth", "peer_bandwidth", "peer_access"}
        if extra:
            raise TopologyError(f"topology {name!r}: switches[{k}] has unknown keys {sorted(extra)}")
        sname = str(s.get("name", f"switch{k}"))
        up = _bw(s.get("uplink_bandwidth"), f"topology {name!r} switch {sname!r} uplink_bandwidth", host_bw)
        switches.append(Switch(sname, tuple(s["devices"]), up, _bw(s.get("peer_bandwidth"), f"topology {name!r} switch {sname!r} peer_bandwidth", up), bool(s.get("peer_access", True))))
    links = []
    for k, l in enumerate(spec.get("nvlink", [])):
        if not isinstance(l, dict) or not isinstance(l.get("devices"), list) or len(l["devices"]) != 2:
            raise TopologyError(f"topology {name!r}: nvlink[{k}] must be an object with 'devices': [a, b]")
        links.append(NvLink(l["devices"][0], l["devices"][1], _bw(l.get("bandwidth"), f"topology {name!r} nvlink[{k}] bandwidth", NVLINK_BANDWIDTH_PER_LINK)))
    return Topology(name, tuple(devices), tuple(switches), tuple(links), host_bw, str(spec.get("description", "")))


def load(source) -> Topology:
    """A topology from a :class:`Topology`, a spec dict, a JSON file path, or a shipped spec's name."""
    if isinstance(source, Topology):
        return source
    if isinstance(source, dict):
        return from_dict(source)
    if isinstance(source, (str, Path)):
        if str(source) in shipped_names():
            return shipped(str(source))
        path = Path(source)
        if not path.exists():
            raise TopologyError(f"no topology file {str(path)!r} and no shipped topology of that name; shipped: {', '.join(shipped_names())}")
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TopologyError(f"{path}: not valid JSON: {exc}") from None
        return from_dict(spec)
    raise TopologyError(f"a topology must be a Topology, a spec dict, a JSON path or a shipped name, got {type(source).__name__}")


def shipped_names() -> list[str]:
    files = resources.files("sagann.scheduler") / "topologies"
    return sorted(p.name[: -len(".json")] for p in files.iterdir() if p.name.endswith(".json"))


def shipped(name: str) -> Topology:
    """A spec shipped with sagann: ``neugraph-pcie-8gpu`` (two switches of four) or ``dgx1-nvlink-8gpu``."""
    if name not in shipped_names():
        raise TopologyError(f"no shipped topology {name!r}; shipped: {', '.join(shipped_names())}")
    text = (resources.files("sagann.scheduler") / "topologies" / f"{name}.json").read_text()
    return from_dict(json.loads(text))


# ---- reading a real GPU host -------------------------------------------------------------------
_NV = re.compile(r"^NV(\d+)$")
_PCIE_SWITCH = {"PIX", "PXB"}  # through one or more PCIe bridges, without the host bridge
_THROUGH_HOST = {"PHB", "NODE", "SYS", "SOC"}


def parse_nvidia_smi_topo(text: str, name: str = "nvidia-smi", pcie_bandwidth: int = PCIE_BANDWIDTH, nvlink_bandwidth_per_link: int = NVLINK_BANDWIDTH_PER_LINK) -> Topology:
    """A :class:`Topology` from the matrix ``nvidia-smi topo -m`` prints.

    ``NV#`` entries become NVLink connections of # links; GPUs joined by
    ``PIX``/``PXB`` share a PCIe switch (with peer access); ``PHB``,
    ``NODE``, ``SYS`` go through the host. The matrix carries no
    bandwidths: the defaults assume PCIe 3.0 x16 and NVLink 2.0, so pass
    measured ones where you have them. Devices are named ``gpu0``, ``gpu1``...
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # a terminal's bold/underline codes
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    header = next((ln for ln in lines if ln.split()[0] == "GPU0" and (len(ln.split()) < 2 or ln.split()[1] != "X")), None)
    if header is None:
        raise TopologyError("no GPU header line (\\tGPU0\\tGPU1 ...) in the nvidia-smi topo -m text")
    cols = header.split()
    gpu_cols = [k for k, c in enumerate(cols) if re.fullmatch(r"GPU\d+", c)]
    rows = {}
    for ln in lines:
        m = re.match(r"^(GPU\d+)\s+(.*)$", ln)
        if not m or ln is header:
            continue
        cells = m.group(2).split()
        if len(cells) < len(gpu_cols):
            raise TopologyError(f"row {m.group(1)} has {len(cells)} entries, expected at least {len(gpu_cols)}: {ln!r}")
        rows[m.group(1)] = cells
    gpus = [cols[k] for k in gpu_cols]
    missing = [g for g in gpus if g not in rows]
    if missing:
        raise TopologyError(f"the matrix has no row for {', '.join(missing)}")
    names = {g: f"gpu{int(g[3:])}" for g in gpus}
    links, switch_pairs = [], []
    for a in gpus:
        for kb, b in enumerate(gpus):
            cell = rows[a][gpu_cols[kb]]
            if a == b:
                if cell != "X":
                    raise TopologyError(f"{a}'s diagonal entry is {cell!r}, expected 'X'")
                continue
            nv = _NV.match(cell)
            if nv:
                if int(a[3:]) < int(b[3:]):
                    links.append(NvLink(names[a], names[b], int(nv.group(1)) * nvlink_bandwidth_per_link))
            elif cell in _PCIE_SWITCH:
                switch_pairs.append((a, b))
            elif cell not in _THROUGH_HOST:
                raise TopologyError(f"unknown connection {cell!r} between {a} and {b}; known: X, NV#, PIX, PXB, PHB, NODE, SYS")
    # GPUs that reach each other through PCIe switches only form one switch group (union-find)
    parent = {g: g for g in gpus}

    def find(g):
        while parent[g] != g:
            g = parent[g]
        return g

    for a, b in switch_pairs:
        parent[find(a)] = find(b)
    groups: dict[str, list[str]] = {}
    for g in gpus:
        groups.setdefault(find(g), []).append(g)
    switches = tuple(
        Switch(f"switch{k}", tuple(names[g] for g in grp), pcie_bandwidth, pcie_bandwidth)
        for k, grp in enumerate(sorted((g for g in groups.values() if len(g) > 1), key=lambda g: int(g[0][3:])))
    )
    return Topology(name, tuple(TopoDevice(names[g]) for g in gpus), switches, tuple(links), pcie_bandwidth, "read from nvidia-smi topo -m")


# bytes/s per lane of each PCIe generation after line encoding (8b/10b to Gen2, 128b/130b from Gen3; Gen6 FLIT)
PCIE_LANE_BYTES = {1: 250 * 10**6, 2: 500 * 10**6, 3: 985 * 10**6, 4: 1969 * 10**6, 5: 3938 * 10**6, 6: 7563 * 10**6}
PCIE_EFFICIENCY = 0.8  # the share of the raw rate a large pinned DMA reaches (packet headers, flow control)
PCIE_QUERY = ["nvidia-smi", "--query-gpu=index,pcie.link.gen.max,pcie.link.width.max", "--format=csv,noheader,nounits"]


def pcie_bandwidth(gen: int, width: int) -> int:
    """Effective bytes/s of a PCIe link of generation ``gen`` and ``width`` lanes (Gen3 x16: about 12.6 GB/s)."""
    if gen not in PCIE_LANE_BYTES or width < 1:
        raise TopologyError(f"unknown PCIe link Gen{gen} x{width}; known generations: {sorted(PCIE_LANE_BYTES)}")
    return int(PCIE_LANE_BYTES[gen] * width * PCIE_EFFICIENCY)


def parse_pcie_query(text: str) -> dict[int, tuple[int, int]]:
    """``{gpu index: (generation, lanes)}`` from ``nvidia-smi --query-gpu=index,pcie.link.gen.max,pcie.link.width.max --format=csv,noheader,nounits``.

    The maximum generation and width, not the current ones: an idle GPU
    drops its link to a slower generation to save power. GPUs whose fields
    read ``[N/A]`` or ``[Not Supported]`` are left out.
    """
    links = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 3 or not all(c.isdigit() for c in cells):
            continue
        links[int(cells[0])] = (int(cells[1]), int(cells[2]))
    return links


def measure_host_bandwidth(index: int = 0, nbytes: int = 256 << 20, repeats: int = 3) -> int:
    """Bytes/s of a pinned host-to-device copy to GPU ``index``, best of ``repeats`` (timed with CUDA events)."""
    import torch

    if not torch.cuda.is_available():
        raise TopologyError("measuring the host link needs a CUDA GPU, and torch sees none")
    device = torch.device("cuda", index)
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dev.copy_(host, non_blocking=True)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        stream = torch.cuda.current_stream(device)
        start.record(stream)
        dev.copy_(host, non_blocking=True)
        end.record(stream)
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return int(nbytes / best)


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    except FileNotFoundError:
        raise TopologyError("nvidia-smi is not installed: no NVIDIA GPU topology to read here; pass a spec (sagann.scheduler.topology.shipped(...) or a JSON file)") from None
    except subprocess.CalledProcessError as exc:
        raise TopologyError(f"{' '.join(cmd[:3])} failed: {exc.stderr.strip() or exc}") from None


def detect(measure: bool = False) -> Topology:
    """This host's GPUs, from ``nvidia-smi topo -m``, with the host link read from each GPU's PCIe generation and width.

    ``measure=True`` times a pinned host-to-device copy to each GPU instead
    (seconds per GPU). Without either (an nvidia-smi that cannot report the
    link), the PCIe 3.0 x16 default stays, and the description says so.
    """
    text = _run(["nvidia-smi", "topo", "-m"])
    how = "assumed PCIe 3.0 x16"
    bandwidth = PCIE_BANDWIDTH
    if measure:
        count = len(parse_nvidia_smi_topo(text).devices)
        bandwidth, how = min(measure_host_bandwidth(k) for k in range(count)), "measured pinned host-to-device copies"
    else:
        try:
            links = parse_pcie_query(_run(PCIE_QUERY))
        except TopologyError:
            links = {}
        if links:
            bandwidth = min(pcie_bandwidth(gen, width) for gen, width in links.values())  # one host_bandwidth: the slowest
            how = "PCIe " + ", ".join(f"gpu{k} Gen{g} x{w}" for k, (g, w) in sorted(links.items()))
    topo = parse_nvidia_smi_topo(text, name="this host", pcie_bandwidth=bandwidth)
    return Topology(topo.name, topo.devices, topo.switches, topo.nvlinks, topo.host_bandwidth, f"read from nvidia-smi topo -m; host link: {how}")
