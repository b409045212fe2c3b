"""Shared machinery of `sagann bench gcn|gat|sage`: one full-graph training epoch, sagann vs its peers.

A :class:`Bench` names a model (its sagann version, its PyG layers, its
extra configurations); everything else is common so the three benchmarks
measure alike:

* the graph, features and labels are written once to ``.npy`` files that
  every worker reads (DGL's too, which must not import sagann): an R-MAT
  graph with random features (the default) or ``preset_graph("reddit",
  scale)``, an SBM with Reddit's average degree, 602 features, 41 classes;
* the initial weights are sagann's model built under ``torch.manual_seed(0)``,
  saved under PyG's parameter names (``conv1.lin.weight``, ...) and loaded
  by every implementation, so all of them train the same model from the
  same start and their losses agree up to float rounding;
* each configuration runs in a fresh subprocess (its peak RSS is its own),
  ``warmup`` + ``reps`` epochs of zero_grad + forward + cross-entropy over
  all vertices + backward + ``Adam(lr=0.01).step``, configurations
  alternating over ``rounds``;
* a worker that runs out of memory, fails, is killed or times out is
  recorded as ``{"error": ...}`` with the graph's size; the bench goes on.

Self loops: the edge file never has any (they are removed with duplicate
edges from graphs that have them). Every implementation then sees the
edges plus exactly one self loop per vertex: layers that add loops
themselves (GCNConv, GATConv in sagann and PyG) add them; for the others
(SAGEConv) the worker appends them to the edge list; DGL calls
``dgl.add_self_loop``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import torch

from sagann.bench import _peers, roofline
from sagann.bench.roofline import graph_index_bytes
from sagann.bench.graph_files import GRAPHS, QUICK_REDDIT_SCALE, REDDIT_SCALE, RMAT_CLASSES, RMAT_FEATURES, GraphFiles, prepare_graph, rmat_features
from sagann.bench._results import ratios, summarise
from sagann.units import format_bytes, parse_bytes

__all__ = ["GRAPHS", "QUICK_REDDIT_SCALE", "REDDIT_SCALE", "RMAT_CLASSES", "RMAT_FEATURES", "Bench", "EpochOptions", "GraphFiles", "prepare_graph", "run_epochs",
           "runner", "worker_main", "format_report", "rmat_features"]

REPS, WARMUP, ROUNDS = 5, 1, 2
QUICK_REPS = 2  # --quick is a smoke test of every path, not a measurement
BUDGET_FRACTION = 8  # sagann_ooc's budget = a whole-graph epoch's in-memory working set / 8
# --quick: / 2. On the tiny graph the fixed per-row and per-chunk bytes dominate, and 1/8
# makes the planner pick P > 100 (thousands of sub-chunks): a smoke test must be quick.
QUICK_BUDGET_FRACTION = 2
WORKER_TIMEOUT_S, QUICK_WORKER_TIMEOUT_S = 1800, 300
LR = 0.01
DGL_HINT = "not run: no DGL environment (create it with `bash benchmarks/dgl_env.sh`, or set SAGANN_DGL_PYTHON)"

# (model, forward(x) -> logits, info() -> dict of extra result keys)
Built = tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor], Callable[[], dict]]


@dataclass(frozen=True)
class Bench:
    """One model's benchmark: what differs between `bench gcn`, `bench gat` and `bench sage`.

    ``sagann_model(in, classes)`` and ``pyg_layers(in, classes)`` build the
    two-layer model; ``extra`` adds configurations by name
    (``builder(edge_index, n, in, classes) -> Built``); ``adds_self_loops``
    says whether the layers add the self loops themselves; ``simple_rmat``
    removes R-MAT's duplicate edges (needed where a peer's CSR would merge
    them: attention and mean weigh a duplicate like a distinct edge);
    ``caches_gather``: the first layer reuses its Gather of the features
    (``ScheduleConfig.cache_gather``), so ``sagann_streamed`` and
    ``sagann_ooc_streamed`` (the cache off, in memory and out of core) run
    beside ``sagann_p1`` and ``sagann_ooc``.
    """

    name: str
    hidden: int
    description: str  # the layers, format()ed with in_channels, hidden, classes
    sagann_model: Callable[[int, int], torch.nn.Module]
    pyg_layers: Callable[[int, int], tuple[torch.nn.Module, torch.nn.Module]]
    adds_self_loops: bool
    simple_rmat: bool = True
    heads: int = 1
    extra: dict[str, Callable[..., Built]] = field(default_factory=dict)
    caches_gather: bool = True

    @property
    def configs(self) -> tuple[str, ...]:
        """Alternating ours / a peer's; sagann_p1 first: its working set sets sagann_ooc's budget."""
        streamed = ("sagann_streamed", "sagann_ooc_streamed") if self.caches_gather else ()
        return ("sagann_p1", "pyg_csr", "sagann_ooc", "pyg_edge_index", *self.extra, *streamed, "dgl")

    def model_line(self, in_channels: int, classes: int) -> str:
        layers = self.description.format(in_channels=in_channels, hidden=self.hidden, classes=classes)
        return f"{layers}, dropout 0, Adam(lr={LR:g}), cross-entropy over all vertices"


# ----------------------------------------------------------------------------- initial weights
def _canonical(key: str) -> str:
    """sagann's ``layers.0.lin.weight`` -> PyG's ``conv1.lin.weight`` (the names in the init file)."""
    return re.sub(r"^layers\.(\d+)\.", lambda m: f"conv{int(m[1]) + 1}.", key)


def write_init(bench: Bench, in_channels: int, classes: int, path: Path) -> Path:
    """sagann's model under seed 0, saved by PyG's names: every implementation starts from these weights."""
    torch.manual_seed(0)
    model = bench.sagann_model(in_channels, classes)
    np.savez(path, **{_canonical(k): v.detach().numpy() for k, v in model.state_dict().items()})
    return path


def load_init(model: torch.nn.Module, path: str) -> None:
    """Load the init file into ``model``, whose parameters are named as PyG's (or sagann's ``layers.k``)."""
    init = np.load(path)
    state = {}
    for key, value in model.state_dict().items():
        if _canonical(key) not in init:
            raise ValueError(f"init file {path} has no {_canonical(key)!r} for {key!r}; it was written for another model (it holds {', '.join(init.files)})")
        state[key] = torch.from_numpy(init[_canonical(key)]).reshape(value.shape)
    model.load_state_dict(state)


# ----------------------------------------------------------------------------- workers
def _sagann(bench: Bench, ei: np.ndarray, n: int, dims: tuple[int, int], budget: int | None, num_chunks: int | None, cache_gather: bool = True,
            whole_intervals: bool = False) -> Built:
    """sagann's model on a CpuDevice; ``dims``: (input features, classes)."""
    from sagann.engine.graph import ChunkedGraph
    from sagann.scheduler.config import ScheduleConfig
    from sagann.scheduler.devices import CACHE_BLOCK_BYTES, CpuDevice

    # out of core, every transfer is a real copy (as to a GPU); in memory the rows are already resident
    device = CpuDevice(budget, copy_transfers=budget is not None, vertex_block_bytes=None if whole_intervals else CACHE_BLOCK_BYTES)
    g = ChunkedGraph(ei, n, num_chunks=num_chunks, device=device, schedule=ScheduleConfig(cache_gather=cache_gather))
    model = bench.sagann_model(*dims)

    def info() -> dict:
        return {"num_chunks": g.num_chunks, "peak_device_bytes": device.peak_bytes, "memory_budget_bytes": budget}

    return model, (lambda x: model(g, x)), info


