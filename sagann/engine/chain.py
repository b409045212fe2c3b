"""Layer chaining: one layer's ApplyVertex, the activations after it and the next layer's per-vertex start, as one pass.

A layer that reads its input only through ``apply_src`` (GCN's ``X W``; a
user layer whose ``apply_edge`` the compiler hoisted to ``W(e.src)``), and
neither through ``e.src``, ``e.dst``, ``apply_dst`` nor ``v`` in
ApplyVertex, needs nothing of its input but ``apply_src(x)``. When that
input is :class:`~sagann.engine.pending.PendingRows` (the layer before has
not run its ApplyVertex yet, plus row-wise activations), the engine runs
the layer before's ApplyVertex, the activations and this layer's
``apply_src`` as one ApplyVertex (of the layer before's cached-Gather pass,
or of its streamed call: :class:`StreamedCall`) and hands this layer the
pre-transformed rows: the hidden rows never cross the link or sit on the
host, and the hook pass over them goes. The layer then runs as
:class:`OnTerms`, its edge stage reading those rows where it read
``e.src_term``. A streamed call waits only once its output was seen
feeding such a layer (:func:`note_input`).

Nothing here knows a model class: whether a layer chains is learnt from
the compiler (:func:`sagann.engine.hoist.compiled`) and the probe
(:class:`~sagann.scheduler.planner.LayerShape`), per call, so a user's own
``nn.Module`` calling two sagann layers gets it as the ready-made models do.
The same function as the unchained calls, up to fp32 rounding; a
hand-written ``apply_src`` that draws random numbers in training mode draws
them from the pass's stream instead of the layer's own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sagann.engine.faces import Face, ThenFace, base_of, face_of
from sagann.engine.hoist import compiled
from sagann.engine.hoist import explain as hoist_explain
from sagann.engine.pending import PendingRows, RowSource, chaining_enabled
from sagann.engine.probe import has_hook
from sagann.engine.run import check_call, draw_seed, layer_shape, run_layer
from sagann.fn import AttentionFn, MessageFn

__all__ = ["ChainRecord", "OnTerms", "StreamedCall", "StreamedChained", "chain_blocker", "chained_call", "explain", "note_input", "on_terms", "pre_transformed", "run_streamed"]

RECORD = "_sagann_chain"  # a layer's __dict__ key: its last call's ChainRecord
DEFER = "_sagann_defer"  # a layer's __dict__ key: True: its streamed calls wait for a next layer to chain; False: never
# autograd nodes of row-wise ops (and dropout, whose mask makes the rows be computed anyway) between two layers
_ROW_WISE_NODES = {
    "ReluBackward0", "LeakyReluBackward0", "LeakyReluBackward1", "EluBackward0", "GeluBackward0", "SiluBackward0",
    "TanhBackward0", "SigmoidBackward0", "NativeDropoutBackward0", "MulBackward0", "_ReluBackward", "_DropoutBackward",
}


@dataclass(frozen=True)
class ChainRecord:
    """How a layer's last call took its input (printed by ``sagann.explain``)."""

    producer: str  # the layer whose output it read (display name)
    producer_layer: object  # that layer (the user's module)
    ops: tuple[str, ...]  # row-wise ops between
    width_in: int  # the producer's output width (what unchained calls move)
    width_link: int  # the rows chaining moved instead (this layer's apply_src width); 0: not chained
    reason: str = ""  # why it did not chain


def chain_blocker(runner: nn.Module, shape) -> str:
    """Why a compiled layer cannot take pre-transformed input ('' where it can): it reads its input other than by ``apply_src``."""
    if not has_hook(runner, "apply_src"):
        return "it has no per-vertex source pre-transform (apply_src) to chain into"
    reads = [what for what, used in (("apply_dst", has_hook(runner, "apply_dst")), ("e.src", shape.uses_src), ("e.dst", shape.uses_dst), ("v in apply_vertex", shape.vertex_reads_x)) if used]
    if reads:
        return f"it reads its input through {', '.join(reads)}, not only apply_src"
    if shape.attention is not None or isinstance(runner.apply_edge, AttentionFn) or runner.gather == "softmax":
        return "a softmax Gather reads the hooks' terms at both ends"
    return ""


class _TermsAsSource:
    """What the base layer's apply_edge sees under :class:`OnTerms`: its ``src_term`` is the rows this call streams."""

    def __init__(self, e):
        self._e = e

    num_edges = property(lambda self: self._e.num_edges)
    src_term = property(lambda self: self._e.src)
    data = property(lambda self: self._e.data)
    dst_term = property(lambda self: None)

    def __len__(self) -> int:
        return len(self._e)

    @property
    def src(self):
        raise RuntimeError("sagann: a chained layer read e.src, which its probe said it does not; call sagann.chaining(False) around it")

    dst = src


