"""The SAGA-NN layer: Scatter and Gather are the engine's, ApplyEdge and ApplyVertex are yours."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sagann.fn import GATHERS, AttentionFn, MessageFn
from sagann.scheduler.planner import LayerShape
from sagann.scheduler.units import storage_ptr, tensor_bytes


class EdgeBatch:
    """The edges of one sub-chunk as ApplyEdge sees them; rows are gathered on first use.

    Attributes (all ``[num_edges, .]`` tensors on the device):
        src: layer-input rows at each edge's source.
        dst: layer-input rows at each edge's destination.
        data: the call's ``edge_data`` rows, or None.
        src_term / dst_term: ``apply_src`` / ``apply_dst`` outputs at the
            edge's source / destination, or None when the hook is absent.
    """

    FIELDS = ("src", "dst", "data", "src_term", "dst_term")

    def __init__(self, num_edges: int, loaders: dict[str, Callable[[], torch.Tensor | None]]):
        self.num_edges = num_edges
        self._loaders = loaders
        self._values: dict[str, torch.Tensor | None] = {}
        self.used: set[str] = set()

    def _get(self, name: str) -> torch.Tensor | None:
        if name not in self._values:
            self.used.add(name)
            loader = self._loaders.get(name)
            self._values[name] = loader() if loader is not None else None
        return self._values[name]

    src = property(lambda self: self._get("src"))
    dst = property(lambda self: self._get("dst"))
    data = property(lambda self: self._get("data"))
    src_term = property(lambda self: self._get("src_term"))
    dst_term = property(lambda self: self._get("dst_term"))

    def __len__(self) -> int:
        return self.num_edges


class Layer(nn.Module):
    """Base class of SAGA-NN layers.

    Subclasses set ``gather`` (``"sum" | "mean" | "max" | "min"``) and write
    ``apply_edge(self, e)`` (or assign a builtin such as
    ``sagann.fn.copy_src``) and ``apply_vertex(self, v, acc)``. Optional
    hooks ``apply_src(self, v)`` / ``apply_dst(self, v)`` compute per-vertex
    terms once per vertex instead of once per edge; ``apply_edge`` then reads
    them as ``e.src_term`` / ``e.dst_term``.

    Call a layer as ``layer(g, x, edge_data=None)``: ``x`` is a host tensor
    ``[N, d_in]``, the result a host tensor ``[N, d_out]``, differentiable
    w.r.t. ``x``, ``edge_data`` and the parameters. The graph is walked in
    chunks that fit ``g.device``'s memory budget.

    Shapes:
        x ``[N, d_in]``, edge_data ``[E]`` or ``[E, k]`` in ``edge_index``
        order, output ``[N, d_out]``.

    A layer whose ``apply_vertex`` never reads ``v`` (GCN's: a function of
    ``acc`` alone) may set ``apply_vertex_reads_v = False``: out of core the
    engine then does not send V_j's input rows for it, and ``v`` is a
    zero-stride tensor of zeros. A promise, not checked.
    """

    gather: str = "sum"
    hoist: bool = True  # let the ApplyEdge compiler move per-vertex terms into hooks (sagann.explain shows it)
    apply_vertex_reads_v: bool = True

    def apply_edge(self, e: EdgeBatch) -> torch.Tensor:
        """Message of each edge ``[num_edges, d_msg]``; default: the source rows."""
        return e.src

    def apply_vertex(self, v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """New vertex rows from the input rows ``v`` and gathered rows ``acc``; default: acc."""
        return acc

    def forward(self, g, x: torch.Tensor, edge_data: torch.Tensor | None = None) -> torch.Tensor:
        from sagann.engine.dataflow import run_layer

        return run_layer(self, g, x, edge_data)


class Face(Layer):
    """Another way to evaluate a base layer (an order of its math, a cached Gather), over the base's own parameters.

    Private: not a submodule and not in any ``state_dict``; made once per
    base by :func:`face_of`, it follows the base's train/eval mode and is
    named after it in profiles, logs and errors.
    """

    hoist = False

    def __init__(self, base: Layer):
        super().__init__()
        self.__dict__["_base"] = base  # not a submodule: the base owns the parameters
        self.display_name = getattr(base, "display_name", None) or type(base).__name__

    def named_parameters(self, *args, **kwargs):
        return self._base.named_parameters(*args, **kwargs)

    def parameters(self, recurse: bool = True):
        return self._base.parameters(recurse)


def face_of(base: Layer, key: str, make: Callable[[Layer], Face]) -> Face:
    """``base``'s face ``key``, made by ``make(base)`` at the first call and kept in the base's ``__dict__``."""
    face = base.__dict__.get(key)
    if face is None:
        face = base.__dict__[key] = make(base)
    face.training = base.training
    return face


def unread_rows(rows: int, width: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Stand-in for input rows nothing reads (``Layer.apply_vertex_reads_v = False``): zeros, no memory."""
    return torch.zeros((), dtype=dtype, device=device).expand(rows, width)


