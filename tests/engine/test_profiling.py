"""Profiling real layer calls: a valid trace, consistent totals, and overlap that reacts to pipelining."""
from __future__ import annotations

import json

import numpy as np
import torch

import sagann
from sagann import profiler
from sagann.scheduler import ScheduleConfig
from tests.engine.graphs import awkward_graph


def train_steps(g, n, epochs=2):
    torch.manual_seed(0)
    layer = sagann.nn.SAGEConv(16, 8)
    x = torch.randn(n, 16)
    for epoch in range(epochs):
        profiler.mark_epoch(epoch)
        layer(g, x).sum().backward()


def test_trace_is_valid_and_agrees_with_the_summary(tmp_path):
    rng = np.random.default_rng(0)
    n, ei = 400, awkward_graph(rng, 400, 4000)
    g = sagann.ChunkedGraph(ei, n, num_chunks=4, sub_chunk_nnz=200)
    with sagann.profile() as prof:
        train_steps(g, n)
    summaries = profiler.save_profile(prof, tmp_path)
    trace = json.loads((tmp_path / "trace.json").read_text())
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    tracks = {e["tid"] for e in events if e["name"] == "h2d"} , {e["tid"] for e in events if e["name"] == "kernel"}
    assert tracks[0] and tracks[1] and not (tracks[0] & tracks[1]), "transfers and compute on separate tracks"
    h2d_bytes = sum(e["args"]["nbytes"] for e in events if e["name"] == "h2d")
    assert h2d_bytes == sum(s.bytes_moved for s in summaries)
    assert (tmp_path / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "summary.json").read_text())
    keys = {"epoch", "io_seconds", "compute_seconds", "runtime_seconds", "overlap", "bytes_moved", "bytes_moved_full"}
    assert all(keys <= set(e) for e in saved["epochs"]) and len(saved["epochs"]) == 2
    # the profile and the engine's pass log count the same bytes
    assert sum(s.bytes_moved for s in summaries) == sum(r.bytes_moved for r in g.pass_log)
    assert sum(s.bytes_moved_full for s in summaries) == sum(r.bytes_full for r in g.pass_log)


def overlap_with(prefetch: int) -> profiler.EpochSummary:
    rng = np.random.default_rng(1)
    n, ei = 300, awkward_graph(rng, 300, 3000)
    device = sagann.CpuDevice(link_bandwidth="512KB")  # a slow link: loading dominates, even on a loaded machine
    g = sagann.ChunkedGraph(ei, n, num_chunks=4, sub_chunk_nnz=150, device=device, schedule=ScheduleConfig(prefetch=prefetch, order="natural"), backend="reference")
    train_steps(g, n, epochs=1)  # warm-up: planning, measuring, first calls
    with sagann.profile() as prof:
        train_steps(g, n, epochs=1)
    (summary,) = profiler.summarize(prof)
    return summary


def test_slow_loader_shows_io_bound_and_pipelining_raises_overlap():
    sequential, pipelined = overlap_with(0), overlap_with(2)
    assert sequential.io_seconds > sequential.compute_seconds
    assert pipelined.io_seconds > pipelined.compute_seconds
    assert sequential.overlap == 0.0, "without prefetching, loads and compute never run at once"
    assert pipelined.overlap > sequential.overlap


def test_profiling_off_records_nothing():
    rng = np.random.default_rng(2)
    n, ei = 50, awkward_graph(rng, 50, 200)
    g = sagann.ChunkedGraph(ei, n, num_chunks=2)
    assert not profiler.enabled()
    train_steps(g, n, epochs=1)
    assert profiler.active_recorder() is None
