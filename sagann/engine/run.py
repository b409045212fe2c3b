"""A layer call as a torch autograd Function: host tensors in, host tensors out, chunked passes inside.

:func:`run_layer` probes the layer's shape, asks the graph's planner for a
partition, builds the call (one device, several devices, or this rank's
share) and applies :class:`_SagaFunction`, whose forward and backward run
the SAGA passes (:mod:`sagann.engine.forward`, :mod:`sagann.engine.backward`).
On one device a pass that runs out of memory is re-planned on a finer
partition and run again (:mod:`sagann.engine.replan`).
"""
from __future__ import annotations

import dataclasses
import weakref

import torch
from torch import nn

from sagann import kernels
from sagann.kernels import attention
from sagann.chunks.partition import GraphPartition, file_backed
from sagann.engine.backward import backward_pass
from sagann.engine.call import CallFlags, CallSpec, LayerCall
from sagann.engine.faces import base_of
from sagann.engine.forward import forward_pass
from sagann.engine.graph import ChunkedGraph, check_features
from sagann.engine.multi import make_multi_call
from sagann.engine.probe import probe_layer
from sagann.engine.replan import run_with_replans
from sagann.units import tensor_bytes
from sagann.scheduler.planner import LayerShape
from sagann.scheduler.schedule import BACKWARD, FORWARD

__all__ = ["check_call", "draw_seed", "layer_shape", "run_layer"]

_EDGE_ORDER_CACHE = "_sagann_edge_data_in_order"  # partition attribute: (weakref to input, its version, permuted)


def check_call(layer: nn.Module, g, x: torch.Tensor, edge_data: torch.Tensor | None) -> None:
    """Validate a layer call's arguments before anything runs: the graph, the features, edge data, parameter devices."""
    if not isinstance(g, ChunkedGraph):
        raise TypeError(f"{type(layer).__name__}: the first argument must be a sagann.ChunkedGraph, got {type(g).__name__}")
    check_features(g, x)
    if edge_data is not None:
        if not isinstance(edge_data, torch.Tensor) or edge_data.dim() not in (1, 2) or edge_data.shape[0] != g.num_edges:
            raise ValueError(f"edge_data must have shape [num_edges={g.num_edges}] or [num_edges, k], got {list(getattr(edge_data, 'shape', []))}")
        if edge_data.dtype != torch.float32:
            raise ValueError(f"edge_data must be float32, got {edge_data.dtype}")
    device = g.device
    for name, p in layer.named_parameters():
        if p.device != device.torch_device:
            raise ValueError(f"{type(layer).__name__}.{name} is on {p.device} but the graph's device computes on {device.torch_device}; move the layer there")


def draw_seed(layer: nn.Module) -> int:
    """The one draw a layer call takes from the caller's random stream (its functions' streams derive from it); 0 in eval."""
    return int(torch.randint(0, 2**62, (1,)).item()) if layer.training else 0


def run_layer(layer: nn.Module, g: ChunkedGraph, x: torch.Tensor, edge_data: torch.Tensor | None, name: str, *, seed: int | None = None) -> torch.Tensor:
    """Plan and run the chunked autograd function of ``layer`` (already compiled and checked) on ``g``.

    ``seed``: the call's draw made earlier (:func:`draw_seed`), for a call
    run later than the user made it, so the caller's stream is where an
    immediate call would have left it.
    """
    device = g.device
    params = [p for p in layer.parameters() if p.requires_grad]
    shape = _shape(layer, x, edge_data, device.torch_device)
    backend = _backend_for(g, shape)
    param_bytes = sum(tensor_bytes(p) for p in layer.parameters())
    fused = backend != "reference" and (shape.builtin is not None or shape.attention is not None)
    grad_x, grad_e = x.requires_grad, edge_data is not None and edge_data.requires_grad
    shape = shape.with_grads(torch.is_grad_enabled() and (grad_x or grad_e or bool(params)), grad_x, grad_e)  # plan what backward computes
    shape = _with_index_forms(shape, g, backend)
    shape = _with_backend_bytes(shape, backend, _keeps_source_major(g))  # after with_grads: what the backward holds depends on them
    partition = g.plan(shape, fused=fused, param_bytes=param_bytes, owner=call_owner(layer, x, edge_data))
    seed = draw_seed(layer) if seed is None else seed
    spec = CallSpec(layer, shape, backend, fused, param_bytes, seed, name)
    run = MultiDeviceRun(make_multi_call(spec, g, partition)) if g.multi_device else OneDeviceRun(LayerCall(spec, g, partition))
    run.flags.keep_graphs = torch.is_grad_enabled()  # inside the autograd Function's forward it is always off
    edge_data = None if edge_data is None else _in_chunk_order(partition, edge_data.contiguous(), g.host)
    out = _SagaFunction.apply(run, x.contiguous(), edge_data, *params)
    if out.grad_fn is not None:  # which layer made these rows: layer chaining reads it off a next layer's input
        out.grad_fn.sagann_layer = base_of(layer)
    return out