def pyg_csr(ei: np.ndarray, n: int) -> torch.Tensor:
    """A torch CSR ``adj_t`` (rows = destinations) whose values count each edge's copies.

    PyG's own ``to_torch_csr_tensor`` merges duplicate edges into one of
    value 1, which changes a multigraph (R-MAT's); summed, a GCN sees the
    same degrees and weights as on ``edge_index``.
    """
    from torch_geometric.utils import coalesce, to_torch_csr_tensor

    adj_index, weight = coalesce(torch.from_numpy(ei).flip(0), torch.ones(ei.shape[1]), n, reduce="sum")
    return to_torch_csr_tensor(adj_index, weight, size=(n, n), is_coalesced=True)


class _PygNet(torch.nn.Module):
    """Two PyG layers with ReLU between, as sagann's models."""

    def __init__(self, conv1: torch.nn.Module, conv2: torch.nn.Module):
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2

    def forward(self, x: torch.Tensor, adj) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x, adj)), adj)


def _pyg(bench: Bench, ei: np.ndarray, n: int, in_channels: int, classes: int, csr: bool) -> Built:
    adj = pyg_csr(ei, n) if csr else torch.from_numpy(ei)
    model = _PygNet(*bench.pyg_layers(in_channels, classes))
    return model, (lambda x: model(x, adj)), dict


