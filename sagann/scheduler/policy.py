"""Scheduling policy as pure functions: which transfers, in which order.

Selective scheduling
--------------------
A chunk E_ij needs, on the device, the source rows its sub-chunks use. Two
ways to get them there, with per-byte costs measured on the device at start
(:class:`TransferCosts`):

* **selective**: per sub-chunk, gather its ``src_rows`` on the host and send
  only those: ``T_sel = b_sel * s_gather + n_sub * t_0``, where ``s_gather``
  is the cost per byte of the host gather + transfer path
  (``Device.gather_in``) and ``t_0`` the fixed cost of one transfer;
* **full**: send V_i's rows as one contiguous block once for the chunk, then
  pick each sub-chunk's rows on the device:
  ``T_full = b_full * s_block + t_0 + sum(b_sel) * s_compact`` (no pick
  where the kernel reads the block in place: ``s_compact = 0``).

Ignoring ``t_0``, per chunk selective wins iff ``sum(b_sel) * (s_gather - s_compact) < b_full *
s_block``, i.e. iff the used fraction ``theta = sum(b_sel) / b_full`` is below
``s_block / (s_gather - s_compact)``; the fixed cost tilts it towards full
blocks for chunks cut into many small sub-chunks. This is NeuGraph's threshold
``theta < T_copy / (T_copy + T_trans)`` with the device-side compaction cost
made explicit; on a GPU ``s_compact`` is tiny (HBM) and the threshold is set
by host-gather vs PCIe speed. On the CPU virtual device the compaction costs
as much as the host gather, so selective wins whenever it moves fewer bytes.
A full block also needs ``b_full`` bytes of spare budget while in flight;
without it, selective is the only choice.

Ordering
--------
Within a destination column (forward) or a source row (backward) the chunks
may run in any order. With measured load time ``a`` and compute time ``b``
per chunk, a prefetching pipeline is a two-stage flow shop, for which
Johnson's rule gives the minimal makespan: first the chunks with ``a <= b``
by increasing ``a``, then the rest by decreasing ``b``.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Hashable, Sequence


class Transfer(str, Enum):
    SELECTIVE = "selective"
    FULL = "full"
    RESIDENT = "resident"  # rows picked from a copy of V_i held on the device for the whole pass


class TransferPolicy(str, Enum):
    AUTO = "auto"  # the cost model decides per chunk
    SELECTIVE = "selective"
    FULL = "full"


class Order(str, Enum):
    NATURAL = "natural"  # ascending chunk ids
    PROFILE = "profile"  # Johnson's rule on measured costs, natural until measured


@dataclass(frozen=True)
class TransferCosts:
    """Seconds per byte of the device's transfer primitives, measured at start-up."""

    gather: float  # host gather + send (selective path)
    block: float  # send a contiguous block
    compact: float  # pick rows on the device
    latency: float = 0.0  # seconds of one transfer beyond its bytes (a call, a launch)

    def threshold(self) -> float:
        """Used fraction of V_i below which selective transfer is cheaper."""
        denom = self.gather - self.compact
        return float("inf") if denom <= 0 else self.block / denom


def choose_transfer(
    policy: TransferPolicy,
    selective_bytes: int,
    full_bytes: int,
    costs: TransferCosts | None,
    spare_bytes: int | None,
    transfers: int = 1,
) -> Transfer:
    """Selective or full for one chunk (see the module docstring)."""
    fits = spare_bytes is None or full_bytes <= spare_bytes
    if policy is TransferPolicy.SELECTIVE or not fits or full_bytes == 0:  # 0: the pass reads no source rows
        return Transfer.SELECTIVE
    if policy is TransferPolicy.FULL:
        return Transfer.FULL
    if costs is None:
        return Transfer.SELECTIVE if selective_bytes <= full_bytes else Transfer.FULL
    t_sel = selective_bytes * costs.gather + transfers * costs.latency  # one gather per sub-chunk
    t_full = full_bytes * costs.block + costs.latency + selective_bytes * costs.compact
    return Transfer.SELECTIVE if t_sel <= t_full else Transfer.FULL


def johnson_order(jobs: Sequence[tuple[Hashable, float, float]]) -> list[Hashable]:
    """Order ``(key, load_seconds, compute_seconds)`` jobs to minimise the two-stage makespan."""
    first = sorted((j for j in jobs if j[1] <= j[2]), key=lambda j: (j[1], str(j[0])))
    last = sorted((j for j in jobs if j[1] > j[2]), key=lambda j: (-j[2], str(j[0])))
    return [j[0] for j in first + last]


def two_stage_makespan(jobs: Sequence[tuple[float, float]]) -> float:
    """Makespan of ``(load, compute)`` jobs in this order through load -> compute stages."""
    load_done = compute_done = 0.0
    for a, b in jobs:
        load_done += a
        compute_done = max(compute_done, load_done) + b
    return compute_done