class OnTerms(Face):
    """The base layer run on rows already pre-transformed by its ``apply_src``: its edge stage and ApplyVertex, no hook pass."""

    apply_vertex_reads_v = False
    caches_gather = False  # the pre-transformed rows change with the weights every step

    def __init__(self, base: nn.Module):
        super().__init__(base)
        self.gather = base.gather
        if isinstance(base.apply_edge, MessageFn):  # the builtin read apply_src's rows; here they are the source rows
            self.apply_edge = base.apply_edge

    def apply_edge(self, e):
        return self._base.apply_edge(_TermsAsSource(e))

    def apply_vertex(self, v: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        return self._base.apply_vertex(v, acc)  # v: unread rows (the base does not read v)


class _ThenPre(nn.Module):
    """The row-wise ops after the layer before, then this layer's ``apply_src``: the chained pass's tail."""

    def __init__(self, ops: tuple, runner: nn.Module):
        super().__init__()
        self.__dict__["_runner"] = runner  # not a submodule: its parameters are the next layer's
        self.ops = ops
        self.display_name = "act+lin" if ops else "lin"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            h = op.device(h)
        return self._runner.apply_src(h)

    def named_parameters(self, *args, **kwargs):
        return self._runner.named_parameters(*args, **kwargs)

    def parameters(self, recurse: bool = True):
        return self._runner.parameters(recurse)


def _then_for(runner: nn.Module, ops: tuple) -> _ThenPre:
    """One tail per (layer, ops): its chained face and probed shape are then made once."""
    tails = runner.__dict__.setdefault("_sagann_then_pre", {})
    key = tuple(op.key for op in ops)
    if key not in tails:
        tails[key] = _ThenPre(ops, runner)
    return tails[key]


def _plan(layer: nn.Module, g, x: PendingRows, edge_data):
    """``(runner, shape, '')`` where ``layer`` can take ``x`` pre-transformed, else ``(None, None, why not)``."""
    if not x.chainable():
        return None, None, "the rows were already computed (or chaining is off)"
    if getattr(g, "process_group", None) is not None or x.shape[0] != g.num_vertices:
        return None, None, "the graph is distributed or of another size"
    runner = compiled(layer, int(x.shape[1]), edge_data)
    shape = layer_shape(runner, x, edge_data, g.device.torch_device)
    why = chain_blocker(runner, shape)
    return (None, None, why) if why else (runner, shape, "")


def pre_transformed(layer: nn.Module, g, x: PendingRows, edge_data: torch.Tensor | None = None) -> torch.Tensor | None:
    """``layer``'s ``apply_src`` of ``x``'s rows, made in the pass that makes them; None where the layer cannot take them so."""
    runner, shape, why = _plan(layer, g, x, edge_data)
    if runner is None:
        _record(layer, x, 0, why)
        return None
    out = x.sagann_source.chained(_then_for(runner, x.sagann_ops))
    _record(layer, x, shape.d_src_term, "")
    return out


def on_terms(layer: nn.Module, d_in: int, edge_data: torch.Tensor | None) -> OnTerms:
    """The face running ``layer`` (compiled for input width ``d_in``) on its pre-transformed rows."""
    return face_of(compiled(layer, d_in, edge_data), "_sagann_on_terms", OnTerms)


def chained_call(layer: nn.Module, g, x: PendingRows, edge_data: torch.Tensor | None = None) -> torch.Tensor | None:
    """``layer(g, x, edge_data)`` with ``x`` taken pre-transformed; None where the layer cannot (the caller computes ``x``)."""
    t = pre_transformed(layer, g, x, edge_data)
    if t is None:
        return None
    face = on_terms(layer, int(x.shape[1]), edge_data)
    check_call(face, g, t, edge_data)
    return run_streamed(face, g, t, edge_data)


def run_streamed(runner: nn.Module, g, x: torch.Tensor, edge_data: torch.Tensor | None) -> torch.Tensor:
    """``runner``'s streamed call: run now, or left pending where its output fed a layer that chains (learnt, :func:`note_input`)."""
    name = getattr(runner, "display_name", None) or type(runner).__name__
    owner = base_of(runner)
    if not (chaining_enabled() and owner.__dict__.get(DEFER) is True) or getattr(g, "process_group", None) is not None:
        return run_layer(runner, g, x, edge_data, name)
    source = StreamedCall(runner, g, x, edge_data, name)
    d_out = layer_shape(runner, x, edge_data, g.device.torch_device).d_out
    grads = (x,) + (() if edge_data is None else (edge_data,)) + tuple(runner.parameters())
    return PendingRows(source, (x.shape[0], d_out), torch.is_grad_enabled() and any(t.requires_grad for t in grads))


def note_input(layer: nn.Module, g, x: torch.Tensor, edge_data: torch.Tensor | None) -> None:
    """Learn from a plain input: if a sagann layer made it (through row-wise ops) and ``layer`` could have chained, that layer's next calls wait.

    Read off the autograd graph (so only where grad is on): the nodes
    between ``x`` and the producing layer call must be row-wise. A wrong
    guess costs nothing but the wait: pending rows not chained are computed
    at the first need, by the same single call.
    """
    if not (chaining_enabled() and torch.is_grad_enabled()) or x.grad_fn is None:
        return
    node = x.grad_fn
    while node is not None and type(node).__name__ in _ROW_WISE_NODES:
        node = node.next_functions[0][0] if node.next_functions else None
    producer = getattr(node, "sagann_layer", None)
    if producer is None or DEFER in producer.__dict__ or x.shape[0] != g.num_vertices:
        return
    runner = compiled(layer, int(x.shape[1]), edge_data)
    if not chain_blocker(runner, layer_shape(runner, x, edge_data, g.device.torch_device)):
        producer.__dict__[DEFER] = True


class StreamedCall(RowSource):
    """A streamed layer call not run yet: as it is (:meth:`compute`), or with the next layer's start in its ApplyVertex (:meth:`chained`)."""

    def __init__(self, runner: nn.Module, g, x: torch.Tensor, edge_data: torch.Tensor | None, name: str):
        super().__init__(torch.is_grad_enabled())
        self.runner, self.g, self.x, self.edge_data, self.name = runner, g, x, edge_data, name
        self.owner, self.chained_once = base_of(runner), False
        self.seed = draw_seed(runner)  # drawn now, as the call would: the caller's stream moves as unchained
        self.watch([t for t in (x, edge_data) if t is not None] + list(runner.parameters()))

    def compute(self) -> torch.Tensor:
        if self.chained_once:  # used besides the next layer: the edge stage would run twice; from now on this layer runs at once
            self.owner.__dict__[DEFER] = False
        return run_layer(self.runner, self.g, self.x, self.edge_data, self.name, seed=self.seed)

    def chained(self, then: nn.Module) -> torch.Tensor:
        face = face_of(self.runner, f"_sagann_then_{id(then)}", lambda base: StreamedChained(base, then))
        self.check_unchanged()
        self.chained_once = True
        return run_layer(face, self.g, self.x, self.edge_data, face.display_name, seed=self.seed)


class StreamedChained(ThenFace):
    """The base layer with ``then`` after its ApplyVertex: the same edge stage and hooks, over its parameters and ``then``'s."""

    caches_gather = False

    def __init__(self, base: nn.Module, then: nn.Module):
        super().__init__(base, then)
        self.gather, self.apply_vertex_reads_v = base.gather, getattr(base, "apply_vertex_reads_v", True)
        if isinstance(base.apply_edge, (MessageFn, AttentionFn)):
            self.apply_edge = base.apply_edge
        for hook in ("apply_src", "apply_dst"):
            if has_hook(base, hook):
                setattr(self, hook, getattr(base, hook))

    def apply_edge(self, e):
        return self._base.apply_edge(e)


def _record(layer: nn.Module, x: PendingRows, width: int, reason: str) -> None:
    src = x.sagann_source
    ops = tuple(op.name for op in x.sagann_ops)
    owner = getattr(src, "owner", None)
    base_of(layer).__dict__[RECORD] = ChainRecord(src.name, owner, ops, int(x.shape[1]), width, reason)


def explain(target: nn.Module, d_in: int | None = None, edge_dim: int | None = None) -> str:
    """What sagann runs for a layer, or for a module holding sagann layers: each layer, and which consecutive ones chain.

    On a layer: the compiler's plan (:func:`sagann.engine.hoist.explain`)
    and whether the layer can take its input pre-transformed. On any other
    module: that for every sagann layer in it (registration order), then
    each consecutive pair's link: chained on the last call (with the width
    that crossed the link instead of the hidden width), not chained and
    why, or, before a call, whether it can chain.
    """
    if _is_layer(target):
        notes = target.sagann_notes() if callable(getattr(target, "sagann_notes", None)) else []  # how a layer runs besides its own form
        return "\n".join([hoist_explain(target, d_in, edge_dim), *notes, _input_line(target, d_in, edge_dim)])
    layers = _layers_in(target)
    if not layers:
        return f"{type(target).__name__}: no sagann layers inside"
    lines = [f"{type(target).__name__}: {len(layers)} sagann layer{'s' if len(layers) != 1 else ''}"]
    for k, (name, layer) in enumerate(layers):
        text = explain(layer, d_in if k == 0 else None, edge_dim)
        lines += [f"  [{name}] " + text.splitlines()[0]] + ["  " + line for line in text.splitlines()[1:]]
    if len(layers) > 1:
        lines.append("  links (one layer's ApplyVertex, the activations and the next layer's apply_src as one vertex pass):")
        lines += [f"    {_link_line(a, b)}" for a, b in zip(layers, layers[1:])]
    return "\n".join(lines)


def _is_layer(m) -> bool:
    return callable(getattr(m, "apply_vertex", None)) and isinstance(getattr(m, "gather", None), str)


def _layers_in(module: nn.Module) -> list[tuple[str, nn.Module]]:
    found: list[tuple[str, nn.Module]] = []
    for name, m in module.named_modules():
        if _is_layer(m) and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name or type(m).__name__, m))
    return found


