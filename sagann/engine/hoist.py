"""The ApplyEdge compiler: hoist per-vertex terms out of a user's per-edge code.

A user writes ``apply_edge`` naturally, e.g. G-GCN's
``sigmoid(W_H(e.dst) + W_C(e.src)) * e.src``. Traced with torch.fx, every
node is classified by what it depends on: source rows, destination rows,
edge data (or randomness, which is never moved). The largest subexpressions
that depend on the source rows alone and feed per-edge work (``W_C(e.src)``)
become a generated ``apply_src``, computed once per vertex; likewise
destination-only ones become ``apply_dst``; the per-edge remainder reads
them as ``e.src_term`` / ``e.dst_term``. If the remainder is a builtin
pattern (copy of a source term, source term times an edge weight) the fused
kernel runs. Anything the tracer cannot follow (data-dependent Python
control flow) falls back to the plain per-edge path with one warning.
"""
from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from sagann import fn
from sagann.engine.faces import Face

SRC, DST, DATA, EDGE = "src", "dst", "data", "edge"  # EDGE: must run per edge (randomness)
_RANDOM = {torch.nn.functional.dropout, torch.dropout, torch.rand, torch.randn, torch.rand_like, torch.randn_like, torch.bernoulli}
_MATMUL_FUNCTIONS = {torch.matmul, torch.mm, torch.bmm, torch.nn.functional.linear, operator.matmul, torch.einsum}


class _TracedEdge:
    """What apply_edge sees while traced: the per-edge inputs as fx proxies."""

    def __init__(self, src, dst, data):
        self.src, self.dst, self.data = src, dst, data
        self.src_term = self.dst_term = None


class _EdgeFunction(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, src, dst, data):
        return self.layer.apply_edge(_TracedEdge(src, dst, data))


@dataclass
class HoistPlan:
    """What the compiler did to one layer's apply_edge (printed by ``sagann.explain``)."""

    layer: str
    traced: bool
    reason: str = ""
    hoisted_src: list[str] = field(default_factory=list)
    hoisted_dst: list[str] = field(default_factory=list)
    per_edge_matmuls_before: int = 0
    per_edge_matmuls_after: int = 0
    builtin: fn.MessageFn | None = None


def _is_matmul(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], (nn.Linear, nn.Bilinear))
    if node.op == "call_function":
        return node.target in _MATMUL_FUNCTIONS
    return node.op == "call_method" and node.target in ("matmul", "mm", "bmm")


def _is_random(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.modules.dropout._DropoutNd)
    return node.op == "call_function" and node.target in _RANDOM


def _dependencies(graph: fx.Graph, modules: dict) -> dict[fx.Node, frozenset]:
    deps: dict[fx.Node, frozenset] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            deps[node] = frozenset({node.target})
            continue
        d = frozenset().union(*(deps[a] for a in node.all_input_nodes)) if node.all_input_nodes else frozenset()
        deps[node] = d | ({EDGE} if _is_random(node, modules) else frozenset())
    return deps


def _frontier(graph: fx.Graph, deps: dict, side: str) -> list[fx.Node]:
    """Nodes depending on ``side`` alone, doing work, and used by per-edge nodes: the terms to hoist."""
    out = []
    for node in graph.nodes:
        if deps[node] != {side} or node.op in ("placeholder", "get_attr", "output"):
            continue
        if any(u.op == "output" or deps[u] != {side} for u in node.users):
            out.append(node)
    return out


