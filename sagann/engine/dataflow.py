"""Chunked SAGA-NN dataflow and its autograd: host tensors in, host tensors out.

Forward walks destination intervals (column order): for each V_j it
accumulates Gather(ApplyEdge(Scatter(V_i, V_j, E_ij))) over the sub-chunks
of column j, finalises the reducer, runs ApplyVertex and writes V_j's rows
back. It keeps on the host what backward needs: the gathered rows ``acc``
(and, for max/min, the winning global edge id of each entry) and the hook
outputs.

Backward first recomputes ApplyVertex per interval to get the gradient of
``acc``; then walks source intervals (row order), recomputing each
sub-chunk's ApplyEdge+Gather under autograd and pushing the ``acc`` gradient
through it: source-side gradients accumulate on the device for V_i,
destination-side and edge gradients are added into host tensors; finally it
back-propagates the hook pre-pass. Parameter gradients are summed as it goes.

Both edge stages walk a :class:`~sagann.scheduler.schedule.PassPlan`: a
loader thread prepares each sub-chunk's inputs ``plan.prefetch`` sub-chunks
ahead of the compute thread (the caller's), sending either the sub-chunk's
used source rows (selective) or V_i's rows once per chunk (full), and
per-chunk load and compute times feed the next pass's ordering.

Randomness inside user functions (dropout) is replayed exactly in the
recomputation: each function call runs under a seed derived from one draw
of the caller's RNG and the call's position.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
import time
import weakref
import zlib
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import numpy as np
import torch

from sagann import kernels, profiler
from sagann.chunks.partition import GraphPartition
from sagann.chunks.types import EdgeChunk
from sagann.engine.constant import reuses_gather, run_on_cached_gather
from sagann.engine.graph import ChunkedGraph, PassRecord, check_features
from sagann.engine.layer import EdgeBatch, Layer, probe_layer, unread_rows
from sagann.engine.offload import KeptGraph
from sagann.engine.replan import run_with_replans
from sagann.kernels import attention, reference
from sagann.scheduler.devices import Scope, tensor_bytes
from sagann.scheduler.pipeline import Prefetcher
from sagann.scheduler.planner import LayerShape, edge_scratch_bytes, recompute_bytes, vertex_scratch_bytes
from sagann.scheduler.policy import Transfer, two_stage_makespan
from sagann.scheduler.schedule import BACKWARD, FORWARD, ChunkStep, PassPlan

_SEED_MASK = (1 << 63) - 1
_SRC_FIELDS = ("src", "src_term")


def run_layer(layer: Layer, g: ChunkedGraph, x: torch.Tensor, edge_data: torch.Tensor | None) -> torch.Tensor:
    """Entry point of ``Layer.forward``: validate, plan, and run the chunked autograd function."""
    if not isinstance(g, ChunkedGraph):
        raise TypeError(f"{type(layer).__name__}: the first argument must be a sagann.ChunkedGraph, got {type(g).__name__}")
    check_features(g, x)
    if edge_data is not None:
        if not isinstance(edge_data, torch.Tensor) or edge_data.dim() not in (1, 2) or edge_data.shape[0] != g.num_edges:
            raise ValueError(f"edge_data must have shape [num_edges={g.num_edges}] or [num_edges, k], got {list(getattr(edge_data, 'shape', []))}")
        if edge_data.dtype != torch.float32:
            raise ValueError(f"edge_data must be float32, got {edge_data.dtype}")
    device = g.device
    params = [p for p in layer.parameters() if p.requires_grad]
    for name, p in layer.named_parameters():
        if p.device != device.torch_device:
            raise ValueError(f"{type(layer).__name__}.{name} is on {p.device} but the graph's device computes on {device.torch_device}; move the layer there")
    if reuses_gather(layer, g, x, edge_data):  # a Gather over unchanged inputs that need no gradient: computed once
        return run_on_cached_gather(layer, g, x, edge_data)
    user = layer
    layer = _compiled(layer, int(x.shape[1]), edge_data)
    key = (x.shape[1], None if edge_data is None else tuple(edge_data.shape[1:]), layer.training)
    shape = layer.__dict__.get("_sagann_shape", {}).get(key)
    if shape is None:
        shape = probe_layer(layer, int(x.shape[1]), edge_data, device.torch_device)
        layer.__dict__.setdefault("_sagann_shape", {})[key] = shape
    backend = _backend_for(g, shape)
    param_bytes = sum(tensor_bytes(p) for p in layer.parameters())
    fused = backend != "reference" and (shape.builtin is not None or shape.attention is not None)
    grad_x, grad_e = x.requires_grad, edge_data is not None and edge_data.requires_grad
    shape = shape.with_grads(torch.is_grad_enabled() and (grad_x or grad_e or bool(params)), grad_x, grad_e)  # plan what backward computes
    partition = g.plan(shape, fused=fused, param_bytes=param_bytes)
    seed = int(torch.randint(0, 2**62, (1,)).item()) if layer.training else 0
    name = getattr(user, "display_name", None) or type(user).__name__
    if g.multi_device:  # several devices or ranks: sagann.engine.multi drives one _LayerCall per device
        from sagann.engine.multi import make_multi_call

        call = make_multi_call(layer, g, partition, shape, backend, fused, param_bytes, seed, name=name)
    else:
        call = _LayerCall(layer, g, partition, shape, backend, fused, param_bytes, seed, name=name)
    call.keep_graphs = torch.is_grad_enabled()  # inside the autograd Function's forward it is always off
    edge_data = None if edge_data is None else _in_chunk_order(partition, edge_data.contiguous())
    return _SagaFunction.apply(call, x.contiguous(), edge_data, *params)


try:
    from torch.autograd.graph import get_gradient_edge as _gradient_edge  # torch >= 2.4
except ImportError:  # pragma: no cover - older torch keeps the output tensor
    _gradient_edge = None

_EDGE_ORDER_CACHE = "_sagann_edge_data_in_order"  # partition attribute: (weakref to input, its version, permuted)
_SOURCE_MAJOR_CACHE = "_sagann_edge_data_source_major"  # partition attribute: the same, rows source-major per sub-chunk


def _in_chunk_order(partition: GraphPartition, edge_data: torch.Tensor) -> torch.Tensor:
    """Edge data permuted into the partition's sub-chunk order, so a sub-chunk's edge rows are one slice.

    A differentiable index_select (autograd scatters the gradient back).
    For data without grad (e.g. a GCN's cached norm, used by every layer and
    epoch) the permuted copy is kept on the partition while the input lives
    unchanged, so it is built once.
    """
    order = torch.from_numpy(partition.edge_order[0])
    if edge_data.requires_grad or edge_data.is_inference():
        return edge_data.index_select(0, order)
    hit = partition.__dict__.get(_EDGE_ORDER_CACHE)
    if hit is not None and hit[0]() is edge_data and hit[1] == edge_data._version:
        return hit[2]
    out = edge_data.index_select(0, order)
    partition.__dict__[_EDGE_ORDER_CACHE] = (weakref.ref(edge_data), edge_data._version, out)
    return out


def _compiled(layer: Layer, d_in: int, edge_data: torch.Tensor | None) -> Layer:
    """The layer with per-vertex terms hoisted (compiled once per input shape), or the layer itself."""
    if not layer.hoist:
        return layer
    d_edge = None if edge_data is None else (1 if edge_data.dim() == 1 else int(edge_data.shape[1]))
    cache = layer.__dict__.setdefault("_sagann_hoist", {})
    if (d_in, d_edge) not in cache:
        from sagann.engine.hoist import compile_layer

        cache[(d_in, d_edge)] = compile_layer(layer, d_in, d_edge)
    runner = cache[(d_in, d_edge)][0]
    if runner is not layer and runner.training != layer.training:
        runner.train(layer.training)
    return runner


def _backend_for(g: ChunkedGraph, shape: LayerShape) -> str:
    if g.backend != "auto":
        return g.backend
    if shape.builtin is None and shape.attention is None:
        return "reference"
    return g.device.kernel_backend


def _owns_storage(t: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Is ``t`` a fresh tensor, sharing memory with none of ``others``? (Safe to return as the output.)"""
    ptr = t.untyped_storage().data_ptr()
    return all(o is None or o.untyped_storage().data_ptr() != ptr for o in others)