def build(bench: Bench, config: str, ei: np.ndarray, n: int, in_channels: int, classes: int, budget: int | None, whole_intervals: bool = False) -> Built:
    """The model of one configuration; the edge list gets its self loops here where the layers add none.
    ``whole_intervals``: sagann in memory with ApplyVertex on whole intervals (:func:`whole_graph_peak`)."""
    if not bench.adds_self_loops:
        ei = _peers.with_self_loops(ei, n)
    if config == "sagann_p1":
        return _sagann(bench, ei, n, (in_channels, classes), None, 1, whole_intervals=whole_intervals)
    if config == "sagann_ooc":
        return _sagann(bench, ei, n, (in_channels, classes), budget, None)
    if config == "sagann_streamed":  # sagann_p1 without the cached first-layer Gather: every layer streams its edges
        return _sagann(bench, ei, n, (in_channels, classes), None, 1, cache_gather=False, whole_intervals=whole_intervals)
    if config == "sagann_ooc_streamed":  # sagann_ooc likewise, under 1/8 of sagann_streamed's working set
        return _sagann(bench, ei, n, (in_channels, classes), budget, None, cache_gather=False)
    if config in ("pyg_edge_index", "pyg_csr"):
        return _pyg(bench, ei, n, in_channels, classes, csr=config == "pyg_csr")
    if config in bench.extra:
        return bench.extra[config](ei, n, in_channels, classes)
    raise ValueError(f"unknown configuration {config!r} for bench {bench.name}; known: {', '.join(bench.configs)}")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch raises RuntimeError ("DefaultCPUAllocator: can't allocate memory"), numpy and sagann MemoryError."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(s in text for s in ("out of memory", "can't allocate memory", "not enough memory")))


def failure(config: str, phase: str, exc: BaseException) -> dict:
    """A worker's failure as a result row: out of memory or another error, with the phase it hit."""
    what = "out of memory" if is_out_of_memory(exc) else "failed"
    message = " ".join(str(exc).split())[:500] or type(exc).__name__
    return {"config": config, "error": f"{what} during {phase}: {type(exc).__name__}: {message}", "out_of_memory": what == "out of memory", "peak_rss_bytes": _peers.peak_rss_bytes()}


def train(model: torch.nn.Module, forward: Callable, x: torch.Tensor, y: torch.Tensor, reps: int, warmup: int) -> tuple[list[float], float]:
    """``warmup + reps`` epochs (zero_grad, forward, loss over all vertices, backward, Adam step): seconds each, last loss."""
    import torch.nn.functional as F

    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    times, loss = [], torch.tensor(float("nan"))
    for _ in range(warmup + reps):
        t = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times, float(loss.detach())


