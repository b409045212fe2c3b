"""Numba kernels behind :mod:`sagann.kernels.attention` (numpy in, numpy out).

GAT-style attention over one sub-chunk, per destination row and head:
``score_e = LeakyReLU(s[src_e, h] + t[r, h])``, ``m = max score``,
``l = sum exp(score - m)``, ``a = sum exp(score - m) * z[src_e, h]``,
merged into the running sums of earlier chunks (online softmax). ``src`` holds
``[z | s]`` (``heads * d`` message columns, then ``heads`` score halves).
No float atomics: the forward is destination-parallel, the source-side
gradient source-major, the destination-side one parallel over heads.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

_PJIT = dict(parallel=True, nogil=True, cache=True, fastmath={"contract"})  # FMA, no reassociation


@njit(nogil=True, cache=True, inline="always")
def _leaky(x, slope):
    return x if x > 0 else x * slope


@njit(**_PJIT)
def partials_into(src, dst_term, src_idx, dst_ptr, bounds, heads, slope, rmap, m, l, a):
    """Per row and head: max score ``m``, ``l = sum exp(score - m)``, ``a = sum exp(score - m) z``, merged online into the running ``(m, l, a)`` of earlier chunks, in place.

    Running sums that start at ``(-inf, 0, 0)`` come out as the sub-chunk's
    own partials (rows without edges keep them). Source rows are
    ``src[rmap[src_idx[e]]]`` (``rmap`` empty: no map).

    Only the rows this sub-chunk reaches are read or written: a chunk of a
    P-way partition has an interval's rows and, on a sparse graph, few
    edges, so merging every row (as torch ops on the partials would) costs
    P times the in-memory pass. Per row and head the running max becomes
    ``max(m, chunk max)`` (a NaN stays), the running sums are rescaled to it
    and the chunk's terms added with ``exp(score - new max)``.
    """
    width = a.shape[1]
    d = width // heads
    has_map = rmap.shape[0] > 0
    for b in prange(bounds.shape[0] - 1):
        for r in range(bounds[b], bounds[b + 1]):
            lo, hi = dst_ptr[r], dst_ptr[r + 1]
            if hi == lo:
                continue
            for h in range(heads):
                t = dst_term[r, h]
                top = -np.inf
                for e in range(lo, hi):
                    s = rmap[src_idx[e]] if has_map else src_idx[e]
                    sc = _leaky(src[s, width + h] + t, slope)
                    if sc > top or sc != sc:
                        top = sc
                old = m[r, h]
                new = top if (top > old or top != top) else old
                base = h * d
                if new != old:  # rescale what earlier chunks summed (old = -inf: they summed nothing)
                    scale = np.exp(old - new)
                    l[r, h] *= scale
                    for k in range(d):
                        a[r, base + k] *= scale
                total = 0.0
                for e in range(lo, hi):
                    s = rmap[src_idx[e]] if has_map else src_idx[e]
                    w = np.exp(_leaky(src[s, width + h] + t, slope) - new)
                    total += w
                    for k in range(d):
                        a[r, base + k] += w * src[s, base + k]
                m[r, h] = new
                l[r, h] += total


@njit(**_PJIT)
def row_dots(grad, out, dst_ptr, bounds, heads, corr):
    """``corr[r, h] = grad[r] . out[r]`` over head h's columns, in float64, for the rows with edges only (no other is read)."""
    d = grad.shape[1] // heads
    for b in prange(bounds.shape[0] - 1):
        for r in range(bounds[b], bounds[b + 1]):
            if dst_ptr[r + 1] == dst_ptr[r]:
                continue
            for h in range(heads):
                acc = 0.0
                for k in range(h * d, (h + 1) * d):
                    acc += np.float64(grad[r, k]) * np.float64(out[r, k])
                corr[r, h] = acc


@njit(**_PJIT)
def grad_src(src, dst_term, grad, corr, m, l, dst_idx, src_ptr, src_perm, bounds, heads, slope, out_rows, out, dpos):
    """Source-major: the gradient of ``src = [z | s]`` into ``out[out_rows[s]]``, and each edge's score gradient.

    With ``p = exp(score - m) / l`` (the final normaliser of the edge's
    destination), ``dz += p * grad`` and ``ds += dpre``, where ``dpre =
    p * (grad . z - corr) * LeakyReLU'`` and ``corr = grad . out`` per
    destination row and head. ``dpos`` ([nnz, heads], source-major order)
    keeps ``dpre`` of the edges on the LeakyReLU's positive side (0
    elsewhere): the destination-side gradient is summed from those alone
    (:func:`grad_dst`). The edge at source-major position ``q`` goes to
    ``dst_idx[src_perm[q]]``, or ``dst_idx[q]`` where ``src_perm`` is empty
    (``dst_idx`` is then the chunk's ``src_dst``): read in sequence, a
    destination is known before its rows are needed (a third less time than
    through the permutation, measured on 1M-edge sub-chunks).
    """
    width = grad.shape[1]
    d = width // heads
    mapped = out_rows.shape[0] > 0
    permuted = src_perm.shape[0] > 0
    for b in prange(bounds.shape[0] - 1):
        for s in range(bounds[b], bounds[b + 1]):
            o = out_rows[s] if mapped else s
            for q in range(src_ptr[s], src_ptr[s + 1]):
                r = dst_idx[src_perm[q]] if permuted else dst_idx[q]
                for h in range(heads):  # in float64: p * (dot - corr) cancels where the softmax saturates
                    pre = np.float64(src[s, width + h]) + np.float64(dst_term[r, h])
                    p = np.exp(_leaky(pre, slope) - np.float64(m[r, h])) / np.float64(l[r, h])
                    base = h * d
                    dot = 0.0
                    for k in range(d):
                        g = np.float64(grad[r, base + k])
                        dot += g * src[s, base + k]
                        out[o, base + k] += p * g
                    dp = p * (dot - corr[r, h])
                    if pre > 0:
                        dpos[q, h] = dp
                    else:
                        dpos[q, h] = 0.0
                        dp *= slope
                    out[o, width + h] += dp


@njit(**_PJIT)
def grad_dst(dpos, dst_idx, src_perm, slope, sums, out):
    """``out[r, h] += (1 - slope) * sum of dpos[q, h]`` over the edges ``q`` (source-major) of row r.

    The score gradients of a row sum to ``sum_e p_e c_e * LeakyReLU'_e``
    with ``sum_e p_e c_e = 0`` (the softmax's gradient is centred), so the
    sum equals ``(1 - slope)`` times its positive side's. Summed in full,
    its terms cancel to a residue of their rounding, which differs with the
    order the chunks add them in; the positive side alone does not cancel.
    ``sums`` ([heads, num_dst], float64) is scratch, zeroed here: a head's
    sums apart from the others', so the threads write no shared cache line
    (as [num_dst, heads] this kernel took eight times as long). Heads run in
    parallel, each in edge order: the sums do not depend on the threads.
    """
    heads = out.shape[1]
    permuted = src_perm.shape[0] > 0
    for h in prange(heads):
        for r in range(sums.shape[1]):
            sums[h, r] = 0.0
        for q in range(dpos.shape[0]):
            r = dst_idx[src_perm[q]] if permuted else dst_idx[q]
            sums[h, r] += np.float64(dpos[q, h])
        for r in range(sums.shape[1]):
            out[r, h] += (1.0 - slope) * sums[h, r]
