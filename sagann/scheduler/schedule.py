"""The schedule as data: what one layer pass loads, computes and evicts, in order.

A :class:`PassPlan` is built before anything runs; the executor walks it
step by step. It prints as a grid, validates (every non-empty sub-chunk
computed exactly once, a chunk's sub-chunks kept together so a full block
is sent once), and dry-runs its device-memory peak, so a plan is checked
against the budget without running a kernel.

Loop tiling
-----------
A forward group is a *tile* of ``tile`` consecutive destination intervals
whose accumulators stay on the device together while the sources stream
past them, source interval by source interval: a full block of V_i is then
sent once per tile instead of once per chunk (the chunks E_ij of one tile
and one i form a *run* that shares it). Tile P is the row-major order (each
V_i once, every accumulator resident), tile 1 NeuGraph's column order. A
backward group, a source row, is one run already: its chunks share V_i's
block. Within a destination interval the contributions still arrive in
source order, so a tiled pass adds in the same order as an untiled one.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Collection, Iterator

from sagann.chunks.partition import GraphPartition
from sagann.chunks.types import ChunkId, EdgeChunk
from sagann.scheduler.pipeline import live_sub_chunks
from sagann.scheduler.memory_model import LayerShape, backward_dst_row_bytes, backward_sizes, canonical, resident_bytes, src_row_bytes, sub_chunk_bytes, tile_resident_bytes
from sagann.scheduler.policy import Order, Transfer, TransferCosts, TransferPolicy, choose_transfer, johnson_order

FORWARD, BACKWARD = "forward", "backward"


class ScheduleError(ValueError):
    """A plan breaks an invariant; the message shows the plan with the failing step marked."""


@dataclass(frozen=True, slots=True)  # no __dict__: a fine partition's plans hold three steps a sub-chunk (296 B each saved)
class ChunkStep:
    """One chunk E_ij of a pass: its sub-chunks in order and how their source rows travel."""

    key: tuple[int, int]
    subs: tuple[EdgeChunk, ...]
    transfer: Transfer
    selective_bytes: int  # source rows sent by selective transfers of all sub-chunks
    block_bytes: int  # V_i's rows as one block (what a full transfer, or a non-selective schedule, sends)
    shares_block: bool = False  # a full transfer reusing the block the previous step (same run) loaded
    parts: tuple["ChunkStep", ...] = ()  # the chunks' own steps, where this step carries them merged (scheduler.batching)

    @property
    def moved_bytes(self) -> int:
        if self.transfer is Transfer.RESIDENT or (self.transfer is Transfer.FULL and self.shares_block):
            return 0  # sent once with the pass's resident copy (PassPlan.resident_bytes), or by the run's first step
        return self.selective_bytes if self.transfer is Transfer.SELECTIVE else self.block_bytes


@dataclass(frozen=True)
class Action:
    """One line of a schedule; ``repr`` is compact, e.g. ``load_rows E[1,2].0 12,288 B``."""

    op: str
    target: object
    nbytes: int = 0

    def __repr__(self) -> str:
        size = f" {self.nbytes:,} B" if self.nbytes else ""
        return f"{self.op} {self.target!r}{size}"


@dataclass(frozen=True)
class PassPlan:
    """The edge stage of one layer pass on one device.

    Forward groups are tiles of destination columns (named by their first
    interval, see :meth:`members`), backward groups source rows i; each group
    is a sequence of chunk steps in execution order.
    """

    phase: str
    groups: tuple[tuple[int, tuple[ChunkStep, ...]], ...]
    prefetch: int
    resident_bytes: int = 0  # the resident intervals' source rows, each sent once and held through the pass (0: none)
    resident: tuple[int, ...] = ()  # source intervals held on the device through the pass (all of them: V)
    tile: int = 1  # destination intervals per forward group (loop tiling; backward: 1)
    num_intervals: int = 0  # P: bounds the last tile
    dst_rows_bytes: int = 0  # backward: every destination row (acc's gradient, ...) sent once and held through the pass (0: per chunk)

    def members(self, g: int) -> range:
        """The intervals of group ``g``: its destination accumulators (forward) or its source row."""
        return range(g, min(g + self.tile, self.num_intervals)) if self.tile > 1 else range(g, g + 1)

    @property
    def num_steps(self) -> int:
        return sum(len(steps) for _, steps in self.groups)

    def steps(self) -> Iterator[ChunkStep]:
        for _, steps in self.groups:
            yield from steps

    def sub_chunks(self) -> Iterator[EdgeChunk]:
        for step in self.steps():
            yield from step.subs

    def chunk_steps(self) -> Iterator[ChunkStep]:
        """One step per chunk E_ij, a merged step's chunks each on their own: what per-interval accounting reads."""
        for step in self.steps():
            yield from step.parts or (step,)

    @property
    def bytes_moved(self) -> int:
        """Source-row bytes this plan sends (edges and index arrays are the same for every plan)."""
        return self.resident_bytes + sum(s.moved_bytes for s in self.steps())

    @property
    def bytes_full(self) -> int:
        """Source-row bytes a non-selective schedule sends: V_i once per chunk."""
        return sum(s.block_bytes for s in self.steps())

    @property
    def bytes_lower_bound(self) -> int:
        """No schedule sends less than, per source interval, the cheaper of its chunks' used rows once each and V_i once.

        (Streaming, a chunk needs its used rows; held resident, V_i goes over once.)
        """
        streamed: dict[int, int] = {}
        for s in self.chunk_steps():
            streamed[s.key[0]] = streamed.get(s.key[0], 0) + min(s.selective_bytes, s.block_bytes)
        size = self.interval_bytes()
        return sum(min(b, size[i]) for i, b in streamed.items())

    def interval_bytes(self) -> dict[int, int]:
        """Source-row bytes of each interval some chunk of the pass reads (V_i's block)."""
        return {s.key[0]: s.block_bytes for s in self.chunk_steps()}

    def _resident_copies(self) -> list[tuple[str, int]]:
        """(name, bytes) of each copy the pass holds: ``V`` when it holds every interval a chunk reads."""
        size = self.interval_bytes()
        if size and set(size) <= set(self.resident):
            return [("V", self.resident_bytes)]
        return [(f"V_{i}", size[i]) for i in self.resident]

    def actions(self) -> list[Action]:
        out: list[Action] = []
        group_op = "load_dst" if self.phase == FORWARD else "open_row"
        copies = self._resident_copies() if self.resident else []
        for name, nbytes in copies:
            out.append(Action("load_resident", name, nbytes))
        if self.dst_rows_bytes:
            out.append(Action("load_resident", "destination rows", self.dst_rows_bytes))
        for g, steps in self.groups:
            out.extend(Action(group_op, m) for m in self.members(g))
            for k, step in enumerate(steps):
                if step.transfer is Transfer.FULL and not step.shares_block:
                    out.append(Action("load_block", step.key, step.block_bytes))
                for c in step.subs:
                    rows = "load_rows" if step.transfer is Transfer.SELECTIVE else "pick_rows"
                    out.append(Action(rows, c.id))
                    out.append(Action("load_edges", c.id, c.sent_index_bytes(self.phase == BACKWARD)))
                    out.append(Action("compute", c.id))
                if step.transfer is Transfer.FULL and not (k + 1 < len(steps) and steps[k + 1].shares_block):
                    out.append(Action("evict_block", step.key))
            out.extend(Action("apply_vertex" if self.phase == FORWARD else "close_row", m) for m in self.members(g))
        for name, _ in copies:
            out.append(Action("evict_resident", name))
        if self.dst_rows_bytes:
            out.append(Action("evict_resident", "destination rows"))
        return out

    def format(self, mark: int | None = None) -> str:
        tiled = f", tile {self.tile}" if self.tile > 1 else ""
        tiled += f", destination rows held ({self.dst_rows_bytes:,} B)" if self.dst_rows_bytes else ""
        lines = [f"{self.phase} pass, prefetch {self.prefetch}{tiled}: {self.bytes_moved:,} B of source rows (non-selective {self.bytes_full:,} B, lower bound {self.bytes_lower_bound:,} B)"]
        for k, a in enumerate(self.actions()):
            lines.append(f"{'>>' if k == mark else '  '} {k:4d}  {a!r}")
        return "\n".join(lines)

    __str__ = format


