"""Trace, PNG, summary JSON and table output; atomic writes; save/load."""
import json
import os

import pytest

from sagann.profiler import (
    Span,
    format_table,
    load_summary,
    save_profile,
    summarize,
    union_seconds,
    write_chrome_trace,
    write_summary_json,
    write_timeline_png,
)
from sagann.profiler.export import _atomic_write

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pipeline_spans():
    """Two devices, two epochs, copy and compute tracks, one host gather track."""
    spans = []
    for epoch, base in ((0, 0.0), (1, 0.05)):
        for d, dev in enumerate(("cpu0", "cpu1")):
            t = base + 0.001 * d
            for i in range(4):
                c = (i, d, 0)
                spans.append(Span("host", "gather", "gather", c, 100, t, t + 0.001, epoch))
                spans.append(Span(dev, "copy", "h2d", c, 1000, t + 0.001, t + 0.004, epoch))
                spans.append(Span(dev, "compute", "apply_edge", c, 0, t + 0.004, t + 0.009, epoch, "l1"))
                t += 0.005
    return spans


def test_chrome_trace_structure(tmp_path):
    spans = pipeline_spans()
    path = write_chrome_trace(spans, tmp_path / "trace.json")
    with open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"]
    meta = [e for e in events if e["ph"] == "M"]
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == len(spans)
    procs = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert sorted(procs.values()) == ["cpu0", "cpu1", "host"]
    for dev in ("cpu0", "cpu1"):
        pid = next(p for p, n in procs.items() if n == dev)
        tids = {n: t for (p, t), n in threads.items() if p == pid}
        assert set(tids) == {"copy", "compute"} and tids["copy"] != tids["compute"]
        kinds_by_tid = {(e["tid"], e["name"]) for e in complete if e["pid"] == pid}
        assert kinds_by_tid == {(tids["copy"], "h2d"), (tids["compute"], "apply_edge")}
    e = next(e for e in complete if e["name"] == "h2d")
    assert e["args"]["chunk"] == "E[0,0].0" and e["args"]["nbytes"] == 1000 and e["args"]["kind"] == "h2d"
    assert e["cat"] == "io" and min(x["ts"] for x in complete) == 0.0


def test_chrome_trace_totals_agree_with_summary(tmp_path):
    spans = pipeline_spans()
    with open(write_chrome_trace(spans, tmp_path / "t.json")) as f:
        complete = [e for e in json.load(f)["traceEvents"] if e["ph"] == "X"]
    for s in summarize(spans):
        evs = [e for e in complete if e["args"]["epoch"] == s.epoch]
        us = lambda cat: union_seconds((e["ts"], e["ts"] + e["dur"]) for e in evs if e["cat"] == cat)  # noqa: E731
        assert us("io") / 1e6 == pytest.approx(s.io_seconds, abs=1e-9)
        assert us("compute") / 1e6 == pytest.approx(s.compute_seconds, abs=1e-9)
        extent = max(e["ts"] + e["dur"] for e in evs) - min(e["ts"] for e in evs)
        assert extent / 1e6 == pytest.approx(s.runtime_seconds, abs=1e-9)
        assert sum(e["args"]["nbytes"] for e in evs if e["name"] == "h2d") == s.bytes_moved


def test_timeline_png(tmp_path):
    path = write_timeline_png(pipeline_spans(), tmp_path / "timeline.png", title="test")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_timeline_png_draws_only_the_chosen_epochs(tmp_path):
    spans = pipeline_spans()
    one = write_timeline_png(spans, tmp_path / "one.png", epochs=[1]).read_bytes()
    only_epoch_1 = write_timeline_png([s for s in spans if s.epoch == 1], tmp_path / "ref.png").read_bytes()
    both = write_timeline_png(spans, tmp_path / "both.png").read_bytes()
    none = write_timeline_png(spans, tmp_path / "none.png", epochs=[7]).read_bytes()
    assert one == only_epoch_1 and one != both
    assert none == write_timeline_png([], tmp_path / "empty.png").read_bytes()


def test_timeline_png_without_spans(tmp_path):
    assert write_timeline_png([], tmp_path / "empty.png").read_bytes().startswith(PNG_MAGIC)