def _extract(gm: fx.GraphModule, placeholder: str, targets: list[fx.Node]) -> fx.GraphModule:
    """A module computing ``cat([t.flatten(1) for t in targets], 1)`` from one placeholder."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    needed: set[fx.Node] = set()
    stack = list(targets)
    while stack:
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack.extend(n.all_input_nodes)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if node.target == placeholder:
                env[node] = graph.placeholder(placeholder)
        elif node in needed:
            env[node] = graph.node_copy(node, lambda a: env[a])
    flat = [graph.call_method("flatten", (env[t], 1)) for t in targets]
    graph.output(graph.call_function(torch.cat, (flat, 1)))
    return fx.GraphModule(gm, graph)


def _remainder(gm: fx.GraphModule, src_terms: list[fx.Node], dst_terms: list[fx.Node], shapes: dict) -> fx.GraphModule:
    """The per-edge rest, reading hoisted terms as slices of the packed src_term / dst_term."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    inputs = {name: graph.placeholder(name) for name in ("src", "dst", "data", "src_term", "dst_term")}
    for packed, terms in (("src_term", src_terms), ("dst_term", dst_terms)):
        start = 0
        for t in terms:
            width = int(torch.Size(shapes[t][1:]).numel())
            piece = graph.call_function(operator.getitem, (inputs[packed], (slice(None), slice(start, start + width))))
            env[t] = graph.call_method("reshape", (piece, (-1,) + tuple(shapes[t][1:])))
            start += width
    hoisted = set(src_terms) | set(dst_terms)
    for node in gm.graph.nodes:
        if node in hoisted:
            continue
        if node.op == "placeholder":
            env[node] = inputs[node.target]
        elif node.op == "output":
            graph.output(fx.map_arg(node.args[0], lambda a: env[a]))
        elif all(a in env for a in node.all_input_nodes):
            env[node] = graph.node_copy(node, lambda a: env[a])
    rest = fx.GraphModule(gm, graph)
    rest.graph.eliminate_dead_code()  # needs the owning module to judge call_module purity
    rest.recompile()
    return rest


def _builtin_for(rest: fx.GraphModule, src_terms, dst_terms) -> fn.MessageFn | None:
    """copy_src / src_mul_edge when the remainder is exactly that, on one hoisted source term."""
    if len(src_terms) != 1 or dst_terms:
        return None
    nodes = [n for n in rest.graph.nodes if n.op not in ("placeholder", "output")]
    out = next(n for n in rest.graph.nodes if n.op == "output").args[0]
    if not isinstance(out, fx.Node):
        return None
    reshape = [n for n in nodes if n.op == "call_method" and n.target == "reshape"]
    if len(reshape) != 1 or len(rest.graph.find_nodes(op="call_function", target=operator.getitem)) != 1:
        return None
    if out is reshape[0] and len(nodes) == 2:
        return fn.copy_src
    if len(nodes) == 3 and out.op == "call_function" and out.target in (operator.mul, torch.mul):
        other = [a for a in out.args if a is not reshape[0]]
        if len(other) == 1 and isinstance(other[0], fx.Node) and other[0].op == "placeholder" and other[0].target == "data":
            return fn.src_mul_edge
    return None


class HoistedLayer(Face):
    """The user's layer with per-vertex terms moved to hooks; shares every parameter with it."""

    def __init__(self, layer: nn.Module, src_fn: fx.GraphModule | None, dst_fn: fx.GraphModule | None, rest: fx.GraphModule, plan: HoistPlan):
        super().__init__(layer)
        self.inner, self.gather, self.plan = layer, layer.gather, plan
        self.apply_vertex_reads_v = getattr(layer, "apply_vertex_reads_v", True)  # the layer's promise holds for its compiled form
        self.src_fn, self.dst_fn, self.rest = src_fn, dst_fn, rest
        self._uses = {n.target for n in rest.graph.nodes if n.op == "placeholder" and n.users}
        if plan.builtin is not None:
            self.apply_edge = plan.builtin
        if src_fn is not None:
            self.apply_src = lambda v: self.src_fn(v)
        if dst_fn is not None:
            self.apply_dst = lambda v: self.dst_fn(v)

    def apply_edge(self, e):
        args = {name: getattr(e, name) if name in self._uses else None for name in ("src", "dst", "data", "src_term", "dst_term")}
        return self.rest(**args)

    def apply_vertex(self, v, acc):
        return self.inner.apply_vertex(v, acc)