def validate(plan: PassPlan, partition: GraphPartition) -> None:
    """Raise ScheduleError unless the plan processes every non-empty sub-chunk exactly once, in its group."""
    seen: dict[ChunkId, int] = {}
    carried = {c.id: [p.id for part in step.parts for p in part.subs] for step in plan.steps() if step.parts for c in step.subs}
    for k, a in enumerate(plan.actions()):
        if a.op == "compute":
            for target in carried.get(a.target, [a.target]):  # a merged sub-chunk computes its chunks' sub-chunks
                if target in seen:
                    raise ScheduleError(f"sub-chunk {target!r} computed twice\n{plan.format(k)}")
                seen[target] = k
    expected = {c.id for c in partition.sub_chunks()}
    missing = expected - set(seen)
    if missing:
        raise ScheduleError(f"sub-chunks never computed: {sorted(missing)[:5]}\n{plan.format()}")
    extra = set(seen) - expected
    if extra:
        raise ScheduleError(f"plan computes sub-chunks the partition does not have: {sorted(extra)[:5]}")
    for g, steps in plan.groups:
        for k, step in enumerate(steps):
            want = step.key[1] if plan.phase == FORWARD else step.key[0]
            if want not in plan.members(g):
                raise ScheduleError(f"chunk E{list(step.key)} placed in {plan.phase} group {g}\n{plan.format()}")
            if step.shares_block and not (k > 0 and steps[k - 1].transfer is Transfer.FULL and steps[k - 1].key[0] == step.key[0] and step.transfer is Transfer.FULL):
                raise ScheduleError(f"chunk E{list(step.key)} shares a block no previous step of its run loaded\n{plan.format()}")


