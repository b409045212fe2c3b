"""Time copy_src . sum (gSpMM) on an R-MAT graph: numba CPU vs reference vs torch.sparse.

Run by hand: ``python benchmarks/kernels.py [--vertices N] [--edges E] [--dim D]``.

Effective bandwidth counts the bytes a fused kernel must move at least once::

    bytes = nnz * 4 * 2          (int32 src_idx + int32 dst_idx / ptr, per edge)
          + nnz * d * 4          (one fp32 source row read per edge)
          + num_dst * d * 4      (one fp32 output row written per destination)

Source rows hit in cache are still counted, so GB/s is an "as if streamed"
figure; it is comparable across implementations, not a hardware measure.
Also timed: the forward kernel with one row per parallel item (no nnz
balancing), and the source-major backward (grad of src).
"""
from __future__ import annotations

import argparse
import json
import time

import numba
import numpy as np
import torch

from sagann.chunks.synthetic import rmat
from sagann.kernels import ChunkTensors, gspmm
from sagann.kernels import _cpu_kernels as K


def _time(fn, reps: int) -> tuple[float, float]:
    """(best, median) wall time of ``fn()`` in ms, after one warm-up call.

    The best time is the figure to compare on a shared, noisy machine.
    """
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times), 1e3 * float(np.median(times))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vertices", type=int, default=1 << 17)
    p.add_argument("--edges", type=int, default=1 << 21)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--permute", action="store_true", help="relabel vertices randomly (no id locality)")
    p.add_argument("--skip-reference", action="store_true", help="the reference materialises [nnz, d] messages")
    p.add_argument("--results", help="append one JSON line per timing to this file")
    args = p.parse_args(argv)

    n, d = args.vertices, args.dim
    ei = rmat(n, args.edges, seed=args.seed, permute=args.permute)
    g, _ = ChunkTensors.from_coo(ei[0], ei[1], n, n)
    nnz = g.nnz
    deg = np.diff(g.dst_ptr.numpy())
    x = torch.randn(n, d)
    nbytes = nnz * 4 * 2 + nnz * d * 4 + n * d * 4
    threads = numba.get_num_threads()
    print(f"R-MAT N={n} nnz={nnz} d={d} max in-degree={deg.max()} empty rows={(deg == 0).sum()} threads={threads}")
    print(f"bytes/pass = nnz*8 + nnz*d*4 + N*d*4 = {nbytes / 1e6:.1f} MB")

    S, E, D = x.numpy(), np.empty((0, 0), np.float32), np.empty((0, 0), np.float32)
    src_idx, dst_ptr = g.src_idx.numpy(), g.dst_ptr.numpy()

    def fused(bounds: np.ndarray):
        def run():
            out = np.zeros((n, d), np.float32)
            K.spmm_sum(K.COPY_SRC, S, E, D, src_idx, dst_ptr, bounds, np.empty(0, np.float32), out)

        return run

    csr = torch.sparse_csr_tensor(g.dst_ptr.long(), g.src_idx.long(), torch.ones(nnz), size=(n, n))
    xg = x.clone().requires_grad_()
    out = gspmm(g, "copy_src", "sum", src=xg, backend="cpu")[0]
    gy = torch.randn_like(out)

    cases = {
        "cpu gspmm (backend='cpu')": lambda: gspmm(g, "copy_src", "sum", src=x, backend="cpu"),
        "cpu kernel, nnz-balanced blocks": fused(K.balanced_bounds(dst_ptr, 8 * threads)),
        "cpu kernel, one row per item": fused(np.arange(n + 1, dtype=np.int64)),
        "cpu kernel, one block per thread": fused(K.balanced_bounds(dst_ptr, threads)),
        "torch.sparse.mm (CSR)": lambda: torch.sparse.mm(csr, x),
    }
    if not args.skip_reference:
        cases["reference (index_select + index_add)"] = lambda: gspmm(g, "copy_src", "sum", src=x, backend="reference")
    cases["cpu forward + grad src (source-major)"] = lambda: torch.autograd.grad(
        gspmm(g, "copy_src", "sum", src=xg, backend="cpu")[0], xg, gy
    )

    rows = []
    for name, fn in cases.items():
        best, median = _time(fn, args.reps)
        gbs = nbytes / (best * 1e-3) / 1e9
        print(f"{name:42s} best {best:9.2f} ms  median {median:9.2f} ms  {gbs:7.2f} GB/s")
        rows.append(
            dict(bench="kernels.copy_src_sum", case=name, n=n, nnz=nnz, d=d, threads=threads, ms=best, ms_median=median, gbps=gbs)
        )
    if args.results:
        with open(args.results, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main()
