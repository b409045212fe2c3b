"""`sagann bench kernels`: copy_src . sum (A @ X) — fused numba kernel vs reference vs torch CSR vs PyG.

One R-MAT graph (2^18 vertices, 8M edges + one self loop per vertex =
8,262,144 edges; ``quick``: 2^12 vertices, 64k edges), feature widths
16/64/128/256, forward (``out = A @ X``) and backward (grad of ``X`` =
``A^T @ grad_out``), each implementation called through its ordinary
user-facing API:

* ``fused``: ``sagann.kernels.gspmm(g, "copy_src", "sum", src=x, backend="cpu")``
  on one whole-graph ChunkTensors (destination-parallel forward,
  source-major backward);
* ``reference``: the same call with ``backend="reference"`` (index_select +
  index_add, materialises ``[nnz, d]``);
* ``torch_csr``: ``torch.sparse.mm(A_csr, x)`` (int64 CSR, values 1) and its
  default autograd;
* ``pyg``: a ``torch_geometric.nn.MessagePassing(aggr="add")`` on a plain
  ``edge_index`` (gathers ``x_j`` ``[nnz, d]``, then ``scatter`` sum).

Effective bandwidth, the same byte count for every implementation and both
directions (the traffic of a fused kernel that streams each operand once)::

    bytes = 4 * nnz          (int32 column index per edge)
          + 4 * (N + 1)      (row pointer)
          + 4 * d * nnz      (one fp32 input row read per edge)
          + 4 * d * N        (one fp32 output row written per row)

Input rows that hit in cache are still counted, so a skewed graph can show
more "GB/s" than DRAM gives; the figure compares implementations, it is not
a hardware counter. The machine's copy bandwidth (``dst.copy_(src)`` on
512 MiB, read + write bytes, torch with 1 and with 2 threads) is measured in
the same run.

Calls are interleaved (fused, reference, csr, pyg, fused, ...), one warm-up
round, then the median of ``reps`` (>= 5). torch's thread count is left at
its default. Implementations that would materialise ``[nnz, d]`` are skipped
when that would not fit in the available memory (said in the result).
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from sagann.bench import _peers
from sagann.kernels import ChunkTensors, gspmm

__all__ = ["run", "format_report", "IMPLS", "DIMS"]

IMPLS = ("fused", "reference", "torch_csr", "pyg")
DIMS = (16, 64, 128, 256)
REPS = 7
QUICK_REPS = 5
# A call that materialises [nnz, d] needs about this many such tensors at once (msg + its grad + slack).
_MATERIALISED_COPIES = 2.5


def effective_bytes(nnz: int, n: int, d: int) -> int:
    return 4 * nnz + 4 * (n + 1) + 4 * d * nnz + 4 * d * n


def _pyg_layer():
    from torch_geometric.nn import MessagePassing

    class CopySum(MessagePassing):
        """A PyG layer that sums the source rows at each destination (``copy_src . sum``)."""

        def __init__(self):
            super().__init__(aggr="add")

        def forward(self, x, edge_index):
            return self.propagate(edge_index, x=x)

    return CopySum()


def _make_cases(impl: str, g: ChunkTensors, tensors: dict, x: torch.Tensor, gy: torch.Tensor):
    """(forward thunk, backward thunk) for one implementation at one width."""
    xg = x.detach().clone().requires_grad_()
    if impl == "fused":
        fwd = lambda: gspmm(g, "copy_src", "sum", src=x, backend="cpu")[0]  # noqa: E731
        out = gspmm(g, "copy_src", "sum", src=xg, backend="cpu")[0]
    elif impl == "reference":
        fwd = lambda: gspmm(g, "copy_src", "sum", src=x, backend="reference")[0]  # noqa: E731
        out = gspmm(g, "copy_src", "sum", src=xg, backend="reference")[0]
    elif impl == "torch_csr":
        csr = tensors["csr"]
        fwd = lambda: torch.sparse.mm(csr, x)  # noqa: E731
        out = torch.sparse.mm(csr, xg)
    elif impl == "pyg":
        layer, ei = tensors["pyg"], tensors["edge_index"]
        fwd = lambda: layer(x, ei)  # noqa: E731
        out = layer(xg, ei)
    else:
        raise ValueError(f"unknown implementation {impl!r}; known: {', '.join(IMPLS)}")
    bwd = lambda: torch.autograd.grad(out, xg, gy, retain_graph=True)  # noqa: E731
    return fwd, bwd


def _check_equal(g: ChunkTensors, tensors: dict, n: int) -> float:
    """Max relative difference of the implementations' outputs at d=8 (they must agree)."""
    x = torch.randn(n, 8)
    outs = [
        gspmm(g, "copy_src", "sum", src=x, backend="cpu")[0],
        gspmm(g, "copy_src", "sum", src=x, backend="reference")[0],
        torch.sparse.mm(tensors["csr"], x),
        tensors["pyg"](x, tensors["edge_index"]),
    ]
    scale = outs[1].abs().max().clamp(min=1e-30)
    return float(max((o - outs[1]).abs().max() / scale for o in outs))


