"""Span recording, overlap statistics, traces and plots (off by default).

Typical use::

    from sagann import profiler

    with profiler.profile() as prof:
        for epoch in range(3):
            profiler.mark_epoch(epoch)
            train_one_epoch()
    print(profiler.format_table(profiler.summarize(prof)))
    profiler.save_profile(prof, "out/profile")

Instrumented code calls :func:`span` (or :func:`record_interval` for work
timed with CUDA events); both cost one global check while profiling is off.
This subpackage imports no other part of sagann.
"""
from .export import (
    NoPlotWarning,
    chrome_trace,
    format_table,
    load_summary,
    save_profile,
    write_chrome_trace,
    write_summary_json,
    write_timeline_png,
)
from .recorder import (
    Recorder,
    active_recorder,
    count,
    enabled,
    mark_epoch,
    nvtx_call,
    nvtx_name,
    profile,
    record_interval,
    span,
)
from .types import COMPUTE_KINDS, IO_KINDS, KINDS, PHASES, Span, category
from .stats import EpochSummary, overlap_ratio, summarize, summarize_epoch, union_seconds

__all__ = [
    "COMPUTE_KINDS",
    "EpochSummary",
    "IO_KINDS",
    "KINDS",
    "NoPlotWarning",
    "PHASES",
    "Recorder",
    "Span",
    "active_recorder",
    "category",
    "chrome_trace",
    "count",
    "enabled",
    "format_table",
    "load_summary",
    "mark_epoch",
    "nvtx_call",
    "nvtx_name",
    "overlap_ratio",
    "profile",
    "record_interval",
    "save_profile",
    "span",
    "summarize",
    "summarize_epoch",
    "union_seconds",
    "write_chrome_trace",
    "write_summary_json",
    "write_timeline_png",
]
