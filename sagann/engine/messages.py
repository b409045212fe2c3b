"""One sub-chunk's Scatter-ApplyEdge-Gather, shared by the forward pass and the backward recompute.

A builtin message runs a fused kernel (no ``[edges, d]`` tensor); a user
ApplyEdge runs on an :class:`~sagann.engine.edges.EdgeBatch` whose rows are
gathered on first use, then the reference Gather. Attention layers
(``gather = "softmax"``) produce per-chunk softmax partials that the
forward merges online.
"""
from __future__ import annotations

import torch

from sagann import kernels
from sagann.engine.call import LayerCall
from sagann.engine.edges import EdgeBatch
from sagann.kernels import attention, reference
from sagann.scheduler.executor import ChunkInputs
from sagann.scheduler.planner import edge_scratch_bytes
from sagann.scheduler.schedule import BACKWARD, FORWARD

__all__ = ["gather_partial", "messages", "softmax_partials", "softmax_surrogate"]


def gather_partial(call: LayerCall, inputs: ChunkInputs, phase: str, into: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gather(ApplyEdge(Scatter)) of one sub-chunk onto its destination rows (a fused sum: added into ``into``)."""
    shape, ct, cid = call.shape, inputs.ct, inputs.c.id
    if shape.builtin is not None:
        src = inputs.get("src_term") if shape.d_src_term else inputs.get("src")
        dst = (inputs.get("dst_term") if shape.d_dst_term else inputs.get("dst")) if shape.builtin.uses_dst else None
        edge = inputs.get("data") if shape.builtin.uses_edge else None
        rows = inputs.src_local_rows() if inputs.block_in_place else None
        with call.span("kernel", phase, cid):
            out, arg = kernels.gspmm(ct, shape.builtin.op, call.reduce, src=src, edge=edge, dst=dst, backend=call.backend, src_rows=rows, out=into)
        inputs.scope.adopt(arg, lambda: f"winner positions of {cid!r}")
        return out, arg

    msg = messages(call, inputs, phase)
    with call.span("gather_reduce", phase, cid):
        out, arg = reference.gather(ct, msg, call.reduce)
    inputs.scope.adopt(arg, lambda: f"winner positions of {cid!r}")
    return out, arg


def messages(call: LayerCall, inputs: ChunkInputs, phase: str):
    """Run the user's ApplyEdge on one sub-chunk: messages, or (scores, messages) for softmax."""
    shape, ct, cid = call.shape, inputs.ct, inputs.c.id

    def per_edge(name: str, index: torch.Tensor):
        return lambda: (lambda t: None if t is None else t.index_select(0, index))(inputs.get(name))

    e = EdgeBatch(
        ct.nnz,
        {
            "src": per_edge("src", ct.src_idx),
            "src_term": per_edge("src_term", ct.src_idx),
            "dst": per_edge("dst", ct.dst_idx),
            "dst_term": per_edge("dst_term", ct.dst_idx),
            "data": lambda: (lambda t: None if t is None else (t.unsqueeze(-1) if t.dim() == 1 else t))(inputs.get("data")),
        },
    )
    inputs.scope.charge(edge_scratch_bytes(ct.nnz, shape, fused=False), lambda: f"messages and temporaries of {cid!r}")
    with call.span("apply_edge", phase, cid), call.rng("edge", *cid):
        msg = call.layer.apply_edge(e)
    if shape.softmax:
        scores, msg = msg
        call.check_rows(scores, ct.nnz, shape.d_score, "apply_edge scores")
        call.check_rows(msg, ct.nnz, shape.d_msg, "apply_edge messages")
        return scores, msg
    call.check_rows(msg, ct.nnz, shape.d_msg, "apply_edge")
    return msg


def softmax_partials(call: LayerCall, inputs: ChunkInputs, into=None):
    """Forward: this chunk's max, sum of exp(score - max) and weighted message sum per row and head.

    ``into``: the running ``(max, sum, accumulator)`` rows of the chunk's
    destinations, merged with the chunk's partials in place (returns None).
    """
    ct, h = inputs.ct, call.shape.d_score
    if call.fused and call.shape.attention is not None:  # no per-edge tensors
        rows = inputs.src_local_rows() if inputs.block_in_place else None
        with call.span("kernel", FORWARD, inputs.c.id):
            parts = attention.attention_partials(ct, inputs.get("src_term"), inputs.get("dst_term"), h, call.shape.attention.negative_slope, src_rows=rows, backend=call.backend, into=into)
        if into is not None:
            return None
        for t in parts:
            inputs.scope.adopt(t, lambda: f"softmax partials of {inputs.c.id!r}")
        return parts
    parts = _reference_partials(call, inputs)
    if into is not None:
        with call.span("gather_reduce", FORWARD, inputs.c.id):
            attention.merge_partials(into, parts)
        return None
    return parts


def _reference_partials(call: LayerCall, inputs: ChunkInputs):
    ct, h = inputs.ct, call.shape.d_score
    scores, msg = messages(call, inputs, FORWARD)
    with call.span("gather_reduce", FORWARD, inputs.c.id):
        dst = ct.dst_idx.long()
        m_c = scores.new_full((ct.num_dst, h), float("-inf")).scatter_reduce(0, dst.unsqueeze(-1).expand(-1, h), scores, "amax")
        w = torch.exp(scores - m_c.index_select(0, dst))
        l_c = scores.new_zeros(ct.num_dst, h).index_add(0, dst, w)
        a_c = msg.new_zeros(ct.num_dst, h, call.shape.d_msg // h).index_add(0, dst, w.unsqueeze(-1) * msg.view(ct.nnz, h, -1))
    for t in (m_c, l_c, a_c):
        inputs.scope.adopt(t, lambda: f"softmax partials of {inputs.c.id!r}")
    return m_c, l_c, a_c.view(ct.num_dst, -1)


def softmax_surrogate(call: LayerCall, inputs: ChunkInputs) -> torch.Tensor:
    """Backward: sum_j p_ij (m_j - out_i) per row, with the forward's max, sum and output held constant.

    Its gradient w.r.t. m_j is p_ij and w.r.t. the score e_ij is
    p_ij (dOut_i . m_j - dOut_i . out_i): exactly the softmax backward, the
    per-destination correction dOut_i . out_i coming from the saved output.
    """
    ct, h = inputs.ct, call.shape.d_score
    scores, msg = messages(call, inputs, BACKWARD)
    dst = ct.dst_idx.long()
    m, l, out = inputs.get("sm_max"), inputs.get("sm_sum"), inputs.get("out_rows")
    p = torch.exp(scores - m.index_select(0, dst)) / l.index_select(0, dst)
    centred = msg.view(ct.nnz, h, -1) - out.view(ct.num_dst, h, -1).index_select(0, dst)
    return msg.new_zeros(ct.num_dst, h, call.shape.d_msg // h).index_add(0, dst, p.unsqueeze(-1) * centred).view(ct.num_dst, -1)
