"""The `sagann` command."""
from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import re
import sys


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem, the known options, and where help is."""

    def error(self, message: str):  # noqa: D401 (argparse's hook)
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")

    def unknown_options(self, extra: list[str]):
        """Reject ``extra`` arguments, suggesting the closest known option and listing them all."""
        known = sorted({o for a in self._actions for o in a.option_strings if o.startswith("--") and o != "--help"})
        commands = [c for a in self._actions if isinstance(a, argparse._SubParsersAction) for c in a.choices]
        if not known:
            self.error(f"unrecognized arguments: {' '.join(extra)}; known commands: {', '.join(commands)}")
        first = next((a.split("=", 1)[0] for a in extra if a.startswith("-")), extra[0])
        close = difflib.get_close_matches(first, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        self.error(f"unrecognized arguments: {' '.join(extra)}{hint}; known options: {', '.join(known)}")


def _parse_masks(specs: list[str] | None) -> dict[str, str]:
    """``["train=train.npy", ...]`` -> ``{"train": "train.npy"}``."""
    masks: dict[str, str] = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--mask must be NAME=FILE.npy (e.g. --mask train=train.npy), got {spec!r}")
        if name in masks:
            raise ValueError(f"--mask {name} is given twice; give each mask once")
        masks[name] = path
    return masks


# The library's errors name Python arguments; the command's name its flags (a test runs each through the CLI).
_CLI_TERMS = (
    (r"pass overwrite=True", "pass --overwrite"),
    (r"save the dataset with x=\.\.\. and y=\.\.\.", "partition it again with --features X.npy --labels Y.npy"),
    (r"save the dataset with masks=\{[^}]*\}", "partition it again with --mask train=TRAIN.npy --mask val=VAL.npy --mask test=TEST.npy"),
    (r"re-run (sagann\.)?(chunks\.)?save_dataset", "re-run sagann partition"),
    (r"create it with (sagann\.)?(chunks\.)?save_dataset(\(\.\.\.\))?", "create it with sagann partition EDGES DIR"),
    (r"write one with sagann\.profiler\.save_profile\([^)]*\)", "write one with sagann train DATASET --profile DIR"),
    (r"re-run save_profile to rewrite it", "re-run sagann train --profile DIR to rewrite it"),
    (r"device='(\w+)'", r"--device \1"),
    (r"verify=False", "--no-verify"),
    (r"give num_vertices=N \(or features=\.\.\.\)", "give --num-vertices N (or --features X.npy)"),
)


# Python names of a command's options that differ from its flags' (``DemoConfig.num_vertices`` is ``--vertices``)
_ALIASES = {"demo": {"num_vertices": "--vertices"}}


def in_cli_terms(message: str, options: dict[str, str] | None = None) -> str:
    """``message`` with the Python arguments it names replaced by the command's flags.

    ``options`` maps a command's Python names to its flags (``budget_fraction``
    -> ``--budget-fraction``): a name with an underscore is replaced wherever
    it stands, any name where it is given a value (``got epochs=0`` -> ``got
    --epochs 0``).
    """
    for pattern, flag in _CLI_TERMS:
        message = re.sub(pattern, flag, message)
    for name, flag in (options or {}).items():
        message = re.sub(rf"(?<![\w-]){name}=(?=\S)", f"{flag} ", message)
        if "_" in name:
            message = re.sub(rf"(?<![\w.-]){name}\b(?!=)", flag, message)
    return message


def _options(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """The Python names of ``command``'s options (argparse's dest and the config's aliases) -> its flags."""
    names = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings and a.option_strings[-1].startswith("--") and a.dest != "help"}
    return {**names, **_ALIASES.get(command, {})}


def _json(obj) -> str:
    """JSON that strict parsers read: NaN (no vertex to measure, an undefined loss) becomes null."""

    def clean(v):
        if isinstance(v, float) and v != v:
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), allow_nan=False)


