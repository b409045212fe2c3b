"""One call of a layer on one device: the state its forward and backward passes share.

The passes themselves are in :mod:`sagann.engine.forward` and
:mod:`sagann.engine.backward`; how chunks reach the device is the
scheduler's :class:`~sagann.scheduler.executor.Executor`, which each call
owns (with a strategy where several devices share the call).

Randomness inside user functions (dropout) is replayed exactly in the
recomputation: each function call runs under a seed derived from one draw
of the caller's RNG and the call's position (:meth:`LayerCall.rng`).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sagann.chunks.partition import GraphPartition
from sagann.chunks.types import EdgeChunk
from sagann.engine.graph import ChunkedGraph
from sagann.engine.offload import KeptGraph
from sagann.fn import SUM_GATHERS
from sagann.scheduler.executor import Executor, PassLog, Strategy
from sagann.scheduler.memory_model import cache_block_rows
from sagann.scheduler.planner import LayerShape, direct_sum_backward, hook_block_rows, recompute_bytes, vertex_block_rows
from sagann.scheduler.schedule import FORWARD, PassPlan

__all__ = ["CallFlags", "CallSpec", "LayerCall", "Saved", "degree_scales"]

_SEED_MASK = (1 << 63) - 1
PERMUTE_BLOCK = 1 << 22  # edges permuted at a time after a re-plan: a bounded temporary however many edges


class SeededCpuStream:
    """The CPU generator seeded with ``seed`` inside, its state restored on leaving: ``torch.random.fork_rng(devices=[])``
    with the seed set, at under half its cost (it runs around every ApplyVertex block: 24-36 us a use in situ, 11-16 now).

    Only the CPU generator: ``torch.manual_seed`` would also (lazily, slowly) seed every accelerator.
    ``lock``: held inside, where several devices' threads share the generator.
    """

    __slots__ = ("seed", "lock", "state")

    def __init__(self, seed: int, lock: threading.RLock | None):
        self.seed, self.lock, self.state = seed, lock, None

    def __enter__(self) -> None:
        if self.lock is not None:
            self.lock.acquire()
        try:
            self.state = torch.default_generator.get_state()
            torch.default_generator.manual_seed(self.seed)
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def __exit__(self, *exc) -> None:
        try:
            torch.default_generator.set_state(self.state)
        finally:
            if self.lock is not None:
                self.lock.release()


@dataclass(frozen=True)
class CallSpec:
    """What a layer call runs, independent of where: the (compiled) layer, its probed shape, kernels, seed, name."""

    layer: nn.Module
    shape: LayerShape
    backend: str
    fused: bool  # builtin messages run by a fused kernel backend
    param_bytes: int
    seed: int  # one draw of the caller's RNG: user functions replay their randomness from it
    name: str


_BLOCKS_KEEP = "_sagann_blocks_keep"  # layer attribute: training mode -> do its ApplyVertex blocks keep graphs


@dataclass
class CallFlags:
    """What the autograd context asks of a call, set once per call and read by every device's passes."""

    need_x: bool = True  # the input rows need a gradient
    need_e: bool = True  # the edge data need a gradient
    keep_graphs: bool = True  # keep forward graphs of user functions for backward (autograd is recording)


@dataclass
class Saved:
    """What a layer's forward keeps on the host for its backward."""

    src_term: torch.Tensor | None  # host [N, d_src_term]
    dst_term: torch.Tensor | None  # host [N, d_dst_term]
    acc: torch.Tensor  # host [N, d_msg], finalised
    winners: torch.Tensor | None  # host int64 [N, d_msg], global edge id, -1 if none
    softmax_max: torch.Tensor | None = None  # host [N, heads]: max score per destination (0 if none)
    softmax_sum: torch.Tensor | None = None  # host [N, heads]: sum of exp(score - max)


