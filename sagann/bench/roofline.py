"""The epoch's floor on this machine: bytes every kernel must touch / memory bandwidth + GEMM FLOPs / GEMM rate.

A two-layer model's epoch (forward, backward, no optimizer or loss, which
are small) cannot beat, per edge pass over ``E`` edges and ``N`` vertices
at width ``w``, reading the CSC index arrays once (``4 E + 4 (N + 1)``
bytes) and each input and output row once (``2 x 4 w N``), plus its dense
products at the machine's GEMM rate. Both rates are measured here, once per
process: a ``copy_`` (read + write bytes) between buffers of
:data:`PROBE_BYTES` each, far larger than any core's L3, and a
``[8192, 256] x [256, 256]`` matmul, best of a few.

Which edge passes a model makes (the narrower side of a GCN propagated, a
first layer's Gather cached or streamed, no input gradient for raw
features) follows what sagann's layers do, so the floor is the same work
done at the machine's limits, and ``floor / epoch`` is the fraction of it
an implementation achieves.
"""
from __future__ import annotations

import time

import torch

__all__ = ["epoch_floor", "graph_index_bytes", "machine_rates"]

_RATES: dict = {}
FLOAT = 4
# bytes of each copy buffer: 64 MiB buffers, twice the 32 MiB L3 of the 2-core VM the figures come from, read 17-106
# GB/s across fresh processes, partly from cache; 256 MiB read 22-28 GB/s (docs/benchmarks.md, "A memory probe ...")
PROBE_BYTES = 256 << 20


def _best(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def machine_rates() -> dict:
    """``{"bandwidth_bytes_per_s", "gemm_flops_per_s"}`` of this machine, measured on the first call (about half a second)."""
    if not _RATES:
        gen = torch.Generator().manual_seed(0)
        src, dst = torch.ones(PROBE_BYTES // FLOAT), torch.empty(PROBE_BYTES // FLOAT)  # the values do not change a copy's speed
        copy = _best(lambda: dst.copy_(src))
        del src, dst
        a, b = torch.randn(8192, 256, generator=gen), torch.randn(256, 256, generator=gen)
        gemm = _best(lambda: a @ b)
        _RATES.update(bandwidth_bytes_per_s=2 * PROBE_BYTES / copy, gemm_flops_per_s=2 * 8192 * 256 * 256 / gemm)
    return dict(_RATES)


def _edge_pass(n: int, e: int, width: int) -> int:
    """Bytes one pass over the edges at ``width`` columns must touch."""
    return FLOAT * e + FLOAT * (n + 1) + 2 * FLOAT * width * n


def _layer(model: str, d_in: int, d_out: int, first: bool, cached: bool, heads: int = 4) -> tuple[list[int], int, int]:
    """(widths of the layer's edge passes in an epoch, how many ``d_in x d_out`` products, per-edge score columns)."""
    grad_in = not first  # raw features need no gradient
    if model == "gcn":
        w = min(d_in, d_out)
        transform_first = d_out < d_in
        passes = [] if (cached and first and not transform_first) else [w]
        if passes and (grad_in or transform_first):
            passes.append(w)  # backward edge pass
        return passes, 1, 0
    if model in ("sage", "gin"):
        passes = [] if (cached and first) else [d_in]
        if passes and grad_in:
            passes.append(d_in)
        return passes, (2 if model == "sage" else 1), 0
    if model == "gat":  # transforms first: its edge passes carry parameters' gradients even on raw features
        return [d_out, d_out], 1, 2 * heads  # forward and backward attention passes; scores per head written, read
    raise ValueError(f"no roofline for model {model!r}; known: gcn, sage, gin, gat")


def epoch_floor(model: str, n: int, e: int, d_in: int, hidden: int, classes: int, rates: dict, *, cached: bool = False) -> float:
    """Seconds of a two-layer ``model``'s training epoch at the machine's ``rates`` (:func:`machine_rates`).

    ``e`` counts every edge the layers see (self loops included); ``cached``:
    the first layer's Gather is reused (``ScheduleConfig.cache_gather``).
    """
    nbytes, flops = 0, 0
    for k, (a, b) in enumerate(((d_in, hidden), (hidden, classes))):
        passes, products, scores = _layer(model, a, b, k == 0, cached, heads=4 if k == 0 else 1)
        nbytes += sum(_edge_pass(n, e, w) for w in passes) + FLOAT * scores * e
        gemm = 2 * n * a * b * products
        if model == "gin":
            gemm = 2 * n * (a * hidden + hidden * b)  # the MLP's two products
        flops += gemm * (2 if k == 0 else 3)  # forward, weight gradient (+ input gradient past the first layer)
        nbytes += 2 * FLOAT * n * (a + b)  # the dense products read their input and write their output once
    return nbytes / rates["bandwidth_bytes_per_s"] + flops / rates["gemm_flops_per_s"]


def graph_index_bytes(num_edges: int, num_vertices: int) -> int:
    """The graph's index arrays as an in-memory device holds them for a whole epoch: CSC for the Gather and CSR for its
    backward, int32 (PyG and DGL hold int64 edge lists and more). The whole-graph CPU run reads the host's arrays in
    place and charges none of them, so its ledger's peak alone leaves them out."""
    return 4 * 2 * (num_edges + num_vertices + 1)