def _last_input(layer: nn.Module, d_in: int | None, edge_dim: int | None) -> tuple[int | None, torch.Tensor | None]:
    """(input width, an edge-data example) of ``layer``'s last call; else ``d_in`` / its ``in_channels`` and ``edge_dim``."""
    edge = None if edge_dim is None else torch.zeros(1, edge_dim)
    # a conv's calls may run as its faces; those on pre-transformed rows take another width; the layer's own calls win
    faces = [f for f in layer.__dict__.values() if isinstance(f, Face) and not isinstance(f, OnTerms)]
    faces += [runner for runner, _ in layer.__dict__.get("_sagann_hoist", {}).values() if runner is not layer] + [layer]
    for key in [k for f in faces for k in f.__dict__.get("_sagann_shape", {})]:
        d_in, edge = int(key[0]), (None if key[1] is None else torch.zeros((1,) + tuple(key[1])))
    if d_in is None:
        d_in = getattr(layer, "in_channels", None)
    if edge is None and isinstance(layer.apply_edge, MessageFn) and layer.apply_edge.uses_edge:
        edge = torch.zeros(1)  # before a call: a builtin weighing by edge data is taken to get one weight per edge (GCN's)
    return d_in, edge


def _blocker(layer: nn.Module, d_in: int | None, edge_dim: int | None) -> tuple[str | None, int]:
    """(why ``layer`` cannot take pre-transformed input, '' if it can, None if unknown before a call; its apply_src width)."""
    width, edge = _last_input(layer, d_in, edge_dim)
    if width is None:
        return None, 0
    device = next((p.device for p in layer.parameters()), torch.device("cpu"))
    try:
        runner = compiled(layer, int(width), edge)
        shape = layer_shape(runner, torch.empty(0, int(width)), edge, device)
    except Exception:  # e.g. edge data it needs and was not told of: the call itself says what is wrong
        return None, 0
    return chain_blocker(runner, shape), shape.d_src_term


