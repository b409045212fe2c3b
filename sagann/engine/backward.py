"""The backward pass of a layer call: ApplyVertex per interval, then source intervals in row order.

Backward first recomputes (or replays a kept graph of) ApplyVertex per
interval to get the gradient of ``acc``; then walks source intervals (row
order), pushing the ``acc`` gradient through each sub-chunk: a fused sum
by its backward kernels alone, a fused attention by its kernels, anything
else by recomputing ApplyEdge and Gather under autograd. Source-side
gradients accumulate on the device for V_i, destination-side and edge
gradients are added into host tensors; finally the hooks' backward runs
from their terms' gradients. Parameter gradients are summed as it goes.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from sagann import kernels
from sagann.engine.call import LayerCall, Saved
from sagann.engine.forward import scaled_sources
from sagann.engine.host_grad import HostGrad
from sagann.engine.messages import gather_partial, softmax_surrogate
from sagann.engine.offload import KeptGraph
from sagann.engine.probe import unread_rows
from sagann.kernels import attention
from sagann.scheduler.devices import Scope, host_tensor
from sagann.units import tensor_bytes
from sagann.scheduler.meter import metered_pass
from sagann.scheduler.executor import SRC_FIELDS, ChunkInputs, load_narrowed, narrow, widen
from sagann.scheduler.planner import edge_scratch_bytes, merge_scratch_bytes, vertex_scratch_bytes
from sagann.scheduler.schedule import BACKWARD

__all__ = ["Grads", "backward_edges", "backward_hooks", "backward_pass"]

_SOURCE_MAJOR_CACHE = "_sagann_edge_data_source_major"  # partition attribute: (weakref to input, its version, rows source-major per sub-chunk)


@dataclass
class Grads:
    """A layer call's gradients as backward fills them (on several devices: one set per device, summed after)."""

    x: HostGrad | None
    edge: torch.Tensor | None
    params: list[torch.Tensor]
    src_term: torch.Tensor | None  # the apply_src output's gradient
    dst_term: torch.Tensor | None  # the apply_dst output's gradient


@metered_pass
def backward_pass(call: LayerCall, x, edata, saved: Saved, grad_out, need_x: bool, need_e: bool):
    """Gradients ``(x, edge data, parameters)`` of one device's layer call from its output gradient."""
    edata = call.edges_in_partition_order(edata)
    grads = backward_edges(call, x, edata, saved, grad_out, need_x, need_e)
    backward_hooks(call, x, grads, need_x)
    return None if grads.x is None else grads.x.tensor(), call.edges_in_given_order(grads.edge), grads.params


@metered_pass
def backward_edges(call: LayerCall, x, edata, saved: Saved, grad_out, need_x: bool, need_e: bool):
    """ApplyVertex's backward, then the edge stage's: the gradients so far (:class:`Grads`).

    The hooks' own backward (:meth:`backward_hooks`) comes after, once the
    hook-term gradients are complete (on several devices: summed).
    """
    shape, dev, host = call.shape, call.device, call.g.host
    ge = host.zeros_like(edata, "edge data gradient") if need_e else None
    gparams = [torch.zeros_like(q) for q in call.params]
    g_src_term = host.zeros_like(saved.src_term, "source-term gradient") if saved.src_term is not None else None
    g_dst_term = host.zeros_like(saved.dst_term, "destination-term gradient") if saved.dst_term is not None else None
    gx = HostGrad(host, x, "input gradient", avoid=(x, grad_out, edata, saved.acc, g_src_term, g_dst_term)) if need_x else None
    edges = call.edge_stage_has_grads(need_x, need_e)
    whole = call.device.shares_host_memory and call.p.num_chunks == 1
    grad_acc = None if not edges or whole else host.empty((call.g.num_vertices, shape.d_msg), what="aggregate gradient")
    grads = Grads(gx, ge, gparams, g_src_term, g_dst_term)
    with dev.scope() as params_scope:
        params_scope.charge(2 * call.param_bytes, f"{call.name} parameters and gradients")
        grad_acc = _backward_vertex(call, x, saved, grad_out, need_x, grads, grad_acc, need_acc=edges)
        if edges:
            _edge_stage(call, x, edata, saved, grad_acc, (need_x, need_e), grads)
            if call.src_scale is not None:  # a sym gather scaled its sources: so is their gradient (the vertex stage's is not x's: probe_layer)
                if grads.src_term is not None:
                    grads.src_term.mul_(call.src_scale.to(grads.src_term.dtype))
                elif grads.x is not None and call.shape.uses_src:
                    grads.x.scale_rows(call.src_scale)
    return grads


