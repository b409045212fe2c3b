"""copy_src . sum (A @ X) on R-MAT: sagann's fused kernel vs reference vs torch CSR vs PyG, forward and backward.

A thin wrapper over ``sagann bench kernels`` (``sagann/bench/kernels.py``
holds the method and the byte formula) that prints the report and appends
one JSON row (machine, command, date, numbers) to ``benchmarks/results.jsonl``.

Run by hand:  ``python benchmarks/kernels.py [--quick] [--dims 16 64 128 256] [--reps 7]``
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sagann.bench import kernels
from sagann.bench._results import append_result

RESULTS = Path(__file__).resolve().parent / "results.jsonl"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2^12 vertices, 64k edges: a smoke test, not a measurement")
    p.add_argument("--dims", type=int, nargs="+", default=list(kernels.DIMS))
    p.add_argument("--reps", type=int, default=None, help="timed calls per case (>= 5)")
    p.add_argument("--impls", nargs="+", default=list(kernels.IMPLS), choices=kernels.IMPLS)
    p.add_argument("--results", default=str(RESULTS), help="append the result row here ('' for none)")
    args = p.parse_args(argv)
    result = kernels.run(quick=args.quick, dims=tuple(args.dims), reps=args.reps, impls=tuple(args.impls))
    print(result["report"])
    if args.results:
        append_result(args.results, "kernels", result)
    return result


if __name__ == "__main__":
    main()