class LayerCall:
    """One call of a layer on one device (or one device's share of a multi-device call).

    Args:
        spec: what runs.
        g: the graph, or one device's view of it (its device, budget and plans).
        partition: the partition the call runs on (a device's owned columns).
        strategy: how the executor gets V_i's blocks (default: from the host).
        flags: the call's autograd flags, shared with the other devices of the call.
        rng_lock: held around seeded user-function calls when several devices
            compute in threads (the seeded stream is the one global generator).
    """

    def __init__(self, spec: CallSpec, g: ChunkedGraph, partition: GraphPartition, strategy: Strategy | None = None, *, flags: CallFlags | None = None,
                 rng_lock: threading.RLock | None = None, given: tuple[np.ndarray, torch.Tensor] | None = None):
        self.spec, self.g, self.p = spec, g, partition
        self._block_memo: dict[str, tuple] = {}  # "vertex" / "hook" -> (partition, rows per block on it); "recompute" -> (partition, budget, bytes)
        self.apply_cap: int | None = None  # the forward's block where its edge stage's loads leave less room (kept for backward's replay)
        self.layer, self.shape, self.name = spec.layer, spec.shape, spec.name
        self.backend, self.fused, self.param_bytes = spec.backend, spec.fused, spec.param_bytes
        self.device = g.device
        self.strategy, self.rng_lock = strategy, rng_lock
        self._seeds: dict[tuple, int] = {}  # rng key -> its seed under this call's spec
        self.params = [p for p in spec.layer.parameters() if p.requires_grad]
        shape = spec.shape
        self.reduce = "sum" if shape.gather in SUM_GATHERS else shape.gather
        # per vertex, the same for every partition of the graph: made once per graph and gather
        self.src_scale, self.dst_scale = g.cached(f"degree_scales_{shape.gather}", lambda: degree_scales(shape.gather, partition.in_degree))
        self.flags = flags or CallFlags()
        # do ApplyVertex blocks keep their graphs? None: not yet tried (learned once per layer and mode: forward.py)
        # under a host budget none do: kept, they took the budgeted run's RSS 20-40 MiB up, past its bound (tests/test_host_rss.py)
        self.block_graphs_allowed = g.host.budget is None
        self.blocks_keep: bool | None = self.layer.__dict__.get(_BLOCKS_KEEP, {}).get(self.layer.training) if self.block_graphs_allowed else False
        # several devices share the call: the hook terms every device reads, and the host outputs it writes into
        self.terms: dict[str, torch.Tensor] = {}
        self.buffers: tuple | None = None
        self._fits_recompute: bool | None = None  # may a kept graph be dropped (see seal)?
        # forward graphs kept for backward (see keep_mode): q -> (rows, output) or a KeptGraph, per hook;
        # j -> (x rows, acc, output) or a KeptGraph for ApplyVertex
        self.hook_graphs: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor] | KeptGraph]] = {}
        self.vertex_graphs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | KeptGraph] = {}
        # edge data arrive permuted into the first partition's sub-chunk order (``given``: a re-plan's
        # call, that order and where each slot of this partition's order is in it; None: the same order)
        self._given_order, self._data_perm = (partition.edge_order[0], None) if given is None else given
        self.executor = self._executor(partition)
        # a fused sum (or mean) layer skips the per-chunk forward recompute and autograd in backward
        self.direct_backward = direct_sum_backward(shape, spec.fused)

    def _executor(self, partition: GraphPartition) -> Executor:
        key = (id(self.layer), self.shape, partition.num_chunks, partition.sub_chunk_nnz)
        log = PassLog(self.g.costs, self.g.pass_log, key)
        return Executor(self.device, partition, log, self.name, fused=self.fused, strategy=self.strategy, transfer_dtype=self.g.schedule.transfer_dtype,
                        host_budget=self.g.host.enabled, narrow_index=self.g.schedule.narrows_index,
                        native_index=self.shape.narrow_src_ids)

    def on_partition(self, partition: GraphPartition) -> "LayerCall":
        """This call on a finer partition (a re-plan after running out of memory): same layer, seed and flags."""
        call = copy.copy(self)
        call.p, call.hook_graphs, call.vertex_graphs, call._fits_recompute = partition, {}, {}, None
        call.executor = call._executor(partition)
        call._given_order, call._data_perm = self.given_order_on(partition)
        return call

    def given_order_on(self, partition: GraphPartition) -> tuple[np.ndarray, torch.Tensor]:
        """The order the edge data arrive in, and where each slot of ``partition``'s order is in it (a re-plan's ``given``)."""
        return self._given_order, _data_permutation(self.g.host, self._given_order, partition.edge_order[0])

    @property
    def need_x(self) -> bool:
        return self.flags.need_x

    @property
    def need_e(self) -> bool:
        return self.flags.need_e

    @property
    def keep_graphs(self) -> bool:
        return self.flags.keep_graphs

    def edges_in_partition_order(self, edata: torch.Tensor | None) -> torch.Tensor | None:
        """Edge data (given in the first partition's order) in this partition's sub-chunk order."""
        if edata is None or self._data_perm is None:
            return edata
        out, perm, edata = self.g.host.empty(tuple(edata.shape), edata.dtype, "edge data in a re-plan's order"), self._data_perm, edata.detach()
        for lo in range(0, len(perm), PERMUTE_BLOCK):
            torch.index_select(edata, 0, perm[lo : lo + PERMUTE_BLOCK], out=out[lo : lo + PERMUTE_BLOCK])
        return out

    def edges_in_given_order(self, ge: torch.Tensor | None) -> torch.Tensor | None:
        """An edge gradient in this partition's order, put back in the order the edge data were given."""
        if ge is None or self._data_perm is None:
            return ge
        return self.g.host.empty(tuple(ge.shape), ge.dtype, "edge gradient in the given order").index_copy_(0, self._data_perm, ge)

    def edge_offset(self, c: EdgeChunk) -> int:
        """Where sub-chunk ``c``'s rows start in the chunk-ordered edge data."""
        return self.executor.edge_offset(c)

    # ---- helpers the passes share ------------------------------------------------------------
    def vertex_blocks(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The rows ``lo:hi`` of an interval in the blocks ApplyVertex runs in, forward and backward alike.

        One block where the biggest interval's vertex phases fit the budget;
        else blocks of :func:`~sagann.scheduler.memory_model.vertex_block_rows`
        rows, sized for a recomputing backward (the larger of the two) and
        capped by the forward's room (``apply_cap``), so the ledger stays
        within what the plan counted.
        """
        block = self._block_rows("vertex", vertex_block_rows)
        return _split(lo, hi, block if self.apply_cap is None else max(1, min(block, self.apply_cap)))

    def hook_rows(self) -> Iterator[tuple[int, int, int, int]]:
        """``(q, lo, hi, blocks)`` of every block the hooks run in (:func:`~sagann.scheduler.memory_model.hook_block_rows`):
        interval ``q``'s rows ``lo:hi`` and how many blocks cover ``q``, forward and backward alike."""
        for q, lo_q, hi_q in self.p.intervals():
            blocks = _split(lo_q, hi_q, self._block_rows("hook", hook_block_rows))
            for lo, hi in blocks:
                yield q, lo, hi, len(blocks)

    def _block_rows(self, kind: str, rows_for) -> int:
        """Rows per block of ``kind`` on this call's partition (``rows_for``: the memory model's rule), for a recomputing backward."""
        hit = self._block_memo.get(kind)
        if hit is None or hit[0] is not self.p:
            sizes = np.diff(self.p.bounds)
            biggest = int(sizes.max()) if sizes.size else 0
            shape, budget = dataclasses.replace(self.shape, recomputes=True), self.device.memory_budget
            edgeless = {"edgeless": self.p.num_edges == 0} if kind == "vertex" else {}  # a pass with no edges loads each block alone
            rows = rows_for(biggest, shape, self.param_bytes, budget, **edgeless)
            cached = cache_block_rows(shape, kind != "vertex", getattr(self.device, "vertex_block_bytes", None))
            hit = self._block_memo[kind] = (self.p, rows if cached is None else min(rows, cached))  # blocks the caches hold
        return max(1, hit[1])

    def learn_blocks_keep(self, keep: bool) -> None:
        """Whether this layer's ApplyVertex blocks keep their graphs (they save no rows to copy), for its later calls too:
        a graph built only to be dropped cost a block's worth of work at every call."""
        self.blocks_keep = keep
        self.layer.__dict__.setdefault(_BLOCKS_KEEP, {})[self.layer.training] = keep

    def block_rng(self, kind: str, q: int, lo: int, blocks: int) -> contextlib.AbstractContextManager:
        """:meth:`rng` of a per-vertex function (``kind``: "vertex" or a hook) on interval ``q``'s block from row ``lo``
        (of ``blocks``): the interval's own key where it is one block."""
        return self.rng(kind, q) if blocks == 1 else self.rng(kind, q, lo)

    def rng(self, *key) -> contextlib.AbstractContextManager:
        """Run a user function under the seed of this call and position ``key`` (training only)."""
        if not self.layer.training:
            return contextlib.nullcontext()
        seed = self._seeds.get(key)
        if seed is None:  # a stable hash: the same call replays the same stream in any process
            seed = self._seeds[key] = (self.spec.seed * 1_000_003 + zlib.crc32(repr(key).encode())) & _SEED_MASK
        return SeededCpuStream(seed, self.rng_lock)

    def span(self, kind: str, phase: str, chunk=None, nbytes: int = 0, track: str = "compute"):
        if kind == "apply_vertex":  # every per-vertex function's run on an interval or block is one vertex step
            self.g.vertex_steps.add(self.name, phase)
        return self.device.span(kind, track, chunk=chunk, nbytes=nbytes, layer=self.name, phase=phase)

    def check_rows(self, t: torch.Tensor, rows: int, width: int, fn: str) -> None:
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (rows, width):
            raise ValueError(f"{self.name}.{fn} returned shape {list(getattr(t, 'shape', []))}, expected [{rows}, {width}] (as in the probe)")

    def plan(self, phase: str, reads_src: bool = True) -> PassPlan:
        """The pass's plan; ``reads_src=False``: the pass sends no source rows (a sum's source gradient), so plan none."""
        shape = self.shape if reads_src else dataclasses.replace(self.shape, sends_src=False)
        return self.g.pass_plan(self.p, shape, self.fused, self.param_bytes, phase, self.executor.measured(phase))

    def keep_mode(self) -> str | None:
        """How the hooks' and ApplyVertex's forward graphs reach backward, instead of being recomputed there.

        ``"host"``, on an unbudgeted device that shares host memory
        (in-memory CPU training): kept as they are; a graph holds views of
        host rows plus what the function itself saves, nothing a budget
        must account for. ``"offload"``, elsewhere: kept with what they save
        on the host (:mod:`sagann.engine.offload`), where that costs less
        than the recompute. None: nothing needs gradients (or no graph is
        being built), recompute nothing. Either way backward saves one
        evaluation of each function (a GCN's X W) per layer.
        """
        if not (self.keep_graphs and (self.need_x or bool(self.params))):
            return None
        dev = self.device
        return "host" if dev.memory_budget is None and dev.shares_host_memory else "offload"

    def seal(self, kept: KeptGraph, aliases: list, seconds: float, chunk: tuple) -> bool:
        """Move a kept graph's saved tensors to the host; False (recompute it in backward) where the round trip costs more.

        Only where the budget also holds the recompute (the plan counts a kept
        graph's backward, which has no recomputed output); the planned peak
        then includes it.
        """
        nbytes = kept.copy_bytes(aliases)
        if nbytes and self._recompute_fits():
            costs = self.device.transfer_costs()
            if 2 * (nbytes * costs.block + costs.latency) > seconds:
                self.g.planner.note_recompute_peak(self.recompute_bytes())
                return False
        with self.span("d2h", FORWARD, chunk, nbytes) if nbytes else contextlib.nullcontext():
            kept.seal(aliases, self.device, self.g.host)
        return True

    def _recompute_fits(self) -> bool:
        if self._fits_recompute is None:
            budget = self.device.memory_budget
            self._fits_recompute = budget is None or self.recompute_bytes() <= budget
        return self._fits_recompute

    def recompute_bytes(self) -> int:
        """:func:`~sagann.scheduler.memory_model.recompute_bytes` of this call on its partition, worked out once per
        partition (200 us of shape arithmetic, asked at every blocked interval's ApplyVertex)."""
        budget = self.device.memory_budget
        hit = self._block_memo.get("recompute")
        if hit is None or hit[0] is not self.p or hit[1] != budget:
            hit = self._block_memo["recompute"] = (self.p, budget, recompute_bytes(self.p, self.shape, self.param_bytes, budget))
        return hit[2]

    def edge_stage_has_grads(self, need_x: bool, need_e: bool) -> bool:
        """Does any gradient flow through the edge stage (and so through ``acc``)? (``LayerShape.edge_grads``)"""
        return self.shape.edge_grads(need_x, need_e)

    def grad(self, out, inputs: list[torch.Tensor], grad: torch.Tensor):
        """Gradients of ``out`` (a tensor, or a kept graph's handle) w.r.t. ``inputs``; None for the unused."""
        if not inputs or (isinstance(out, torch.Tensor) and not out.requires_grad):
            return [None] * len(inputs)
        return torch.autograd.grad(out, inputs, grad, allow_unused=True)

    def add_param_grads(self, grads, gparams) -> None:
        for acc, g in zip(gparams, grads):
            if g is not None:
                acc.add_(g)


def degree_scales(gather: str, in_degree) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Row scales ``[N, 1]`` at the sources and at the destinations of a gather the kernels run as a sum; None: unscaled.

    mean: ``1 / max(deg, 1)`` at destinations. sym: ``deg^-1/2`` at both
    ends, 0 for a vertex without in-edges (PyG's ``gcn_norm``: its
    out-edges then carry weight 0).
    """
    if gather not in ("mean", "sym"):
        return None, None
    deg = torch.from_numpy(np.array(in_degree, dtype=np.float32))  # a copy: dataset arrays are read-only maps
    if gather == "mean":
        return None, (1.0 / deg.clamp(min=1)).unsqueeze(-1)
    dinv = deg.pow(-0.5).masked_fill(deg == 0, 0.0).unsqueeze(-1)
    return dinv, dinv


def _data_permutation(host, given: np.ndarray, order: np.ndarray) -> torch.Tensor:
    """For each slot of ``order``, where that edge's row sits in data laid out in ``given`` order (int64: ``index_copy_`` wants it).

    Edge-sized, so made under the host budget a block at a time, without
    the whole-length temporaries of ``inverse[order]``.
    """
    n = len(given)
    where = host.array(n, np.int64, "edge positions of the given edge data")
    for lo in range(0, n, PERMUTE_BLOCK):
        where[given[lo : lo + PERMUTE_BLOCK]] = np.arange(lo, min(lo + PERMUTE_BLOCK, n), dtype=np.int64)
    perm = host.array(n, np.int64, "edge data permutation of a re-plan")
    for lo in range(0, n, PERMUTE_BLOCK):
        perm[lo : lo + PERMUTE_BLOCK] = where[order[lo : lo + PERMUTE_BLOCK]]
    return torch.from_numpy(perm)


def _split(lo: int, hi: int, block: int) -> list[tuple[int, int]]:
    """Rows ``lo:hi`` in consecutive blocks of at most ``block`` rows (one where they fit)."""
    if hi - lo <= block:
        return [(lo, hi)]
    return [(b, min(hi, b + block)) for b in range(lo, hi, block)]