def _graph_handle(t: torch.Tensor):
    """What backward needs of a kept forward graph's output: its gradient edge, not its memory.

    Holding the output tensor would keep its rows alive until backward
    (a GCN layer's N x d output, which autograd would otherwise free after
    the next ReLU); the edge keeps only the graph. Older torch: the tensor.
    """
    if _gradient_edge is None or not t.requires_grad:
        return t
    return _gradient_edge(t)


def _own_version(t: torch.Tensor) -> torch.Tensor:
    """``t``'s memory under a version counter of its own.

    ``t`` may be a view of a host buffer whose other rows are written
    later in the pass (the next interval's accumulator); a graph saving a
    plain view would see those writes as modifications of its own rows.
    """
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())


class _HostGrad:
    """A host gradient ``[N, d]``, made at its first write; rows are zero-filled only where something adds into them.

    With P = 1 in memory a gradient often has one writer (a GCN's input
    gradient comes from its ``apply_src`` backward alone): adopting it saves
    an N x d zero fill, an add and the buffer. Only a tensor that aliases
    none of ``avoid`` (the inputs and incoming gradients autograd may hand
    back as views) is adopted, so later in-place adds never touch them. Out
    of core, the first write to an interval's rows is a copy, not a zero
    fill and an add.
    """

    def __init__(self, host, like: torch.Tensor, what: str, avoid: tuple = ()):
        self._host, self._like, self._what, self._avoid = host, like, what, avoid
        self._t: torch.Tensor | None = None
        self._written: np.ndarray | None = None  # rows holding a value (the rest are garbage until zeroed)

    def _buffer(self) -> torch.Tensor:
        if self._t is None:
            self._t = self._host.empty(tuple(self._like.shape), self._like.dtype, self._what)
            self._written = np.zeros(self._like.shape[0], dtype=bool)
        return self._t

    def _zero_unwritten(self, lo: int, hi: int) -> None:
        fresh = ~self._written[lo:hi]
        if fresh.all():
            self._t[lo:hi].zero_()
        elif fresh.any():
            self._t[lo:hi][torch.from_numpy(fresh)] = 0
        self._written[lo:hi] = True

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        """Rows lo:hi to accumulate into (zeroed where nothing was written yet)."""
        self._buffer()
        if self._written is not None:
            self._zero_unwritten(lo, hi)
        return self._t[lo:hi]

    def add(self, dev, t: torch.Tensor, lo: int, hi: int) -> None:
        """Add device rows ``t`` into rows lo:hi."""
        whole = lo == 0 and hi == self._like.shape[0] and t.shape == self._like.shape and t.dtype == self._like.dtype
        if self._t is None and whole and dev.shares_host_memory and not self._host.enabled and t.is_contiguous() and _owns_storage(t, *self._avoid):
            self._t = t.detach()
            return
        self._buffer()
        if self._written is not None and not self._written[lo:hi].any():
            dev.copy_out(t, self._t[lo:hi])  # the first write to these rows
            self._written[lo:hi] = True
            return
        dev.add_out(t, self.rows(lo, hi))

    def tensor(self) -> torch.Tensor:
        if self._t is None:
            return self._host.zeros_like(self._like, self._what)
        if self._written is not None:
            self._zero_unwritten(0, self._like.shape[0])
        return self._t


class _SagaFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call: "_LayerCall", x, edge_data, *params):
        versions = [t._version for t in (x, edge_data) if t is not None]
        call.need_x, call.need_e = bool(ctx.needs_input_grad[1]), bool(ctx.needs_input_grad[2])
        call.keep_graphs = call.keep_graphs and any(ctx.needs_input_grad)
        call, (out, saved) = run_with_replans(call, FORWARD, lambda c: c.forward(x, edge_data))  # out of memory: finer P
        if versions != [t._version for t in (x, edge_data) if t is not None]:
            raise RuntimeError(
                f"{call.name}: a user function modified its input in place (e.g. x.relu_()); the engine hands user "
                "functions views of the host tensors, so write out-of-place (x.relu()) instead"
            )
        ctx.call, ctx.saved = call, saved
        ctx.save_for_backward(x, edge_data)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, edge_data = ctx.saved_tensors
        if ctx.saved is None:
            raise RuntimeError(
                f"{ctx.call.name}: backward ran twice through the same sagann layer call; its saved host state is freed "
                "after the first backward to save memory (retain_graph is not supported): run the forward again"
            )
        need_x, need_e = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_out = grad_out.contiguous()
        ctx.call, (gx, ge, gparams) = run_with_replans(ctx.call, BACKWARD, lambda c: c.backward(x, edge_data, ctx.saved, grad_out, need_x, need_e))
        ctx.saved = None
        return (None, gx, ge, *gparams)


@dataclass
class _Saved:
    src_term: torch.Tensor | None  # host [N, d_src_term]
    dst_term: torch.Tensor | None  # host [N, d_dst_term]
    acc: torch.Tensor  # host [N, d_msg], finalised
    winners: torch.Tensor | None  # host int64 [N, d_msg], global edge id, -1 if none
    softmax_max: torch.Tensor | None = None  # host [N, heads]: max score per destination (0 if none)
    softmax_sum: torch.Tensor | None = None  # host [N, heads]: sum of exp(score - max)


class _Block:
    """V_i's source rows sent as one block, shared by the sub-chunks of one full-transfer chunk (or of a pass: resident).

    Reference counted: the loader holds one reference while it still loads
    the chunk's sub-chunks (a resident copy: while the pass runs), each
    loaded sub-chunk one; the last release frees the device memory.
    """

    def __init__(self, scope: Scope, tensors: dict[str, torch.Tensor]):
        self.scope, self.tensors = scope, tensors
        self._refs, self._lock = 1, threading.Lock()

    def acquire(self) -> "_Block":
        with self._lock:
            self._refs += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            self.scope.close()


class _ChunkInputs:
    """A sub-chunk's device-side inputs, each loaded once on first use; in backward they are autograd leaves."""

    def __init__(self, call: "_LayerCall", c: EdgeChunk, host: dict, grad: dict, block: _Block | None, block_in_place: bool = False, source_major: bool = False):
        self.call, self.c = call, c
        # the fused forward reads source rows from V_i's block in place (kernels.gspmm(src_rows=...))
        self.block_in_place = block_in_place and block is not None
        self.scope = Scope(call.device)
        self._host, self._grad, self._block = host, grad, block
        self._resident: dict[str, torch.Tensor | None] = {}
        self._values: dict[str, torch.Tensor | None] = {}
        self.loaded_bytes = 0
        self.load_seconds = 0.0
        self.ct = call.device.chunk_tensors(c, source_major=source_major)
        self.scope.charge(self.ct.nbytes, lambda: f"index arrays of {c.id!r}")
        self.loaded_bytes += self.ct.nbytes
        self._src_local = torch.from_numpy(c.src_rows.astype(np.int64))
        self._src_local_dev: torch.Tensor | None = None

    def src_local_rows(self) -> torch.Tensor:
        """The sub-chunk's source rows within V_i (int64, on the device)."""
        if self._src_local_dev is None:
            self._src_local_dev = self._src_local.to(self.call.device.torch_device)
        return self._src_local_dev

    def set_resident(self, resident: dict) -> None:
        """Forward: the destination rows of V_j already on the device."""
        self._resident = resident

    def get(self, name: str) -> torch.Tensor | None:
        if name not in self._values:
            self._values[name] = self._load(name)
        return self._values[name]

    def preload(self, names) -> None:
        for name in names:
            self.get(name)

    def _load(self, name: str) -> torch.Tensor | None:
        c, s = self.c, self.scope
        if name in self._resident:  # rows of V_j the pass holds
            t = self._resident[name]
            if t is None:
                return None
            t = t[c.dst_offset : c.dst_offset + c.num_dst]
            return t.detach().requires_grad_(True) if self._grad.get(name) else t  # a leaf of its own on the held rows
        host = self._host.get(name)
        if host is None:
            return None
        if name in _SRC_FIELDS and self._block is not None:
            block = self._block.tensors[name]
            if self.block_in_place:
                return block
            t = s.adopt(block.index_select(0, self._src_local.to(block.device)), lambda: f"{name} rows picked for {c.id!r}")
        else:
            if name in _SRC_FIELDS:
                t = s.load_rows(host, torch.from_numpy(c.src_start + c.src_rows.astype(np.int64)), lambda: f"{name} rows of {c.id!r}")
            elif name == "data":  # edge data arrive in sub-chunk order (_in_chunk_order): one slice
                off = self.call.edge_offset(c)
                t = s.load(host[off : off + c.nnz], lambda: f"edge rows of {c.id!r}")
            else:  # destination-row fields, in backward
                lo = c.dst_start + c.dst_offset
                t = s.load(host[lo : lo + c.num_dst], lambda: f"{name} rows of {c.id!r}")
            self.loaded_bytes += tensor_bytes(t)
        if self._grad.get(name):
            t.requires_grad_(True)
        return t

    def leaves(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self._values.items() if v is not None and v.requires_grad and v.is_leaf}

    def close(self) -> None:
        self.scope.close()
        if self._block is not None:
            self._block.release()
            self._block = None