def _cmd_demo(args: argparse.Namespace) -> int:
    from sagann.demo import DemoConfig, format_report, run_demo
    from sagann.engine.train import TRANSFER_DTYPES

    dtype = TRANSFER_DTYPES[args.transfer_dtype]
    config = DemoConfig(epochs=args.epochs, num_vertices=args.vertices, budget_fraction=args.budget_fraction, seed=args.seed, transfer_dtype=dtype,
                        meter=args.json if args.meter is None else args.meter)
    result = run_demo(config, progress=not args.json and sys.stderr.isatty(), profile_dir=args.profile)
    print(json.dumps(result) if args.json else format_report(result))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from sagann.engine.train import TrainConfig, TrainingInterrupted, format_epoch, format_train_report, run_training
    from sagann.scheduler.progress import PassProgress, watch

    config = TrainConfig(
        args.dataset, model=args.model, epochs=args.epochs, hidden=args.hidden, lr=args.lr, device=args.device,
        memory_budget=args.memory_budget or ("64MB" if args.device == "cpu" else None), host_memory=args.host_memory, spill_dir=args.spill_dir, order=args.order, seed=args.seed,
        checkpoint=args.checkpoint, profile=args.profile, meter=args.json if args.meter is None else args.meter, verify=args.verify,
        transfer_dtype=args.transfer_dtype, dropout=args.dropout,
    )
    say = (lambda m: print(m, file=sys.stderr)) if args.json else (lambda m: tqdm.write(m, file=sys.stdout))  # noqa: E731

    def resumed(done: int) -> None:
        left = "nothing left to train" if done >= args.epochs else f"training epochs {done + 1}..{args.epochs}"
        say(f"resumed from the checkpoint in {args.checkpoint} after epoch {done}; {left}")

    on_epoch = None if args.json else (lambda s: say(format_epoch(s, args.epochs)))
    tty = sys.stderr.isatty()
    # on a terminal the training loop draws bars (per epoch, per pass); elsewhere a plain line every few seconds
    lines = watch(PassProgress(tty=False, every=args.progress_every)) if not tty else contextlib.nullcontext()
    try:
        with lines:
            result = run_training(config, progress=not args.json and tty, on_epoch=on_epoch, on_resume=resumed,
                                  on_forecast=lambda f: [say(line) for line in f.lines("--memory-budget")])
    except TrainingInterrupted as exc:  # SIGTERM with --checkpoint: the last finished epoch is saved
        print(f"sagann train: {exc}", file=sys.stderr)
        return 143
    print(_json(result) if args.json else format_train_report(result))
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from sagann import profiler

    summaries = profiler.load_summary(args.directory)
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries]))
    else:
        print(profiler.format_table(summaries, notes=True))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from sagann.bench import run_bench

    result = run_bench(args.what, quick=args.quick, out=args.out, graph=args.graph, scale=args.scale, sweep=args.sweep or None, budget_basis=args.budget_basis)
    print(json.dumps(result) if args.json else result.get("report", json.dumps(result, indent=2)))
    return 0


def _cmd_partition(args: argparse.Namespace) -> int:
    from sagann.chunks.external import PartitionConfig

    config = PartitionConfig(
        num_chunks=args.chunks, reorder=args.reorder, host_memory=args.host_memory, sub_chunk_nnz=args.sub_chunk_nnz,
        num_vertices=args.num_vertices, overwrite=args.overwrite, progress=sys.stderr.isatty(),
    )
    try:
        summary = _partition_input(args, config)
    except OSError as exc:  # disk full, permissions, ...: one line, no traceback
        print(f"sagann partition: error: {in_cli_terms(str(exc))}", file=sys.stderr)
        return 1
    print(json.dumps(summary.to_dict()) if args.json else summary.line())
    return 0


def _partition_input(args: argparse.Namespace, config):
    """Partition what ``sagann partition`` was given: an edge list, a saved PyG Data, or an OGB directory (--ogb)."""
    from sagann.chunks.external import partition_edge_list

    if args.ogb is not None or args.out is None:
        if args.ogb is None or args.out is not None:
            raise ValueError("give INPUT and OUT (sagann partition edges.npy OUT), or --ogb DIR and OUT alone (sagann partition --ogb DIR OUT)")
        if args.features or args.labels or args.mask:
            raise ValueError("--ogb reads features, labels and splits from the OGB directory; drop --features, --labels and --mask")
        from sagann.chunks.ogb import partition_ogb

        return partition_ogb(args.ogb, args.input, config, split=args.ogb_split, add_inverse_edges=args.add_inverse_edges)
    if args.ogb_split is not None or args.add_inverse_edges:
        raise ValueError("--ogb-split and --add-inverse-edges go with --ogb DIR")
    from sagann.interop.files import is_torch_file, partition_pyg_file

    if is_torch_file(args.input):
        if args.features or args.labels or args.mask:
            raise ValueError(f"{args.input} is a saved PyG Data: its x, y and *_mask go into the dataset; drop --features, --labels and --mask")
        return partition_pyg_file(args.input, args.out, config)
    return partition_edge_list(args.input, args.out, config, features=args.features, labels=args.labels, masks=_parse_masks(args.mask))


