"""Writing profiles: Chrome/Perfetto traces, timeline PNGs, summary JSON, tables.

Every file is written to a temporary file in the target directory and then
renamed over the target, so a crash never leaves a half-written file.
"""
from __future__ import annotations

import json
import os
import secrets
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO as FileIO

from .types import IO_KINDS, KINDS, Seconds, Span, chunk_label
from .stats import EpochSummary, as_spans, summarize

PathLike = str | os.PathLike

TRACE_FILE = "trace.json"
TIMELINE_FILE = "timeline.png"
SUMMARY_FILE = "summary.json"
SUMMARY_FORMAT = "sagann-profile-summary"
SUMMARY_VERSION = 1


def _atomic_write(path: PathLike, write: Callable[[FileIO], None], binary: bool = False) -> Path:
    """Run ``write(f)`` on a temp file next to ``path``, then rename it into place."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist; "
            "create it first (save_profile creates its directory)"
        )
    # Not tempfile.mkstemp: its 0600 mode would survive the rename; os.open
    # with 0666 lets the umask decide, as for any ordinary file.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _rows(spans: Sequence[Span]) -> list[tuple[str, str]]:
    """(device, track) pairs: devices by name, each device's tracks by first use."""
    devices: dict[str, dict[str, None]] = {}
    for s in sorted(spans, key=lambda s: s.t0):
        devices.setdefault(s.device, {}).setdefault(s.track, None)
    return [(d, t) for d in sorted(devices) for t in devices[d]]


def chrome_trace(spans) -> dict:
    """The Chrome trace-event dict for ``spans`` (see :func:`write_chrome_trace`)."""
    spans = as_spans(spans)
    origin = min((s.t0 for s in spans), default=0.0)
    events: list[dict] = []
    pids: dict[str, int] = {}
    tids: dict[tuple[str, str], int] = {}
    for device, track in _rows(spans):
        if device not in pids:
            pid = pids[device] = len(pids) + 1
            events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": device}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
        pid = pids[device]
        tid = tids[device, track] = len(tids) + 1  # unique across devices too
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": track}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
    for s in spans:
        args = {"kind": s.kind, "nbytes": s.nbytes, "epoch": s.epoch, "phase": s.phase}
        if s.chunk is not None:
            args["chunk"] = chunk_label(s.chunk)
        if s.layer is not None:
            args["layer"] = s.layer
        events.append({
            "ph": "X",
            "name": s.kind,
            "cat": s.category,
            "pid": pids[s.device],
            "tid": tids[s.device, s.track],
            "ts": (s.t0 - origin) * 1e6,
            "dur": (s.t1 - s.t0) * 1e6,
            "args": args,
        })
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"clock_origin_seconds": origin}}


def write_chrome_trace(spans, path: PathLike) -> Path:
    """Write a Chrome/Perfetto trace: one process per device, one thread per track.

    Open it in https://ui.perfetto.dev or chrome://tracing. Times are in
    microseconds from the first span's start.
    """
    trace = chrome_trace(spans)
    return _atomic_write(path, lambda f: json.dump(trace, f))


# IO kinds in cool colours, compute kinds in warm ones: the two Table-2
# columns stay apart at a glance while stages remain distinguishable.
_COLOURS = {
    "disk": "#08306b",
    "gather": "#6baed6",
    "h2d": "#2171b5",
    "d2d": "#41ab5d",
    "d2h": "#807dba",
    "scatter": "#fdae6b",
    "apply_edge": "#f16913",
    "gather_reduce": "#d94801",
    "apply_vertex": "#a63603",
    "kernel": "#e31a1c",
    "evict": "#969696",
    "other": "#bdbdbd",
}