def dry_run(plan: PassPlan, partition: GraphPartition, shape: LayerShape, fused: bool, apply_rows: int | None = None) -> int:
    """Peak device bytes of the edge stage, as the pipeline would hold them.

    At any moment the device holds the current group's resident state and
    ``live_sub_chunks(prefetch)`` sub-chunks (possibly from the next group),
    plus the full blocks of the chunks those belong to, plus the copies of
    the intervals the plan holds resident. ``apply_rows``: the rows of a
    forward ApplyVertex block (None: whole intervals).
    """
    backward = plan.phase == BACKWARD
    dst_held = backward and plan.dst_rows_bytes > 0
    sizes = partition.bounds[1:] - partition.bounds[:-1]
    shape = canonical(shape)
    applying = {}  # forward, without prefetching: a column's ApplyVertex, after its loads have gone
    tile_bytes = partial(tile_resident_bytes, shape=shape, edgeless=partition.num_edges == 0)
    if backward:
        held = {g: resident_bytes(int(sizes[g]), shape, "backward") for g, _ in plan.groups}
    elif plan.prefetch > 0:  # a tile's accumulators, and ApplyVertex beside the next column's prefetched loads
        held = {g: tile_bytes([int(sizes[m]) for m in plan.members(g)], apply_rows=apply_rows) for g, _ in plan.groups}
    else:
        held = {g: tile_bytes([int(sizes[m]) for m in plan.members(g)], apply_rows=0) for g, _ in plan.groups}
        applying = {g: tile_bytes([int(sizes[m]) for m in plan.members(g)], apply_rows=apply_rows) for g, _ in plan.groups}
    seq: list[tuple[int, int, tuple | None, int]] = []  # (group, bytes, block (one per run), block bytes)
    run = 0
    for g, steps in plan.groups:
        for step in steps:
            full = step.transfer is Transfer.FULL
            run += not step.shares_block
            for c in step.subs:
                seq.append((g, sub_chunk_bytes(c, shape, fused, backward, dst_held), run if full else None, step.block_bytes if full else 0))
    peak = max([*held.values(), *applying.values()], default=0)
    window = live_sub_chunks(plan.prefetch)
    for k in range(len(seq)):
        live = seq[k : k + window]
        blocks = {key: b for _, _, key, b in live if key is not None}
        peak = max(peak, held[live[0][0]] + sum(b for _, b, _, _ in live) + sum(blocks.values()))
    return int(peak + plan.resident_bytes + plan.dst_rows_bytes)