def compiled(layer: nn.Module, d_in: int, edge_data: torch.Tensor | None) -> nn.Module:
    """The layer with per-vertex terms hoisted (compiled once per input shape, kept on the layer), or the layer itself."""
    if not layer.hoist:
        return layer
    d_edge = None if edge_data is None else (1 if edge_data.dim() == 1 else int(edge_data.shape[1]))
    cache = layer.__dict__.setdefault("_sagann_hoist", {})
    if (d_in, d_edge) not in cache:
        cache[(d_in, d_edge)] = compile_layer(layer, d_in, d_edge)
    runner = cache[(d_in, d_edge)][0]
    if runner is not layer and runner.training != layer.training:
        runner.train(layer.training)
    return runner


def compile_layer(layer: nn.Module, d_in: int, d_edge: int | None) -> tuple[nn.Module, HoistPlan]:
    """``(layer to run, plan)``; the layer is the user's own when nothing can or need be hoisted."""
    name = type(layer).__name__
    plan = HoistPlan(name, traced=False)
    if isinstance(layer.apply_edge, (fn.MessageFn, fn.AttentionFn)):
        plan.reason = f"apply_edge is the builtin {layer.apply_edge!r}"
        return layer, plan
    if callable(getattr(layer, "apply_src", None)) or callable(getattr(layer, "apply_dst", None)):
        plan.reason = "the layer defines its own apply_src/apply_dst hooks"
        return layer, plan
    try:
        gm = fx.symbolic_trace(_EdgeFunction(layer))
    except Exception as exc:  # data-dependent control flow, unsupported ops
        warnings.warn(f"sagann: cannot trace {name}.apply_edge ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); running it per edge without hoisting", stacklevel=3)
        plan.reason = f"tracing failed: {type(exc).__name__}"
        return layer, plan
    plan.traced = True
    modules = dict(gm.named_modules())
    deps = _dependencies(gm.graph, modules)
    plan.per_edge_matmuls_before = sum(1 for n in gm.graph.nodes if _is_matmul(n, modules))
    src_terms, dst_terms = _frontier(gm.graph, deps, SRC), _frontier(gm.graph, deps, DST)
    if not src_terms and not dst_terms:
        plan.per_edge_matmuls_after = plan.per_edge_matmuls_before
        plan.reason = "no per-vertex subexpression to hoist"
        return layer, plan
    shapes = _shapes(gm, d_in, d_edge)
    if shapes is None or any(len(shapes[t]) < 2 for t in src_terms + dst_terms):
        plan.reason = "hoisted terms are not row-shaped"
        plan.per_edge_matmuls_after = plan.per_edge_matmuls_before
        return layer, plan
    src_fn = _extract(gm, SRC, src_terms) if src_terms else None
    dst_fn = _extract(gm, DST, dst_terms) if dst_terms else None
    rest = _remainder(gm, src_terms, dst_terms, shapes)
    rest_modules = dict(rest.named_modules())
    plan.per_edge_matmuls_after = sum(1 for n in rest.graph.nodes if _is_matmul(n, rest_modules))
    plan.hoisted_src = [_describe(n) for n in src_terms]
    plan.hoisted_dst = [_describe(n) for n in dst_terms]
    plan.builtin = _builtin_for(rest, src_terms, dst_terms)
    hoisted = HoistedLayer(layer, src_fn, dst_fn, rest, plan)
    hoisted.train(layer.training)
    return hoisted, plan


def _shapes(gm: fx.GraphModule, d_in: int, d_edge: int | None) -> dict | None:
    """Output shape of every node on a 2-edge example (fx's ShapeProp), or None if it fails."""
    from torch.fx.passes.shape_prop import ShapeProp

    data = None if d_edge is None else torch.zeros(2, d_edge)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            ShapeProp(gm).propagate(torch.zeros(2, d_in), torch.zeros(2, d_in), data)
    except Exception:
        return None
    return {n: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if "tensor_meta" in n.meta and hasattr(n.meta["tensor_meta"], "shape")}