def _load(args: argparse.Namespace) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Edges, features and labels; without --features, R-MAT's (the worker's old command line)."""
    ei = np.load(args.graph)
    if args.features is None:
        x, y = rmat_features(args.num_vertices)
    else:
        x, y = torch.from_numpy(np.load(args.features)), torch.from_numpy(np.load(args.labels))
    if x.shape[0] != args.num_vertices or y.shape[0] != args.num_vertices:
        raise ValueError(f"features {list(x.shape)} / labels {list(y.shape)} do not have --num-vertices={args.num_vertices} rows; pass the files written for this graph")
    return ei, x, y


def worker(bench: Bench, args: argparse.Namespace) -> dict:
    """One configuration in this process: build, warm-up + timed epochs, peak RSS; a failure becomes a row."""
    phase = "setup"
    try:
        t0 = time.perf_counter()
        ei, x, y = _load(args)
        classes = args.classes or int(y.max()) + 1
        torch.manual_seed(0)
        model, forward, info = build(bench, args.worker, ei, args.num_vertices, x.shape[1], classes, args.budget)
        if args.init:
            load_init(model, args.init)
        del ei
        setup_s = time.perf_counter() - t0
        rss_setup = psutil.Process().memory_info().rss
        phase = "the epochs"
        times, loss = train(model, forward, x, y, args.reps, args.warmup)
        peak_rss = _peers.peak_rss_bytes()  # before the whole-graph epochs below, which hold more
    except Exception as exc:  # out of memory, a bad plan, a peer's limitation: a row, not a crash
        return failure(args.worker, phase, exc)
    extra = {}
    if args.whole_graph_peak:  # an out-of-core configuration's budget still needs it
        del model, forward
        try:
            extra["whole_graph_peak_bytes"] = whole_graph_peak(bench, args, x, y, classes)
        except Exception as exc:  # the timed epochs stand; only the budget they would set is missing
            extra["whole_graph_peak_error"] = failure(args.worker, "the whole-graph epochs", exc)["error"]
    return {
        "config": args.worker,
        "epoch_seconds": times[args.warmup :],
        "warmup_seconds": times[: args.warmup],
        "setup_seconds": setup_s,
        "loss": loss,
        "rss_after_setup_bytes": rss_setup,
        "peak_rss_bytes": peak_rss,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        **info(),
        **extra,
    }


def whole_graph_peak(bench: Bench, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, classes: int) -> int:
    """The device peak of in-memory epochs with ApplyVertex on whole intervals, as PyG and DGL run them, and the graph's
    index arrays (``roofline.graph_index_bytes``, which the whole-graph CPU run reads in place): the out-of-core budgets
    are a fraction of it (as in ``sagann bench overlap --sweep``), not of the blocked in-memory run's own peak."""
    ei = np.load(args.graph)  # the worker freed its copy for the timed epochs; the features and labels it still holds
    structure = graph_index_bytes(int(ei.shape[1]), args.num_vertices)
    torch.manual_seed(0)
    model, forward, info = build(bench, args.worker, ei, args.num_vertices, x.shape[1], classes, None, whole_intervals=True)
    del ei
    if args.init:
        load_init(model, args.init)
    train(model, forward, x, y, 0, args.warmup + args.reps)  # as many epochs as the timed run: a later epoch's peak can be higher
    return info()["peak_device_bytes"] + structure


def worker_main(bench: Bench, argv: list[str] | None = None) -> int:
    """``python -m sagann.bench.<name> --worker CONFIG ...``: one configuration, one JSON line on stdout."""
    p = argparse.ArgumentParser(description=f"one {bench.name.upper()} benchmark configuration (a worker of `sagann bench {bench.name}`)")
    p.add_argument("--worker", required=True, choices=[c for c in bench.configs if c != "dgl"])
    p.add_argument("--graph", required=True, help=".npy edge_index [2, E] without self loops")
    p.add_argument("--num-vertices", type=int, required=True)
    p.add_argument("--features", default=None, help=".npy float32 [N, F] (default: R-MAT's random features)")
    p.add_argument("--labels", default=None, help=".npy int64 [N] (with --features)")
    p.add_argument("--classes", type=int, default=None, help="number of classes (default: the largest label + 1)")
    p.add_argument("--init", default=None, help=".npz initial weights by PyG's names (default: this model's own under seed 0)")
    p.add_argument("--reps", type=int, default=REPS)
    p.add_argument("--warmup", type=int, default=WARMUP)
    p.add_argument("--budget", type=int, default=None, help="device budget in bytes (sagann_ooc)")
    p.add_argument("--whole-graph-peak", action="store_true", help="after the timed epochs, measure a whole-graph epoch's device peak (an out-of-core budget's base)")
    args = p.parse_args(argv)
    if (args.features is None) != (args.labels is None):
        p.error("give --features and --labels together")
    print(json.dumps(worker(bench, args)))
    return 0