@metered_pass
def backward_hooks(call: LayerCall, x, grads: "Grads", need_x: bool) -> None:
    """The hooks' backward (``apply_src``/``apply_dst``) from their terms' gradients, into ``grads.x`` and ``grads.params``."""
    if grads.src_term is None and grads.dst_term is None:
        return
    with call.device.scope() as params_scope:
        params_scope.charge(2 * call.param_bytes, f"{call.name} parameters and gradients")
        for hook, g_term in (("apply_src", grads.src_term), ("apply_dst", grads.dst_term)):
            if g_term is not None:
                _backward_hook(call, hook, x, g_term, need_x, grads)


def _backward_vertex(call: LayerCall, x, saved: Saved, grad_out, need_x, grads: "Grads", grad_acc, need_acc: bool = True) -> torch.Tensor | None:
    """The gradient of the gathered rows ``acc`` (written into ``grad_acc``, or made when that is None).

    ``need_acc`` False: only x's and the parameters' gradients; returns None.
    """
    p, dev = call.p, call.device
    graphs, call.vertex_graphs = call.vertex_graphs, {}
    for j, lo_j, hi_j in p.intervals():
        blocks = call.vertex_blocks(lo_j, hi_j)
        if len(blocks) > 1 and grad_acc is None and need_acc:  # the gradient is made block by block: a host buffer for all of it
            grad_acc = call.g.host.empty((call.g.num_vertices, call.shape.d_msg), what="aggregate gradient")
        for lo, hi in blocks:
            grad_acc = _backward_vertex_rows(call, (x, saved, grad_out), grads, grad_acc, (need_x, need_acc), graphs, (j, lo, hi, len(blocks)))
    if not need_acc:
        return None
    return grad_acc if grad_acc is not None else torch.zeros(call.g.num_vertices, call.shape.d_msg)


def _backward_vertex_rows(call: LayerCall, tensors: tuple, grads: "Grads", grad_acc, need: tuple[bool, bool], graphs: dict, where: tuple) -> torch.Tensor | None:
    """ApplyVertex's backward on rows ``lo:hi`` of V_j (the interval, or one of its blocks); returns ``grad_acc`` (made here for a whole single interval).

    ``tensors``: (x, saved, grad_out); ``need``: (need_x, need_acc); ``where``: (j, lo, hi, the interval's number of blocks).
    """
    (x, saved, grad_out), (need_x, need_acc), (j, lo, hi, blocks) = tensors, need, where
    dev = call.device
    with dev.scope() as s:
        narrow = call.g.schedule.transfer_dtype
        go = load_narrowed(s, grad_out[lo:hi], narrow, f"output grad V_{j}")
        kept = graphs.pop(j if blocks == 1 else (j, lo), None)  # what forward kept of these rows, if anything
        if isinstance(kept, KeptGraph):
            kept.scope, kept.transfer_dtype = s, narrow  # its saved tensors load into this scope as autograd unpacks them
            kept = (*kept.inputs, kept.handle)
        elif kept is not None:
            # input rows only where ApplyVertex reads them (else forward kept an unread stand-in: no memory), as the plan counts
            s.charge(tensor_bytes(kept[0]) * call.shape.vertex_reads_x + tensor_bytes(kept[1]), f"input rows and accumulator V_{j} (kept from forward)")
        if kept is not None and kept[0].requires_grad == need_x and kept[1].requires_grad == need_acc:
            xj, acc, out_j = kept  # the forward's graph: no recompute
        else:
            xj = load_narrowed(s, x[lo:hi], narrow, f"input rows V_{j}") if call.shape.vertex_reads_x else unread_rows(hi - lo, x.shape[1], x.dtype, call.device.torch_device)
            xj = xj.requires_grad_(need_x)
            acc = load_narrowed(s, saved.acc[lo:hi], narrow, f"accumulator V_{j}").requires_grad_(need_acc)
            out_j = None
        with call.span("apply_vertex", BACKWARD, (j,)):
            recompute = out_j is None
            if recompute:
                with torch.enable_grad(), call.block_rng("vertex", j, lo, blocks):
                    out_j = call.layer.apply_vertex(xj, acc)
                call.g.vertex_steps.recomputed(call.name, "apply_vertex", hi - lo)
            # the recomputed output and its graph's copy (go: out_j's shape) and saved tensors, and autograd's temporaries
            saved_row = call.shape.saved_row_bytes(False, recompute)
            saved_j = (hi - lo) * saved_row * recompute  # a kept graph's are charged as they load
            saved_j += (hi - lo) * saved_row  # autograd's gradients of the saved activations (measured)
            s.charge(2 * tensor_bytes(go) * recompute + saved_j + vertex_scratch_bytes(hi - lo, call.shape.d_out), f"apply_vertex backward V_{j}")
            inputs = [acc] + ([xj] if need_x else []) + call.params
            if not need_acc:  # keep the positions below: a None in acc's place
                vgrads = [None] + list(call.grad(out_j, inputs[1:], go))
            else:
                vgrads = call.grad(out_j, inputs, go)
            s.charge(tensor_bytes(saved.acc[lo:hi]) * need_acc + (tensor_bytes(x[lo:hi]) if need_x and call.shape.vertex_reads_x else 0), f"apply_vertex gradients V_{j}")
        if need_x and vgrads[1] is not None:
            grads.x.add(dev, vgrads[1], lo, hi)
        call.add_param_grads(vgrads[1 + need_x :], grads.params)
        if not need_acc:
            return grad_acc
        g_acc = vgrads[0] if vgrads[0] is not None else torch.zeros((hi - lo, call.shape.d_msg), dtype=saved.acc.dtype, device=go.device)
        if call.dst_scale is not None:
            g_acc = g_acc * call.dst_scale[lo:hi].to(g_acc.device)
        if grad_acc is None:  # the one interval's gradient is the whole of it: no copy
            grad_acc = g_acc.detach().contiguous()
        else:
            dev.copy_out(g_acc, grad_acc[lo:hi])
    return grad_acc


