"""Full-graph 2-layer GCN epoch: sagann (P=1 and out-of-core) vs PyG (edge_index, CSR) vs torch.sparse vs DGL.

A thin wrapper over ``sagann bench gcn`` (``sagann/bench/gcn.py`` holds the
method): every configuration runs in its own subprocess, alternating ours and
a peer's; DGL runs in ``benchmarks/.dgl-venv`` (create it with
``bash benchmarks/dgl_env.sh``) and is reported as not run when that is
missing. Prints the report and appends one JSON row to
``benchmarks/results.jsonl``.

Run by hand:  ``python benchmarks/gcn_epoch.py [--quick] [--rounds 2] [--configs sagann_p1 pyg_csr ...]``
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sagann.bench import gcn
from sagann.bench._results import append_result

RESULTS = Path(__file__).resolve().parent / "results.jsonl"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a tiny graph: a smoke test, not a measurement")
    p.add_argument("--rounds", type=int, default=None, help="times each configuration is run (alternating)")
    p.add_argument("--reps", type=int, default=None, help=f"timed epochs per run, after one warm-up (default {gcn.REPS})")
    p.add_argument("--configs", nargs="+", default=None, choices=gcn.CONFIGS)
    p.add_argument("--graph-dir", default=None, help="keep the graph .npy here (default: a temporary directory)")
    p.add_argument("--results", default=str(RESULTS), help="append the result row here ('' for none)")
    args = p.parse_args(argv)
    configs = tuple(args.configs) if args.configs else None
    result = gcn.run(quick=args.quick, configs=configs, rounds=args.rounds, reps=args.reps, graph_dir=args.graph_dir)
    print(result["report"])
    if args.results:
        append_result(args.results, "gcn", result)
    return result


if __name__ == "__main__":
    main()