def _describe(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    args = ", ".join(a.name if isinstance(a, fx.Node) else repr(a) for a in node.args)
    return f"{target.replace('layer.', '')}({args})"


def explain(layer: nn.Module, d_in: int | None = None, edge_dim: int | None = None) -> str:
    """What sagann runs for ``layer``: hoisted per-vertex terms, per-edge matmuls, the kernel.

    Uses the plan of the layer's last call; without one, pass ``d_in`` (and
    ``edge_dim`` if the layer reads edge features) to compile it now. With
    neither, it says what tracing alone tells (the terms that would move to
    once per vertex) and what needs the input width.
    """
    plans = layer.__dict__.get("_sagann_hoist", {})
    if plans:
        plan = list(plans.values())[-1][1]
    elif d_in is not None:
        plan = compile_layer(layer, d_in, edge_dim)[1]
    elif isinstance(layer.apply_edge, (fn.MessageFn, fn.AttentionFn)):
        plan = compile_layer(layer, 1, edge_dim)[1]  # a builtin: nothing depends on the width
    else:
        return _preview(layer)
    builtin = plan.builtin or (layer.apply_edge if isinstance(layer.apply_edge, fn.MessageFn) else None)
    lines = [f"{plan.layer}: gather={layer.gather}"]
    if plan.traced:
        lines.append("  apply_edge traced with torch.fx")
        lines.append(f"  hoisted per source vertex (apply_src): {', '.join(plan.hoisted_src) or 'nothing'}")
        lines.append(f"  hoisted per destination vertex (apply_dst): {', '.join(plan.hoisted_dst) or 'nothing'}")
        lines.append(f"  per-edge matmuls: {plan.per_edge_matmuls_before} -> {plan.per_edge_matmuls_after}")
    else:
        lines.append(f"  not rewritten: {plan.reason}")
    if isinstance(layer.apply_edge, fn.AttentionFn):
        lines.append(f"  kernel: fused attention {layer.apply_edge!r} x softmax (no [edges, d] tensor)")
    elif builtin is not None:
        lines.append(f"  kernel: fused gSpMM {builtin.op} x {layer.gather} (no [edges, d] tensor)")
    else:
        lines.append("  kernel: per-edge ApplyEdge, then the reference gather")
    text = "\n".join(lines)
    return text


def _preview(layer: nn.Module) -> str:
    """``explain`` before the layer's first call: what tracing tells without the input width."""
    name = type(layer).__name__
    lines = [f"{name}: gather={layer.gather} (not called yet: input width unknown)"]
    later = "  needs a call (or explain(layer, d_in=...)): "
    if callable(getattr(layer, "apply_src", None)) or callable(getattr(layer, "apply_dst", None)):
        return "\n".join(lines + ["  not rewritten: the layer defines its own apply_src/apply_dst hooks", later + "the kernel"])
    try:
        gm = fx.symbolic_trace(_EdgeFunction(layer))
    except Exception as exc:  # data-dependent control flow, unsupported ops
        return "\n".join(lines + [f"  not rewritten: tracing failed: {type(exc).__name__}", "  kernel: per-edge ApplyEdge, then the reference gather"])
    modules = dict(gm.named_modules())
    deps = _dependencies(gm.graph, modules)
    src_terms, dst_terms = _frontier(gm.graph, deps, SRC), _frontier(gm.graph, deps, DST)
    lines += [
        "  apply_edge traced with torch.fx",
        f"  per source vertex, if row-shaped (apply_src): {', '.join(_describe(n) for n in src_terms) or 'nothing'}",
        f"  per destination vertex, if row-shaped (apply_dst): {', '.join(_describe(n) for n in dst_terms) or 'nothing'}",
        f"  per-edge matmuls as written: {sum(1 for n in gm.graph.nodes if _is_matmul(n, modules))}",
        later + "whether those terms are row-shaped (so hoisted), the per-edge matmuls left, the kernel",
    ]
    return "\n".join(lines)
