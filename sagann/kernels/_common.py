"""What the fused backends (:mod:`~sagann.kernels.cpu`, :mod:`~sagann.kernels.cuda`) share.

The internal op codes and backward coefficient modes (the values the CPU
kernels in ``_cpu_kernels`` also use), the operands each op reads, and the
input checks, so that every backend rejects the same calls with the same
messages.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sagann.kernels.graph import ChunkTensors
from sagann.kernels.reference import check_op, check_reducer

# Internal op codes. MUL_SCALAR is src_mul_edge with one weight per edge.
COPY_SRC, COPY_EDGE, MUL_EDGE, MUL_SCALAR, ADD_DST, SUB_DST, MUL_DST, DOT_DST = range(8)
# Backward coefficient modes: grad[dst row], grad[dst row] for the max/min winner only, grad[edge].
ROW, ARG, EDGE = range(3)

OPS = {
    "copy_src": COPY_SRC,
    "copy_edge": COPY_EDGE,
    "src_mul_edge": MUL_EDGE,
    "src_add_dst": ADD_DST,
    "src_sub_dst": SUB_DST,
    "src_mul_dst": MUL_DST,
    "src_dot_dst": DOT_DST,
}
NEEDS = {
    "copy_src": ("src",),
    "copy_edge": ("edge",),
    "src_mul_edge": ("src", "edge"),
    "src_add_dst": ("src", "dst"),
    "src_sub_dst": ("src", "dst"),
    "src_mul_dst": ("src", "dst"),
    "src_dot_dst": ("src", "dst"),
}
# Dtypes the kernels compute in natively; other floating dtypes go through float32.
NATIVE = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Placement:
    """Where a backend wants its inputs, and the fix to suggest when they are elsewhere.

    ``tensor_fix`` may name ``{device}``, the chunk's device.
    """

    device_type: str
    chunk_fix: str
    tensor_fix: str


def op_code(op: str, edge: torch.Tensor | None, width: int) -> int:
    """Internal op code; src_mul_edge with one weight per edge is MUL_SCALAR."""
    if op == "src_mul_edge" and (edge.dim() == 1 or edge.shape[1] == 1) and width > 1:
        return MUL_SCALAR
    return OPS[op]


def validate(where: str, placement: Placement, g: ChunkTensors, op: str, src, edge, dst) -> tuple[int, torch.dtype]:
    """Check the inputs of ``where`` (e.g. ``sagann.kernels.cpu.gspmm``); return the message width and dtype."""
    check_op(op)
    given = {"src": src, "edge": edge, "dst": dst}
    for name in NEEDS[op]:
        if given[name] is None:
            raise ValueError(f"{where}: op {op!r} needs `{name}`; pass {name}=<tensor>")
    if g.device.type != placement.device_type:
        raise ValueError(f"{where}: the chunk is on {g.device}; {placement.chunk_fix}")
    rows = {"src": g.num_src, "edge": g.nnz, "dst": g.num_dst}
    dtypes = []
    for name in NEEDS[op]:
        t = given[name]
        if t.device != g.device:
            raise ValueError(f"{where}: `{name}` is on {t.device}; {placement.tensor_fix.format(device=g.device)}")
        if not t.is_floating_point():
            raise TypeError(f"{where}: `{name}` has dtype {t.dtype}; pass a floating tensor")
        ok_dim = t.dim() in (1, 2) if name == "edge" else t.dim() == 2
        if not ok_dim or t.shape[0] != rows[name]:
            want = f"[{rows[name]}]" + (" or [nnz, k]" if name == "edge" else ", d]")
            raise ValueError(f"{where}: `{name}` has shape {tuple(t.shape)}; expected {want}")
        dtypes.append(t.dtype)
    dtype = dtypes[0]
    for other in dtypes[1:]:
        dtype = torch.promote_types(dtype, other)
    if op == "copy_edge":
        return (1 if edge.dim() == 1 else edge.shape[1]), dtype
    width = src.shape[1]
    if "dst" in NEEDS[op] and dst.shape[1] != width:
        raise ValueError(f"{where}: `src` width {width} != `dst` width {dst.shape[1]}; give both the same width")
    if op == "src_mul_edge" and edge.dim() == 2 and edge.shape[1] not in (1, width):
        raise ValueError(
            f"{where}: `edge` width {edge.shape[1]} does not match `src` width {width}; use [nnz], [nnz, 1] or [nnz, d]"
        )
    return width, dtype


def keep_needed(op: str, src, edge, dst) -> tuple:
    """Keep only the operands ``op`` reads (the others get no gradient)."""
    needs = NEEDS[op]
    return tuple(t if name in needs else None for name, t in (("src", src), ("edge", edge), ("dst", dst)))


def cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


class Frontend:
    """A fused backend's public ``gspmm`` / ``gsddmm``: checks, operand selection, casting, dispatch.

    Args:
        validate: the backend's ``(fn, g, op, src, edge, dst) -> (width, dtype)``.
        spmm, sddmm: its autograd Functions (``apply(g, code, reduce, width,
            src, edge, dst)`` and ``apply(g, code, width, src, edge, dst)``).
    """

    def __init__(self, validate, spmm, sddmm):
        self._validate, self._spmm, self._sddmm = validate, spmm, sddmm

    def gsddmm(self, g: ChunkTensors, op: str, src: torch.Tensor | None = None, edge: torch.Tensor | None = None, dst: torch.Tensor | None = None) -> torch.Tensor:
        """Per-edge ApplyEdge of a builtin op, in CSC order.

        Shapes:
            src ``[num_src, d]``, dst ``[num_dst, d]``, edge ``[nnz]``, ``[nnz, 1]``
            or ``[nnz, d]``; result ``[nnz, d]`` (``[nnz, 1]`` for src_dot_dst).
        """
        width, dtype = self._validate("gsddmm", g, op, src, edge, dst)
        src, edge, dst = keep_needed(op, src, edge, dst)
        if op == "copy_edge":
            return edge.unsqueeze(-1) if edge.dim() == 1 else edge
        compute = dtype if dtype in NATIVE else torch.float32
        src, edge, dst = (cast(t, compute) for t in (src, edge, dst))
        out = self._sddmm.apply(g, op_code(op, edge, width), 1 if op == "src_dot_dst" else width, src, edge, dst)
        return out.to(dtype)

    def gspmm(
        self, g: ChunkTensors, op: str, reduce: str, src: torch.Tensor | None = None, edge: torch.Tensor | None = None, dst: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fused Gather(ApplyEdge(Scatter)) over one sub-chunk, no ``[nnz, d]`` messages.

        Returns ``(out [num_dst, d], arg)``: ``arg`` (int64 ``[num_dst, d]``) is
        the CSC position of each max/min winner (-1 for rows without edges,
        whose output is 0), None for sum/mean.
        """
        check_reducer(reduce)
        if op == "src_dot_dst":
            return self.gspmm(g, "copy_edge", reduce, edge=self.gsddmm(g, op, src=src, dst=dst))
        width, dtype = self._validate("gspmm", g, op, src, edge, dst)
        src, edge, dst = keep_needed(op, src, edge, dst)
        if reduce in ("max", "min") and g.nnz == 0:  # as the reference: constant zeros, no graph
            return (
                torch.zeros(g.num_dst, width, dtype=dtype, device=g.device),
                torch.full((g.num_dst, width), -1, dtype=torch.long, device=g.device),
            )
        compute = dtype if dtype in NATIVE else torch.float32
        src, edge, dst = (cast(t, compute) for t in (src, edge, dst))
        out, arg = self._spmm.apply(g, op_code(op, edge, width), reduce, width, src, edge, dst)
        return out.to(dtype), (arg if reduce in ("max", "min") else None)