@dataclass
class _Column:
    """A destination interval's forward state on the device while a tile's sources stream past it."""

    j: int
    lo: int
    hi: int
    scope: Scope
    xj: torch.Tensor
    dj: torch.Tensor | None
    acc: torch.Tensor
    acc_shared: bool
    win: torch.Tensor | None
    win_shared: bool
    sm: tuple[torch.Tensor, torch.Tensor] | None


class _LayerCall:
    """One call of a layer on one graph: runs the chunked forward and backward."""

    # held around every seeded user-function call when several devices compute in threads
    # (fork_rng + manual_seed act on the one global CPU generator)
    rng_lock: threading.RLock | None = None

    def __init__(self, layer: Layer, g: ChunkedGraph, partition: GraphPartition, shape: LayerShape, backend: str, fused: bool, param_bytes: int, seed: int, name: str):
        self.layer, self.g, self.p, self.shape = layer, g, partition, shape
        self.backend, self.fused, self.param_bytes, self.seed = backend, fused, param_bytes, seed
        self.device = g.device
        self.params = [p for p in layer.parameters() if p.requires_grad]
        self.name = name
        self.reduce = "sum" if shape.gather in ("sum", "mean") else shape.gather
        deg = torch.from_numpy(np.asarray(partition.in_degree, dtype=np.float32)).clamp(min=1)  # a copy: dataset arrays are read-only maps
        self.inv_degree = (1.0 / deg).unsqueeze(-1) if shape.gather == "mean" else None
        self.cost_key = (id(layer), shape, partition.num_chunks, partition.sub_chunk_nnz)
        self.need_x = self.need_e = True  # set from the autograd context before forward
        self._source_major = False  # this backward pass reads edges source-major (see _backward_edges)
        self.keep_graphs = True
        self._fits_recompute: bool | None = None  # may a kept graph be dropped (see _seal)?
        self._resident_copies: dict[int, _Block] = {}  # this pass's copies of its resident intervals' source rows
        self._dst_rows: dict[int, dict[str, torch.Tensor]] = {}  # a backward pass's held destination rows (plan.dst_rows_bytes), per V_j
        # forward graphs kept for backward (see _keep_mode): q -> (rows, output) or a KeptGraph, per hook;
        # j -> (x rows, acc, output) or a KeptGraph for ApplyVertex
        self.hook_graphs: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor] | KeptGraph]] = {}
        self.vertex_graphs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | KeptGraph] = {}
        self._edge_offsets = partition.edge_order[1]
        # edge data arrive permuted into this first partition's sub-chunk order (_in_chunk_order);
        # after a re-plan, where each slot of the new order is in them (None: the same order)
        self._given_order = partition.edge_order[0]
        self._data_perm: torch.Tensor | None = None
        # sum is linear: its backward kernels need the operands and the output gradient only,
        # so a fused sum layer skips the per-chunk forward recompute and autograd in backward
        builtin = shape.builtin
        self.direct_backward = fused and self.reduce == "sum" and not shape.softmax and builtin is not None and builtin.spec.sum_backward

    def on_partition(self, partition: GraphPartition) -> "_LayerCall":
        """This call on a finer partition (a re-plan after running out of memory): same layer, seed and flags."""
        call = copy.copy(self)
        call.p, call.hook_graphs, call.vertex_graphs, call._fits_recompute = partition, {}, {}, None
        call.cost_key = (id(self.layer), self.shape, partition.num_chunks, partition.sub_chunk_nnz)
        order, call._edge_offsets = partition.edge_order
        given = np.empty_like(self._given_order)
        given[self._given_order] = np.arange(len(self._given_order), dtype=given.dtype)
        call._data_perm = torch.from_numpy(given[order].astype(np.int64))  # index_copy_ wants int64
        return call

    def _edges_in_partition_order(self, edata: torch.Tensor | None) -> torch.Tensor | None:
        """Edge data (given in the first partition's order) in this partition's sub-chunk order."""
        if edata is None or self._data_perm is None:
            return edata
        return edata.index_select(0, self._data_perm)

    def _edges_in_given_order(self, ge: torch.Tensor | None) -> torch.Tensor | None:
        """An edge gradient in this partition's order, put back in the order the edge data were given."""
        if ge is None or self._data_perm is None:
            return ge
        return torch.empty_like(ge).index_copy_(0, self._data_perm, ge)

    # ---- helpers -------------------------------------------------------------------------
    def _rng(self, *key) -> contextlib.AbstractContextManager:
        if not self.layer.training:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        if self.rng_lock is not None:
            stack.enter_context(self.rng_lock)
        stack.enter_context(torch.random.fork_rng(devices=[]))
        # a stable hash: the same call replays the same stream in any process. Only the CPU
        # generator: torch.manual_seed would also (lazily, slowly) seed every accelerator.
        torch.default_generator.manual_seed((self.seed * 1_000_003 + zlib.crc32(repr(key).encode())) & _SEED_MASK)
        return stack

    def _span(self, kind: str, phase: str, chunk=None, nbytes: int = 0, track: str = "compute"):
        return self.device.span(kind, track, chunk=chunk, nbytes=nbytes, layer=self.name, phase=phase)

    def _check_rows(self, t: torch.Tensor, rows: int, width: int, fn: str) -> None:
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (rows, width):
            raise ValueError(f"{self.name}.{fn} returned shape {list(getattr(t, 'shape', []))}, expected [{rows}, {width}] (as in the probe)")

    def _partial(self, inputs: _ChunkInputs, phase: str, into: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gather(ApplyEdge(Scatter)) of one sub-chunk onto its destination rows (a fused sum: added into ``into``)."""
        shape, ct, cid = self.shape, inputs.ct, inputs.c.id
        if shape.builtin is not None:
            src = inputs.get("src_term") if shape.d_src_term else inputs.get("src")
            dst = (inputs.get("dst_term") if shape.d_dst_term else inputs.get("dst")) if shape.builtin.uses_dst else None
            edge = inputs.get("data") if shape.builtin.uses_edge else None
            rows = inputs.src_local_rows() if inputs.block_in_place else None
            with self._span("kernel", phase, cid):
                out, arg = kernels.gspmm(ct, shape.builtin.op, self.reduce, src=src, edge=edge, dst=dst, backend=self.backend, src_rows=rows, out=into)
            inputs.scope.adopt(arg, lambda: f"winner positions of {cid!r}")
            return out, arg

        msg = self._messages(inputs, phase)
        with self._span("gather_reduce", phase, cid):
            out, arg = reference.gather(ct, msg, self.reduce)
        inputs.scope.adopt(arg, lambda: f"winner positions of {cid!r}")
        return out, arg

    def _messages(self, inputs: _ChunkInputs, phase: str):
        """Run the user's ApplyEdge on one sub-chunk: messages, or (scores, messages) for softmax."""
        shape, ct, cid = self.shape, inputs.ct, inputs.c.id

        def per_edge(name: str, index: torch.Tensor):
            return lambda: (lambda t: None if t is None else t.index_select(0, index))(inputs.get(name))

        e = EdgeBatch(
            ct.nnz,
            {
                "src": per_edge("src", ct.src_idx),
                "src_term": per_edge("src_term", ct.src_idx),
                "dst": per_edge("dst", ct.dst_idx),
                "dst_term": per_edge("dst_term", ct.dst_idx),
                "data": lambda: (lambda t: None if t is None else (t.unsqueeze(-1) if t.dim() == 1 else t))(inputs.get("data")),
            },
        )
        inputs.scope.charge(edge_scratch_bytes(ct.nnz, shape, fused=False), lambda: f"messages and temporaries of {cid!r}")
        with self._span("apply_edge", phase, cid), self._rng("edge", *cid):
            msg = self.layer.apply_edge(e)
        if shape.softmax:
            scores, msg = msg
            self._check_rows(scores, ct.nnz, shape.d_score, "apply_edge scores")
            self._check_rows(msg, ct.nnz, shape.d_msg, "apply_edge messages")
            return scores, msg
        self._check_rows(msg, ct.nnz, shape.d_msg, "apply_edge")
        return msg

    def _softmax_chunk(self, inputs: _ChunkInputs):
        """Forward: this chunk's max, sum of exp(score - max) and weighted message sum per row and head."""
        ct, h = inputs.ct, self.shape.d_score
        if self.fused and self.shape.attention is not None:  # no per-edge tensors
            rows = inputs.src_local_rows() if inputs.block_in_place else None
            with self._span("kernel", FORWARD, inputs.c.id):
                parts = attention.attention_partials(ct, inputs.get("src_term"), inputs.get("dst_term"), h, self.shape.attention.negative_slope, src_rows=rows, backend=self.backend)
            for t in parts:
                inputs.scope.adopt(t, lambda: f"softmax partials of {inputs.c.id!r}")
            return parts
        scores, msg = self._messages(inputs, FORWARD)
        with self._span("gather_reduce", FORWARD, inputs.c.id):
            dst = ct.dst_idx.long()
            m_c = scores.new_full((ct.num_dst, h), float("-inf")).scatter_reduce(0, dst.unsqueeze(-1).expand(-1, h), scores, "amax")
            w = torch.exp(scores - m_c.index_select(0, dst))
            l_c = scores.new_zeros(ct.num_dst, h).index_add(0, dst, w)
            a_c = msg.new_zeros(ct.num_dst, h, self.shape.d_msg // h).index_add(0, dst, w.unsqueeze(-1) * msg.view(ct.nnz, h, -1))
        for t in (m_c, l_c, a_c):
            inputs.scope.adopt(t, lambda: f"softmax partials of {inputs.c.id!r}")
        return m_c, l_c, a_c.view(ct.num_dst, -1)

    def _softmax_surrogate(self, inputs: _ChunkInputs) -> torch.Tensor:
        """Backward: sum_j p_ij (m_j - out_i) per row, with the forward's max, sum and output held constant.

        Its gradient w.r.t. m_j is p_ij and w.r.t. the score e_ij is
        p_ij (dOut_i . m_j - dOut_i . out_i): exactly the softmax backward, the
        per-destination correction dOut_i . out_i coming from the saved output.
        """
        ct, h = inputs.ct, self.shape.d_score
        scores, msg = self._messages(inputs, BACKWARD)
        dst = ct.dst_idx.long()
        m, l, out = inputs.get("sm_max"), inputs.get("sm_sum"), inputs.get("out_rows")
        p = torch.exp(scores - m.index_select(0, dst)) / l.index_select(0, dst)
        centred = msg.view(ct.nnz, h, -1) - out.view(ct.num_dst, h, -1).index_select(0, dst)
        return msg.new_zeros(ct.num_dst, h, self.shape.d_msg // h).index_add(0, dst, p.unsqueeze(-1) * centred).view(ct.num_dst, -1)

    def _edges_source_major(self, edata: torch.Tensor) -> torch.Tensor:
        """Chunk-ordered edge data with each sub-chunk's rows in source-major order (``rows[src_perm]``).

        Every sub-chunk keeps its slice; only the order inside it changes.
        Cached on the partition while ``edata`` lives unchanged (a GCN's
        normalisation: once per training run, not per pass).
        """
        hit = self.p.__dict__.get(_SOURCE_MAJOR_CACHE)
        if hit is not None and hit[0]() is edata and hit[1] == edata._version:
            return hit[2]
        perm = np.arange(edata.shape[0], dtype=np.int64)
        for c in self.p.sub_chunks():
            off = self.edge_offset(c)
            perm[off : off + c.nnz] = off + c.src_perm
        out = edata.index_select(0, torch.from_numpy(perm))
        self.p.__dict__[_SOURCE_MAJOR_CACHE] = (weakref.ref(edata), edata._version, out)
        return out

    def edge_offset(self, c: EdgeChunk) -> int:
        """Where sub-chunk ``c``'s rows start in the chunk-ordered edge data (see _in_chunk_order)."""
        return self._edge_offsets[c.id]

    def _keep_mode(self) -> str | None:
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

    def _seal(self, kept: KeptGraph, aliases: list, seconds: float, chunk: tuple) -> bool:
        """Move a kept graph's saved tensors to the host; False (recompute it in backward) where the round trip costs more.

        Only where the budget also holds the recompute (the plan counts a kept
        graph's backward, which has no recomputed output); the planned peak
        then includes it.
        """
        nbytes = kept.copy_bytes(aliases)
        if nbytes and self._recompute_fits():
            costs = self.device.transfer_costs()
            if 2 * (nbytes * costs.block + costs.latency) > seconds:
                self.g._planned_peak = max(self.g._planned_peak, recompute_bytes(self.p, self.shape, self.param_bytes))
                return False
        with self._span("d2h", FORWARD, chunk, nbytes) if nbytes else contextlib.nullcontext():
            kept.seal(aliases, self.device, self.g.host)
        return True

    def _recompute_fits(self) -> bool:
        if self._fits_recompute is None:
            budget = self.device.memory_budget
            self._fits_recompute = budget is None or recompute_bytes(self.p, self.shape, self.param_bytes) <= budget
        return self._fits_recompute

    def _hook_pass(self, hook: str, x: torch.Tensor, width: int) -> torch.Tensor:
        out = self.g.host.empty((self.g.num_vertices, width), what=f"{hook} rows")
        mode = self._keep_mode()
        graphs = self.hook_graphs.setdefault(hook, {}) if mode else None
        for q, lo, hi in self.p.intervals():
            with self.device.scope() as s:
                v = s.load(x[lo:hi], f"input rows V_{q}")
                s.charge(vertex_scratch_bytes(hi - lo, width), f"{hook} temporaries V_{q}")
                kept = KeptGraph(self.params) if mode == "offload" else None
                vin = v.detach().requires_grad_(self.need_x) if mode else v  # a kept graph's input leaf
                saving = kept.hooks() if kept is not None else contextlib.nullcontext()
                with self._span("apply_vertex", FORWARD, (q,)), self._rng(hook, q), torch.set_grad_enabled(mode is not None), saving:
                    t0 = time.perf_counter()
                    h = s.adopt(getattr(self.layer, hook)(vin), f"{hook} rows V_{q}")
                    seconds = time.perf_counter() - t0
                self._check_rows(h, hi - lo, width, hook)
                self.device.copy_out(h.detach(), out[lo:hi])
                if kept is not None:
                    kept.keep_inputs(vin)
                    kept.handle = _graph_handle(h)
                    if self._seal(kept, [(v, x[lo:hi]), (h, out[lo:hi])], seconds, (q,)):
                        graphs[q] = kept
                elif mode:
                    graphs[q] = (vin, _graph_handle(h))
        return out

    # ---- the streamed edge stage -------------------------------------------------------------
    def _plan(self, phase: str, reads_src: bool = True) -> PassPlan:
        """The pass's plan; ``reads_src=False``: the pass sends no source rows (a sum's source gradient), so plan none."""
        shape = self.shape if reads_src else dataclasses.replace(self.shape, uses_src=False, uses_src_term=False)
        return self.g.pass_plan(self.p, shape, self.fused, self.param_bytes, phase, lambda key: self.g.costs.get((self.cost_key, phase), key))

    def _jobs(self, plan: PassPlan, host: dict, grad: dict, fields: tuple[str, ...]):
        """(label, job) per sub-chunk in plan order; a job loads that sub-chunk's inputs."""
        self._resident_copies = {}  # the pass's resident intervals (plan.resident), each sent by its first job
        holder: dict[str, _Block] = {}  # the run's full block of V_i, while its steps share it
        try:
            for step in plan.steps():
                if "block" in holder and not step.shares_block:
                    holder.pop("block").release()  # the loader's own reference; the chunks using it hold theirs
                for k, c in enumerate(step.subs):
                    yield repr(c.id), partial(self._load, plan.phase, step, k, c, host, grad, fields, holder)
        finally:
            if "block" in holder:
                holder.pop("block").release()
            for copy_i in self._resident_copies.values():
                copy_i.release()  # the loader's reference; the last chunk using it frees it
            self._resident_copies = {}

    def _load(self, phase: str, step: ChunkStep, k: int, c: EdgeChunk, host: dict, grad: dict, fields, holder: dict) -> _ChunkInputs:
        t0 = time.perf_counter()
        block_bytes = 0
        if step.transfer is not Transfer.SELECTIVE and k == 0 and not step.shares_block:
            holder["block"], block_bytes = self._load_block(step, host, fields)
        block = holder["block"].acquire() if "block" in holder else None
        try:
            inputs = _ChunkInputs(self, c, host, grad, block, block_in_place=phase == FORWARD and self.fused, source_major=phase == BACKWARD and self._source_major)
        except BaseException:  # e.g. out of memory on its index arrays: the block reference is ours to drop
            if block is not None:
                block.release()
            raise
        if self._dst_rows:
            inputs.set_resident(self._dst_rows[step.key[1]])
        try:
            inputs.preload(fields)
        except BaseException:
            inputs.close()
            raise
        inputs.loaded_bytes += block_bytes
        t1 = time.perf_counter()
        inputs.load_seconds = t1 - t0
        if profiler.enabled():
            profiler.record_interval("h2d", self.device.name, "loader", t0, t1, chunk=c.id, nbytes=inputs.loaded_bytes, layer=self.name, phase=phase)
        return inputs

    def _load_block(self, step: ChunkStep, host: dict, fields) -> tuple[_Block, int]:
        """V_i's source rows for a full-transfer chunk, as one block, and the bytes sent from the host.

        A resident step's block is the pass's copy of V_i, sent by the first
        step that reads it (its bytes are counted there) and held to the
        pass's end.
        """
        i = step.key[0]
        lo, hi = self.p.interval(i)
        if step.transfer is Transfer.RESIDENT:
            sent = 0
            if i not in self._resident_copies:
                self._resident_copies[i], sent = self._send_rows(host, fields, lo, hi, f"resident copy of V_{i}")
            return self._resident_copies[i].acquire(), sent
        return self._send_rows(host, fields, lo, hi, f"block V_{i}")

    def _send_rows(self, host: dict, fields, lo: int, hi: int, what: str) -> tuple[_Block, int]:
        scope = Scope(self.device)
        try:
            tensors = {name: scope.load(host[name][lo:hi], f"{name} {what}") for name in fields if name in _SRC_FIELDS and host.get(name) is not None}
        except BaseException:  # out of memory on the block's second field: give back the first
            scope.close()
            raise
        return _Block(scope, tensors), sum(tensor_bytes(t) for t in tensors.values())

    def _stream(self, plan: PassPlan, host: dict, grad: dict, fields: tuple[str, ...]) -> Iterator[_ChunkInputs]:
        return iter(Prefetcher(self._jobs(plan, host, grad, fields), plan.prefetch, release=_ChunkInputs.close))

    def _run_step(self, stream, step: ChunkStep, compute) -> tuple[float, float, int]:
        """Compute the sub-chunks of one chunk as they arrive; returns (load s, compute s, bytes)."""
        load = busy = 0.0
        moved = 0
        for c in step.subs:
            inputs = next(stream)
            assert inputs.c is c, f"pipeline out of order: expected {c.id!r}, got {inputs.c.id!r}"
            try:
                t0 = time.perf_counter()
                compute(inputs)
                # on a GPU: wait for the launched kernels, so the measured compute is real (it feeds the
                # ordering) and the ledger frees this sub-chunk's bytes only when the device has
                self.device.synchronize()
                busy += time.perf_counter() - t0
            except Exception as exc:
                exc.add_note(f"while computing sub-chunk {c.id!r} of {self.name} on {self.device.name}")
                raise
            finally:
                inputs.close()
            load += inputs.load_seconds
            moved += inputs.loaded_bytes
        return load, busy, moved

    def _record_pass(self, plan: PassPlan, phase: str, times: dict, seconds: float, moved: int) -> None:
        full = moved - plan.bytes_moved + plan.bytes_full
        for key, (load, busy) in times.items():
            self.g.costs.update((self.cost_key, phase), key, load, busy)
        predicted = two_stage_makespan([times[s.key] for s in plan.steps()]) if times else 0.0
        self.g.pass_log.append(PassRecord(self.name, phase, plan.num_steps, plan.prefetch, seconds, predicted, moved, full, plan.resident_bytes, plan.tile, plan.dst_rows_bytes))
        profiler.count("bytes_moved_full", full)
        self.device.flush_spans()

    # ---- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, edata: torch.Tensor | None) -> tuple[torch.Tensor, _Saved]:
        shape, p, dev = self.shape, self.p, self.device
        edata = self._edges_in_partition_order(edata)
        src_term = self._hook_pass("apply_src", x, shape.d_src_term) if shape.d_src_term else None
        dst_term = self._hook_pass("apply_dst", x, shape.d_dst_term) if shape.d_dst_term else None
        n = self.g.num_vertices
        # one interval on a device sharing host memory: V_0's output rows are the output, no copy
        whole = dev.shares_host_memory and p.num_chunks == 1
        out, acc_all, win_all, sm_max, sm_sum = self._host_buffers(n)
        host = {"src": x, "src_term": src_term, "data": edata}
        fields = tuple(f for f, used in (("src", shape.uses_src), ("src_term", shape.uses_src_term), ("data", shape.uses_edge)) if used)
        init = {"sum": 0.0, "max": float("-inf"), "min": float("inf"), "softmax": 0.0}[self.reduce]
        plan = self._plan(FORWARD)
        keep_mode = self._keep_mode()
        times: dict[tuple[int, int], tuple[float, float]] = {}
        moved, t_pass = 0, time.perf_counter()
        with dev.scope() as params_scope:
            params_scope.charge(self.param_bytes, f"{self.name} parameters")
            stream = self._stream(plan, host, {}, fields)
            columns: dict[int, _Column] = {}
            try:
                for g, steps in plan.groups:
                    for j in plan.members(g):  # the tile's accumulators, open together while its sources stream
                        lo, hi = p.interval(j)
                        if hi > lo:
                            columns[j] = self._open_column(j, x, dst_term, acc_all, win_all, init)
                    for step in steps:
                        load, busy, b = self._run_step(stream, step, partial(self._forward_chunk, col=columns[step.key[1]]))
                        times[step.key] = (load, busy)
                        moved += b
                    for j in plan.members(g):
                        if j in columns:
                            col = columns.pop(j)
                            try:
                                out = self._close_column(col, x, out, whole, acc_all, win_all, sm_max, sm_sum, keep_mode)
                            finally:
                                col.scope.close()
            finally:
                for col in columns.values():  # a failed tile: give back every accumulator it opened
                    col.scope.close()
                stream.close()
        self._record_pass(plan, FORWARD, times, time.perf_counter() - t_pass, moved)
        out = self.g.host.empty((n, shape.d_out), what="layer output") if out is None else out
        return out, _Saved(src_term, dst_term, acc_all, win_all, sm_max, sm_sum)

    def _open_column(self, j: int, x, dst_term, acc_all, win_all, init) -> "_Column":
        """V_j's resident forward state: its input and destination-term rows and its accumulator."""
        shape, (lo, hi) = self.shape, self.p.interval(j)
        s = Scope(self.device)
        try:
            xj = s.load(x[lo:hi], f"input rows V_{j}") if shape.loads_x_j else unread_rows(hi - lo, x.shape[1], x.dtype, self.device.torch_device)
            dj = s.load(dst_term[lo:hi], f"dst terms V_{j}") if dst_term is not None else None
            acc, acc_shared = s.result_buffer(acc_all[lo:hi], init, f"accumulator V_{j}")
            win, win_shared = s.result_buffer(win_all[lo:hi], -1, f"winners V_{j}") if shape.winners else (None, False)
            sm = None
            if shape.softmax:
                sm = (s.full((hi - lo, shape.d_score), float("-inf"), torch.float32, f"softmax max V_{j}"), s.zeros((hi - lo, shape.d_score), torch.float32, f"softmax sum V_{j}"))
        except BaseException:
            s.close()
            raise
        return _Column(j, lo, hi, s, xj, dj, acc, acc_shared, win, win_shared, sm)

    def _forward_chunk(self, inputs: _ChunkInputs, col: "_Column") -> None:
        """Add one sub-chunk's messages into its destination column's accumulator."""
        inputs.set_resident({"dst": col.xj, "dst_term": col.dj})
        if col.sm is not None:
            self._merge_softmax(inputs.c, col.acc, col.sm, *self._softmax_chunk(inputs))
            return
        if self.fused and self.reduce == "sum":  # the kernel adds into V_j's accumulator itself
            c = inputs.c
            self._partial(inputs, FORWARD, into=col.acc[c.dst_offset : c.dst_offset + c.num_dst])
            return
        partial_acc, arg = self._partial(inputs, FORWARD)
        inputs.scope.adopt(partial_acc, lambda: f"partial of {inputs.c.id!r}")
        self._merge(inputs, col.acc, col.win, partial_acc, arg)

    def _close_column(self, col: "_Column", x, out, whole: bool, acc_all, win_all, sm_max, sm_sum, keep_mode):
        """Finish V_j: ApplyVertex on its accumulator, its rows back to the host; returns the output tensor."""
        shape, dev, s, j, lo, hi = self.shape, self.device, col.scope, col.j, col.lo, col.hi
        acc, win, sm = col.acc, col.win, col.sm
        self._finalise(acc, win, lo, hi, sm)
        s.charge(vertex_scratch_bytes(hi - lo, shape.d_out), f"apply_vertex temporaries V_{j}")
        with self._span("apply_vertex", FORWARD, (j,)), self._rng("vertex", j):
            out_j, kept = self._apply_vertex_forward(j, col.xj, acc, keep_mode)
            s.adopt(out_j, f"output rows V_{j}")
        self._check_rows(out_j, hi - lo, shape.d_out, "apply_vertex")
        with self._span("d2h", FORWARD, (j,), tensor_bytes(out_j) + tensor_bytes(acc)):
            if whole and _owns_storage(out_j, x, acc_all):
                out = out_j.contiguous()
            else:
                out = self.g.host.empty((self.g.num_vertices, shape.d_out), what="layer output") if out is None else out
                dev.copy_out(out_j, out[lo:hi])
            if not col.acc_shared:
                dev.copy_out(acc, acc_all[lo:hi])
            if win is not None and not col.win_shared:
                dev.copy_out(win, win_all[lo:hi])
            if sm is not None:
                dev.copy_out(sm[0], sm_max[lo:hi])
                dev.copy_out(sm[1], sm_sum[lo:hi])
        aliases = [(col.xj, x[lo:hi])] if shape.loads_x_j else []
        if kept is not None and self._seal(kept, aliases + [(acc, acc_all[lo:hi])], kept.seconds, (j,)):
            self.vertex_graphs[j] = kept
        return out

    def _apply_vertex_forward(self, j: int, xj: torch.Tensor, acc: torch.Tensor, mode: str | None) -> tuple[torch.Tensor, KeptGraph | None]:
        """ApplyVertex of V_j, its autograd graph kept for backward as ``mode`` says (no recompute there).

        ``"offload"``: the graph comes back unsealed, to seal once V_j's rows are on the host.
        """
        if mode is None:
            return self.layer.apply_vertex(xj, acc), None
        xin = xj.detach().requires_grad_(self.need_x)
        ain = _own_version(acc).requires_grad_(self.edge_stage_has_grads(self.need_x, self.need_e))
        kept = KeptGraph(self.params) if mode == "offload" else None
        t0 = time.perf_counter()
        with torch.enable_grad(), kept.hooks() if kept is not None else contextlib.nullcontext():
            out_j = self.layer.apply_vertex(xin, ain)
        if kept is None:
            self.vertex_graphs[j] = (xin, ain, _graph_handle(out_j))
        else:
            kept.keep_inputs(xin, ain)
            kept.handle, kept.seconds = _graph_handle(out_j), time.perf_counter() - t0
        return out_j.detach(), kept

    def _host_buffers(self, n: int):
        """Host tensors a forward pass fills: output (None: made at the first interval not taken whole), acc, winners, softmax max and sum."""
        shape, host = self.shape, self.g.host
        acc_all = host.empty((n, shape.d_msg), what="aggregates saved for backward")
        win_all = host.empty((n, shape.d_msg), torch.long, "winner ids") if shape.winners else None
        sm_max = host.zeros((n, shape.d_score), what="softmax maxima") if shape.softmax else None
        sm_sum = host.zeros((n, shape.d_score), what="softmax sums") if shape.softmax else None
        return None, acc_all, win_all, sm_max, sm_sum

    def _merge(self, inputs: _ChunkInputs, acc, win, partial_acc, arg) -> None:
        c = inputs.c
        rows = slice(c.dst_offset, c.dst_offset + c.num_dst)
        if win is None:
            acc[rows] += partial_acc
            return
        eids = inputs.scope.load(torch.from_numpy(c.edge_ids), lambda: f"edge ids of {c.id!r}")
        gid = torch.where(arg >= 0, eids[arg.clamp(min=0)], -1)
        cur, cur_win = acc[rows], win[rows]
        beats = partial_acc > cur if self.reduce == "max" else partial_acc < cur
        better = (arg >= 0) & (beats | ((partial_acc == cur) & (gid < cur_win)))
        acc[rows] = torch.where(better, partial_acc, cur)
        win[rows] = torch.where(better, gid, cur_win)

    def _merge_softmax(self, c: EdgeChunk, acc, sm, m_c, l_c, a_c) -> None:
        """Online softmax: rescale the running sums to the new running max, then add the chunk's."""
        rows = slice(c.dst_offset, c.dst_offset + c.num_dst)
        m_old, l_old = sm[0][rows], sm[1][rows]
        m_new = torch.maximum(m_old, m_c)
        finite = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows no chunk has reached yet
        keep, add = torch.exp(m_old - finite), torch.exp(m_c - finite)
        per_feature = self.shape.d_msg // self.shape.d_score
        acc[rows] = acc[rows] * keep.repeat_interleave(per_feature, dim=1) + a_c * add.repeat_interleave(per_feature, dim=1)
        sm[1][rows] = l_old * keep + l_c * add
        sm[0][rows] = m_new

    def _finalise(self, acc, win, lo: int, hi: int, sm=None) -> None:
        if sm is not None:
            total = sm[1].repeat_interleave(self.shape.d_msg // self.shape.d_score, dim=1)
            acc.div_(torch.where(total > 0, total, torch.ones_like(total)))
            sm[0].masked_fill_(torch.isinf(sm[0]), 0.0)
        if self.inv_degree is not None:
            acc.mul_(self.inv_degree[lo:hi].to(acc.device))
        if win is not None:
            acc.masked_fill_(win < 0, 0.0)

    # ---- backward ------------------------------------------------------------------------
    def backward(self, x, edata, saved: _Saved, grad_out, need_x: bool, need_e: bool):
        edata = self._edges_in_partition_order(edata)
        gx, ge, gparams, g_src_term, g_dst_term = self.backward_edges(x, edata, saved, grad_out, need_x, need_e)
        self.backward_hooks(x, g_src_term, g_dst_term, need_x, gx, gparams)
        return None if gx is None else gx.tensor(), self._edges_in_given_order(ge), gparams

    def backward_edges(self, x, edata, saved: _Saved, grad_out, need_x: bool, need_e: bool):
        """ApplyVertex's backward, then the edge stage's: gradients of x (a :class:`_HostGrad`), edge data, parameters and hook terms so far.

        The hooks' own backward (:meth:`backward_hooks`) comes after, once the
        hook-term gradients are complete (on several devices: summed).
        """
        shape, dev, host = self.shape, self.device, self.g.host
        ge = host.zeros_like(edata, "edge data gradient") if need_e else None
        gparams = [torch.zeros_like(q) for q in self.params]
        g_src_term = host.zeros_like(saved.src_term, "source-term gradient") if saved.src_term is not None else None
        g_dst_term = host.zeros_like(saved.dst_term, "destination-term gradient") if saved.dst_term is not None else None
        gx = _HostGrad(host, x, "input gradient", avoid=(x, grad_out, edata, saved.acc, g_src_term, g_dst_term)) if need_x else None
        edges = self.edge_stage_has_grads(need_x, need_e)
        whole = self.device.shares_host_memory and self.p.num_chunks == 1
        grad_acc = None if not edges or whole else host.empty((self.g.num_vertices, shape.d_msg), what="aggregate gradient")
        with dev.scope() as params_scope:
            params_scope.charge(2 * self.param_bytes, f"{self.name} parameters and gradients")
            grad_acc = self._backward_vertex(x, saved, grad_out, need_x, gx, grad_acc, gparams, need_acc=edges)
            if edges:
                self._backward_edges(x, edata, saved, grad_acc, need_x, need_e, gx, ge, g_src_term, g_dst_term, gparams)
        return gx, ge, gparams, g_src_term, g_dst_term

    def backward_hooks(self, x, g_src_term, g_dst_term, need_x: bool, gx, gparams) -> None:
        """The hooks' backward (``apply_src``/``apply_dst``) from their terms' gradients, into ``gx`` and ``gparams``."""
        if g_src_term is None and g_dst_term is None:
            return
        with self.device.scope() as params_scope:
            params_scope.charge(2 * self.param_bytes, f"{self.name} parameters and gradients")
            for hook, g_term in (("apply_src", g_src_term), ("apply_dst", g_dst_term)):
                if g_term is not None:
                    self._backward_hook(hook, x, g_term, need_x, gx, gparams)

    def edge_stage_has_grads(self, need_x: bool, need_e: bool) -> bool:
        """Does any gradient flow through the edge stage (and so through ``acc``)? (``LayerShape.edge_grads``)"""
        return self.shape.edge_grads(need_x, need_e)

    def _grad(self, out, inputs: list[torch.Tensor], grad: torch.Tensor):
        """Gradients of ``out`` (a tensor, or a kept graph's handle) w.r.t. ``inputs``; None for the unused."""
        if not inputs or (isinstance(out, torch.Tensor) and not out.requires_grad):
            return [None] * len(inputs)
        return torch.autograd.grad(out, inputs, grad, allow_unused=True)

    def _add_param_grads(self, grads, gparams) -> None:
        for acc, g in zip(gparams, grads):
            if g is not None:
                acc.add_(g)

    def _backward_vertex(self, x, saved: _Saved, grad_out, need_x, gx, grad_acc, gparams, need_acc: bool = True) -> torch.Tensor | None:
        """The gradient of the gathered rows ``acc`` (written into ``grad_acc``, or made when that is None).

        ``need_acc`` False: only x's and the parameters' gradients; returns None.
        """
        p, dev = self.p, self.device
        graphs, self.vertex_graphs = self.vertex_graphs, {}
        for j, lo, hi in p.intervals():
            with dev.scope() as s:
                go = s.load(grad_out[lo:hi], f"output grad V_{j}")
                kept = graphs.pop(j, None)
                if isinstance(kept, KeptGraph):
                    kept.scope = s  # its saved tensors load into this scope as autograd unpacks them
                    kept = (*kept.inputs, kept.handle)
                elif kept is not None:
                    s.charge(tensor_bytes(kept[0]) + tensor_bytes(kept[1]), f"input rows and accumulator V_{j} (kept from forward)")
                if kept is not None and kept[0].requires_grad == need_x and kept[1].requires_grad == need_acc:
                    xj, acc, out_j = kept  # the forward's graph: no recompute
                else:
                    xj = s.load(x[lo:hi], f"input rows V_{j}") if self.shape.vertex_reads_x else unread_rows(hi - lo, x.shape[1], x.dtype, self.device.torch_device)
                    xj = xj.requires_grad_(need_x)
                    acc = s.load(saved.acc[lo:hi], f"accumulator V_{j}").requires_grad_(need_acc)
                    out_j = None
                with self._span("apply_vertex", BACKWARD, (j,)):
                    recompute = out_j is None
                    if recompute:
                        with torch.enable_grad(), self._rng("vertex", j):
                            out_j = self.layer.apply_vertex(xj, acc)
                    # the recomputed output and its graph's copy (go: out_j's shape) and saved tensors, and autograd's temporaries
                    saved_j = (hi - lo) * self.shape.vertex_saved * recompute  # a kept graph's are charged as they load
                    s.charge(2 * tensor_bytes(go) * recompute + saved_j + vertex_scratch_bytes(hi - lo, self.shape.d_out), f"apply_vertex backward V_{j}")
                    inputs = [acc] + ([xj] if need_x else []) + self.params
                    if not need_acc:  # keep the positions below: a None in acc's place
                        grads = [None] + list(self._grad(out_j, inputs[1:], go))
                    else:
                        grads = self._grad(out_j, inputs, go)
                    s.charge(tensor_bytes(saved.acc[lo:hi]) * need_acc + (tensor_bytes(x[lo:hi]) if need_x and self.shape.vertex_reads_x else 0), f"apply_vertex gradients V_{j}")
                if need_x and grads[1] is not None:
                    gx.add(dev, grads[1], lo, hi)
                self._add_param_grads(grads[1 + need_x :], gparams)
                if not need_acc:
                    continue
                g_acc = grads[0] if grads[0] is not None else torch.zeros((hi - lo, self.shape.d_msg), dtype=saved.acc.dtype, device=go.device)
                if self.inv_degree is not None:
                    g_acc = g_acc * self.inv_degree[lo:hi].to(g_acc.device)
                if grad_acc is None:  # the one interval's gradient is the whole of it: no copy
                    grad_acc = g_acc.detach().contiguous()
                else:
                    dev.copy_out(g_acc, grad_acc[lo:hi])
        if not need_acc:
            return None
        return grad_acc if grad_acc is not None else torch.zeros(self.g.num_vertices, self.shape.d_msg)

    def _backward_edges(self, x, edata, saved: _Saved, grad_acc, need_x, need_e, gx, ge, g_src_term, g_dst_term, gparams) -> None:
        shape, p, dev = self.shape, self.p, self.device
        host = {"src": x, "src_term": saved.src_term, "data": edata, "dst": x, "dst_term": saved.dst_term, "g_rows": grad_acc, "won": saved.winners}
        host.update({"sm_max": saved.softmax_max, "sm_sum": saved.softmax_sum, "out_rows": saved.acc})
        wants = {"src": need_x, "dst": need_x, "data": need_e, "src_term": True, "dst_term": True}
        uses = {"src": shape.uses_src, "src_term": shape.uses_src_term, "data": shape.uses_edge, "dst": shape.uses_dst, "dst_term": shape.uses_dst_term, "g_rows": True, "won": shape.winners}
        uses.update({"sm_max": shape.softmax, "sm_sum": shape.softmax, "out_rows": shape.softmax})
        direct = self._direct_needs(need_x, need_e) if self.direct_backward else None
        reads_src = direct is None or self._direct_reads_src(direct)
        if not reads_src:
            uses.update(src=False, src_term=False)  # a sum's source gradient never reads the sources: do not send them
        # only the sources' gradient, by a kernel that reads source-major arrays in sequence: edge rows
        # source-major too (the same slice per sub-chunk), destination ids from the chunk's src_dst
        self._source_major = direct == ("src",) and kernels.source_major_backward(self.backend, shape.builtin.op, shape.d_edge) and (edata is None or not edata.requires_grad)
        if self._source_major and edata is not None and shape.uses_edge:
            host["data"] = self._edges_source_major(edata)
        fields = tuple(f for f, used in uses.items() if used)
        plan = self._plan(BACKWARD, reads_src)
        times: dict[tuple[int, int], tuple[float, float]] = {}
        moved, t_pass = 0, time.perf_counter()
        # kernel backward paths read plain tensors; only autograd's recompute needs leaves
        kernel_only = direct is not None or (self.fused and shape.attention is not None)
        held = Scope(dev)
        try:
            if plan.dst_rows_bytes:  # every destination row sent once, not once per chunk of its column
                names = [f for f in fields if f not in _SRC_FIELDS and f != "data" and host.get(f) is not None]
                for j in sorted({step.key[1] for step in plan.steps()}):
                    lo, hi = p.interval(j)
                    self._dst_rows[j] = {f: held.load(host[f][lo:hi], f"{f} rows of V_{j} (held through the pass)") for f in names}
                    moved += sum(tensor_bytes(t) for t in self._dst_rows[j].values())
            stream = self._stream(plan, host, {} if kernel_only else wants, fields)
        except BaseException:
            self._dst_rows = {}
            held.close()
            raise
        try:
            for i, steps in plan.groups:
                lo, hi = p.interval(i)
                if hi == lo or not steps:
                    continue
                with dev.scope() as s:
                    # accumulate onto the host gradient itself where the device shares host memory
                    acc_src, src_shared = s.result_buffer(gx.rows(lo, hi), None, f"source grad V_{i}") if need_x and shape.uses_src else (None, False)
                    acc_term, term_shared = s.result_buffer(g_src_term[lo:hi], None, f"source-term grad V_{i}") if g_src_term is not None else (None, False)
                    if self.fused and shape.attention is not None:
                        compute = partial(self._backward_chunk_attention, acc_term=acc_term, g_dst_term=g_dst_term)
                    elif direct is not None:
                        src_acc = acc_term if shape.d_src_term else acc_src
                        compute = partial(self._backward_chunk_direct, needs=direct, src_acc=src_acc, gx=gx, ge=ge, g_dst_term=g_dst_term)
                    else:
                        compute = partial(self._backward_chunk, saved=saved, acc_src=acc_src, acc_term=acc_term, gx=gx, ge=ge, g_dst_term=g_dst_term, gparams=gparams)
                    for step in steps:
                        load, busy, b = self._run_step(stream, step, compute)
                        times[step.key] = (load, busy)
                        moved += b
                    with self._span("d2h", BACKWARD, (i,), tensor_bytes(acc_src) + tensor_bytes(acc_term)):
                        if acc_src is not None and not src_shared:
                            dev.add_out(acc_src, gx.rows(lo, hi))
                        if acc_term is not None and not term_shared:
                            dev.add_out(acc_term, g_src_term[lo:hi])
        finally:
            stream.close()
            self._dst_rows = {}
            held.close()
        self._record_pass(plan, BACKWARD, times, time.perf_counter() - t_pass, moved)

    def _direct_needs(self, need_x: bool, need_e: bool) -> tuple[str, ...]:
        """The operands (``src``/``edge``/``dst``) whose gradients a direct backward pass computes."""
        shape, b = self.shape, self.shape.builtin
        wanted = (
            ("src", bool(shape.d_src_term) or (need_x and shape.uses_src)),
            ("edge", b.uses_edge and need_e),
            ("dst", b.uses_dst and (bool(shape.d_dst_term) or need_x)),
        )
        return tuple(name for name, w in wanted if w)

    def _direct_reads_src(self, needs: tuple[str, ...]) -> bool:
        """Does the direct backward read source rows? Only for edge or destination gradients."""
        return self.shape.builtin.uses_src and bool({"edge", "dst"} & set(needs))

    def _backward_chunk_direct(self, inputs: _ChunkInputs, needs: tuple[str, ...], src_acc, gx, ge, g_dst_term) -> None:
        """Backward of a fused sum sub-chunk by the backward kernels alone: no recompute, no autograd."""
        shape, dev, c, cs = self.shape, self.device, inputs.c, inputs.scope
        builtin = shape.builtin
        if not needs:
            return
        src_name = "src_term" if shape.d_src_term else "src"
        dst_name = "dst_term" if shape.d_dst_term else "dst"
        g_rows = inputs.get("g_rows")
        src = inputs.get(src_name) if self._direct_reads_src(needs) else None
        dst = inputs.get(dst_name) if builtin.uses_dst else None
        edge = inputs.get("data") if builtin.uses_edge else None
        cs.charge(edge_scratch_bytes(c.nnz, shape, True), lambda: f"gradient temporaries of {c.id!r}")
        with self._span("kernel", BACKWARD, c.id):
            d_src, d_edge, d_dst = kernels.gspmm_sum_backward(
                inputs.ct, builtin.op, g_rows, src=src, edge=edge, dst=dst, needs=needs,
                src_out=src_acc, src_rows=inputs.src_local_rows(), backend=self.backend,
                edge_order="source_major" if self._source_major else "csc",
            )
        lo = c.dst_start + c.dst_offset
        if d_dst is not None:
            dev.add_out(d_dst, gx.rows(lo, lo + c.num_dst) if dst_name == "dst" else g_dst_term[lo : lo + c.num_dst])
        if d_edge is not None:
            off = self.edge_offset(c)
            dev.add_out(d_edge, ge[off : off + c.nnz])

    def _backward_chunk_attention(self, inputs: _ChunkInputs, acc_term, g_dst_term) -> None:
        """Backward of a fused attention sub-chunk by its kernels: the hooks' term gradients, no recompute or autograd."""
        shape, c, cs = self.shape, inputs.c, inputs.scope
        cs.charge(edge_scratch_bytes(c.nnz, shape, True), lambda: f"gradient temporaries of {c.id!r}")
        with self._span("kernel", BACKWARD, c.id):
            _, d_dst = attention.attention_backward(
                inputs.ct, inputs.get("g_rows"), inputs.get("out_rows"), inputs.get("sm_max"), inputs.get("sm_sum"),
                inputs.get("src_term"), inputs.get("dst_term"), shape.d_score, negative_slope=shape.attention.negative_slope,
                src_out=acc_term, src_rows=inputs.src_local_rows(), backend=self.backend,
            )
        lo = c.dst_start + c.dst_offset
        self.device.add_out(d_dst, g_dst_term[lo : lo + c.num_dst])

    def _backward_chunk(self, inputs: _ChunkInputs, saved, acc_src, acc_term, gx, ge, g_dst_term, gparams) -> None:
        dev, c, cs = self.device, inputs.c, inputs.scope
        lo = c.dst_start + c.dst_offset
        with torch.enable_grad():
            if self.shape.softmax:
                partial_acc, arg = self._softmax_surrogate(inputs), None
            else:
                partial_acc, arg = self._partial(inputs, BACKWARD)
        cs.adopt(partial_acc, lambda: f"partial of {c.id!r}")
        g_rows = inputs.get("g_rows")
        if saved.winners is not None:
            eids = cs.load(torch.from_numpy(c.edge_ids), lambda: f"edge ids of {c.id!r}")
            g_rows = g_rows * ((arg >= 0) & (eids[arg.clamp(min=0)] == inputs.get("won")))
        leaves = inputs.leaves()
        cs.charge(edge_scratch_bytes(c.nnz, self.shape, self.fused), lambda: f"gradient temporaries of {c.id!r}")
        with self._span("kernel" if self.fused else "apply_edge", BACKWARD, c.id):
            grads = self._grad(partial_acc, list(leaves.values()) + self.params, g_rows)
        cs.charge(sum(tensor_bytes(g) for g in grads[: len(leaves)] if g is not None), lambda: f"input gradients of {c.id!r}")
        local_src = None
        for name, g in zip(leaves, grads):
            if g is None:
                continue
            if name in _SRC_FIELDS:
                if local_src is None:
                    local_src = torch.from_numpy(c.src_rows.astype(np.int64)).to(g.device)
                # unique rows: index_put_ avoids torch's slow multi-threaded CPU index_add_
                (acc_src if name == "src" else acc_term).index_put_((local_src,), g, accumulate=True)
            elif name == "dst":
                dev.add_out(g, gx.rows(lo, lo + c.num_dst))
            elif name == "dst_term":
                dev.add_out(g, g_dst_term[lo : lo + c.num_dst])
            elif name == "data":
                off = self.edge_offset(c)
                dev.add_out(g, ge[off : off + c.nnz])
        self._add_param_grads(grads[len(leaves) :], gparams)

    def _backward_hook(self, hook: str, x, g_term, need_x, gx, gparams) -> None:
        p, dev = self.p, self.device
        graphs = self.hook_graphs.pop(hook, None)
        for q, lo, hi in p.intervals():
            with dev.scope() as s:
                gt = s.load(g_term[lo:hi], f"{hook} grad V_{q}")
                with self._span("apply_vertex", BACKWARD, (q,)):
                    kept = graphs.pop(q, None) if graphs is not None else None
                    if isinstance(kept, KeptGraph):  # the forward's graph, its saved tensors loaded as they are unpacked
                        kept.scope = s
                        v, h = kept.inputs[0], kept.handle
                    elif kept is not None:  # the forward's graph: no recompute
                        v, h = kept
                    else:
                        v = s.load(x[lo:hi], f"input rows V_{q}").requires_grad_(need_x)
                        with torch.enable_grad(), self._rng(hook, q):
                            h = getattr(self.layer, hook)(v)
                    saved_q = (hi - lo) * self.shape.hook_saved * (kept is None)  # the recompute's saved tensors
                    s.charge(2 * tensor_bytes(gt) * (kept is None) + saved_q + vertex_scratch_bytes(hi - lo, gt.shape[1]), f"{hook} backward V_{q}")  # gt: h's shape
                    grads = self._grad(h, ([v] if need_x else []) + self.params, gt)
                    s.charge(tensor_bytes(x[lo:hi]) if need_x else 0, f"{hook} input gradient V_{q}")
                if need_x and grads[0] is not None:
                    gx.add(dev, grads[0], lo, hi)
                self._add_param_grads(grads[need_x:], gparams)
