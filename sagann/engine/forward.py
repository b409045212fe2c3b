"""The forward pass of a layer call: destination intervals in column order.

For each tile of destination intervals V_j (one, unless the planner tiles
the loop) the pass opens their accumulators on the device, streams the
sub-chunks of their columns through the executor, adding
Gather(ApplyEdge(Scatter(V_i, V_j, E_ij))) into them, then finalises the
reducer, runs ApplyVertex and writes V_j's rows back to the host. It keeps
on the host what backward needs: the gathered rows ``acc`` (for max/min
also the winning global edge id of each entry, for softmax the running max
and sum) and the hook outputs; ApplyVertex's and the hooks' autograd graphs
are kept where that is cheaper than recomputing them.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from functools import partial

import torch

from sagann.engine.call import LayerCall, Saved
from sagann.engine.host_grad import owns_storage
from sagann.engine.host_ops import BLOCK_BYTES
from sagann.engine.messages import gather_partial, softmax_partials
from sagann.engine.offload import KeptGraph, graph_handle, own_version
from sagann.engine.probe import unread_rows
from sagann.scheduler.devices import Scope, host_tensor
from sagann.units import tensor_bytes
from sagann.scheduler.meter import metered_pass
from sagann.scheduler.executor import ChunkInputs, load_narrowed
from sagann.scheduler.pipeline import live_sub_chunks
from sagann.scheduler.planner import apply_block_rows, merge_scratch_bytes, vertex_scratch_bytes
from sagann.scheduler.schedule import FORWARD

__all__ = ["HostOutputs", "forward_pass", "hook_pass", "scaled_sources"]


@dataclass
class HostOutputs:
    """Host tensors a forward pass fills; several devices sharing a call write their rows of one set."""

    out: torch.Tensor | None  # [N, d_out]; None: made at the first interval not taken whole
    acc: torch.Tensor  # [N, d_msg]: the gathered rows, saved for backward
    win: torch.Tensor | None  # [N, d_msg] int64: max/min winners
    sm_max: torch.Tensor | None  # [N, heads]: softmax running max
    sm_sum: torch.Tensor | None  # [N, heads]: softmax running sum


@dataclass
class _Column:
    """A destination interval's forward state on the device while a tile's sources stream past it."""

    j: int
    lo: int
    hi: int
    scope: Scope
    xj: torch.Tensor | None  # None: rows only ApplyVertex reads, loaded at the close
    dj: torch.Tensor | None
    acc: torch.Tensor
    acc_shared: bool
    win: torch.Tensor | None
    win_shared: bool
    sm: tuple[torch.Tensor, torch.Tensor] | None
    init: float = 0.0  # the accumulator's fill; a deferred column (``acc`` None) opens each block with it


@metered_pass
def hook_pass(call: LayerCall, hook: str, x: torch.Tensor, width: int) -> torch.Tensor:
    """``apply_src``/``apply_dst`` over every interval: the hook's rows on the host (kept graphs for backward)."""
    if hook in call.terms:  # several devices share the call: the rows every device computed
        return call.terms[hook]
    out = call.g.host.empty((call.g.num_vertices, width), what=f"{hook} rows")
    mode = call.keep_mode()
    graphs = call.hook_graphs.setdefault(hook, {}) if mode else None
    blocked = False  # a block whose graph would have been kept: backward recomputes it
    # do blocks keep their graphs? Those that save only host rows and parameters do (no copy), where allowed
    blocks_keep = None if call.block_graphs_allowed else False
    for q, lo, hi, blocks in call.hook_rows():
        v = vin = h = kept = aliases = None  # the last block's tensors go before this one's load
        keep = mode if blocks == 1 or blocks_keep is not False else None
        with call.device.scope() as s:
            v = load_narrowed(s, x[lo:hi], call.g.schedule.transfer_dtype, f"input rows V_{q}")
            s.charge(vertex_scratch_bytes(hi - lo, width, call.shape.hook_temp), f"{hook} temporaries V_{q}")
            kept = KeptGraph(call.params) if keep == "offload" else None
            vin = v.detach().requires_grad_(call.need_x) if keep else v  # a kept graph's input leaf
            saving = kept.hooks() if kept is not None else contextlib.nullcontext()
            rng = call.block_rng(hook, q, lo, blocks)
            with call.span("apply_vertex", FORWARD, (q,)), rng, torch.set_grad_enabled(keep is not None), saving:
                t0 = time.perf_counter()
                h = s.adopt(getattr(call.layer, hook)(vin), f"{hook} rows V_{q}")
                seconds = time.perf_counter() - t0
            call.g.vertex_steps.evaluated(call.name, hook, hi - lo, seconds)
            call.check_rows(h, hi - lo, width, hook)
            call.device.copy_out(h.detach(), out[lo:hi])
            scaled = hook == "apply_src" and call.src_scale is not None
            if scaled:  # a sym gather's messages: sources scaled once per vertex
                out[lo:hi].mul_(call.src_scale[lo:hi])
            key = q if blocks == 1 else (q, lo)
            if kept is not None:
                kept.keep_inputs(vin)
                kept.handle = graph_handle(h)
                aliases = [(v, x[lo:hi])] + ([] if scaled else [(h, out[lo:hi])])  # scaled host rows no longer hold h
                if blocks > 1:
                    blocks_keep = kept.copy_bytes(aliases) == 0
                if (blocks == 1 or blocks_keep) and call.seal(kept, aliases, seconds, (q,)):
                    graphs[key] = kept
                else:
                    kept.drop()
            elif keep:
                graphs[key] = (vin, graph_handle(h))
            blocked = blocked or (mode is not None and key not in graphs)
    if blocked:  # the plan counts backward's recompute of the blocks
        call.g.planner.note_recompute_peak(call.recompute_bytes())
    return out


