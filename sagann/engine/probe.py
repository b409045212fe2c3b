"""What a layer's functions take and give: widths, used inputs and saved bytes, learnt by running them on one edge.

The planner sizes every buffer from this :class:`~sagann.scheduler.planner.LayerShape`;
the errors a user's layer can cause are raised here, before any pass runs.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sagann.engine.edges import EdgeBatch
from sagann.fn import GATHERS, SYM_MESSAGES, AttentionFn, MessageFn
from sagann.scheduler.meter import allocated_peak
from sagann.scheduler.planner import LayerShape
from sagann.units import storage_ptr, tensor_bytes

__all__ = ["check_layer", "edge_bytes_per_edge", "has_hook", "probe_layer", "saved_bytes_per_row", "temp_bytes_per_row", "unread_rows"]


def unread_rows(rows: int, width: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Stand-in for input rows nothing reads (``Layer.apply_vertex_reads_v = False``): zeros, no memory."""
    return torch.zeros((), dtype=dtype, device=device).expand(rows, width)


def has_hook(layer: nn.Module, name: str) -> bool:
    return callable(getattr(layer, name, None))


def check_layer(layer: nn.Module) -> None:
    name = type(layer).__name__
    if layer.gather not in GATHERS:
        raise ValueError(f"{name}.gather = {layer.gather!r} is not a known reducer; use one of {', '.join(GATHERS)}")
    ae = getattr(layer, "apply_edge")
    if not (isinstance(ae, MessageFn) or callable(ae)):
        raise TypeError(f"{name}.apply_edge must be a method or a sagann.fn builtin, got {ae!r}")
    if isinstance(ae, MessageFn) and layer.gather == "softmax":
        raise ValueError(f"{name}: gather='softmax' needs an apply_edge that returns (scores, messages), not the builtin {ae!r}")
    if layer.gather == "sym":
        if not (isinstance(ae, MessageFn) and ae.op in SYM_MESSAGES):
            raise ValueError(f"{name}: gather='sym' scales each message by its source's degree, so apply_edge must be one of "
                             f"{', '.join('sagann.fn.' + op for op in SYM_MESSAGES)} (linear in the source row); got {ae!r}. "
                             "Use gather='sum' with GCN-normalised edge weights otherwise")
        if not has_hook(layer, "apply_src") and getattr(layer, "apply_vertex_reads_v", True):
            raise ValueError(f"{name}: gather='sym' on the raw input rows needs apply_vertex_reads_v = False (the input's gradient is "
                             "scaled at the sources), or an apply_src hook for the rows it sends")
    if isinstance(ae, AttentionFn):
        if layer.gather != "softmax":
            raise ValueError(f"{name}: {ae!r} weighs messages by a softmax; set gather = 'softmax' (got {layer.gather!r})")
        if not (has_hook(layer, "apply_src") and has_hook(layer, "apply_dst")):
            raise ValueError(f"{name}: {ae!r} reads the hooks' terms; define apply_src (messages and score halves) and apply_dst (score halves)")