def _cmd_verify(args: argparse.Namespace) -> int:
    from sagann.chunks.dataset import MANIFEST, verify_dataset

    try:
        verify_dataset(args.dataset)
        with open(f"{args.dataset}/{MANIFEST}", encoding="utf-8") as f:
            m = json.load(f)
    except Exception as exc:  # anything wrong means "not a valid dataset": say why in one line
        reason = in_cli_terms(str(exc).replace("\n", " ")) or type(exc).__name__
        print(f"sagann verify: {args.dataset}: INVALID: {reason}", file=sys.stderr)
        return 1
    subs = m["files"]["chunk_index.npy"]["shape"][0]
    feats = m["features"]["shape"][1] if m["features"] else 0
    print(
        f"OK {args.dataset}: {m['num_vertices']} vertices, {m['num_edges']} edges, {m['num_chunks']} x {m['num_chunks']} chunks "
        f"({subs} sub-chunks), {feats} features, {len(m['files'])} files with matching sha256"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sagann", description="Full-graph GNN training larger than device memory.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="train a GCN out-of-core on a synthetic graph under a small CPU memory budget")
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--vertices", type=int, default=40_000, help="SBM vertices (edges = 16 x vertices)")
    demo.add_argument("--budget-fraction", type=float, default=0.25, help="device budget as a fraction of the in-memory working set")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--transfer-dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="rows cross the link in this type (16 bits: half the bytes; kernels compute in float32)")
    demo.add_argument("--profile", metavar="DIR", default=None, help="profile training; write trace.json, timeline.png, summary.json into DIR")
    demo.add_argument("--meter", action=argparse.BooleanOptionalAction, default=None, help="measure device memory as torch allocates it (measured_device_peak_bytes); default on with --json; slows a CPU run")
    demo.set_defaults(run=_cmd_demo)
    from sagann.engine.models import MODELS

    train = sub.add_parser("train", help="train a node classifier on a dataset directory (written by save_dataset / sagann partition)")
    train.add_argument("dataset", help="the dataset directory")
    train.add_argument("--model", default="gcn", help=f"one of: {', '.join(MODELS)} (default gcn)")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--hidden", type=int, default=64)
    train.add_argument("--lr", type=float, default=0.01)
    train.add_argument("--device", default="cpu", help="cpu (a virtual device under --memory-budget) or cuda (the first GPU; --memory-budget defaults to 85%% of its free memory)")
    train.add_argument("--memory-budget", default=None, help="device memory budget, e.g. 64MB, 1GiB (default 64MB on cpu, 85%% of the GPU's free memory on cuda)")
    train.add_argument("--host-memory", default=None, help="host RAM budget for features, layer outputs, gradients and saved activations, e.g. 2GB; "
                       "past it they live in memory-mapped spill files (the disk tier). Default: unlimited")
    train.add_argument("--spill-dir", default=None, help="directory for spill files (default: a temporary directory); put it on a fast local disk")
    train.add_argument("--order", default=None, help="chunk order: profile (Johnson's rule on measured times; float sums vary run to run) or natural (bit-reproducible); default natural with --checkpoint, else profile")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--dropout", type=float, default=0.5, help="dropout on the features and between the layers (default 0.5); "
                       "0 lets the first layer's aggregate be computed once and reused every epoch")
    train.add_argument("--transfer-dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                       help="rows cross the host link in this type (16 bits: half the bytes; kernels compute in float32)")
    train.add_argument("--checkpoint", metavar="DIR", default=None, help="save a checkpoint into DIR after every epoch and resume from it if present")
    train.add_argument("--profile", metavar="DIR", default=None, help="profile training; write trace.json, timeline.png, summary.json into DIR")
    train.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    train.add_argument("--meter", action=argparse.BooleanOptionalAction, default=None, help="measure device memory as torch allocates it (measured_device_peak_bytes); default on with --json; slows a CPU run")
    train.add_argument("--no-verify", dest="verify", action="store_false",
                       help="do not hash the dataset's files first (sizes, headers and the chunk index are still checked); "
                            "without it, a dataset unchanged since a verified run (same sizes and mtimes) is not hashed again")
    train.add_argument("--progress-every", type=float, default=5.0, metavar="SECONDS",
                       help="when stderr is not a terminal, print the current pass's progress (chunks, bytes, ETA) this often (default 5)")
    train.set_defaults(run=_cmd_train)
    prof = sub.add_parser("profile", help="print a saved profile's per-epoch table (IO, compute, runtime, overlap, bytes)")
    prof.add_argument("directory", help="a directory written by --profile")
    prof.add_argument("--json", action="store_true")
    prof.set_defaults(run=_cmd_profile)
    from sagann.bench import BENCHES, QUICK_REDDIT_SCALE, REDDIT_SCALE

    bench = sub.add_parser("bench", help="measure sagann side by side with its peers on this machine")
    bench.add_argument("what", choices=BENCHES)
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--quick", action="store_true", help="a small size that runs in seconds (a smoke test, not a measurement)")
    bench.add_argument("--out", default=None, help="append the result as a JSON line to this file")
    bench.add_argument("--graph", default=None, choices=("rmat", "reddit"), help="gcn, gat, sage: the R-MAT graph (default) or preset_graph('reddit', --scale), an SBM with Reddit's degree, 602 features, 41 classes")
    bench.add_argument("--scale", type=float, default=None, help=f"with --graph reddit: vertices and edges as a fraction of Reddit's (default {REDDIT_SCALE:g}; {QUICK_REDDIT_SCALE:g} with --quick)")
    bench.add_argument("--sweep", action="store_true", help="overlap: out-of-core / in-memory over a grid of graphs, widths, models, budgets and cache settings (--quick: a subset under 3 minutes)")
    bench.add_argument("--budget-basis", default=None, choices=("graph", "vertices"),
                       help="overlap: budgets are fractions of a whole-graph epoch's device peak with the graph's index arrays (graph, the default) or without them (vertices)")
    bench.set_defaults(run=_cmd_bench)
    part = sub.add_parser("partition", help="partition an edge list (.npy [2, E] / [E, 2] or 'src dst' text), a saved PyG Data or an OGB directory into a dataset directory, out of core")
    part.add_argument("input", help="the edge list: a .npy int array [2, E] or [E, 2], or text with one 'src dst' per line (# comments); "
                      "or a PyG Data saved with torch.save (its x, y and *_mask come along); with --ogb, the output directory")
    part.add_argument("out", nargs="?", default=None, help="the dataset directory to create (written atomically)")
    part.add_argument("--ogb", metavar="DIR", default=None, help="read OGB's node-property layout in DIR (raw/edge.csv.gz, node-feat, node-label, split/NAME/{train,valid,test}) instead of INPUT")
    part.add_argument("--ogb-split", metavar="NAME", default=None, help="with --ogb: which split/NAME to read (default: the only one)")
    part.add_argument("--add-inverse-edges", action="store_true", help="with --ogb: add each edge's reverse, as OGB does for ogbn-products and ogbn-proteins")
    part.add_argument("--chunks", default="auto", help="P, the number of vertex intervals, or auto: the smallest P whose row buckets fit --host-memory (default auto)")
    part.add_argument("--reorder", default="none", help="relabel vertices first: none, degree, rcm or metis (default none)")
    part.add_argument("--host-memory", default=None, help="RAM budget for edges and vertex arrays, e.g. 2GB (default: half the memory available now)")
    part.add_argument("--sub-chunk-nnz", type=int, default=1 << 20, help="most edges per sub-chunk (default 1048576)")
    part.add_argument("--features", default=None, metavar="X.npy", help="vertex features [N, F], floating")
    part.add_argument("--labels", default=None, metavar="Y.npy", help="vertex class ids [N], integer")
    part.add_argument("--mask", action="append", default=None, metavar="NAME=M.npy", help="a vertex mask [N], bool, e.g. --mask train=train.npy (repeat for val, test; sagann train needs all three)")
    part.add_argument("--num-vertices", type=int, default=None, help="N (default: the features' rows, else the largest id + 1)")
    part.add_argument("--overwrite", action="store_true", help="replace a dataset already at OUT, once the new one is complete")
    part.add_argument("--json", action="store_true", help="print one JSON object")
    part.set_defaults(run=_cmd_partition)
    ver = sub.add_parser("verify", help="check a dataset directory completely (manifest, sizes, sha256, chunk index); exit 1 if anything is wrong")
    ver.add_argument("dataset", help="the dataset directory")
    ver.set_defaults(run=_cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "command", None):
        if extra:
            parser.unknown_options(extra)
        parser.print_help()
        return 2
    if extra:  # named by the subcommand's parser, which knows its options
        _subparser(parser, args.command).unknown_options(extra)
    try:
        return args.run(args)
    except (ValueError, MemoryError, OSError) as exc:  # bad input, budgets, files: one line, no traceback
        message = in_cli_terms(" ".join(str(exc).split()), _options(_subparser(parser, args.command), args.command)) or type(exc).__name__
        print(f"sagann {args.command}: error: {message}", file=sys.stderr)
        return 1


def _subparser(parser: argparse.ArgumentParser, command: str) -> "_Parser":
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


if __name__ == "__main__":
    sys.exit(main())