def _edge_stage(call: LayerCall, x, edata, saved: Saved, grad_acc, need: tuple[bool, bool], grads: "Grads") -> None:
    """The edge stage in row order: source intervals V_i, each row's chunks streamed through the executor."""
    shape, p, dev = call.shape, call.p, call.device
    need_x, need_e = need
    host = {"src": x, "src_term": saved.src_term, "data": edata, "dst": x, "dst_term": saved.dst_term, "g_rows": grad_acc, "won": saved.winners}
    host.update({"sm_max": saved.softmax_max, "sm_sum": saved.softmax_sum, "out_rows": saved.acc})
    wants = {"src": need_x, "dst": need_x, "data": need_e, "src_term": True, "dst_term": True}
    uses = {"src": shape.uses_src, "src_term": shape.uses_src_term, "data": shape.uses_edge, "dst": shape.uses_dst, "dst_term": shape.uses_dst_term, "g_rows": True, "won": shape.winners}
    uses.update({"sm_max": shape.softmax, "sm_sum": shape.softmax, "out_rows": shape.softmax})
    direct = _direct_needs(call, need_x, need_e) if call.direct_backward else None
    reads_src = direct is None or _direct_reads_src(call, direct)
    if not reads_src:
        uses.update(src=False, src_term=False)  # a sum's source gradient never reads the sources: do not send them
    elif shape.uses_src:
        host["src"] = scaled_sources(call, x)  # as the forward's messages read them (a sym gather)
    # only the sources' gradient, by a kernel that reads source-major arrays in sequence: edge rows
    # source-major too (the same slice per sub-chunk), destination ids from the chunk's src_dst
    call.executor.source_major = direct == ("src",) and kernels.source_major_backward(call.backend, shape.builtin.op, shape.d_edge) and (edata is None or not edata.requires_grad)
    call.executor.compact_dst = shape.compact_dst_rows  # sparse sub-chunks over their rows with edges, as planned
    if call.fused and shape.attention is not None and not shape.uses_edge:  # the fused attention's backward: its kernels say
        call.executor.source_major = attention.reads_source_major(call.backend)
    if call.fused and shape.softmax_corrections:  # each row's correction, made once, crosses in place of its output row
        into = call.g.host.empty((call.g.num_vertices, shape.d_score), torch.float64, what="softmax output corrections")
        host["corr"] = attention.output_corrections(grad_acc, saved.acc, shape.d_score, into=into)
        uses.update(out_rows=False, corr=True)
    if call.executor.source_major and edata is not None and shape.uses_edge:
        host["data"] = _edges_source_major(call, edata)
    fields = tuple(f for f, used in uses.items() if used)
    plan = call.plan(BACKWARD, reads_src)
    times: dict[tuple[int, int], tuple[float, float]] = {}
    moved, t_pass = 0, time.perf_counter()
    # kernel backward paths read plain tensors; only autograd's recompute needs leaves
    kernel_only = direct is not None or (call.fused and shape.attention is not None)
    held = Scope(dev)
    host = narrow(host, call.executor.transfer_dtype)  # 16-bit rows, once: the held rows and the stream's
    try:
        if plan.dst_rows_bytes:  # every destination row sent once, not once per chunk of its column
            names = [f for f in fields if f not in SRC_FIELDS and f != "data" and host.get(f) is not None]
            for j in sorted({step.key[1] for step in plan.steps()}):
                lo, hi = p.interval(j)
                sent = {f: held.load(host[f][lo:hi], f"{f} rows of V_{j} (held through the pass)") for f in names}
                moved += sum(tensor_bytes(t) for t in sent.values())
                call.executor.dst_rows[j] = {f: widen(held, t, f"{f} rows of V_{j} widened to float32") for f, t in sent.items()}
        stream = call.executor.stream(plan, host, {} if kernel_only else wants, fields)
    except BaseException:
        call.executor.dst_rows = {}
        held.close()
        raise
    try:
        for i, steps in plan.groups:
            lo, hi = p.interval(i)
            if hi == lo or not steps:
                continue
            with dev.scope() as s:
                # accumulate onto the host gradient itself where the device shares host memory
                acc_src, src_shared = s.result_buffer(grads.x.rows(lo, hi), None, f"source grad V_{i}") if need_x and shape.uses_src else (None, False)
                acc_term, term_shared = s.result_buffer(grads.src_term[lo:hi], None, f"source-term grad V_{i}") if grads.src_term is not None else (None, False)
                if call.fused and shape.attention is not None:
                    compute = partial(_backward_chunk_attention, call, acc_term=acc_term, g_dst_term=grads.dst_term)
                elif direct is not None:
                    src_acc = acc_term if shape.d_src_term else acc_src
                    compute = partial(_backward_chunk_direct, call, needs=direct, src_acc=src_acc, grads=grads)
                else:
                    compute = partial(_backward_chunk, call, saved=saved, acc=(acc_src, acc_term), grads=grads)
                for step in steps:
                    load, busy, b = call.executor.run_step(stream, step, compute)
                    times[step.key] = (load, busy)
                    moved += b
                with call.span("d2h", BACKWARD, (i,), tensor_bytes(acc_src) + tensor_bytes(acc_term)):
                    if acc_src is not None and not src_shared:
                        dev.add_out(acc_src, grads.x.rows(lo, hi))
                    if acc_term is not None and not term_shared:
                        dev.add_out(acc_term, grads.src_term[lo:hi])
                # dropped with the scope that charged them: kept to the next row, they were alive beside its own
                # (measured from outside: a pass holding every destination row peaked 6 KB over its budget)
                acc_src = acc_term = src_acc = compute = None
    finally:
        stream.close()
        call.executor.dst_rows = {}
        held.close()
    call.executor.record_pass(plan, times, time.perf_counter() - t_pass, moved)


