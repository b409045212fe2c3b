"""The planner's small records: one edge stage being planned, a device's share of a multi-device graph."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sagann.chunks.partition import GraphPartition
from sagann.scheduler.memory_model import LayerShape, src_row_bytes
from sagann.scheduler.policy import TransferCosts

Measured = Callable[[tuple[int, int]], "tuple[float, float] | None"]


def unmeasured(key: tuple[int, int]) -> None:
    return None


@dataclass(frozen=True, eq=False)
class PassJob:
    """One edge stage being planned: the call, the phase, and what the planner fixed for it (depth, transfer costs)."""

    partition: GraphPartition
    shape: LayerShape
    fused: bool
    param_bytes: int
    phase: str
    measured: Measured
    depth: int
    costs: TransferCosts | None
    budget: int | None = None  # the device budget the plan must fit (ApplyVertex's blocks are sized by it)


@dataclass(frozen=True)
class DeviceScope:
    """A device of a multi-device graph: the destination columns it owns; chained: its blocks come from a relay."""

    owned: frozenset
    chained: bool


def largest_block(partition: GraphPartition, shape: LayerShape) -> int:
    """Bytes of the biggest interval's source rows: one block of V_i as a chain relay holds it."""
    sizes = partition.bounds[1:] - partition.bounds[:-1]
    return int(sizes.max()) * src_row_bytes(shape) if sizes.size else 0
