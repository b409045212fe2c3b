"""Fused GAT attention over one sub-chunk: softmax partials forward, gradients backward, no per-edge tensors.

The engine's online softmax (``gather = "softmax"``) needs, per destination
row and head, the chunk's max score ``m``, ``l = sum exp(score - m)`` and the
weighted message sum ``a``; backward needs the gradients of the hooks'
terms given the output's gradient and the final ``m``, ``l`` and output
(as memory-efficient attention does: the per-destination correction
``grad . out`` replaces the softmax's Jacobian). With
:class:`sagann.fn.AttentionFn` the scores are ``LeakyReLU(s_src + t_dst)``
and the messages ``z_src``, both read from the hooks' per-vertex terms, so
nothing of size ``[edges, heads * d]`` is ever made.

``backend="reference"`` is the oracle (torch ops and autograd, it does build
the per-edge tensors); ``"cpu"`` runs the numba kernels of
``_cpu_attention``; ``"cuda"`` the numba.cuda kernels of
``_cuda_attention`` (through :mod:`sagann.kernels.cuda`; under numba's CUDA
simulator on CPU tensors). The fused backends make no ``[edges, heads * d]``
tensor, only ``[edges, heads]`` scratch in backward.

Shapes:
    src_term ``[rows, heads * d + heads]`` (``[z | s]``), dst_term
    ``[num_dst, heads]``, m / l ``[num_dst, heads]``, a / out / grad
    ``[num_dst, heads * d]``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sagann.kernels.backend import count_call
from sagann.kernels.graph import ChunkTensors, kernel_index

__all__ = ["attention_partials", "attention_backward", "merge_partials", "output_corrections", "reads_source_major", "takes_corrections"]

_BACKENDS = ("reference", "cpu", "cuda")


def reads_source_major(backend: str) -> bool:
    """Does ``backend``'s attention backward read each edge's destination in source-major order
    (``ChunkTensors.src_dst``)? Then a pass sends that array and neither the source ids nor the permutation."""
    return backend == "cpu"


def takes_corrections(backend: str) -> bool:
    """Does ``backend``'s :func:`attention_backward` take the rows' corrections (:func:`output_corrections`) in place of
    the output rows? A pass then sends ``heads`` doubles a destination row instead of ``heads * d`` floats.
    The reference builds its surrogate from the output rows: not it."""
    return backend in ("cpu", "cuda")


def merges_in_place(backend: str) -> bool:
    """Does ``backend``'s :func:`attention_partials` merge into the running sums (``into=``) in place, holding no
    partial rows of its own? The CPU kernel does, row by row; the others make the sub-chunk's partials, then merge."""
    return backend == "cpu"


def output_corrections(grad: torch.Tensor, out: torch.Tensor, heads: int, into: torch.Tensor | None = None) -> torch.Tensor:
    """``grad . out`` per row and head (``[rows, heads]``, float64): the softmax backward's correction of each row.

    It depends on the row alone, so a pass makes it once for all the rows
    instead of once per sub-chunk of every row's column (the same float64
    sums, by the same kernel, as :func:`attention_backward` makes).
    ``into``: a contiguous ``[rows, heads]`` float64 tensor on the rows' device to write (memory the caller accounts for).
    """
    if grad.shape != out.shape or grad.dim() != 2 or grad.shape[1] % heads:
        raise ValueError(f"output_corrections: grad and out must be the same [rows, heads * d] (heads={heads}), got {list(grad.shape)} and {list(out.shape)}")
    rows = grad.shape[0]
    corr = torch.empty(rows, heads, dtype=torch.float64, device=grad.device) if into is None else into  # written below
    if tuple(corr.shape) != (rows, heads) or corr.dtype != torch.float64 or not corr.is_contiguous() or corr.device != grad.device:
        raise ValueError(f"output_corrections: into must be a contiguous float64 [{rows}, {heads}] tensor on {grad.device}, got {corr.dtype} {list(corr.shape)} on {corr.device}")
    if grad.device.type != "cpu" or out.device.type != "cpu":  # rows on a GPU: its own float64 sums
        return corr.copy_((grad.detach().double() * out.detach().double()).view(rows, heads, -1).sum(-1))
    from sagann.kernels import _cpu_attention as K
    from sagann.kernels.cpu import row_bounds

    corr.zero_()
    every = np.arange(rows + 1, dtype=np.int32)  # every row "has edges": each gets its dot
    K.row_dots(_np(grad.float()), _np(out.float()), every, row_bounds(every), heads, corr.numpy())
    return corr