def call_owner(layer: nn.Module, x: torch.Tensor, edge_data: torch.Tensor | None) -> tuple:
    """Which calls a planned call is one of: the user's layer on these very inputs (a cached Gather ends exactly these)."""
    return id(base_of(layer)), id(x), None if edge_data is None else id(edge_data)


def layer_shape(layer: nn.Module, x: torch.Tensor, edge_data: torch.Tensor | None, device) -> LayerShape:
    """The probed :class:`LayerShape` of ``layer`` on inputs shaped as ``x`` and ``edge_data`` (cached on the layer)."""
    return _shape(layer, x, edge_data, device)


def _shape(layer: nn.Module, x: torch.Tensor, edge_data: torch.Tensor | None, device) -> LayerShape:
    """The layer's probed shape, cached per input width, edge width and mode."""
    key = (x.shape[1], None if edge_data is None else tuple(edge_data.shape[1:]), layer.training)
    shape = layer.__dict__.get("_sagann_shape", {}).get(key)
    if shape is None:
        shape = probe_layer(layer, int(x.shape[1]), edge_data, device)
        layer.__dict__.setdefault("_sagann_shape", {})[key] = shape
    return shape


def _backend_for(g: ChunkedGraph, shape: LayerShape) -> str:
    if g.backend != "auto":
        return g.backend
    if shape.builtin is None and shape.attention is None:
        return "reference"
    return g.device.kernel_backend


def _with_backend_bytes(shape: LayerShape, backend: str, host_source_major: bool = False) -> LayerShape:
    """``shape`` with what ``backend``'s kernels hold per edge, for the memory model: beyond a builtin op's operands
    (``kernel_scratch``), and in a sum's backward (``sum_backward_edge``).

    ``host_source_major``: the partition's chunks keep each edge's destination in source-major order on the host
    (chunks in RAM), so a backward that computes the source gradient alone sends that one array
    (``sagann.engine.backward``: the executor's ``source_major``), in 16 bits where the kernels read the forward's
    source ids so (``narrow_src_ids``, set before: :func:`_with_index_forms`).
    """
    impl = kernels.get_backend(backend)
    scratch = getattr(impl, "scratch_bytes_per_edge", None) if shape.builtin is not None else None
    per_edge = int(scratch(shape.builtin.op, shape.d_edge)) if scratch is not None else 0
    held = getattr(impl, "sum_backward_bytes_per_edge", None) if shape.builtin is not None else None
    backward, narrow_dst = 0, False
    if held is not None:
        b = shape.builtin
        # mirrors the backward's choice: only the source gradient (no edge or destination one), an op the backend
        # reads source-major, and the destinations in that order on the host
        src_only = not b.uses_dst and not (b.uses_edge and shape.grad_edge)
        source_major = host_source_major and src_only and kernels.source_major_backward(backend, b.op, shape.d_edge)
        narrow_dst = source_major and shape.narrow_src_ids  # the same kernels read src_dst in 16 bits
        backward = int(held(b.op, shape.d_edge, shape.grad_edge, source_major=source_major, narrow_ids=narrow_dst))
    # the fused attention's backward reads each row's corrections where the backend takes them (sagann.engine.backward)
    corrections = shape.attention is not None and shape.softmax and attention.takes_corrections(backend)
    in_place = shape.attention is not None and shape.softmax and attention.merges_in_place(backend)  # and its forward merges so
    found = (per_edge, backward, narrow_dst, corrections, in_place)
    if found == (shape.kernel_scratch, shape.sum_backward_edge, shape.narrow_dst_ids, shape.softmax_corrections, shape.merges_in_place):
        return shape
    return dataclasses.replace(shape, kernel_scratch=per_edge, sum_backward_edge=backward, narrow_dst_ids=narrow_dst, softmax_corrections=corrections, merges_in_place=in_place)