@metered_pass
def forward_pass(call: LayerCall, x: torch.Tensor, edata: torch.Tensor | None) -> tuple[torch.Tensor, Saved]:
    """The layer's output rows on the host, and what its backward needs."""
    shape, p, dev = call.shape, call.p, call.device
    edata = call.edges_in_partition_order(edata)
    src_term = hook_pass(call, "apply_src", x, shape.d_src_term) if shape.d_src_term else None
    dst_term = hook_pass(call, "apply_dst", x, shape.d_dst_term) if shape.d_dst_term else None
    n = call.g.num_vertices
    # one interval on a device sharing host memory: V_0's output rows are the output, no copy
    whole = dev.shares_host_memory and p.num_chunks == 1 and call.buffers is None
    bufs = call.buffers if call.buffers is not None else _host_buffers(call, n)
    host = {"src": scaled_sources(call, x), "src_term": src_term, "data": edata}
    fields = tuple(f for f, used in (("src", shape.uses_src), ("src_term", shape.uses_src_term), ("data", shape.uses_edge)) if used)
    init = {"sum": 0.0, "max": float("-inf"), "min": float("inf"), "softmax": 0.0}[call.reduce]
    plan = call.plan(FORWARD)
    keep_mode = call.keep_mode()
    if dev.memory_budget is not None:  # ApplyVertex's blocks leave room for what the edge stage may still hold
        call.apply_cap = apply_block_rows(p, shape, call.fused, call.param_bytes, dev.memory_budget, live_sub_chunks(plan.prefetch))
    times: dict[tuple[int, int], tuple[float, float]] = {}
    moved, t_pass = 0, time.perf_counter()
    with dev.scope() as params_scope:
        params_scope.charge(call.param_bytes, f"{call.name} parameters")
        stream = call.executor.stream(plan, host, {}, fields)
        columns: dict[int, _Column] = {}
        try:
            for g, steps in plan.groups:
                for j in plan.members(g):  # the tile's accumulators, open together while its sources stream
                    lo, hi = p.interval(j)
                    if hi > lo:
                        columns[j] = _open_column(call, j, x, dst_term, bufs, init, defer=p.num_edges == 0 and len(call.vertex_blocks(lo, hi)) > 1)
                for step in steps:
                    load, busy, b = call.executor.run_step(stream, step, partial(_forward_chunk, call, col=columns[step.key[1]]))
                    times[step.key] = (load, busy)
                    moved += b
                for j in plan.members(g):
                    if j in columns:
                        col = columns.pop(j)
                        try:
                            _close_column(call, col, x, bufs, whole, keep_mode)
                        finally:
                            col.scope.close()
                            col = None  # its device tensors go with its scope, not at the next column's close
        finally:
            for col in columns.values():  # a failed tile: give back every accumulator it opened
                col.scope.close()
            stream.close()
    call.executor.record_pass(plan, times, time.perf_counter() - t_pass, moved)
    out = call.g.host.empty((n, shape.d_out), what="layer output") if bufs.out is None else bufs.out
    return out, Saved(src_term, dst_term, bufs.acc, bufs.win, bufs.sm_max, bufs.sm_sum)