# ----------------------------------------------------------------------------- driver
def _dgl_python() -> str | None:
    env = os.environ.get("SAGANN_DGL_PYTHON")
    if env:
        return env
    root = _peers.repo_root()
    if root is not None and (root / "benchmarks" / ".dgl-venv" / "bin" / "python").exists():
        return str(root / "benchmarks" / ".dgl-venv" / "bin" / "python")
    return None


def _command(bench: Bench, config: str, files: GraphFiles, init: Path, reps: int, warmup: int, budget: int | None, whole: bool = False) -> list[str] | None:
    """The worker's command line; None where DGL's environment is missing. ``whole``: measure a whole-graph epoch's peak too."""
    common = [
        "--graph", str(files.edges), "--num-vertices", str(files.num_vertices), "--features", str(files.features), "--labels", str(files.labels),
        "--classes", str(files.info["classes"]), "--init", str(init), "--reps", str(reps), "--warmup", str(warmup),
    ]
    if config == "dgl":
        py, root = _dgl_python(), _peers.repo_root()
        if py is None or root is None:
            return None
        return [py, str(root / "benchmarks" / "dgl_epoch.py"), "--model", bench.name, "--hidden", str(bench.hidden), "--heads", str(bench.heads), *common]
    cmd = [sys.executable, "-m", f"sagann.bench.{bench.name}", "--worker", config, *common] + (["--whole-graph-peak"] if whole else [])
    return cmd if budget is None else cmd + ["--budget", str(budget)]


OUT_OF_CORE = {"sagann_ooc": "sagann_p1", "sagann_ooc_streamed": "sagann_streamed"}  # whose whole-graph working set sets the budget


def _run_config(bench: Bench, config: str, files: GraphFiles, init: Path, reps: int, budget: int | None, timeout: float, whole: bool = False) -> dict:
    """One worker run; every failure (missing peer, OOM, kill, timeout) is a row naming it and the graph's size.
    ``whole``: the worker also measures a whole-graph epoch's peak, which an out-of-core budget still waits for."""
    if config in OUT_OF_CORE and budget is None:
        base = OUT_OF_CORE[config]
        r = {"error": f"not run: {config}'s budget is a fraction of {base}'s whole-graph working set; run {base} first (it, or its whole-graph "
                      "epochs, failed or it was left out) or give ooc_budget"}
    else:
        cmd = _command(bench, config, files, init, reps, WARMUP, budget if config in OUT_OF_CORE else None, whole)
        r = {"error": DGL_HINT} if cmd is None else _peers.run_worker(cmd, timeout)
    r["load_average_after"] = _peers.load_average()
    if "error" in r:
        r["graph_size"] = {k: files.info[k] for k in ("name", "num_vertices", "edges_with_self_loops", "features")}
    return r


def _check_configs(bench: Bench, configs, quick: bool) -> tuple[str, ...]:
    if not configs:
        return tuple(c for c in bench.configs if not (quick and c == "dgl"))
    unknown = [c for c in configs if c not in bench.configs]
    if unknown:
        raise ValueError(f"unknown configuration(s) {', '.join(unknown)} for bench {bench.name}; known: {', '.join(bench.configs)}")
    return tuple(configs)


@dataclass(frozen=True)
class EpochOptions:
    """What one run of a bench may be told (the keywords of :func:`runner`'s ``run``); None picks the default."""

    quick: bool = False
    configs: tuple[str, ...] | None = None
    rounds: int | None = None
    reps: int | None = None
    graph_dir: str | None = None
    graph: str = "rmat"
    scale: float | None = None
    timeout: float | None = None
    ooc_budget: int | str | None = None


