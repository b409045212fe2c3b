"""Recording spans: on/off, nesting, threads, epochs, validation."""
import threading

import pytest

from sagann import profiler
from sagann.profiler import Span, category, enabled, mark_epoch, profile, record_interval, span
from sagann.profiler.recorder import active_recorder


@pytest.fixture(autouse=True)
def _profiling_off():
    assert not enabled(), "a previous test left a recorder active"
    yield
    assert not enabled(), "this test left a recorder active"


def test_span_off_records_nothing_and_returns_shared_noop():
    a = span("h2d", "cpu0", "copy")
    b = span("kernel", "cpu1", "compute", chunk=(0, 1, 0))
    assert a is b
    with a as v:
        assert v is None
    record_interval("h2d", "cpu0", "copy", 0.0, 1.0)  # no error, nowhere to go
    mark_epoch(3)


def test_span_on_records_fields_and_times():
    with profile() as prof:
        assert enabled() and active_recorder() is prof and prof.active
        with span("h2d", "cpu0", "copy", chunk=(1, 2, 3), nbytes=64, layer="gcn1", phase="backward"):
            pass
    assert not enabled() and not prof.active
    (s,) = prof.spans()
    assert isinstance(s, Span)
    assert (s.device, s.track, s.kind, s.chunk, s.nbytes, s.layer, s.phase) == (
        "cpu0", "copy", "h2d", (1, 2, 3), 64, "gcn1", "backward")
    assert s.t1 >= s.t0 and s.epoch == 0 and s.category == "io"


def test_span_records_even_when_body_raises():
    with profile() as prof:
        with pytest.raises(KeyError):
            with span("kernel", "cpu0", "compute"):
                raise KeyError("boom")
    assert [s.kind for s in prof.spans()] == ["kernel"]


def test_start_stop_form_and_errors():
    prof = profile()
    assert not prof.active
    prof.start()
    with pytest.raises(RuntimeError, match="already started"):
        prof.start()
    record_interval("d2h", "cpu0", "copy", 1.0, 2.0, nbytes=8)
    prof.stop()
    with pytest.raises(RuntimeError, match="never started"):
        prof.stop()
    assert [(s.kind, s.t0, s.t1, s.nbytes) for s in prof.spans()] == [("d2h", 1.0, 2.0, 8)]
    prof.clear()
    assert prof.spans() == [] and len(prof) == 0


def test_nesting_restores_outer_recorder():
    with profile() as outer:
        record_interval("h2d", "a", "copy", 0.0, 1.0)
        with profile() as inner:
            assert active_recorder() is inner
            record_interval("kernel", "a", "compute", 1.0, 2.0)
        assert active_recorder() is outer
        record_interval("d2h", "a", "copy", 2.0, 3.0)
    assert [s.kind for s in outer.spans()] == ["h2d", "d2h"]
    assert [s.kind for s in inner.spans()] == ["kernel"]


def test_out_of_order_stop_keeps_innermost_live_recorder():
    a, b = profile().start(), profile().start()
    a.stop()
    assert active_recorder() is b
    b.stop()
    assert active_recorder() is None


def test_threads_record_concurrently():
    n_threads, per_thread = 8, 2000
    barrier = threading.Barrier(n_threads)

    def work(k):
        barrier.wait()
        for i in range(per_thread):
            with span("kernel", f"cpu{k}", "compute", chunk=(k, i, 0)):
                pass
            record_interval("h2d", f"cpu{k}", "copy", float(i), float(i) + 0.5, chunk=(k, i, 0))

    with profile() as prof:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    spans = prof.spans()
    assert len(spans) == 2 * n_threads * per_thread
    keys = {(s.kind, s.chunk) for s in spans}
    assert len(keys) == len(spans)  # nothing lost or duplicated


def test_epoch_tagging():
    with profile() as prof:
        record_interval("h2d", "cpu0", "copy", 0.0, 1.0)
        mark_epoch(1)
        with span("kernel", "cpu0", "compute"):
            mark_epoch(2)  # a span keeps the epoch it started in
        record_interval("h2d", "cpu0", "copy", 3.0, 4.0)
        record_interval("h2d", "cpu0", "copy", 5.0, 6.0, epoch=7)
        prof.set_epoch(4)
        record_interval("d2h", "cpu0", "copy", 7.0, 8.0)
        with pytest.raises(ValueError, match="epoch"):
            prof.set_epoch(-1)
    assert [s.epoch for s in prof.spans()] == [0, 1, 2, 7, 4]


def test_categories_partition_kinds():
    assert set(profiler.IO_KINDS) | set(profiler.COMPUTE_KINDS) == set(profiler.KINDS)
    assert not set(profiler.IO_KINDS) & set(profiler.COMPUTE_KINDS)
    assert {category(k) for k in ("h2d", "d2h", "d2d", "gather", "disk")} == {"io"}
    compute = ("scatter", "apply_edge", "gather_reduce", "apply_vertex", "kernel", "evict", "other")
    assert {category(k) for k in compute} == {"compute"}
    with pytest.raises(ValueError, match="unknown span kind"):
        category("copy")


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(kind="h2x"), "unknown span kind 'h2x'"),
        (dict(t0=2.0, t1=1.0), "ends before it starts"),
        (dict(nbytes=-1), "nbytes=-1"),
        (dict(phase="fwd"), "unknown phase"),
        (dict(chunk=[0, 1, 0]), "tuple"),
    ],
)
def test_span_validation_names_the_problem(kwargs, error):
    fields = dict(device="cpu0", track="copy", kind="h2d", chunk=None, nbytes=0, t0=0.0, t1=1.0)
    fields.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=error):
        Span(**fields)


def test_span_validates_eagerly_when_on():
    with profile():
        with pytest.raises(ValueError, match="unknown span kind"):
            span("copy", "cpu0", "copy")


def test_chunk_id_namedtuple_is_accepted():
    from typing import NamedTuple

    class Key(NamedTuple):  # stands in for sagann.chunks.ChunkId
        i: int
        j: int
        sub: int

    s = Span("cpu0", "copy", "h2d", Key(0, 1, 2), 0, 0.0, 1.0)
    assert s.chunk == (0, 1, 2)
