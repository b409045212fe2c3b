"""The builtin message ops, one record each: what every backend, ``sagann.fn`` and the planner read.

A message op turns the rows an edge touches (its source row, its own edge
row, its destination row) into the edge's message. Adding an op is one
:class:`MessageOp` in :data:`OPS` plus its branches in the fused kernels
(``_cpu_kernels``, ``_cuda_kernels``); ``tests/kernels/test_ops_table.py``
fails for an op whose kernels are missing.

The integer codes are compile-time constants of the numba kernels and end up
in numba's on-disk cache: give a new op new codes, never renumber old ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["MessageOp", "OPS", "MESSAGE_OPS", "OPERANDS", "op_spec", "message_width"]

OPERANDS = ("src", "edge", "dst")
# how wide an op's message is: as the src rows, as the edge rows, or one column
_WIDTHS = ("src", "edge", "one")

# ``reference(s, e, d)``: the messages from the per-edge gathered rows, ``s = src[src_idx]``
# ``[nnz, d]``, ``e`` the edge rows as ``[nnz, k]``, ``d = dst[dst_idx]`` ``[nnz, d]``;
# operands the op does not read are None
Formula = Callable[[Any, Any, Any], Any]


@dataclass(frozen=True)
class MessageOp:
    """One builtin message op.

    Args:
        name: the op's name (``sagann.fn.<name>``, ``kernels.gspmm(g, name, ...)``).
        operands: the operands it reads, of ``"src"``, ``"edge"``, ``"dst"``.
        grad_operands: those that get a gradient.
        reference: the message formula on the gathered per-edge rows (see ``Formula``).
        width: the message width rule: ``"src"`` (the src/dst width), ``"edge"``
            (the edge width) or ``"one"`` (one column).
        code: the fused kernels' op code.
        scalar_code: the code when one edge value (``[nnz]`` or ``[nnz, 1]``)
            is broadcast over several features; None if the op never broadcasts.
        source_major: on the CPU backend the sum backward for ``src`` is a
            plain gather-sum of output-gradient rows, so it runs source-major
            (``code``); ``scalar_source_major`` the same for ``scalar_code``.
        direct_spmm: the gSpMM kernel computes the messages in registers;
            False: the fused backends run gSDDMM, then a ``copy_edge`` gather.
        sum_backward: the backends have direct sum-backward kernels
            (``gspmm_sum_backward``); False: differentiate with autograd.
        scratch: float columns per edge the fused kernels hold beyond their
            operands, which the planner charges.
    """

    name: str
    operands: tuple[str, ...]
    grad_operands: tuple[str, ...]
    reference: Formula
    code: int
    width: str = "src"
    scalar_code: int | None = None
    source_major: bool = False
    scalar_source_major: bool = False
    direct_spmm: bool = True
    sum_backward: bool = True
    scratch: int = 0

    def __post_init__(self):
        if not self.operands or any(o not in OPERANDS for o in self.operands):
            raise ValueError(f"op {self.name!r}: operands must be some of {OPERANDS}, got {self.operands}")
        if not set(self.grad_operands) <= set(self.operands):
            raise ValueError(f"op {self.name!r}: grad_operands {self.grad_operands} must be among its operands {self.operands}")
        if self.width not in _WIDTHS:
            raise ValueError(f"op {self.name!r}: width must be one of {_WIDTHS}, got {self.width!r}")
        if self.width != "edge" and "src" not in self.operands:
            raise ValueError(f"op {self.name!r}: a message as wide as src (width={self.width!r}) must read src")
        if self.scalar_code is not None and not self.broadcasts_edge:
            raise ValueError(f"op {self.name!r}: scalar_code is for an op that broadcasts one edge value over the src width")

    @property
    def broadcasts_edge(self) -> bool:
        """Does the op read edge rows as wide as src, or one value per edge broadcast over the features?"""
        return "edge" in self.operands and self.width != "edge"

    def codes(self) -> tuple[int, ...]:
        """Every kernel code of this op."""
        return (self.code,) if self.scalar_code is None else (self.code, self.scalar_code)

    def message_width(self, d_src: int, d_edge: int) -> int:
        """Columns of one message, given the src (= dst) width and the edge width."""
        return {"src": d_src, "edge": d_edge, "one": 1}[self.width]


def _table(*ops: MessageOp) -> dict[str, MessageOp]:
    codes = [c for op in ops for c in op.codes()]
    if len(set(codes)) != len(codes) or len({op.name for op in ops}) != len(ops):
        raise ValueError("message ops need unique names and unique codes")
    return {op.name: op for op in ops}


OPS: dict[str, MessageOp] = _table(
    MessageOp("copy_src", ("src",), ("src",), lambda s, e, d: s, code=0, source_major=True),
    MessageOp("copy_edge", ("edge",), ("edge",), lambda s, e, d: e, code=1, width="edge"),
    MessageOp(
        "src_mul_edge", ("src", "edge"), ("src", "edge"), lambda s, e, d: s * e, code=2, scalar_code=3, scalar_source_major=True
    ),
    MessageOp("src_add_dst", ("src", "dst"), ("src", "dst"), lambda s, e, d: s + d, code=4, source_major=True),
    MessageOp("src_sub_dst", ("src", "dst"), ("src", "dst"), lambda s, e, d: s - d, code=5, source_major=True),
    MessageOp("src_mul_dst", ("src", "dst"), ("src", "dst"), lambda s, e, d: s * d, code=6),
    MessageOp(
        "src_dot_dst", ("src", "dst"), ("src", "dst"), lambda s, e, d: (s * d).sum(dim=-1, keepdim=True), code=7, width="one",
        direct_spmm=False, sum_backward=False,
    ),
    MessageOp(
        "src_add_edge", ("src", "edge"), ("src", "edge"), lambda s, e, d: s + e, code=8, scalar_code=9,
        source_major=True, scalar_source_major=True,
    ),
)
MESSAGE_OPS: tuple[str, ...] = tuple(OPS)


def op_spec(name: str) -> MessageOp:
    """The record of message op ``name``; a ValueError listing the known ops otherwise."""
    try:
        return OPS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown message op {name!r}; known ops: {', '.join(MESSAGE_OPS)}") from None


def message_width(name: str, d_src: int, d_edge: int) -> int:
    """Columns of one message of op ``name`` (see :meth:`MessageOp.message_width`)."""
    return op_spec(name).message_width(d_src, d_edge)