def run(quick: bool = False, dims: tuple[int, ...] = DIMS, reps: int | None = None, impls: tuple[str, ...] = IMPLS) -> dict:
    """Measure; returns a JSON-able dict with ``rows`` (one per implementation x width x direction) and ``report``."""
    spec = _peers.QUICK_GRAPH if quick else _peers.FULL_GRAPH
    reps = reps or (QUICK_REPS if quick else REPS)
    if reps < 5:
        raise ValueError(f"reps must be >= 5 (medians of fewer are noise), got {reps}")
    load_before = _peers.load_average()
    t0 = time.perf_counter()
    n = spec.num_vertices
    ei = _peers.with_self_loops(spec.edge_index(), n)
    g, _ = ChunkTensors.from_coo(ei[0], ei[1], n, n)
    nnz = g.nnz
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        csr = torch.sparse_csr_tensor(g.dst_ptr.long(), g.src_idx.long(), torch.ones(nnz), size=(n, n))
    tensors = {
        "csr": csr,
        "edge_index": torch.from_numpy(ei),
        "pyg": _pyg_layer() if "pyg" in impls else None,
    }
    setup_s = time.perf_counter() - t0
    max_rel_diff = _check_equal(g, tensors, n) if set(impls) == set(IMPLS) else None

    bw = {f"memcpy_{t}t_gbps": _peers.memcpy_bandwidth(t, nbytes=(1 << 24) if quick else (1 << 29)) for t in (1, 2)}
    rows, skipped = [], []
    torch.manual_seed(0)
    for d in dims:
        x = torch.randn(n, d)
        gy = torch.randn(n, d)
        nbytes = effective_bytes(nnz, n, d)
        cases = {}
        for impl in impls:
            if impl in ("reference", "pyg") and _MATERIALISED_COPIES * 4 * nnz * d > 0.8 * _peers.available_bytes():
                skipped.append({"impl": impl, "d": d, "why": f"[nnz, d] messages ({4 * nnz * d / 2**30:.1f} GiB) x {_MATERIALISED_COPIES} would not fit the available memory"})
                continue
            fwd, bwd = _make_cases(impl, g, tensors, x, gy)
            cases[(impl, "forward")] = fwd
            cases[(impl, "backward")] = bwd
        times = _peers.interleaved_times(cases, reps)
        for (impl, direction), ts in times.items():
            ms = 1e3 * float(np.median(ts))
            rows.append(
                {
                    "impl": impl,
                    "direction": direction,
                    "d": d,
                    "ms": ms,
                    "ms_min": 1e3 * min(ts),
                    "ms_all": [1e3 * t for t in ts],
                    "gbps": nbytes / (ms * 1e-3) / 1e9,
                }
            )
        del cases, times
    result = {
        "graph": dict(spec.to_dict(), nnz=nnz),
        "byte_formula": "4*nnz + 4*(N+1) + 4*d*nnz + 4*d*N",
        "reps": reps,
        "torch_threads": torch.get_num_threads(),
        "numba_threads": _numba_threads(),
        "setup_seconds": setup_s,
        "max_rel_diff": max_rel_diff,
        "load_average_before": load_before,
        "load_average_after": _peers.load_average(),
        **bw,
        "rows": rows,
        "skipped": skipped,
        "quick": quick,
    }
    result["speedup_vs_torch_csr"] = _speedups(rows)
    result["report"] = format_report(result)
    return result


def _numba_threads() -> int:
    import numba

    return int(numba.get_num_threads())


def _speedups(rows: list[dict]) -> dict:
    """torch_csr ms / fused ms per width and direction."""
    ms = {(r["impl"], r["direction"], r["d"]): r["ms"] for r in rows}
    out = {}
    for (impl, direction, d), v in ms.items():
        if impl == "fused" and ("torch_csr", direction, d) in ms:
            out[f"{direction}_d{d}"] = ms[("torch_csr", direction, d)] / v
    return out


def format_report(r: dict) -> str:
    gr = r["graph"]
    lines = [
        f"copy_src . sum on R-MAT: N={gr['num_vertices']:,}, nnz={gr['nnz']:,} (self loops included); median of {r['reps']} interleaved calls after a warm-up",
        f"threads: torch {r['torch_threads']}, numba {r['numba_threads']}; load average before {r['load_average_before']}, after {r['load_average_after']}",
        f"memcpy (dst.copy_(src), read+write bytes): 1 thread {r['memcpy_1t_gbps']:.1f} GB/s, 2 threads {r['memcpy_2t_gbps']:.1f} GB/s",
        f"effective bytes = {r['byte_formula']}; outputs agree to {r['max_rel_diff']:.1e} (relative)" if r["max_rel_diff"] is not None else f"effective bytes = {r['byte_formula']}",
        "",
        f"{'d':>4} {'direction':9} " + " ".join(f"{impl:>22}" for impl in IMPLS),
    ]
    ms = {(x["impl"], x["direction"], x["d"]): x for x in r["rows"]}
    for d in sorted({x["d"] for x in r["rows"]}):
        for direction in ("forward", "backward"):
            cells = []
            for impl in IMPLS:
                x = ms.get((impl, direction, d))
                cells.append(f"{x['ms']:9.1f} ms {x['gbps']:5.1f} GB/s" if x else f"{'skipped':>22}")
            lines.append(f"{d:>4} {direction:9} " + " ".join(cells))
    lines.append("")
    lines.append("speed-up of fused over torch.sparse.mm CSR: " + ", ".join(f"{k} {v:.2f}x" for k, v in r["speedup_vs_torch_csr"].items()))
    for s in r["skipped"]:
        lines.append(f"skipped {s['impl']} at d={s['d']}: {s['why']}")
    return "\n".join(lines)