def probe_layer(layer: nn.Module, d_in: int, edge_data: torch.Tensor | None, device: torch.device) -> LayerShape:
    """Run the layer's functions on one zero edge to learn widths and used inputs."""
    check_layer(layer)
    name = type(layer).__name__
    d_edge = 0 if edge_data is None else (1 if edge_data.dim() == 1 else int(edge_data.shape[1]))
    dtype = torch.float32
    # fork_rng: a probe of a layer with dropout must not move the caller's random stream
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        v = torch.zeros(1, d_in, dtype=dtype, device=device)
        s_term = layer.apply_src(v) if has_hook(layer, "apply_src") else None
        d_term = layer.apply_dst(v) if has_hook(layer, "apply_dst") else None
        for hook, t in (("apply_src", s_term), ("apply_dst", d_term)):
            if t is not None and (not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != 1):
                raise ValueError(f"{name}.{hook} must return one row per vertex ([n, k]); got {getattr(t, 'shape', type(t))}")
        edge = None
        if edge_data is not None:
            edge = torch.zeros((1,) + tuple(edge_data.shape[1:]), dtype=edge_data.dtype, device=device)
        ae = layer.apply_edge
        edge_temp = (0, 0)  # a builtin's temporaries are its op record's scratch
        attention = ae if isinstance(ae, AttentionFn) else None
        if attention is not None:
            heads = int(d_term.shape[1])
            if s_term.shape[1] <= heads or (s_term.shape[1] - heads) % heads:
                raise ValueError(
                    f"{name}.apply_src must return [n, heads * d + heads] (messages, then one score half per head) for {ae!r}; "
                    f"got {s_term.shape[1]} columns with heads={heads} (apply_dst's width)"
                )
            d_msg, d_score, used = int(s_term.shape[1]) - heads, heads, {"src_term", "dst_term"}
        elif isinstance(ae, MessageFn):
            if ae.uses_edge and edge is None:
                raise ValueError(f"{name} uses {ae!r}, which reads edge features: pass edge_data=... to the layer call")
            src_side = s_term if s_term is not None else v
            dst_side = d_term if d_term is not None else v
            if ae.uses_dst and src_side.shape[1] != dst_side.shape[1]:
                raise ValueError(f"{name} uses {ae!r} but source rows have {src_side.shape[1]} columns and destination rows {dst_side.shape[1]}")
            d_msg = ae.spec.message_width(int(src_side.shape[1]), d_edge)
            used = set()
            if ae.uses_src:
                used.add("src_term" if s_term is not None else "src")
            if ae.uses_dst:
                used.add("dst_term" if d_term is not None else "dst")
            if ae.uses_edge:
                used.add("data")
        else:
            e = EdgeBatch(
                1,
                {
                    "src": lambda: v,
                    "dst": lambda: v,
                    "data": lambda: edge,
                    "src_term": lambda: s_term,
                    "dst_term": lambda: d_term,
                },
            )
            msg = ae(e)
            d_score = 0
            if layer.gather == "softmax":
                msg, d_score = _check_attention(name, msg)
            if not isinstance(msg, torch.Tensor) or msg.dim() != 2 or msg.shape[0] != 1:
                raise ValueError(f"{name}.apply_edge must return one row per edge ([num_edges, d]); got {getattr(msg, 'shape', type(msg))}")
            d_msg = int(msg.shape[1])
            used = e.used
            widths = {"src": d_in, "dst": d_in, "data": d_edge, "src_term": _width(s_term), "dst_term": _width(d_term)}
            edge_temp = edge_bytes_per_edge(ae, {f: widths[f] for f in used}, list(layer.parameters()), device)
        acc = torch.zeros(1, d_msg, dtype=dtype, device=device)
        out = layer.apply_vertex(v, acc)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
            raise ValueError(f"{name}.apply_vertex must return one row per vertex ([n, d_out]); got {getattr(out, 'shape', type(out))}")
        params = list(layer.parameters())
        vertex_saved = saved_bytes_per_row(layer.apply_vertex, (d_in, d_msg), params, device)
        hooks = [saved_bytes_per_row(getattr(layer, h), (d_in,), params, device) for h in ("apply_src", "apply_dst") if has_hook(layer, h)]
        hook_saved = tuple(max(counts, default=0) for counts in zip(*hooks)) if hooks else (0, 0)
        vertex_temp = temp_bytes_per_row(layer.apply_vertex, (d_in, d_msg), device)
        hook_temp = max([temp_bytes_per_row(getattr(layer, h), (d_in,), device) for h in ("apply_src", "apply_dst") if has_hook(layer, h)], default=0)
    return LayerShape(
        d_in=d_in,
        d_edge=d_edge,
        d_score=0 if isinstance(ae, MessageFn) else d_score,
        attention=attention,
        d_src_term=0 if s_term is None else int(s_term.shape[1]),
        d_dst_term=0 if d_term is None else int(d_term.shape[1]),
        d_msg=d_msg,
        d_out=int(out.shape[1]),
        gather=layer.gather,
        builtin=ae if isinstance(ae, MessageFn) else None,
        uses_src="src" in used,
        uses_dst="dst" in used,
        uses_src_term="src_term" in used,
        uses_dst_term="dst_term" in used,
        uses_edge="data" in used,
        vertex_reads_x=bool(getattr(layer, "apply_vertex_reads_v", True)),
        vertex_saved=vertex_saved[0],
        vertex_saved_distinct=vertex_saved[1],
        hook_saved=hook_saved[0],
        hook_saved_distinct=hook_saved[1],
        vertex_temp=vertex_temp,
        hook_temp=hook_temp,
        edge_temp=edge_temp[0],
        edge_grad_temp=edge_temp[1],
    )


def _width(t: torch.Tensor | None) -> int:
    return 0 if t is None else int(t.shape[1])


def edge_bytes_per_edge(apply_edge, widths: dict[str, int], params: list[torch.Tensor], device: torch.device) -> tuple[int, int]:
    """Bytes per edge a user ApplyEdge holds at once: in forward (its messages included), and recomputed with its gradients.

    The planner cannot see inside a user function (a wide temporary, what
    autograd saves, the per-edge input gradients): measured on random edges
    with :func:`~sagann.scheduler.meter.allocated_peak` (bytes torch ops
    allocate), as the growth from 32 to 64 edges so per-call constants drop
    out. 0 where the function fails on random inputs (the real call raises).
    """
    def run(edges: int, grad: bool):
        leaves = {f: torch.randn(edges, w, device=device, requires_grad=grad) for f, w in widths.items() if w}
        e = EdgeBatch(edges, {f: (lambda t=t: t) for f, t in leaves.items()})
        out = apply_edge(e)
        outs = [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]
        if not grad:
            return outs
        wrt = list(leaves.values()) + [p for p in params if p.requires_grad]
        return torch.autograd.grad(outs, wrt, [torch.randn_like(t) for t in outs], allow_unused=True)

    def peak(edges: int, grad: bool) -> int:
        with torch.set_grad_enabled(grad):
            return allocated_peak(lambda: run(edges, grad))

    return tuple(_growth_per_item(lambda edges, grad=grad: peak(edges, grad)) for grad in (False, True))