def write_timeline_png(spans, path: PathLike, title: str | None = None, epochs: Iterable[int] | None = None) -> Path:
    """Draw one bar row per (device, track), coloured by kind, x axis in ms.

    Dotted vertical lines mark where each epoch starts (labelled sparsely
    when there are many). ``epochs`` draws only those epochs, e.g. ``[2]``
    to see one epoch's overlap at a readable scale.
    """
    from matplotlib.figure import Figure  # lazy: matplotlib is an optional extra
    from matplotlib.patches import Patch

    spans = as_spans(spans)
    if epochs is not None:
        wanted = set(epochs)
        spans = [s for s in spans if s.epoch in wanted]
    rows = _rows(spans)
    origin = min((s.t0 for s in spans), default=0.0)
    fig = Figure(figsize=(12, 1.4 + 0.45 * max(len(rows), 1)), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    row_of = {r: k for k, r in enumerate(rows)}
    bars: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for s in spans:
        bars.setdefault((row_of[s.device, s.track], s.kind), []).append(((s.t0 - origin) * 1e3, (s.t1 - s.t0) * 1e3))
    for (row, kind), xs in bars.items():
        ax.broken_barh(xs, (row - 0.38, 0.76), facecolors=_COLOURS[kind], linewidth=0)
    epoch_starts: dict[int, float] = {}
    for s in spans:
        epoch_starts[s.epoch] = min(epoch_starts.get(s.epoch, s.t0), s.t0)
    if len(epoch_starts) > 1:
        every = -(-len(epoch_starts) // 10)  # at most about ten labels
        for k, (e, t) in enumerate(sorted(epoch_starts.items())):
            x = (t - origin) * 1e3
            ax.axvline(x, color="0.4", linestyle=":", linewidth=0.8)
            if k % every:
                continue
            ax.annotate(f"epoch {e}", (x, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=7, color="0.3")
    ax.set_yticks(range(len(rows)), [f"{d} / {t}" for d, t in rows])
    ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)  # first device on top
    ax.set_xlabel("time (ms)")
    ax.grid(axis="x", color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)
    if not spans:
        ax.text(0.5, 0.5, "no spans recorded", ha="center", va="center", transform=ax.transAxes)
    seen = {s.kind for s in spans}
    handles = [Patch(color=_COLOURS[k], label=f"{k} ({'IO' if k in IO_KINDS else 'compute'})")
               for k in KINDS if k in seen]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    ax.set_title(title or "sagann timeline", fontsize=10, pad=14 if len(epoch_starts) > 1 else 6)
    return _atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)


def write_summary_json(summaries: Iterable[EpochSummary], path: PathLike) -> Path:
    """Write ``{"format", "version", "epochs": [EpochSummary.to_dict(), ...]}``."""
    doc = {
        "format": SUMMARY_FORMAT,
        "version": SUMMARY_VERSION,
        "epochs": [s.to_dict() for s in summaries],
    }
    return _atomic_write(path, lambda f: (json.dump(doc, f, indent=2), f.write("\n")))


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            return f"{int(x)} {unit}" if unit == "B" else f"{x:.2f} {unit}"
        x /= 1024
    raise AssertionError("unreachable")


def format_table(summaries: Iterable[EpochSummary], notes: bool = False) -> str:
    """The per-epoch table with NeuGraph's Table 2 columns, for a terminal; ``notes`` adds what the columns mean."""
    summaries = list(summaries)
    header = ("epoch", "IO s", "compute s", "runtime s", "overlap %", "bytes moved", "bytes full")
    rows = [
        (
            str(s.epoch),
            f"{s.io_seconds:.4f}",
            f"{s.compute_seconds:.4f}",
            f"{s.runtime_seconds:.4f}",
            f"{100 * s.overlap:.1f}",
            _fmt_bytes(s.bytes_moved),
            _fmt_bytes(s.bytes_moved_full),
        )
        for s in summaries
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    line = lambda r: "  ".join(v.rjust(w) for v, w in zip(r, widths))  # noqa: E731
    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    if not rows:
        out.append("(no spans recorded)")
    return "\n".join(out + (table_notes(summaries) if notes else []))


def table_notes(summaries: Sequence[EpochSummary]) -> list[str]:
    """What the table's byte and overlap columns mean, and why they read as they do here."""
    if not summaries:
        return []
    notes = [
        "bytes moved: host-to-device bytes of the epoch's passes (source rows, edge rows, index arrays) as scheduled; "
        "bytes full: the same passes with every chunk's source interval V_i sent whole (non-selective)"
    ]
    if any(s.bytes_moved_full is not None and s.bytes_moved > s.bytes_moved_full for s in summaries):
        notes.append(
            "bytes moved > bytes full: the budget left no room for whole blocks of V_i, so each sub-chunk sent its own "
            "source rows, and rows that several sub-chunks read went more than once (a larger budget allows full blocks)"
        )
    if all(s.overlap == 0.0 for s in summaries):
        notes.append(
            "overlap 0%: loads and compute ran one after the other; a CPU device copies on the cores that compute, so "
            "sagann does not prefetch there (a GPU's copy engine, or CpuDevice(link_bandwidth=...), runs loads beside compute)"
        )
    return notes


def save_profile(
    recorder_or_spans,
    directory: PathLike,
    bytes_moved_full: Mapping[int, int] | None = None,
    wall_seconds: Mapping[int, Seconds] | None = None,
) -> list[EpochSummary]:
    """Write ``trace.json``, ``timeline.png`` and ``summary.json`` into ``directory``.

    Creates the directory if needed and returns the per-epoch summaries.
    Without matplotlib (the ``plot`` extra) the PNG is skipped with a
    :class:`NoPlotWarning` that says how to get it.
    """
    spans = as_spans(recorder_or_spans)
    if bytes_moved_full is None and callable(getattr(recorder_or_spans, "counters", None)):
        bytes_moved_full = recorder_or_spans.counters("bytes_moved_full")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    summaries = summarize(spans, bytes_moved_full, wall_seconds)
    write_chrome_trace(spans, directory / TRACE_FILE)
    write_summary_json(summaries, directory / SUMMARY_FILE)
    try:
        write_timeline_png(spans, directory / TIMELINE_FILE)
    except ImportError:  # matplotlib is the optional 'plot' extra: the trace and summary are written all the same
        warnings.warn(PLOT_HINT, NoPlotWarning, stacklevel=2)
    return summaries


class NoPlotWarning(UserWarning):
    """The timeline PNG was not drawn: matplotlib is not installed."""


PLOT_HINT = "timeline.png not drawn: matplotlib is missing; pip install 'sagann[plot]' (or pip install matplotlib) to get it"


def load_summary(directory: PathLike) -> list[EpochSummary]:
    """Read back the summaries :func:`save_profile` wrote into ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"profile directory {str(directory)!r} does not exist; "
            "write one with sagann.profiler.save_profile(recorder, directory)"
        )
    path = directory / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is missing: {str(directory)!r} is not a saved profile; "
            "write one with sagann.profiler.save_profile(recorder, directory)"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON ({e}); re-run save_profile to rewrite it") from None
    if not isinstance(doc, dict) or doc.get("format") != SUMMARY_FORMAT or "epochs" not in doc:
        raise ValueError(f"{str(path)!r} is not a sagann profile summary (no format={SUMMARY_FORMAT!r} header)")
    if doc.get("version") != SUMMARY_VERSION:
        raise ValueError(
            f"{str(path)!r} has summary version {doc.get('version')!r}; "
            f"this sagann reads version {SUMMARY_VERSION}"
        )
    try:
        return [EpochSummary.from_dict(d) for d in doc["epochs"]]
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{str(path)!r}: {e}") from None
