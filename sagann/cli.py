"""The `sagann` command."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_demo(args: argparse.Namespace) -> int:
    from sagann.demo import DemoConfig, format_report, run_demo

    config = DemoConfig(epochs=args.epochs, num_vertices=args.vertices, budget_fraction=args.budget_fraction, seed=args.seed)
    result = run_demo(config, progress=not args.json and sys.stderr.isatty())
    print(json.dumps(result) if args.json else format_report(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sagann", description="Full-graph GNN training larger than device memory.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="train a GCN out-of-core on a synthetic graph under a small CPU memory budget")
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--vertices", type=int, default=40_000, help="SBM vertices (edges = 16 x vertices)")
    demo.add_argument("--budget-fraction", type=float, default=0.25, help="device budget as a fraction of the in-memory working set")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_cmd_demo)
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