def _with_index_forms(shape: LayerShape, g: ChunkedGraph, backend: str) -> LayerShape:
    """``shape`` saying how a forward holds index arrays the schedule narrows to 16 bits: beside their widened copies
    (a GPU keeps both until compute), or read as they are (the CPU kernels of a direct gSpMM read 16-bit source ids).
    Elsewhere neither: a plan charged for copies it does not hold would cut sub-chunks a third smaller. And whether
    a backward runs sparse sub-chunks over their rows with edges: where every device copies what it loads."""
    copies = g.schedule.narrows_index and any(getattr(d, "holds_narrow_index_copies", True) for d in g.devices)
    b = shape.builtin
    native = g.schedule.narrows_source_ids and backend == "cpu" and b is not None and shape.attention is None and b.spec.direct_spmm
    native = native and all(getattr(d, "keeps_native_index", False) for d in g.devices)
    compact = not any(d.shares_host_memory for d in g.devices)  # a backward's destination rows gathered, not viewed
    if (copies, native, compact) == (shape.narrow_index_copies, shape.narrow_src_ids, shape.compact_dst_rows):
        return shape
    return dataclasses.replace(shape, narrow_index_copies=copies, narrow_src_ids=native, compact_dst_rows=compact)


def _keeps_source_major(g) -> bool:
    """Do the graph's chunks keep source-major destinations on the host (``EdgeChunk.src_major_dst``)? Not a file-backed dataset's.

    Decided once per graph, at its first layer call, from the partition it
    was given (before that call the planner has cut none): the sizing must
    not change when the planner re-cuts, or a resumed run would plan
    differently from the run it resumes.
    """
    known = g.__dict__.get("_sagann_source_major")
    if known is None:
        part = g.partition
        first = None if part is None else next(iter(part.sub_chunks()), None)
        known = g.__dict__["_sagann_source_major"] = first is None or not file_backed(first.src_perm)
    return known


def _in_chunk_order(partition: GraphPartition, edge_data: torch.Tensor, host=None) -> torch.Tensor:
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
    if host is not None and host.enabled:  # kept as long as the partition: under the host budget
        out = torch.index_select(edge_data, 0, order, out=host.empty(tuple(edge_data.shape), edge_data.dtype, "edge data in chunk order"))
    else:
        out = edge_data.index_select(0, order)
    partition.__dict__[_EDGE_ORDER_CACHE] = (weakref.ref(edge_data), edge_data._version, out)
    return out


class OneDeviceRun:
    """A layer call on one device: its passes, re-planned on a finer partition where they run out of memory."""

    def __init__(self, call: LayerCall):
        self.call, self.name, self.flags = call, call.name, call.flags

    def forward(self, x: torch.Tensor, edata: torch.Tensor | None):
        self.call, result = run_with_replans(self.call, FORWARD, lambda c: forward_pass(c, x, edata))
        return result

    def backward(self, x, edata, saved, grad_out, need: tuple[bool, bool]):
        self.call, result = run_with_replans(self.call, BACKWARD, lambda c: backward_pass(c, x, edata, saved, grad_out, *need))
        return result


class MultiDeviceRun(OneDeviceRun):
    """A layer call on several devices (or this rank): the same re-plans, where the call can make them (local devices)."""

    def forward(self, x: torch.Tensor, edata: torch.Tensor | None):
        self.call, result = run_with_replans(self.call, FORWARD, lambda c: c.forward(x, edata))
        return result

    def backward(self, x, edata, saved, grad_out, need: tuple[bool, bool]):
        self.call, result = run_with_replans(self.call, BACKWARD, lambda c: c.backward(x, edata, saved, grad_out, need))
        return result


class _SagaFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, x, edge_data, *params):
        versions = [t._version for t in (x, edge_data) if t is not None]
        flags = run.flags
        flags.need_x, flags.need_e = bool(ctx.needs_input_grad[1]), bool(ctx.needs_input_grad[2])
        flags.keep_graphs = flags.keep_graphs and any(ctx.needs_input_grad)
        out, saved = run.forward(x, edge_data)
        if versions != [t._version for t in (x, edge_data) if t is not None]:
            raise RuntimeError(
                f"{run.name}: a user function modified its input in place (e.g. x.relu_()); the engine hands user "
                "functions views of the host tensors, so write out-of-place (x.relu()) instead"
            )
        ctx.run, ctx.saved = run, saved
        ctx.save_for_backward(x, edge_data)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, edge_data = ctx.saved_tensors
        if ctx.saved is None:
            raise RuntimeError(
                f"{ctx.run.name}: backward ran twice through the same sagann layer call; its saved host state is freed "
                "after the first backward to save memory (retain_graph is not supported): run the forward again"
            )
        need = (ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        gx, ge, gparams = ctx.run.backward(x, edge_data, ctx.saved, grad_out.contiguous(), need)
        ctx.saved = None
        return (None, gx, ge, *gparams)
