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
from sagann.kernels.reference import check_op

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
