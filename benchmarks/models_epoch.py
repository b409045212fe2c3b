"""Full-graph 2-layer GCN, GAT or GraphSAGE epoch: sagann (P=1 and out-of-core) vs PyG (edge_index, CSR) vs DGL.

A thin wrapper over ``sagann bench gcn|gat|sage`` (``sagann/bench/_epoch.py``
holds the method): every configuration runs in its own subprocess,
alternating ours and a peer's; DGL runs in ``benchmarks/.dgl-venv`` (create
it with ``bash benchmarks/dgl_env.sh``) and is reported as not run when that
is missing. Prints the report and appends one JSON row to
``benchmarks/results.jsonl``.

Run by hand:  ``python benchmarks/models_epoch.py --model gat --graph reddit --scale 0.05 [--rounds 1] [--configs sagann_p1 pyg_csr ...]``
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from sagann.bench import _epoch
from sagann.bench._results import append_result

RESULTS = Path(__file__).resolve().parent / "results.jsonl"
MODELS = ("gcn", "gat", "sage")


def parser(model: str | None = None) -> argparse.ArgumentParser:
    """The options; with ``model`` fixed (gcn_epoch.py) there is no --model."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if model is None:
        p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--quick", action="store_true", help="a tiny graph: a smoke test, not a measurement")
    p.add_argument("--graph", default="rmat", choices=_epoch.GRAPHS, help="rmat (default) or reddit: preset_graph('reddit', --scale)")
    p.add_argument("--scale", type=float, default=None, help=f"with --graph reddit (default {_epoch.REDDIT_SCALE:g}; {_epoch.QUICK_REDDIT_SCALE:g} with --quick)")
    p.add_argument("--rounds", type=int, default=None, help=f"times each configuration is run, alternating (default {_epoch.ROUNDS})")
    p.add_argument("--reps", type=int, default=None, help=f"timed epochs per run, after one warm-up (default {_epoch.REPS})")
    p.add_argument("--configs", nargs="+", default=None, help="configurations to run, in this order (default: all of the model's)")
    p.add_argument("--timeout", type=float, default=None, help=f"seconds a worker may take before it is killed and recorded as failed (default {_epoch.WORKER_TIMEOUT_S})")
    p.add_argument("--ooc-budget", default=None, help="sagann_ooc's device budget, e.g. 2GB (default: 1/8 of sagann_p1's working set)")
    p.add_argument("--graph-dir", default=None, help="keep the graph's .npy files here (default: a temporary directory)")
    p.add_argument("--results", default=str(RESULTS), help="append the result row here ('' for none)")
    return p


def main(argv: list[str] | None = None, model: str | None = None) -> dict:
    args = parser(model).parse_args(argv)
    name = model or args.model
    bench = importlib.import_module(f"sagann.bench.{name}")
    configs = tuple(args.configs) if args.configs else None
    result = bench.run(quick=args.quick, configs=configs, rounds=args.rounds, reps=args.reps, graph_dir=args.graph_dir,
                       graph=args.graph, scale=args.scale, timeout=args.timeout, ooc_budget=args.ooc_budget)
    print(result["report"])
    if args.results:
        append_result(args.results, name, result)
    return result


if __name__ == "__main__":
    main()