def build_plan(
    partition: GraphPartition,
    shape: LayerShape,
    phase: str,
    prefetch: int,
    policy: TransferPolicy = TransferPolicy.AUTO,
    *,
    costs: TransferCosts | None = None,
    spare_bytes: int | None = None,
    order: Order = Order.NATURAL,
    measured: Callable[[tuple[int, int]], tuple[float, float] | None] = lambda key: None,
    resident: bool | Collection[int] = False,
    tile: int = 1,
    share_blocks: bool = True,
) -> PassPlan:
    """Group, order and choose transfers for one pass (policies in ``sagann.scheduler.policy``).

    Args (after ``policy``, keyword-only options):
        costs: measured transfer costs for the per-chunk choice (None: the policy's default rule).
        resident: source intervals whose rows are sent once and held through
            the pass (True: all of V); their chunks pick their rows from that
            copy (``Transfer.RESIDENT``).
        spare_bytes: budget left beyond the working set; the full blocks of
            all chunks in flight (up to ``prefetch + 1``) must fit in it.
        measured: ``(load_seconds, compute_seconds)`` of a chunk from earlier
            passes, or None; with ``Order.PROFILE`` and every chunk of a
            group measured, the group runs in Johnson's order (a tile's runs
            by their summed costs).
        tile: destination intervals per forward group (loop tiling, see the
            module docstring); the backward pass ignores it.
        share_blocks: the chunks of a run share one full block of V_i
            (False: one block per chunk, as a chain's relay delivers them).
    """
    if phase not in (FORWARD, BACKWARD):
        raise ValueError(f"phase must be {FORWARD!r} or {BACKWARD!r}, got {phase!r}")
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be an int >= 1, got {tile!r}")
    num = partition.num_chunks
    tile = min(tile, num) if phase == FORWARD else 1
    row = src_row_bytes(shape)
    held = set(range(num)) if resident is True else set(resident or ())
    spare = None if spare_bytes is None else spare_bytes // live_sub_chunks(prefetch)  # blocks of every chunk in flight
    groups = []
    for g in range(0, num, tile):
        members = range(g, min(g + tile, num))
        runs: dict[int, list[tuple[int, int]]] = {}  # source interval -> its chunks in this group, natural order
        for m in members:
            for key in ([(i, m) for i in range(num)] if phase == FORWARD else [(m, j) for j in range(num)]):
                if partition.chunks.get(key):
                    runs.setdefault(key[0], []).append(key)
        runs = dict(sorted(runs.items()))
        transfer: dict[tuple[int, int], Transfer] = {}
        for i, keys in runs.items():
            block = partition.interval_size(i) * row
            for batch in [keys] if share_blocks else [[k] for k in keys]:  # a run sharing one block, or each chunk alone
                subs = [c for k in batch for c in partition.chunks[k]]
                t = Transfer.RESIDENT if i in held else choose_transfer(policy, sum(c.num_src for c in subs) * row, block, costs, spare, transfers=len(subs))
                transfer.update((k, t) for k in batch)
        if order is Order.PROFILE and runs:
            times = {key: measured(key) for keys in runs.values() for key in keys}
            if all(t is not None for t in times.values()):
                runs = {i: johnson_order([(k, *times[k]) for k in keys]) for i, keys in runs.items()}
                total = {i: tuple(map(sum, zip(*(times[k] for k in keys)))) for i, keys in runs.items()}
                runs = {i: runs[i] for i in johnson_order([(i, *total[i]) for i in runs])}
        steps = []
        for i, keys in runs.items():
            for k, key in enumerate(keys):
                subs = partition.chunks[key]
                t = transfer[key]
                shares = share_blocks and k > 0 and t is Transfer.FULL
                steps.append(ChunkStep(key, tuple(subs), t, sum(c.num_src for c in subs) * row, partition.interval_size(i) * row, shares))
        groups.append((g, tuple(steps)))
    read = {s.key[0] for _, steps in groups for s in steps}
    held = tuple(sorted(held & read))  # an interval no chunk reads is never sent
    return PassPlan(phase, tuple(groups), prefetch, resident_bytes=sum(partition.interval_size(i) for i in held) * row, resident=held, tile=tile, num_intervals=num)


def choose_resident(plan: PassPlan, spare_bytes: int) -> tuple[int, ...]:
    """Source intervals worth holding through the pass, within ``spare_bytes``: a cache of V's chunks.

    Holding V_i costs its rows once and saves what ``plan`` sends for its
    chunks; intervals go in by bytes saved per byte held (a greedy knapsack:
    optimal when all fit, as when the whole of V fits), those that save
    nothing never. Best first.
    """
    sent: dict[int, int] = {}
    for s in plan.chunk_steps():
        sent[s.key[0]] = sent.get(s.key[0], 0) + s.moved_bytes
    size = plan.interval_bytes()
    worth = sorted((i for i in sent if sent[i] > size[i] > 0), key=lambda i: (sent[i] - size[i]) / size[i], reverse=True)
    chosen, used = [], 0
    for i in worth:
        if used + size[i] <= spare_bytes:
            chosen.append(i)
            used += size[i]
    return tuple(chosen)


def dst_rows_saving(plan: PassPlan, partition: GraphPartition, shape: LayerShape) -> tuple[int, int]:
    """(bytes held, bytes saved) if a backward pass sends every destination row once and holds it, instead of per sub-chunk.

    By symmetry with a resident V in forward: a backward row (source
    interval i) streams the chunks E_ij of every j, so each V_j's rows of
    acc's gradient go over once per chunk of its column.
    """
    if plan.phase != BACKWARD:
        return 0, 0
    row = backward_dst_row_bytes(shape)
    per_chunk = sum(backward_sizes(c, shape).num_dst for c in plan.sub_chunks()) * row  # a compacted sub-chunk sends its rows with edges
    read = {s.key[1] for s in plan.steps()}
    held = sum(partition.interval_size(j) for j in read) * row
    return held, per_chunk - held