def _check(where: str, g: ChunkTensors, src_term: torch.Tensor, dst_term: torch.Tensor, heads: int, src_rows, backend: str) -> int:
    """Validate the operands; return the message width ``heads * d``."""
    if backend not in _BACKENDS:
        raise ValueError(f"{where}: unknown backend {backend!r}; known backends: {', '.join(_BACKENDS)}")
    if not isinstance(heads, int) or heads < 1:
        raise ValueError(f"{where}: heads must be an int >= 1, got {heads!r}")
    if dst_term.dim() != 2 or tuple(dst_term.shape) != (g.num_dst, heads):
        raise ValueError(f"{where}: dst_term must be [num_dst={g.num_dst}, heads={heads}], got {list(dst_term.shape)}")
    width = src_term.shape[1] - heads if src_term.dim() == 2 else -1
    if width < heads or width % heads:
        raise ValueError(f"{where}: src_term must be [rows, heads * d + heads] with d >= 1 (heads={heads}), got {list(src_term.shape)}")
    rows = g.num_src if src_rows is None else None
    if rows is not None and src_term.shape[0] != rows:
        raise ValueError(f"{where}: src_term must have one row per source of the chunk ({rows}), got {src_term.shape[0]}; or pass src_rows= for a block")
    if src_rows is not None and (src_rows.dim() != 1 or src_rows.shape[0] != g.num_src):
        raise ValueError(f"{where}: src_rows must be [num_src={g.num_src}], got {list(src_rows.shape)}")
    if src_term.dtype != torch.float32 or dst_term.dtype != torch.float32:
        raise ValueError(f"{where}: src_term and dst_term must be float32, got {src_term.dtype} and {dst_term.dtype}")
    return width


def _check_into(g: ChunkTensors, heads: int, width: int, into) -> None:
    shapes = ((g.num_dst, heads), (g.num_dst, heads), (g.num_dst, width))
    if not isinstance(into, (tuple, list)) or len(into) != 3:
        raise ValueError("attention_partials: into must be a tuple (m, l, a) of running partials")
    for name, t, shape in zip("mla", into, shapes):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != torch.float32 or not t.is_contiguous() or t.device != g.device:
            raise ValueError(f"attention_partials: into's {name} must be a contiguous float32 {list(shape)} tensor on {g.device}, got {getattr(t, 'dtype', type(t))} {list(getattr(t, 'shape', []))}")