def _direct_needs(call: LayerCall, need_x: bool, need_e: bool) -> tuple[str, ...]:
    """The operands (``src``/``edge``/``dst``) whose gradients a direct backward pass computes."""
    shape, b = call.shape, call.shape.builtin
    wanted = (
        ("src", bool(shape.d_src_term) or (need_x and shape.uses_src)),
        ("edge", b.uses_edge and need_e),
        ("dst", b.uses_dst and (bool(shape.d_dst_term) or need_x)),
    )
    return tuple(name for name, w in wanted if w)


def _direct_reads_src(call: LayerCall, needs: tuple[str, ...]) -> bool:
    """Does the direct backward read source rows? Only for edge or destination gradients."""
    return call.shape.builtin.uses_src and bool({"edge", "dst"} & set(needs))


def _backward_chunk_direct(call: LayerCall, inputs: ChunkInputs, needs: tuple[str, ...], src_acc, grads: "Grads") -> None:
    """Backward of a fused sum sub-chunk by the backward kernels alone: no recompute, no autograd."""
    shape, dev, c, cs = call.shape, call.device, inputs.c, inputs.scope
    builtin = shape.builtin
    if not needs:
        return
    src_name = "src_term" if shape.d_src_term else "src"
    dst_name = "dst_term" if shape.d_dst_term else "dst"
    g_rows = inputs.get("g_rows")
    src = inputs.get(src_name) if _direct_reads_src(call, needs) else None
    dst = inputs.get(dst_name) if builtin.uses_dst else None
    edge = inputs.get("data") if builtin.uses_edge else None
    cs.charge(edge_scratch_bytes(c.nnz, shape, True), lambda: f"gradient temporaries of {c.id!r}")
    with call.span("kernel", BACKWARD, c.id):
        d_src, d_edge, d_dst = kernels.gspmm_sum_backward(
            inputs.ct, builtin.op, g_rows, src=src, edge=edge, dst=dst, needs=needs,
            src_out=src_acc, src_rows=inputs.src_local_rows(), backend=call.backend,
            edge_order="source_major" if call.executor.source_major else "csc",
        )
    if d_dst is not None:
        _add_dst_rows(dev, d_dst, grads.x.rows if dst_name == "dst" else partial(_rows_of, grads.dst_term), c)
    if d_edge is not None:
        off = call.edge_offset(c)
        dev.add_out(d_edge, grads.edge[off : off + c.nnz])