def _open_column(call: LayerCall, j: int, x, dst_term, bufs: HostOutputs, init, rows: tuple[int, int] | None = None, defer: bool = False) -> "_Column":
    """V_j's resident forward state (``rows``: of its rows lo:hi only): its input and destination-term rows and its accumulator.

    Input rows only where the edge stage reads them (``LayerShape.holds_x_j``);
    rows that only ApplyVertex reads are loaded at the column's close, a
    block at a time, so the edge stage's sub-chunks get their room.
    ``defer``: nothing yet. A pass with no edges has no edge stage to hold
    the column through, so its ApplyVertex blocks each load their own rows
    (:func:`_apply_vertex_in_blocks`): a block then fills the room the whole
    column's rows would have held.
    """
    shape, (lo, hi) = call.shape, rows or call.p.interval(j)
    s = Scope(call.device)
    if defer:
        return _Column(j, lo, hi, s, None, None, None, False, None, False, None, init)
    try:
        narrow = call.g.schedule.transfer_dtype
        xj = _input_rows(call, s, x, lo, hi) if shape.holds_x_j or not shape.loads_x_j else None  # None: loaded at the close
        dj = load_narrowed(s, dst_term[lo:hi], narrow, f"dst terms V_{j}") if dst_term is not None else None
        acc, acc_shared = s.result_buffer(bufs.acc[lo:hi], init, f"accumulator V_{j}")
        win, win_shared = s.result_buffer(bufs.win[lo:hi], -1, f"winners V_{j}") if shape.winners else (None, False)
        sm = None
        if shape.softmax:
            sm = (s.full((hi - lo, shape.d_score), float("-inf"), torch.float32, f"softmax max V_{j}"), s.zeros((hi - lo, shape.d_score), torch.float32, f"softmax sum V_{j}"))
    except BaseException:
        s.close()
        raise
    return _Column(j, lo, hi, s, xj, dj, acc, acc_shared, win, win_shared, sm, init)


