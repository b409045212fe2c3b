"""Time the CUDA backend's gSpMM (copy_src . sum) against cuSPARSE on an R-MAT graph. Needs a GPU.

Run on a machine with an NVIDIA GPU, a CUDA build of torch and numba-cuda
(``pip install -e ".[cuda]"``)::

    python benchmarks/gpu_kernels.py [--vertices N] [--edges E] [--dims 16,64,128,256]
                                     [--segments 128] [--extra] [--results out.jsonl]

For each feature width ``d`` it times, with CUDA events on torch's current
stream (the first call, which includes numba's JIT compile, is a warm-up):

* ``cuda gspmm``: ``sagann.kernels.gspmm(g, "copy_src", "sum", backend="cuda")``
  for each segment length in ``--segments`` (edges per work item; rows with
  more are split, see ``sagann/kernels/_cuda_kernels.py``);
* ``torch.sparse.mm (cuSPARSE CSR)``: the same product as a CSR matrix of
  ones times ``x``, which it is also checked against;
* with ``--extra``: copy_src . max (two-pass winners; its int64 winners are
  not counted in the bytes below) and forward + source-major backward (grad
  of src), counted as two passes.

Effective bandwidth counts the bytes a fused kernel must move at least once,
as ``benchmarks/kernels.py`` does::

    bytes = nnz * 4 * 2          (int32 src_idx + int32 dst_idx / ptr, per edge)
          + nnz * d * 4          (one fp32 source row read per edge)
          + num_dst * d * 4      (one fp32 output row written per destination)

Source rows served from L2 are still counted, so GB/s is an "as if
streamed" figure, comparable across implementations; the device-to-device
``copy_`` bandwidth printed first (2 x bytes per copy: read + write) is the
roofline to hold it against.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np
import torch


def _require_gpu() -> None:
    """Exit with a message naming the fix on a machine that cannot run this."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM"):
        sys.exit("gpu_kernels.py: NUMBA_ENABLE_CUDASIM is set; unset it, the simulator cannot be benchmarked")
    if not torch.cuda.is_available():
        sys.exit(
            "gpu_kernels.py needs an NVIDIA GPU and a CUDA build of torch (torch.cuda.is_available() is False); "
            "for CPU kernels run benchmarks/kernels.py"
        )
    from numba import cuda

    if not cuda.is_available():
        sys.exit("gpu_kernels.py: torch sees a GPU but numba does not; pip install 'numba-cuda[cu12]' (extra 'cuda')")


def _time(fn, reps: int) -> tuple[float, float]:
    """(best, median) time of ``fn()`` in ms from CUDA events, after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return min(times), float(np.median(times))


def memcpy_bandwidth(nbytes: int = 1 << 31, reps: int = 10) -> float:
    """Device-to-device ``copy_`` bandwidth in GB/s, counting the read and the write."""
    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").normal_()
    b = torch.empty_like(a)
    best, _ = _time(lambda: b.copy_(a), reps)
    del a, b
    torch.cuda.empty_cache()
    return 2 * nbytes / (best * 1e-3) / 1e9


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vertices", type=int, default=1 << 20)
    p.add_argument("--edges", type=int, default=1 << 24)
    p.add_argument("--dims", default="16,64,128,256", help="comma-separated feature widths")
    p.add_argument("--segments", default="128", help="comma-separated segment lengths to try (edges per work item)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--permute", action="store_true", help="relabel vertices randomly (no id locality)")
    p.add_argument("--extra", action="store_true", help="also time copy_src . max and the grad of src")
    p.add_argument("--results", help="append one JSON line per timing to this file")
    args = p.parse_args(argv)
    _require_gpu()

    from sagann.chunks.synthetic import rmat
    from sagann.kernels import ChunkTensors, gspmm
    from sagann.kernels import cuda as backend

    dev = torch.device("cuda")
    n = args.vertices
    ei = rmat(n, args.edges, seed=args.seed, permute=args.permute)
    g, _ = ChunkTensors.from_coo(ei[0], ei[1], n, n, device=dev)
    del ei
    nnz = g.nnz
    deg = torch.diff(g.dst_ptr)
    name = torch.cuda.get_device_name(dev)
    print(f"{name}: R-MAT N={n} nnz={nnz} max in-degree={int(deg.max())} empty rows={int((deg == 0).sum())}")
    copy_gbs = memcpy_bandwidth()
    print(f"device-to-device copy_: {copy_gbs:.0f} GB/s (read + write)")
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        csr = torch.sparse_csr_tensor(
            g.dst_ptr.long(), g.src_idx.long(), torch.ones(nnz, device=dev), size=(n, n), check_invariants=False
        )
    rows = [dict(bench="gpu_kernels.memcpy", device=name, gbps=copy_gbs)]

    def record(case: str, d: int, fn, nbytes: int, **extra) -> None:
        best, median = _time(fn, args.reps)
        gbs = nbytes / (best * 1e-3) / 1e9
        print(
            f"  {case:44s} best {best:8.3f} ms  median {median:8.3f} ms  {gbs:7.1f} GB/s"
            f"  ({gbs / copy_gbs:5.1%} of copy_)"
        )
        rows.append(
            dict(bench="gpu_kernels.copy_src_sum", device=name, case=case, n=n, nnz=nnz, d=d)
            | dict(ms=best, ms_median=median, gbps=gbs, **extra)
        )

    default_segment = backend._SEGMENT
    for d in (int(s) for s in args.dims.split(",")):
        x = torch.randn(n, d, device=dev)
        nbytes = nnz * 4 * 2 + nnz * d * 4 + n * d * 4
        print(f"d={d}: bytes/pass = nnz*8 + nnz*d*4 + N*d*4 = {nbytes / 1e6:.1f} MB")
        want = torch.sparse.mm(csr, x)
        scale = torch.sparse.mm(csr, x.abs())  # |error| of a reordered fp32 sum is bounded by eps * sum |terms|
        for seg in (int(s) for s in args.segments.split(",")):
            backend._SEGMENT = seg  # a private knob, set here only to sweep it
            out, _ = gspmm(g, "copy_src", "sum", src=x, backend="cuda")
            err = (out - want).abs()
            if not bool((err <= 1e-4 * scale + 1e-5).all()):
                sys.exit(
                    f"gpu_kernels.py: cuda gspmm (segment {seg}, d={d}) differs from torch.sparse.mm: "
                    f"max |diff| {float(err.max()):.3g}"
                )
            for reduce in ("sum", "max") if args.extra else ("sum",):

                def fused(reduce=reduce):
                    gspmm(g, "copy_src", reduce, src=x, backend="cuda")

                record(f"cuda gspmm copy_src.{reduce} (segment {seg})", d, fused, nbytes, segment=seg)
            if args.extra:
                xg = x.clone().requires_grad_()
                gy = torch.randn(n, d, device=dev)

                def grad_src():
                    torch.autograd.grad(gspmm(g, "copy_src", "sum", src=xg, backend="cuda")[0], xg, gy)

                record(f"cuda forward + grad src (segment {seg})", d, grad_src, 2 * nbytes, segment=seg)
        backend._SEGMENT = default_segment
        record("torch.sparse.mm (cuSPARSE CSR)", d, lambda: torch.sparse.mm(csr, x), nbytes)
        del x, want, scale
        torch.cuda.empty_cache()
    if args.results:
        with open(args.results, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main()