def _backward_chunk_attention(call: LayerCall, inputs: ChunkInputs, acc_term, g_dst_term) -> None:
    """Backward of a fused attention sub-chunk by its kernels: the hooks' term gradients, no recompute or autograd."""
    shape, c, cs = call.shape, inputs.c, inputs.scope
    cs.charge(edge_scratch_bytes(c.nnz, shape, True) + merge_scratch_bytes(c.num_dst, shape, True, True), lambda: f"gradient temporaries of {c.id!r}")
    with call.span("kernel", BACKWARD, c.id):
        _, d_dst = attention.attention_backward(
            inputs.ct, inputs.get("g_rows"), None if shape.softmax_corrections else inputs.get("out_rows"), inputs.get("sm_max"), inputs.get("sm_sum"),
            inputs.get("src_term"), inputs.get("dst_term"), shape.d_score, negative_slope=shape.attention.negative_slope,
            src_out=acc_term, src_rows=inputs.src_local_rows(), backend=call.backend,
            corrections=inputs.get("corr") if shape.softmax_corrections else None,
        )
    _add_dst_rows(call.device, d_dst, partial(_rows_of, g_dst_term), c)


def _backward_chunk(call: LayerCall, inputs: ChunkInputs, saved, acc: tuple, grads: "Grads") -> None:
    """Backward of one sub-chunk by recomputing its ApplyEdge and Gather under autograd."""
    dev, c, cs = call.device, inputs.c, inputs.scope
    acc_src, acc_term = acc
    with torch.enable_grad():
        if call.shape.softmax:
            partial_acc, arg = softmax_surrogate(call, inputs), None
        else:
            partial_acc, arg = gather_partial(call, inputs, BACKWARD)
    cs.adopt(partial_acc, lambda: f"partial of {c.id!r}")
    g_rows = inputs.get("g_rows")
    if saved.winners is not None:
        eids = cs.load(host_tensor(c.edge_ids), lambda: f"edge ids of {c.id!r}")
        g_rows = g_rows * ((arg >= 0) & (eids[arg.clamp(min=0)] == inputs.get("won")))
    leaves = inputs.leaves()
    cs.charge(edge_scratch_bytes(c.nnz, call.shape, call.fused), lambda: f"gradient temporaries of {c.id!r}")
    with call.span("kernel" if call.fused else "apply_edge", BACKWARD, c.id):
        cgrads = call.grad(partial_acc, list(leaves.values()) + call.params, g_rows)
    cs.charge(sum(tensor_bytes(g) for g in cgrads[: len(leaves)] if g is not None), lambda: f"input gradients of {c.id!r}")
    local_src = None
    for name, g in zip(leaves, cgrads):
        if g is None:
            continue
        if name in SRC_FIELDS:
            if local_src is None:
                local_src = inputs.src_local_rows()  # on the device already: loaded with the index arrays
            # unique rows: index_put_ avoids torch's slow multi-threaded CPU index_add_
            (acc_src if name == "src" else acc_term).index_put_((local_src,), g, accumulate=True)
        elif name == "dst":
            _add_dst_rows(dev, g, grads.x.rows, c)
        elif name == "dst_term":
            _add_dst_rows(dev, g, partial(_rows_of, grads.dst_term), c)
        elif name == "data":
            off = call.edge_offset(c)
            dev.add_out(g, grads.edge[off : off + c.nnz])
    call.add_param_grads(cgrads[len(leaves) :], grads.params)


