"""The `sagann` command."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_demo(args: argparse.Namespace) -> int:
    from sagann.demo import DemoConfig, format_report, run_demo

    config = DemoConfig(epochs=args.epochs, num_vertices=args.vertices, budget_fraction=args.budget_fraction, seed=args.seed)
    result = run_demo(config, progress=not args.json and sys.stderr.isatty(), profile_dir=args.profile)
    print(json.dumps(result) if args.json else format_report(result))
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from sagann import profiler

    summaries = profiler.load_summary(args.directory)
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries]))
    else:
        print(profiler.format_table(summaries))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from sagann.bench import run_bench

    result = run_bench(args.what, quick=args.quick, out=args.out)
    print(json.dumps(result) if args.json else result.get("report", json.dumps(result, indent=2)))
    return 0


BENCHES = ("kernels", "gcn", "overlap")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sagann", description="Full-graph GNN training larger than device memory.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="train a GCN out-of-core on a synthetic graph under a small CPU memory budget")
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--vertices", type=int, default=40_000, help="SBM vertices (edges = 16 x vertices)")
    demo.add_argument("--budget-fraction", type=float, default=0.25, help="device budget as a fraction of the in-memory working set")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--profile", metavar="DIR", default=None, help="profile training; write trace.json, timeline.png, summary.json into DIR")
    demo.set_defaults(run=_cmd_demo)
    prof = sub.add_parser("profile", help="print a saved profile's per-epoch table (IO, compute, runtime, overlap, bytes)")
    prof.add_argument("directory", help="a directory written by --profile")
    prof.add_argument("--json", action="store_true")
    prof.set_defaults(run=_cmd_profile)
    bench = sub.add_parser("bench", help="measure sagann side by side with its peers on this machine")
    bench.add_argument("what", choices=BENCHES)
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--quick", action="store_true", help="a small size that runs in seconds (a smoke test, not a measurement)")
    bench.add_argument("--out", default=None, help="append the result as a JSON line to this file")
    bench.set_defaults(run=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (ValueError, MemoryError, FileNotFoundError) as exc:
        print(f"sagann {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