def temp_bytes_per_row(fn, widths: tuple[int, ...], device: torch.device) -> int:
    """Bytes per vertex row ``fn`` holds at once beyond its inputs and its output, run as a kept graph runs it (under autograd).

    The memory model's row-sized scratch counts output-wide temporaries;
    a per-vertex function may hold wider ones at once (an activation and a
    dropout mask before a narrowing matmul, an MLP's hidden layer, what its
    graph saves): measured with :func:`~sagann.scheduler.meter.allocated_peak`
    as the growth from 32 to 64 rows of random inputs, the output's bytes
    taken off. 0 where the function fails on random inputs (the real call raises).
    """
    def beyond_output(rows: int) -> int:
        with torch.enable_grad():
            args = [torch.randn(rows, w, device=device, requires_grad=True).clone() for w in widths]  # not leaves, as in the engine
            out = []
            held = allocated_peak(lambda: out.append(fn(*args)) or out[-1])
        return held - (tensor_bytes(out[0]) if out and isinstance(out[0], torch.Tensor) else 0)

    return _growth_per_item(beyond_output)


def _growth_per_item(measure: Callable[[int], int], small: int = 32, big: int = 64) -> int:
    """What ``measure(n)`` grows by per item from ``small`` to ``big`` items, rounded up (per-call constants drop out; 0 if it shrinks).

    Under its own random stream; 0 where ``measure`` raises: a measurement
    only, the layer's real call raises its own error, with the engine's context.
    """
    with torch.random.fork_rng(devices=[]):
        try:
            return max(0, -(-(measure(big) - measure(small)) // (big - small)))
        except Exception:
            return 0


def saved_bytes_per_row(fn, widths: tuple[int, ...], params: list[torch.Tensor], device: torch.device) -> tuple[int, int]:
    """Bytes per vertex row that ``fn``'s autograd graph saves beyond its inputs and the parameters: (every save, distinct storages).

    Backward holds them on the device (a kept graph loads them there; a
    recompute rebuilds them), and the planner cannot see inside a user
    function: an MLP's hidden activations, a dropout mask. Measured as the
    growth from 4 to 8 rows of random inputs (constants drop out). A kept
    graph copies every save, so a tensor saved twice (a ReLU's output, by
    the ReLU and the next Linear) counts twice; a recompute's graph shares
    it, as autograd does, so the second count takes each storage once.
    """
    def saved(rows: int) -> tuple[int, int]:
        with torch.enable_grad():  # the probe runs under no_grad: inputs made there would need no gradient, and save nothing
            args = [torch.randn(rows, w, device=device, requires_grad=True).clone() for w in widths]  # not leaves, as in the engine
        skip = {storage_ptr(t) for t in [*params, *args]}
        total, distinct = 0, {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            if storage_ptr(t) not in skip:
                total += tensor_bytes(t)
                distinct[storage_ptr(t)] = max(distinct.get(storage_ptr(t), 0), tensor_bytes(t))
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(*args)
        return total, sum(distinct.values())

    with torch.random.fork_rng(devices=[]):
        try:
            (every_8, distinct_8), (every_4, distinct_4) = saved(8), saved(4)
        except Exception:  # a measurement only: the layer's real call raises its own error, with the engine's context
            return 0, 0
    every = max(0, (every_8 - every_4) // 4)
    return every, min(every, max(0, (distinct_8 - distinct_4) // 4))


def _check_attention(name: str, out) -> tuple[torch.Tensor, int]:
    """A softmax layer's apply_edge output: (scores [E, heads], messages [E, heads * d])."""
    if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        raise ValueError(f"{name}.gather is 'softmax', so apply_edge must return (scores [E, heads], messages [E, heads * d]); got {type(out).__name__}")
    scores, msg = out
    if scores.dim() != 2 or scores.shape[0] != 1:
        raise ValueError(f"{name}.apply_edge scores must have shape [num_edges, heads]; got {list(scores.shape)}")
    heads = int(scores.shape[1])
    if msg.dim() != 2 or heads == 0 or msg.shape[1] % heads:
        raise ValueError(f"{name}.apply_edge messages must have shape [num_edges, heads * d] with heads={heads}; got {list(msg.shape)}")
    return msg, heads