def _rows_of(t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    return t[lo:hi]


def _add_dst_rows(dev, g: torch.Tensor, rows_of, c) -> None:
    """Add a sub-chunk's destination-row gradients ``g`` into host rows (``rows_of(lo, hi)``): its rows, or a compacted
    sub-chunk's rows with edges (``c.dst_rows``) within the span they cover."""
    lo = c.dst_start + c.dst_offset
    if c.dst_rows is None:
        dev.add_out(g, rows_of(lo, lo + c.num_dst))
    elif c.num_dst:
        out = rows_of(lo, lo + int(c.dst_rows[-1]) + 1)
        out.index_put_((host_tensor(c.dst_rows),), g.to(out.device), accumulate=True)  # unique rows: no slow CPU index_add_


def _backward_hook(call: LayerCall, hook: str, x, g_term, need_x, grads: "Grads") -> None:
    p, dev = call.p, call.device
    graphs = call.hook_graphs.pop(hook, None)
    for q, lo, hi, blocks in call.hook_rows():
        gt = kept = v = h = hgrads = None  # the last block's tensors go before this one's load
        with dev.scope() as s:
            narrow = call.g.schedule.transfer_dtype
            gt = load_narrowed(s, g_term[lo:hi], narrow, f"{hook} grad V_{q}")
            with call.span("apply_vertex", BACKWARD, (q,)):
                kept = graphs.pop(q if blocks == 1 else (q, lo), None) if graphs is not None else None
                if isinstance(kept, KeptGraph):  # the forward's graph, its saved tensors loaded as they are unpacked
                    kept.scope, kept.transfer_dtype = s, narrow
                    v, h = kept.inputs[0], kept.handle
                elif kept is not None:  # the forward's graph: no recompute
                    v, h = kept
                else:
                    v = load_narrowed(s, x[lo:hi], narrow, f"input rows V_{q}").requires_grad_(need_x)
                    with torch.enable_grad(), call.block_rng(hook, q, lo, blocks):
                        h = getattr(call.layer, hook)(v)
                    call.g.vertex_steps.recomputed(call.name, hook, hi - lo)
                saved_q = (hi - lo) * call.shape.saved_row_bytes(True, kept is None) * (1 + (kept is None))  # their gradients; a recompute's saved tensors
                s.charge(2 * tensor_bytes(gt) * (kept is None) + saved_q + vertex_scratch_bytes(hi - lo, gt.shape[1]), f"{hook} backward V_{q}")  # gt: h's shape
                hgrads = call.grad(h, ([v] if need_x else []) + call.params, gt)
                s.charge(tensor_bytes(x[lo:hi]) if need_x else 0, f"{hook} input gradient V_{q}")
            if need_x and hgrads[0] is not None:
                grads.x.add(dev, hgrads[0], lo, hi)
            call.add_param_grads(hgrads[need_x:], grads.params)


def _edges_source_major(call: LayerCall, edata: torch.Tensor) -> torch.Tensor:
    """Chunk-ordered edge data with each sub-chunk's rows in source-major order (``rows[src_perm]``).

    Every sub-chunk keeps its slice; only the order inside it changes.
    Only for data without a gradient (written in place, slice by slice).
    Cached on the partition while ``edata`` lives unchanged (a GCN's
    normalisation: once per training run, not per pass).
    """
    hit = call.p.__dict__.get(_SOURCE_MAJOR_CACHE)
    if hit is not None and hit[0]() is edata and hit[1] == edata._version:
        return hit[2]
    host = call.g.host  # written a sub-chunk at a time under the host budget: no E-long index or copy in RAM
    out = host.empty(tuple(edata.shape), edata.dtype, "edge data in source-major order") if host.enabled else torch.empty_like(edata)
    for c in call.p.sub_chunks():
        off = call.edge_offset(c)
        out[off : off + c.nnz] = edata[off : off + c.nnz].index_select(0, torch.from_numpy(c.src_perm.astype(np.int64)))
    call.p.__dict__[_SOURCE_MAJOR_CACHE] = (weakref.ref(edata), edata._version, out)
    return out