def merge_partials(into: tuple[torch.Tensor, torch.Tensor, torch.Tensor], parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Online softmax: rescale the running ``(m, l, a)`` to the new running max and add a chunk's partials, in place."""
    (m_old, l_old, acc), (m_c, l_c, a_c) = into, parts
    heads = m_old.shape[1]
    m_new = torch.maximum(m_old, m_c)
    finite = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows no chunk has reached yet
    keep, add = torch.exp(m_old - finite), torch.exp(m_c - finite)
    per_feature = acc.shape[1] // heads
    acc.copy_(acc * keep.repeat_interleave(per_feature, dim=1) + a_c * add.repeat_interleave(per_feature, dim=1))
    l_old.copy_(l_old * keep + l_c * add)
    m_old.copy_(m_new)
    return into


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _scores(g: ChunkTensors, src: torch.Tensor, dst_term: torch.Tensor, width: int, slope: float):
    """Reference: each edge's messages ``[nnz, width]`` and scores ``[nnz, heads]``."""
    s_idx, d_idx = g.src_idx.long(), g.dst_idx.long()
    rows = src.index_select(0, s_idx)
    return rows[:, :width], F.leaky_relu(rows[:, width:] + dst_term.index_select(0, d_idx), slope)


def attention_partials(
    g: ChunkTensors, src_term: torch.Tensor, dst_term: torch.Tensor, heads: int, negative_slope: float = 0.2,
    src_rows: torch.Tensor | None = None, backend: str = "reference", into: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(m, l, a)`` of the sub-chunk: per row and head the max score, sum of exp(score - m), weighted messages.

    ``src_rows``: ``src_term`` is a block of V_i's rows read in place at
    ``src_rows[src_idx]``. Rows without edges get ``m = -inf``, ``l = 0``,
    ``a = 0``. No autograd (the engine's backward is :func:`attention_backward`).

    ``into``: running ``(m, l, a)`` of earlier chunks (contiguous, float32,
    ``[num_dst, heads]`` twice and ``[num_dst, heads * d]``), merged with
    this sub-chunk's partials in place (:func:`merge_partials`) and
    returned; the CPU kernel merges as it goes and touches only the rows
    the sub-chunk reaches.
    """
    width = _check("attention_partials", g, src_term, dst_term, heads, src_rows, backend)
    count_call(backend)
    d = width // heads
    if into is not None:
        _check_into(g, heads, width, into)
        if backend != "cpu":
            return merge_partials(into, attention_partials(g, src_term, dst_term, heads, negative_slope, src_rows=src_rows, backend=backend))
    with torch.no_grad():
        if backend == "cpu":  # one kernel: a chunk's own partials are a merge into sums that start empty
            from sagann.kernels import _cpu_attention as K
            from sagann.kernels.cpu import row_bounds, threads_for

            if into is None:
                into = (torch.full((g.num_dst, heads), float("-inf")), torch.zeros(g.num_dst, heads), torch.zeros(g.num_dst, width))
            rmap = np.empty(0, np.int32) if src_rows is None else src_rows.to(torch.int32).numpy()
            ptr = g.dst_ptr.numpy()
            with threads_for(g, width):
                K.partials_into(_np(src_term), _np(dst_term), g.src_idx.numpy(), ptr, row_bounds(ptr), heads, float(negative_slope), rmap, *(t.numpy() for t in into))
            return into
        if backend == "cuda":
            from sagann.kernels import cuda

            return cuda.attention_partials(g, src_term, dst_term, heads, negative_slope, src_rows)
        src = src_term if src_rows is None else src_term.index_select(0, src_rows.long())
        z, score = _scores(g, src, dst_term, width, negative_slope)
        d_idx = g.dst_idx.long()
        m = score.new_full((g.num_dst, heads), float("-inf")).scatter_reduce(0, d_idx.unsqueeze(-1).expand(-1, heads), score, "amax")
        w = torch.exp(score - m.index_select(0, d_idx))
        l = score.new_zeros(g.num_dst, heads).index_add(0, d_idx, w)
        a = z.new_zeros(g.num_dst, heads, d).index_add(0, d_idx, w.unsqueeze(-1) * z.view(-1, heads, d))
        return m, l, a.view(g.num_dst, width)


def attention_backward(
    g: ChunkTensors, grad: torch.Tensor, out: torch.Tensor | None, m: torch.Tensor, l: torch.Tensor,
    src_term: torch.Tensor, dst_term: torch.Tensor, heads: int, *, negative_slope: float = 0.2,
    src_out: torch.Tensor | None = None, src_rows: torch.Tensor | None = None, backend: str = "reference",
    corrections: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Gradients ``(d_src_term, d_dst_term)`` of the attention output, given ``grad`` of the output rows.

    ``m``, ``l`` and ``out`` are the *final* max, sum and (normalised)
    output of the destination rows, after every chunk: the softmax weight of
    an edge is ``exp(score - m) / l``. With ``src_out`` the source-term
    gradient is added into ``src_out[src_rows]`` (unique rows) and None is
    returned for it; ``src_term`` has one row per source of the chunk.
    ``corrections``: the rows' :func:`output_corrections`, made once for all
    of a pass's sub-chunks, in place of ``out`` (the backends that
    :func:`takes_corrections`; ``out`` may then be None).
    """
    width = _check("attention_backward", g, src_term, dst_term, heads, None, backend)
    count_call(backend)
    if corrections is not None and not takes_corrections(backend):
        raise ValueError(f"attention_backward: the {backend!r} backend reads the output rows, not corrections: pass out=")
    given = [("corrections", corrections, (g.num_dst, heads))] if corrections is not None else [("out", out, (g.num_dst, width))]
    for name, t, shape in (("grad", grad, (g.num_dst, width)), *given, ("m", m, (g.num_dst, heads)), ("l", l, (g.num_dst, heads))):
        if t is None or tuple(t.shape) != shape:
            raise ValueError(f"attention_backward: {name} must be {list(shape)}, got {None if t is None else list(t.shape)}")
    if corrections is not None and corrections.dtype != torch.float64:
        raise ValueError(f"attention_backward: corrections must be float64 (output_corrections), got {corrections.dtype}")
    if src_out is not None and (src_rows is None or src_rows.shape != (g.num_src,) or src_out.shape[1] != width + heads):
        raise ValueError(f"attention_backward: src_out needs src_rows [num_src={g.num_src}] and {width + heads} columns")
    d = width // heads
    if backend == "cpu":
        from sagann.kernels import _cpu_attention as K
        from sagann.kernels.cpu import filled, idx_array, row_bounds, threads_for

        sptr, dptr = idx_array(g.src_ptr), idx_array(g.dst_ptr)
        corr = np.zeros((g.num_dst, heads))  # grad . out per row and head, of the rows with edges (float64)
        if corrections is not None:
            corr[:] = _np(corrections)  # a copy: grad_dst sums into corr's memory once grad_src has read it
        else:
            with threads_for(g, width):
                K.row_dots(_np(grad), _np(out), dptr, row_bounds(dptr), heads, corr)
        if src_out is None:
            d_src, rows = torch.zeros(g.num_src, width + heads), np.empty(0, np.int32)
        else:
            d_src, rows = src_out, src_rows.to(torch.int32).numpy()
        dpos = filled((g.nnz, heads), np.float32, fill=None)  # grad_src writes every edge's entry
        d_dst = torch.zeros(g.num_dst, heads)
        # each edge's destination in source-major order: the chunk's src_dst where it came along, else through src_perm
        src_dst = kernel_index(g, "src_dst")
        dst, perm = (idx_array(src_dst), np.empty(0, np.int32)) if src_dst is not None else (idx_array(g.dst_idx), idx_array(g.src_perm))
        slope = float(negative_slope)
        with threads_for(g, width):
            K.grad_src(_np(src_term), _np(dst_term), _np(grad), corr, _np(m), _np(l), dst, sptr, perm, row_bounds(sptr), heads, slope, rows, d_src.numpy(), dpos)
            K.grad_dst(dpos, dst, perm, slope, corr.reshape(heads, g.num_dst), d_dst.numpy())  # corr is read: its memory sums the destinations' terms
        return (None if src_out is not None else d_src), d_dst
    if backend == "cuda":
        from sagann.kernels import cuda

        with torch.no_grad():
            corrections = output_corrections(grad, out, heads) if corrections is None else corrections
            return cuda.attention_backward(g, grad, corrections, m, l, src_term, dst_term, heads, negative_slope=negative_slope, src_out=src_out, src_rows=src_rows)
    with torch.enable_grad():
        s_leaf = src_term.detach().requires_grad_(True)
        z, score = _scores(g, s_leaf, dst_term.detach(), width, negative_slope)
        d_idx = g.dst_idx.long()
        p = torch.exp(score - m.index_select(0, d_idx)) / l.index_select(0, d_idx)
        centred = z.view(-1, heads, d) - out.view(-1, heads, d).index_select(0, d_idx)
        # the surrogate: its gradient w.r.t. z is p, w.r.t. the score p (grad . z - grad . out)
        surrogate = z.new_zeros(g.num_dst, heads, d).index_add(0, d_idx, p.unsqueeze(-1) * centred).view(g.num_dst, width)
        (d_src,) = torch.autograd.grad(surrogate, [s_leaf], grad, allow_unused=True)
    d_src = torch.zeros_like(src_term) if d_src is None else d_src
    with torch.no_grad():  # a row's score gradients from its positive side alone (see _cpu_attention.grad_dst)
        pre = s_leaf.detach()[g.src_idx.long(), width:] + dst_term.index_select(0, d_idx)
        c = (grad.view(-1, heads, d).index_select(0, d_idx) * centred.detach()).sum(-1)
        d_dst = torch.zeros_like(dst_term).index_add_(0, d_idx, (1.0 - negative_slope) * torch.where(pre > 0, p.detach() * c, 0.0))
    if src_out is not None:
        src_out.index_add_(0, src_rows.to(device=src_out.device, dtype=torch.long), d_src.to(src_out.dtype))
        return None, d_dst
    return d_src, d_dst
