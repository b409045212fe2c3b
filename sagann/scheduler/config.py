"""How the scheduler runs a graph's layer passes: one frozen, validated config."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sagann.scheduler.policy import Order, TransferPolicy

MAX_PREFETCH = 4


def _enum(cls, value, field: str):
    try:
        return cls(value)
    except ValueError:
        known = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown {field} {value!r}; known: {known}") from None


@dataclass(frozen=True)
class ScheduleConfig:
    """Scheduling options of a :class:`~sagann.ChunkedGraph`.

    Args:
        prefetch: sub-chunks loaded ahead of compute by the loader thread.
            None (default): as deep as the budget allows (up to
            ``MAX_PREFETCH``) where the device's transfers overlap compute
            (``Device.overlaps_transfers``: a GPU's copy engine, an emulated
            link), else 0; ``"max"``: as deep as the budget allows on any
            device; an int: that depth; 0 turns pipelining off.
        transfer: ``"auto"`` (cost model per chunk), ``"selective"`` or ``"full"``.
        order: ``"profile"`` (Johnson's rule on measured chunk costs) or ``"natural"``.
        max_replans: how many times one layer pass may be re-planned with a
            finer partition after the device runs out of memory (the budget
            ledger's ``BudgetExceeded``, or a CUDA out-of-memory error) before
            the error is raised; 0 turns re-planning off.
        cache_gather: keep a layer's gathered rows when its messages are a
            builtin of inputs that need no gradient (a first layer's
            features), from their second call with the same unchanged
            inputs, and run only its ApplyVertex afterwards
            (``sagann.engine.constant``); costs host memory of one
            ``[N, d]`` tensor per such layer. False: always stream the edges.
        tile: destination intervals whose accumulators stay on the device
            together while the sources stream (loop tiling,
            ``sagann.scheduler.schedule``). None (default): under a budget,
            the planner picks the tile that moves the fewest bytes within it
            (1 without a budget); an int: that tile (capped at P).
        partition_rule: under a budget, ``"time"`` (default) takes, of the
            smallest P that fits and a few larger P (each with the largest
            sub-chunks that fit), the one the time model predicts fastest
            (bytes / measured bandwidth + steps x measured fixed cost per
            step, ``sagann.scheduler.cost_model``); ``"smallest"``: the
            smallest P that fits, as NeuGraph.
        transfer_dtype: None (default): rows cross the link as they are on
            the host; ``torch.bfloat16`` or ``torch.float16``: a pass's
            float32 vertex rows (sources, destinations and their terms; in
            backward the gradient rows of the aggregates) are rounded to 16
            bits once on the host, cross the link in 16 bits (half the
            bytes) and are widened to float32 on arrival, so every kernel
            reads and accumulates in float32. Results then differ from
            float32 transfers by that rounding (bfloat16: about 2^-8
            relative per element; float16: 2^-11, within its range);
            gradients are computed and kept in float32.
        narrow_index: None (default): as ``transfer_dtype`` (set: on),
            and unset, only the ids the CPU backend's fused kernels read in
            16 bits (a forward's source ids, a source-major backward's
            destination rows: no conversion on arrival, two bytes an edge
            fewer to hold, so larger sub-chunks under a budget); True: a sub-chunk's index arrays cross the link
            in 16 bits where their values fit (a chunk's local ids and
            pointers below 65,536), widened to int32 on arrival unless the
            kernels read them so, with float32 rows; lossless, so results
            are bit for bit those of int32 arrays, for a conversion per
            array on each side. False: never.
    """

    prefetch: int | str | None = None  # None, "max" or a depth
    transfer: TransferPolicy | str = TransferPolicy.AUTO
    order: Order | str = Order.PROFILE
    max_replans: int = 3
    cache_gather: bool = True
    tile: int | None = None
    partition_rule: str = "time"
    transfer_dtype: torch.dtype | None = None
    narrow_index: bool | None = None

    def __post_init__(self):
        if self.prefetch not in (None, "max") and (isinstance(self.prefetch, bool) or not isinstance(self.prefetch, int) or self.prefetch < 0):
            raise ValueError(f"prefetch must be None, 'max' or an int >= 0, got {self.prefetch!r}")
        if isinstance(self.max_replans, bool) or not isinstance(self.max_replans, int) or self.max_replans < 0:
            raise ValueError(f"max_replans must be an int >= 0, got {self.max_replans!r}")
        if self.tile is not None and (isinstance(self.tile, bool) or not isinstance(self.tile, int) or self.tile < 1):
            raise ValueError(f"tile must be None or an int >= 1, got {self.tile!r}")
        if self.transfer_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"transfer_dtype must be None, torch.bfloat16 or torch.float16, got {self.transfer_dtype!r}")
        if not (self.narrow_index is None or isinstance(self.narrow_index, bool)):
            raise ValueError(f"narrow_index must be None, True or False, got {self.narrow_index!r}")
        if self.partition_rule not in ("time", "smallest"):
            raise ValueError(f"partition_rule must be 'time' or 'smallest', got {self.partition_rule!r}")
        if not isinstance(self.cache_gather, bool):
            raise ValueError(f"cache_gather must be True or False, got {self.cache_gather!r}")
        object.__setattr__(self, "transfer", _enum(TransferPolicy, self.transfer, "transfer policy"))
        object.__setattr__(self, "order", _enum(Order, self.order, "order"))

    @property
    def narrows_index(self) -> bool:
        """Do index arrays cross in 16 bits where they fit (``narrow_index``; None: with ``transfer_dtype``)?"""
        return self.transfer_dtype is not None if self.narrow_index is None else self.narrow_index

    @property
    def narrows_source_ids(self) -> bool:
        """May a forward's source ids cross in 16 bits for kernels that read them so (``narrow_index`` not False)?"""
        return self.narrow_index is not False
