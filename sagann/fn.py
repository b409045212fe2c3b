"""Built-in message functions and reducers, as small descriptors.

Assign a builtin to a layer instead of writing ``apply_edge`` and the engine
runs a fused kernel that never builds the ``[edges, d]`` message tensor::

    class SumOfNeighbours(sagann.Layer):
        gather = "sum"
        apply_edge = sagann.fn.copy_src

"src" means the layer's ``apply_src`` output when the layer defines that
hook, else the layer input rows; likewise "dst" with ``apply_dst``; "edge"
is the ``edge_data`` passed to the layer call.
"""
from __future__ import annotations

from dataclasses import dataclass

from sagann.kernels.ops import MessageOp, op_spec

__all__ = [
    "AttentionFn",
    "MessageFn",
    "leaky_attention",
    "copy_src",
    "copy_edge",
    "src_mul_edge",
    "src_add_dst",
    "src_sub_dst",
    "src_mul_dst",
    "src_dot_dst",
    "src_add_edge",
    "REDUCERS",
    "GATHERS",
    "SYM_MESSAGES",
    "SUM_GATHERS",
]

REDUCERS = ("sum", "mean", "max", "min")
# what a Layer's ``gather`` may be: the reducers, or an attention-weighted sum whose
# apply_edge returns (scores [E, heads], messages [E, heads * d]); the softmax of the
# scores over each destination's in-edges weighs the messages (computed online, exactly,
# across chunks)
# "sym": GCN's symmetric normalisation of a sum, D^-1/2 A D^-1/2 (degrees: in-degrees):
# each message is scaled by its source's deg^-1/2 and each sum by its destination's,
# with no per-edge weight (and for the builtins copy_src / src_mul_edge only, whose
# messages are linear in the source row: scaling the source rows scales the message)
GATHERS = REDUCERS + ("softmax", "sym")
SYM_MESSAGES = ("copy_src", "src_mul_edge")
SUM_GATHERS = ("sum", "mean", "sym")  # what the kernels run as a sum; the engine scales by degrees around it


@dataclass(frozen=True)
class MessageFn:
    """A builtin ApplyEdge; ``op`` names the fused kernel's message op (a record of ``sagann.kernels.OPS``)."""

    op: str

    @property
    def spec(self) -> MessageOp:
        """The op's record in the op table: operands, gradients, message width, kernels."""
        return op_spec(self.op)

    @property
    def uses_src(self) -> bool:
        return "src" in self.spec.operands

    @property
    def uses_dst(self) -> bool:
        return "dst" in self.spec.operands

    @property
    def uses_edge(self) -> bool:
        return "edge" in self.spec.operands

    def __repr__(self) -> str:
        return f"sagann.fn.{self.op}"


copy_src = MessageFn("copy_src")
copy_edge = MessageFn("copy_edge")
src_mul_edge = MessageFn("src_mul_edge")
src_add_dst = MessageFn("src_add_dst")
src_sub_dst = MessageFn("src_sub_dst")
src_mul_dst = MessageFn("src_mul_dst")
src_dot_dst = MessageFn("src_dot_dst")
src_add_edge = MessageFn("src_add_edge")  # DGL's u_add_e: src + edge, edge [E] or [E, d]


@dataclass(frozen=True)
class AttentionFn:
    """A builtin attention ApplyEdge for ``gather = "softmax"`` (GAT's): fused, no per-edge tensors.

    Reads the hooks' per-vertex terms: ``src_term = [h | s]`` (``heads * d``
    message columns, then one score half per head) and ``dst_term = t``
    (one score half per head). Per edge and head, the score is
    ``LeakyReLU(s_src + t_dst, negative_slope)`` and the message ``h_src``.
    Called on an :class:`~sagann.EdgeBatch` it returns ``(scores,
    messages)`` as a hand-written ApplyEdge would: the reference path.
    """

    negative_slope: float = 0.2
    op = "leaky_attention"
    uses_src = True
    uses_dst = True
    uses_edge = False

    def __call__(self, e):
        import torch.nn.functional as F

        heads = e.dst_term.shape[1]
        width = e.src_term.shape[1] - heads
        return F.leaky_relu(e.src_term[:, width:] + e.dst_term, self.negative_slope), e.src_term[:, :width]

    def __repr__(self) -> str:
        return f"sagann.fn.leaky_attention(negative_slope={self.negative_slope})"


def leaky_attention(negative_slope: float = 0.2) -> AttentionFn:
    """GAT's attention as a builtin: ``apply_edge = sagann.fn.leaky_attention(0.2)`` (see :class:`AttentionFn`)."""
    slope = float(negative_slope)
    if not slope == slope or slope < 0:
        raise ValueError(f"leaky_attention: negative_slope must be a number >= 0, got {negative_slope!r}")
    return AttentionFn(slope)