def run_epochs(bench: Bench, options: EpochOptions) -> dict:
    """Run every configuration in fresh subprocesses, alternating, ``rounds`` times.

    ``quick`` uses a tiny graph, one round of 2 epochs and no DGL.
    ``ooc_budget`` (bytes or "2GB") fixes the out-of-core configurations'
    device budget instead of 1/8 of the in-memory working set (where the
    in-memory configuration cannot run). Returns a
    JSON-able dict: per configuration the median epoch time, peak RSS, final
    loss or the error.
    """
    quick = options.quick
    configs = _check_configs(bench, options.configs, quick)
    rounds = options.rounds or (1 if quick else ROUNDS)
    reps = options.reps or (QUICK_REPS if quick else REPS)
    fraction = QUICK_BUDGET_FRACTION if quick else BUDGET_FRACTION
    timeout = options.timeout or (QUICK_WORKER_TIMEOUT_S if quick else WORKER_TIMEOUT_S)
    fixed_budget = parse_bytes(options.ooc_budget)
    tmp = tempfile.TemporaryDirectory(prefix=f"sagann-bench-{bench.name}-") if options.graph_dir is None else None
    directory = Path(tmp.name if tmp else options.graph_dir)
    try:
        files = prepare_graph(directory, options.graph, options.scale, quick, simple=bench.simple_rmat)
        in_channels, classes = files.info["features"], files.info["classes"]
        init = write_init(bench, in_channels, classes, directory / f"init_{bench.name}_{in_channels}_{classes}.npz")
        load_before = _peers.load_average()
        runs: dict[str, list[dict]] = {c: [] for c in configs}
        budgets = {c: fixed_budget for c in OUT_OF_CORE}
        for _ in range(rounds):
            for config in configs:
                waiting = any(budgets[ooc] is None and ooc in configs for ooc, base in OUT_OF_CORE.items() if base == config)
                r = _run_config(bench, config, files, init, reps, budgets.get(config), timeout, waiting)
                runs[config].append(r)
                for ooc, base in OUT_OF_CORE.items():
                    if config == base and budgets[ooc] is None and "whole_graph_peak_bytes" in r:
                        budgets[ooc] = max(1, r["whole_graph_peak_bytes"] // fraction)
        budget = budgets["sagann_ooc"]
    finally:
        if tmp is not None:
            tmp.cleanup()
    results = {c: summarise(rs) for c, rs in runs.items()}
    losses = {c: x["loss"] for c, x in results.items() if "loss" in x}
    result = {
        "graph": files.info,
        "model": bench.model_line(in_channels, classes),
        "reps": reps,
        "warmup": WARMUP,
        "rounds": rounds,
        "order": list(configs),
        "ooc_budget_fraction": None if fixed_budget else f"1/{fraction}",
        "ooc_budget_bytes": budget,
        "ooc_streamed_budget_bytes": budgets["sagann_ooc_streamed"],
        "init": "every implementation starts from sagann's model under torch.manual_seed(0) (weights by PyG's names)",
        "self_loops": "one per vertex: added by the layers" if bench.adds_self_loops else "one per vertex: appended to the edge list by the worker (the layers add none)",
        "worker_timeout_s": timeout,
        "load_average_before": load_before,
        "load_average_after": _peers.load_average(),
        "results": results,
        "losses": losses,
        "loss_spread": (max(losses.values()) - min(losses.values())) / min(losses.values()) if len(losses) > 1 and min(losses.values()) > 0 else None,
        "quick": quick,
    }
    result["ratios"] = ratios(results)
    result["roofline"] = _roofline(bench, files.info, results)
    result["report"] = format_report(result)
    return result


def _roofline(bench: Bench, info: dict, results: dict) -> dict:
    """The epoch's floor on this machine (:mod:`sagann.bench.roofline`) and each configuration's fraction of it; cached Gather where it runs."""
    rates = roofline.machine_rates()
    shape = (bench.name, info["num_vertices"], info["edges_with_self_loops"], info["features"], bench.hidden, info["classes"], rates)
    floors = {cached: roofline.epoch_floor(*shape, cached=cached) for cached in (False, True)}
    cached = {"sagann_p1", "sagann_ooc"} if bench.caches_gather else set()
    fraction = {c: floors[c in cached] / x["epoch_s"] for c, x in results.items() if "epoch_s" in x}
    return {"rates": rates, "floor_seconds": floors[False], "floor_seconds_cached": floors[True], "fraction_of_floor": fraction}


def runner(bench: Bench) -> Callable[..., dict]:
    """The bench's ``run(quick=False, *, configs=None, rounds=None, ...)``: :func:`run_epochs` with ``bench`` given."""

    def run(quick: bool = False, *, configs: tuple[str, ...] | None = None, rounds: int | None = None, reps: int | None = None, graph_dir: str | None = None,
            graph: str = "rmat", scale: float | None = None, timeout: float | None = None, ooc_budget: int | str | None = None) -> dict:
        options = EpochOptions(quick=quick, configs=configs, rounds=rounds, reps=reps, graph_dir=graph_dir, graph=graph, scale=scale, timeout=timeout, ooc_budget=ooc_budget)
        return run_epochs(bench, options)

    run.__doc__ = f"`sagann bench {bench.name}`: " + (run_epochs.__doc__ or "")
    return run


def _graph_line(gr: dict) -> str:
    name = "R-MAT" if gr.get("name", "rmat") == "rmat" else f"{gr['name']} (SBM)"
    simple = ", no duplicate edges" if gr.get("simple") else ""
    return f"{name} N={gr['num_vertices']:,}, {gr['edges_with_self_loops']:,} edges with self loops{simple}, {gr.get('features', RMAT_FEATURES)} features, {gr.get('classes', RMAT_CLASSES)} classes"


def _floor_lines(r: dict) -> list[str]:
    roof = r.get("roofline")
    if not roof:
        return []
    rates = roof["rates"]
    return [f"floor on this machine: {roof['floor_seconds']:.3f} s streamed, {roof['floor_seconds_cached']:.3f} s with the cached Gather "
            f"(bytes every kernel must touch / {rates['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s + GEMM FLOPs / {rates['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s)"]


def format_report(r: dict) -> str:
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    lines = [
        f"{r['model']}",
        f"{_graph_line(r['graph'])}; median of {r['reps']} epochs x {r['rounds']} round(s) after {r['warmup']} warm-up",
        f"load average before {r['load_average_before']}, after {r['load_average_after']}",
        *_floor_lines(r),
        "",
        f"{'configuration':16} {'epoch s':>9} {'peak RSS':>10} {'warm-up s':>10} {'loss':>8}  notes",
    ]
    for c, x in r["results"].items():
        if "error" in x:
            lines.append(f"{c:16} {'-':>9} {'-':>10} {'-':>10} {'-':>8}  {x['error']}")
            continue
        notes = []
        if "num_chunks" in x:
            notes.append(f"P={x['num_chunks']}, peak device {format_bytes(x['peak_device_bytes'])}")
            if x.get("whole_graph_peak_bytes"):
                notes.append(f"whole intervals {format_bytes(x['whole_graph_peak_bytes'])}")
            if x.get("memory_budget_bytes"):
                notes.append(f"budget {format_bytes(x['memory_budget_bytes'])}")
        if c in r["ratios"]:
            notes.append(f"{r['ratios'][c]['time']:.2f}x sagann_p1's time, {r['ratios'][c]['peak_rss']:.2f}x its RSS")
        if c in r.get("roofline", {}).get("fraction_of_floor", {}):
            notes.append(f"{100 * r['roofline']['fraction_of_floor'][c]:.0f}% of the floor")
        lines.append(f"{c:16} {x['epoch_s']:9.3f} {gib(x['peak_rss_bytes']):>10} {max(x['warmup_s']):10.2f} {x['loss']:8.4f}  {'; '.join(notes)}")
    if r.get("loss_spread") is not None:
        lines.append(f"final losses (same initial weights and data) differ by at most {100 * r['loss_spread']:.3g}%")
    return "\n".join(lines)