def _has_hook(layer: Layer, name: str) -> bool:
    return callable(getattr(layer, name, None))


def check_layer(layer: Layer) -> None:
    name = type(layer).__name__
    if layer.gather not in GATHERS:
        raise ValueError(f"{name}.gather = {layer.gather!r} is not a known reducer; use one of {', '.join(GATHERS)}")
    ae = getattr(layer, "apply_edge")
    if not (isinstance(ae, MessageFn) or callable(ae)):
        raise TypeError(f"{name}.apply_edge must be a method or a sagann.fn builtin, got {ae!r}")
    if isinstance(ae, MessageFn) and layer.gather == "softmax":
        raise ValueError(f"{name}: gather='softmax' needs an apply_edge that returns (scores, messages), not the builtin {ae!r}")
    if isinstance(ae, AttentionFn):
        if layer.gather != "softmax":
            raise ValueError(f"{name}: {ae!r} weighs messages by a softmax; set gather = 'softmax' (got {layer.gather!r})")
        if not (_has_hook(layer, "apply_src") and _has_hook(layer, "apply_dst")):
            raise ValueError(f"{name}: {ae!r} reads the hooks' terms; define apply_src (messages and score halves) and apply_dst (score halves)")


def probe_layer(layer: Layer, d_in: int, edge_data: torch.Tensor | None, device: torch.device) -> LayerShape:
    """Run the layer's functions on one zero edge to learn widths and used inputs."""
    check_layer(layer)
    name = type(layer).__name__
    d_edge = 0 if edge_data is None else (1 if edge_data.dim() == 1 else int(edge_data.shape[1]))
    dtype = torch.float32
    # fork_rng: a probe of a layer with dropout must not move the caller's random stream
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        v = torch.zeros(1, d_in, dtype=dtype, device=device)
        s_term = layer.apply_src(v) if _has_hook(layer, "apply_src") else None
        d_term = layer.apply_dst(v) if _has_hook(layer, "apply_dst") else None
        for hook, t in (("apply_src", s_term), ("apply_dst", d_term)):
            if t is not None and (not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != 1):
                raise ValueError(f"{name}.{hook} must return one row per vertex ([n, k]); got {getattr(t, 'shape', type(t))}")
        edge = None
        if edge_data is not None:
            edge = torch.zeros((1,) + tuple(edge_data.shape[1:]), dtype=edge_data.dtype, device=device)
        ae = layer.apply_edge
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
        acc = torch.zeros(1, d_msg, dtype=dtype, device=device)
        out = layer.apply_vertex(v, acc)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
            raise ValueError(f"{name}.apply_vertex must return one row per vertex ([n, d_out]); got {getattr(out, 'shape', type(out))}")
        params = list(layer.parameters())
        vertex_saved = saved_bytes_per_row(layer.apply_vertex, (d_in, d_msg), params, device)
        hook_saved = max([saved_bytes_per_row(getattr(layer, h), (d_in,), params, device) for h in ("apply_src", "apply_dst") if _has_hook(layer, h)], default=0)
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
        vertex_saved=vertex_saved,
        hook_saved=hook_saved,
    )


def saved_bytes_per_row(fn, widths: tuple[int, ...], params: list[torch.Tensor], device: torch.device) -> int:
    """Bytes per vertex row that ``fn``'s autograd graph saves beyond its inputs and the parameters.

    Backward holds them on the device (a kept graph loads them there; a
    recompute rebuilds them), and the planner cannot see inside a user
    function: an MLP's hidden activations, a dropout mask. Measured as the
    growth from 4 to 8 rows of random inputs (constants drop out); every
    save counts, as a kept graph copies each.
    """
    def saved(rows: int) -> int:
        args = [torch.randn(rows, w, device=device, requires_grad=True).clone() for w in widths]  # not leaves, as in the engine
        skip = {storage_ptr(t) for t in [*params, *args]}
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            if storage_ptr(t) not in skip:
                total += tensor_bytes(t)
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(*args)
        return total

    with torch.random.fork_rng(devices=[]):
        try:
            return max(0, (saved(8) - saved(4)) // 4)
        except Exception:  # a measurement only: the layer's real call raises its own error, with the engine's context
            return 0


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