def _input_line(layer: nn.Module, d_in: int | None, edge_dim: int | None) -> str:
    why, width = _blocker(layer, d_in, edge_dim)
    if why is None:
        return "  input: needs a call (or d_in=..., edge_dim=...) to tell whether it takes the layer before's output pre-transformed"
    if why:
        return f"  input: never chained: {why}"
    return f"  input: read only through apply_src ({width} wide): the layer before's pending output is taken pre-transformed"


def _link_line(a: tuple[str, nn.Module], b: tuple[str, nn.Module]) -> str:
    (na, la), (nb, lb) = a, b
    rec = lb.__dict__.get(RECORD)
    ops = lambda r: f" ({', '.join(r.ops)} between)" if r.ops else ""  # noqa: E731
    if rec is not None and rec.producer_layer is la and rec.width_link:
        return (f"{na} -> {nb}: chained on the last call{ops(rec)}: {rec.width_link}-wide rows crossed the link "
                f"instead of {rec.width_in}-wide ones ({na}'s output never reached the host)")
    if rec is not None and rec.producer_layer is la:
        return f"{na} -> {nb}: not chained on the last call: {rec.reason}"
    why, width = _blocker(lb, None, None)
    if why:
        return f"{na} -> {nb}: does not chain: {nb}: {why}"
    if why is None:
        return f"{na} -> {nb}: unknown until a call"
    return (f"{na} -> {nb}: can chain ({width}-wide rows cross the link) where only row-wise activations run between: "
            f"from the second training call ({na} on a cached Gather: from the third call with the same features)")
