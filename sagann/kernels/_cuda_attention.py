"""numba.cuda kernels behind the ``cuda`` backend of :mod:`sagann.kernels.attention`.

The same GAT-style attention as :mod:`sagann.kernels._cpu_attention`, per
destination row and head: ``score_e = LeakyReLU(s[src_e, h] + t[r, h])``,
``m = max score``, ``l = sum exp(score - m)``, ``a = sum exp(score - m) z``;
``src`` holds ``[z | s]`` (``heads * d`` message columns, then ``heads``
score halves). Nothing of size ``[edges, heads * d]`` is made: the only
per-edge scratch is ``[nnz, heads]`` (each edge's softmax weight and score
gradient), as on the CPU.

**Thread layout** (the launcher's ``(tx, ty)`` blocks, as in
:mod:`sagann.kernels._cuda_kernels`): ``threadIdx.x`` walks columns,
``threadIdx.y`` work items, ``blockIdx.y`` column tiles of width ``tx``.

* :func:`partials`: one item per destination row, one lane per message
  column ``k`` (head ``k // d``). Two passes over the row's edges: the max
  score, then the weights and the weighted messages; lanes of one head read
  the same score (a broadcast) and a row's messages with coalesced loads.
  The first lane of each head writes ``m`` and ``l``.
* :func:`edge_terms`: one thread per (edge, head): ``p = exp(score - m) /
  l`` with the final ``m``, ``l`` of the edge's destination, and ``dpre =
  p * (grad . z - corr) * LeakyReLU'`` in float64 (the difference cancels
  where the softmax saturates), stored ``[nnz, heads]``.
* :func:`grad_src`: source-major (``src_ptr`` / ``src_perm``), one item per
  source, one lane per column of ``[z | s]``: ``dz += p * grad``, ``ds +=
  dpre``; added into ``out[rows[s]]`` (``rows`` empty: ``out[s]``).
* :func:`grad_dst`: destination-parallel, one lane per head: ``(1 -
  slope)`` times the sum of the row's ``dpre`` on the LeakyReLU's positive
  side, which equals the sum of all of them without its cancellation (the
  softmax's gradient is centred: see ``_cpu_attention.grad_dst``).

No float atomics anywhere, so results are reproducible run to run; a row
(or source) is walked by one item whatever its degree (no segments here).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda


@cuda.jit(device=True)
def _leaky(x, slope):
    if x > 0:
        return x
    return x * slope


@cuda.jit
def partials(src, dst_term, src_idx, dst_ptr, heads, slope, rmap, m, l, a):
    """``m``, ``l``, ``a`` of each row with edges (others keep the caller's ``-inf``, 0, 0).

    Source rows are ``src[rmap[src_idx[e]]]`` (``rmap`` empty: no map).
    Items: ``num_dst``; columns: ``heads * d``.
    """
    k = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    r = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    width = a.shape[1]
    if k >= width or r >= a.shape[0]:
        return
    lo = dst_ptr[r]
    hi = dst_ptr[r + 1]
    if hi == lo:
        return
    d = width // heads
    h = k // d
    col = width + h
    t = dst_term[r, h]
    has_map = rmap.shape[0] > 0
    top = np.float32(-math.inf)
    for e in range(lo, hi):
        s = src_idx[e]
        if has_map:
            s = rmap[s]
        sc = _leaky(src[s, col] + t, slope)
        if sc > top or sc != sc:
            top = sc
    total = np.float32(0)
    acc = np.float32(0)
    for e in range(lo, hi):
        s = src_idx[e]
        if has_map:
            s = rmap[s]
        w = math.exp(_leaky(src[s, col] + t, slope) - top)
        total += w
        acc += w * src[s, k]
    a[r, k] = acc
    if k == h * d:
        m[r, h] = top
        l[r, h] = total


@cuda.jit
def edge_terms(src, dst_term, grad, corr, m, l, src_idx, dst_idx, slope, p_out, dpre):
    """Per (edge, head): the softmax weight ``p`` and the score gradient ``dpre`` (CSC order).

    Items: ``nnz``; columns: ``heads``.
    """
    h = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    e = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    heads = dpre.shape[1]
    if h >= heads or e >= dpre.shape[0]:
        return
    width = grad.shape[1]
    d = width // heads
    s = src_idx[e]
    r = dst_idx[e]
    pre = np.float64(src[s, width + h]) + np.float64(dst_term[r, h])
    p = math.exp(_leaky(pre, np.float64(slope)) - np.float64(m[r, h])) / np.float64(l[r, h])
    base = h * d
    dot = np.float64(0)
    for k in range(d):
        dot += np.float64(grad[r, base + k]) * np.float64(src[s, base + k])
    dp = p * (dot - corr[r, h])
    if not pre > 0:
        dp *= slope
    p_out[e, h] = p
    dpre[e, h] = dp


@cuda.jit
def grad_src(grad, p, dpre, dst_idx, src_ptr, src_perm, out_rows, out):
    """Source-major: ``out[o, k] += sum p[e, h] grad[r, k]`` (message columns), ``+= sum dpre[e, h]`` (score columns).

    ``o = out_rows[s]`` (empty: ``s``; rows unique, so no two items share a
    row). Items: ``num_src``; columns: ``heads * d + heads``.
    """
    k = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    s = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    heads = p.shape[1]
    width = grad.shape[1]
    if k >= width + heads or s >= src_ptr.shape[0] - 1:
        return
    lo = src_ptr[s]
    hi = src_ptr[s + 1]
    if hi == lo:
        return
    acc = np.float32(0)
    if k < width:
        h = k // (width // heads)
        for q in range(lo, hi):
            e = src_perm[q]
            acc += p[e, h] * grad[dst_idx[e], k]
    else:
        h = k - width
        for q in range(lo, hi):
            acc += dpre[src_perm[q], h]
    o = s
    if out_rows.shape[0] > 0:
        o = out_rows[s]
    out[o, k] += acc


@cuda.jit
def grad_dst(dpre, src, dst_term, src_idx, dst_ptr, slope, out):
    """Destination-parallel: ``out[r, h] += (1 - slope) * sum of dpre[e, h]`` over row r's edges whose score is positive.

    Items: ``num_dst``; columns: ``heads``.
    """
    h = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    r = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    if h >= out.shape[1] or r >= out.shape[0]:
        return
    width = src.shape[1] - out.shape[1]
    t = np.float64(dst_term[r, h])
    acc = np.float64(0)
    for e in range(dst_ptr[r], dst_ptr[r + 1]):
        if np.float64(src[src_idx[e], width + h]) + t > 0:  # as edge_terms tests it
            acc += np.float64(dpre[e, h])
    out[r, h] += (1.0 - np.float64(slope)) * acc