def _input_rows(call: LayerCall, s: Scope, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows ``lo:hi`` of ``x`` on the device, in ``s`` (a stand-in holding no memory where the pass never reads them)."""
    if not call.shape.loads_x_j:
        return unread_rows(hi - lo, x.shape[1], x.dtype, call.device.torch_device)
    return load_narrowed(s, x[lo:hi], call.g.schedule.transfer_dtype, f"input rows {lo}:{hi}")


def _forward_chunk(call: LayerCall, inputs: ChunkInputs, col: "_Column") -> None:
    """Add one sub-chunk's messages into its destination column's accumulator."""
    inputs.set_resident({"dst": col.xj, "dst_term": col.dj})
    if col.sm is not None:
        inputs.scope.charge(merge_scratch_bytes(inputs.c.num_dst, call.shape, call.fused, False), lambda: f"softmax merge of {inputs.c.id!r}")
        rows = slice(inputs.c.dst_offset, inputs.c.dst_offset + inputs.c.num_dst)
        softmax_partials(call, inputs, into=(col.sm[0][rows], col.sm[1][rows], col.acc[rows]))
        return
    if call.fused and call.reduce == "sum":  # the kernel adds into V_j's accumulator itself
        c = inputs.c
        gather_partial(call, inputs, FORWARD, into=col.acc[c.dst_offset : c.dst_offset + c.num_dst])
        return
    partial_acc, arg = gather_partial(call, inputs, FORWARD)
    inputs.scope.adopt(partial_acc, lambda: f"partial of {inputs.c.id!r}")
    _merge(call, inputs, col.acc, col.win, partial_acc, arg)


def _close_column(call: LayerCall, col: "_Column", x, bufs: HostOutputs, whole: bool, keep_mode) -> None:
    """Finish V_j: ApplyVertex on its accumulator, its rows back to the host (``bufs.out`` made at the first need)."""
    shape, dev, s, j, lo, hi = call.shape, call.device, col.scope, col.j, col.lo, col.hi
    blocks = call.vertex_blocks(lo, hi)
    if col.acc is None:  # deferred: every block loads its own rows
        _apply_vertex_in_blocks(call, col, blocks, bufs, keep_mode, x)
        return
    acc, win, sm = col.acc, col.win, col.sm
    _finalise(call, acc, win, lo, hi, sm)
    out_j = kept = xj = None
    if len(blocks) > 1:  # the budget holds the column but not its output rows and scratch at once
        _apply_vertex_in_blocks(call, col, blocks, bufs, keep_mode, x)
    else:
        xj = col.xj if col.xj is not None else _input_rows(call, s, x, lo, hi)
        s.charge(vertex_scratch_bytes(hi - lo, shape.d_out, shape.vertex_temp), f"apply_vertex temporaries V_{j}")
        with call.span("apply_vertex", FORWARD, (j,)), call.rng("vertex", j):
            out_j, kept = _apply_vertex_forward(call, j, xj, acc, keep_mode)
            s.adopt(out_j, f"output rows V_{j}")
        call.check_rows(out_j, hi - lo, shape.d_out, "apply_vertex")
    with call.span("d2h", FORWARD, (j,), tensor_bytes(out_j) + tensor_bytes(acc)):
        if out_j is None:
            pass  # written block by block
        elif whole and owns_storage(out_j, x, bufs.acc):
            bufs.out = out_j.contiguous()
        else:
            if bufs.out is None:
                bufs.out = call.g.host.empty((call.g.num_vertices, shape.d_out), what="layer output")
            dev.copy_out(out_j, bufs.out[lo:hi])
        _state_out(call, col, bufs)
    aliases = [(xj, x[lo:hi])] if shape.loads_x_j else []
    if kept is not None:
        if call.seal(kept, aliases + [(acc, bufs.acc[lo:hi])], kept.seconds, (j,)):
            call.vertex_graphs[j] = kept
        else:
            kept.drop()


def _state_out(call: LayerCall, col: "_Column", bufs: HostOutputs) -> None:
    """The column's accumulator (and max/min winners, softmax sums) to the host, where backward reads them."""
    dev, lo, hi = call.device, col.lo, col.hi
    if not col.acc_shared:
        dev.copy_out(col.acc, bufs.acc[lo:hi])
    if col.win is not None and not col.win_shared:
        dev.copy_out(col.win, bufs.win[lo:hi])
    if col.sm is not None:
        dev.copy_out(col.sm[0], bufs.sm_max[lo:hi])
        dev.copy_out(col.sm[1], bufs.sm_sum[lo:hi])


def _apply_vertex_in_blocks(call: LayerCall, col: "_Column", blocks: list[tuple[int, int]], bufs: HostOutputs, keep_mode: str | None, x) -> None:
    """ApplyVertex of V_j block by block: the column's state stays whole (a deferred column: each block loads its
    own, from ``x``), each block's output rows and scratch come and go.

    A block's graph is kept where it saves only rows the host holds (its
    input rows, its aggregates) and parameters: sealing copies nothing, and
    backward skips that block's recompute. Where the first block's graph
    would need copies, it is dropped and the layer's later blocks (in this
    mode) build none; backward recomputes them under the same seeds.
    """
    shape, dev, j, lo = call.shape, call.device, col.j, col.lo
    if keep_mode is not None:
        call.g.planner.note_recompute_peak(call.recompute_bytes())
    if bufs.out is None:
        bufs.out = call.g.host.empty((call.g.num_vertices, shape.d_out), what="layer output")
    for b0, b1 in blocks:
        block = _open_column(call, j, x, None, bufs, col.init, (b0, b1)) if col.acc is None else None
        try:
            if block is not None:
                _finalise(call, block.acc, block.win, b0, b1, block.sm)  # no edges: the accumulator's fill, finished
                xb, accb = block.xj, block.acc
            else:
                xb, accb = None if col.xj is None else col.xj[b0 - lo : b1 - lo], col.acc[b0 - lo : b1 - lo]
            mode = keep_mode if call.blocks_keep is not False else None
            with dev.scope() as bs:
                if xb is None:  # rows only ApplyVertex reads: this block's, loaded now
                    xb = _input_rows(call, bs, x, b0, b1)
                bs.charge(vertex_scratch_bytes(b1 - b0, shape.d_out, shape.vertex_temp), f"apply_vertex temporaries V_{j} rows {b0}:{b1}")
                with call.span("apply_vertex", FORWARD, (j,)), call.block_rng("vertex", j, b0, len(blocks)):
                    out_b, kept = _apply_vertex_forward(call, (j, b0), xb, accb, mode)
                call.check_rows(out_b, b1 - b0, shape.d_out, "apply_vertex")
                bs.adopt(out_b, f"output rows V_{j} rows {b0}:{b1}")
                with call.span("d2h", FORWARD, (j,), tensor_bytes(out_b)):
                    dev.copy_out(out_b, bufs.out[b0:b1])
                out_b = None  # gone with its scope
                if kept is not None:
                    aliases = ([(xb, x[b0:b1])] if shape.loads_x_j else []) + [(accb, bufs.acc[b0:b1])]
                    call.learn_blocks_keep(kept.copy_bytes(aliases) == 0)
                    if call.blocks_keep and call.seal(kept, aliases, kept.seconds, (j,)):
                        call.vertex_graphs[(j, b0)] = kept
                    else:
                        kept.drop()
                    kept = aliases = None  # the aliases hold the block's loads: they go with its scope
            if block is not None:
                _state_out(call, block, bufs)
        finally:
            if block is not None:
                block.scope.close()
            block = xb = accb = None


def _apply_vertex_forward(call: LayerCall, j, xj: torch.Tensor, acc: torch.Tensor, mode: str | None) -> tuple[torch.Tensor, KeptGraph | None]:
    """ApplyVertex of V_j (``j``: the interval, or ``(j, first row)`` of a block), its autograd graph kept for backward as ``mode`` says (no recompute there).

    ``"offload"``: the graph comes back unsealed, to seal once V_j's rows are on the host.
    """
    if mode is None:
        t0 = time.perf_counter()
        out_j = call.layer.apply_vertex(xj, acc)
        call.g.vertex_steps.evaluated(call.name, "apply_vertex", acc.shape[0], time.perf_counter() - t0)
        return out_j, None
    xin = xj.detach().requires_grad_(call.need_x)
    ain = own_version(acc).requires_grad_(call.edge_stage_has_grads(call.need_x, call.need_e))
    kept = KeptGraph(call.params) if mode == "offload" else None
    t0 = time.perf_counter()
    with torch.enable_grad(), kept.hooks() if kept is not None else contextlib.nullcontext():
        out_j = call.layer.apply_vertex(xin, ain)
    call.g.vertex_steps.evaluated(call.name, "apply_vertex", acc.shape[0], time.perf_counter() - t0)
    if kept is None:
        call.vertex_graphs[j] = (xin, ain, graph_handle(out_j))
    else:
        kept.keep_inputs(xin, ain)
        kept.handle, kept.seconds = graph_handle(out_j), time.perf_counter() - t0
    return out_j.detach(), kept


def _host_buffers(call: LayerCall, n: int) -> "HostOutputs":
    """Host tensors a one-device forward fills (the output is made at the first interval not taken whole)."""
    shape, host = call.shape, call.g.host
    acc_all = host.empty((n, shape.d_msg), what="aggregates saved for backward")
    win_all = host.empty((n, shape.d_msg), torch.long, "winner ids") if shape.winners else None
    sm_max = host.zeros((n, shape.d_score), what="softmax maxima") if shape.softmax else None
    sm_sum = host.zeros((n, shape.d_score), what="softmax sums") if shape.softmax else None
    return HostOutputs(None, acc_all, win_all, sm_max, sm_sum)


def scaled_sources(call: LayerCall, x: torch.Tensor) -> torch.Tensor:
    """The input rows as a sym gather's messages read them, scaled by their source's ``deg^-1/2``; ``x`` itself elsewhere.

    A host copy under the budget, made a block of rows at a time; a layer
    with ``apply_src`` has its terms scaled in :func:`hook_pass` instead.
    """
    if call.src_scale is None or not call.shape.uses_src:
        return x
    out = call.g.host.empty(tuple(x.shape), x.dtype, "source rows scaled by degree")
    step = max(1, BLOCK_BYTES // max(1, x[:1].numel() * x.element_size()))
    for lo in range(0, x.shape[0], step):
        torch.mul(x[lo : lo + step].detach(), call.src_scale[lo : lo + step].to(x.dtype), out=out[lo : lo + step])
    return out


def _merge(call: LayerCall, inputs: ChunkInputs, acc, win, partial_acc, arg) -> None:
    c = inputs.c
    rows = slice(c.dst_offset, c.dst_offset + c.num_dst)
    if win is None:
        acc[rows] += partial_acc
        return
    eids = inputs.scope.load(host_tensor(c.edge_ids), lambda: f"edge ids of {c.id!r}")
    gid = torch.where(arg >= 0, eids[arg.clamp(min=0)], -1)
    cur, cur_win = acc[rows], win[rows]
    beats = partial_acc > cur if call.reduce == "max" else partial_acc < cur
    better = (arg >= 0) & (beats | ((partial_acc == cur) & (gid < cur_win)))
    acc[rows] = torch.where(better, partial_acc, cur)
    win[rows] = torch.where(better, gid, cur_win)


def _finalise(call: LayerCall, acc, win, lo: int, hi: int, sm=None) -> None:
    if sm is not None:  # each head's columns over its sum, in place: row-sized temporaries here went uncharged
        total = sm[1]
        acc.view(acc.shape[0], call.shape.d_score, -1).div_(torch.where(total > 0, total, torch.ones_like(total)).unsqueeze(-1))
        sm[0].masked_fill_(torch.isinf(sm[0]), 0.0)
    if call.dst_scale is not None:
        acc.mul_(call.dst_scale[lo:hi].to(acc.device))
    if win is not None:
        acc.masked_fill_(win < 0, 0.0)