def test_summary_json_keys(tmp_path):
    summaries = summarize(pipeline_spans(), bytes_moved_full={0: 12000, 1: 12000})
    with open(write_summary_json(summaries, tmp_path / "summary.json")) as f:
        doc = json.load(f)
    assert doc["format"] == "sagann-profile-summary" and doc["version"] == 1
    assert [e["epoch"] for e in doc["epochs"]] == [0, 1]
    for e in doc["epochs"]:
        assert set(e) == {
            "epoch", "io_seconds", "compute_seconds", "runtime_seconds", "overlap",
            "bytes_moved", "bytes_moved_full", "stages", "unaccounted_seconds",
        }
        assert e["bytes_moved"] == 8000 and e["bytes_moved_full"] == 12000
        assert set(e["stages"]) == {"gather", "h2d", "apply_edge"}


def test_format_table():
    summaries = summarize(pipeline_spans(), bytes_moved_full={0: 3 << 20})
    table = format_table(summaries)
    lines = table.splitlines()
    for col in ("epoch", "IO s", "compute s", "runtime s", "overlap %", "bytes moved", "bytes full"):
        assert col in lines[0]
    assert len(lines) == 2 + len(summaries)
    assert "3.00 MiB" in lines[2] and "7.81 KiB" in lines[2]
    assert lines[3].rstrip().endswith("-")  # epoch 1 has no full-transfer figure
    assert f"{100 * summaries[0].overlap:.1f}" in lines[2]
    assert "no spans" in format_table([])


def test_save_and_load_profile(tmp_path):
    from sagann.profiler import profile, record_interval

    with profile() as prof:
        for s in pipeline_spans():
            record_interval(s.kind, s.device, s.track, s.t0, s.t1, chunk=s.chunk, nbytes=s.nbytes, epoch=s.epoch)
    out = tmp_path / "run" / "profile"
    summaries = save_profile(prof, out, bytes_moved_full={0: 1, 1: 2})
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "timeline.png", "trace.json"]
    assert load_summary(out) == summaries
    assert [s.bytes_moved_full for s in summaries] == [1, 2]


def test_load_summary_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*save_profile"):
        load_summary(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="summary.json.*missing"):
        load_summary(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_summary(tmp_path)
    (tmp_path / "summary.json").write_text('{"epochs": []}')
    with pytest.raises(ValueError, match="not a sagann profile summary"):
        load_summary(tmp_path)
    (tmp_path / "summary.json").write_text('{"format": "sagann-profile-summary", "version": 99, "epochs": []}')
    with pytest.raises(ValueError, match="version 99"):
        load_summary(tmp_path)


def test_atomic_writes_leave_no_temp_files(tmp_path):
    spans = pipeline_spans()
    save_profile(spans, tmp_path)
    save_profile(spans, tmp_path)  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["summary.json", "timeline.png", "trace.json"]


def test_failed_write_keeps_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def fail(f):
        f.write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _atomic_write(target, fail)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["summary.json"]


def test_atomic_write_uses_ordinary_file_mode(tmp_path):
    (tmp_path / "plain").write_text("x")
    path = write_summary_json([], tmp_path / "summary.json")
    assert path.stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_table_notes_say_what_the_columns_count_and_why():
    """bytes moved above bytes full, and overlap 0 %, each come with the reason."""
    from sagann.profiler.stats import EpochSummary

    serial = EpochSummary(0, 1.0, 2.0, 3.0, 0.0, bytes_moved=900, bytes_moved_full=600)
    text = format_table([serial], notes=True)
    assert "bytes full: the same passes with every chunk's source interval V_i sent whole" in text
    assert "bytes moved > bytes full: the budget left no room for whole blocks" in text
    assert "overlap 0%: loads and compute ran one after the other; a CPU device" in text
    overlapped = EpochSummary(0, 1.0, 2.0, 2.5, 0.5, bytes_moved=300, bytes_moved_full=600)
    text = format_table([overlapped], notes=True)
    assert "bytes moved > bytes full" not in text and "overlap 0%" not in text
    assert len(format_table([overlapped]).splitlines()) == 3  # without notes: the table alone
