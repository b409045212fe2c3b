"""Union / overlap arithmetic on hand-made spans."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagann.profiler import EpochSummary, Span, overlap_ratio, summarize, union_seconds
from sagann.profiler.stats import SUMMARY_KEYS


def sp(kind, t0, t1, device="cpu0", track=None, nbytes=0, epoch=0, chunk=None):
    track = track or ("copy" if kind in ("h2d", "d2h", "d2d", "disk", "gather") else "compute")
    return Span(device, track, kind, chunk, nbytes, t0, t1, epoch)


def test_union_seconds():
    assert union_seconds([]) == 0.0
    assert union_seconds([(0.0, 1.0)]) == 1.0
    assert union_seconds([(0.0, 1.0), (2.0, 3.0)]) == 2.0  # disjoint
    assert union_seconds([(0.0, 2.0), (1.0, 3.0)]) == 3.0  # partial
    assert union_seconds([(0.0, 4.0), (1.0, 2.0)]) == 4.0  # nested
    assert union_seconds([(2.0, 3.0), (0.0, 1.0), (1.0, 2.0)]) == 3.0  # touching, unsorted


def test_fully_overlapped():
    (s,) = summarize([sp("h2d", 0.0, 1.0), sp("kernel", 0.0, 2.0)])
    assert (s.io_seconds, s.compute_seconds, s.runtime_seconds, s.overlap) == (1.0, 2.0, 2.0, 1.0)
    assert s.unaccounted_seconds == 0.0


def test_not_overlapped():
    (s,) = summarize([sp("h2d", 0.0, 1.0), sp("kernel", 1.0, 3.0)])
    assert (s.io_seconds, s.compute_seconds, s.runtime_seconds, s.overlap) == (1.0, 2.0, 3.0, 0.0)


def test_partial_overlap():
    # IO [0, 2], compute [1, 3]: 1 s of the 2 s smaller stage is hidden.
    (s,) = summarize([sp("h2d", 0.0, 2.0), sp("kernel", 1.0, 3.0)])
    assert (s.io_seconds, s.compute_seconds, s.runtime_seconds, s.overlap) == (2.0, 2.0, 3.0, 0.5)


def test_union_across_devices_and_tracks():
    spans = [
        sp("h2d", 0.0, 2.0, device="cpu0"),
        sp("h2d", 1.0, 3.0, device="cpu1"),  # IO union [0, 3] = 3, not 4
        sp("gather", 0.5, 1.5, device="host", track="gather"),
        sp("scatter", 2.0, 3.0, device="cpu0"),
        sp("apply_edge", 3.0, 4.0, device="cpu0"),
        sp("apply_edge", 3.5, 4.5, device="cpu1"),
    ]
    (s,) = summarize(spans)
    assert s.io_seconds == 3.0
    assert s.compute_seconds == 2.5
    assert s.runtime_seconds == 4.5
    assert s.overlap == pytest.approx((3.0 + 2.5 - 4.5) / 2.5)
    assert s.stages == {"gather": 1.0, "h2d": 3.0, "scatter": 1.0, "apply_edge": 1.5}
    assert list(s.stages) == ["gather", "h2d", "scatter", "apply_edge"]  # KINDS order


def test_idle_gap_is_unaccounted_and_clips_overlap():
    (s,) = summarize([sp("h2d", 0.0, 1.0), sp("kernel", 3.0, 4.0)])
    assert s.runtime_seconds == 4.0
    assert s.unaccounted_seconds == 2.0
    assert s.overlap == 0.0  # (1 + 1 - 4) / 1 clipped


def test_zero_io_or_compute_gives_zero_overlap():
    (s,) = summarize([sp("kernel", 0.0, 1.0)])
    assert s.io_seconds == 0.0 and s.overlap == 0.0
    assert overlap_ratio(0.0, 0.0, 0.0) == 0.0


def test_wall_time_override():
    (s,) = summarize([sp("h2d", 0.0, 1.0), sp("kernel", 0.5, 1.5)], wall_seconds={0: 2.0})
    assert s.runtime_seconds == 2.0
    assert s.unaccounted_seconds == 0.5
    assert s.overlap == 0.5  # |[0,1] ∩ [0.5,1.5]| / 1: idle wall time is unaccounted, not serialisation


def test_bytes_moved_and_full():
    spans = [
        sp("h2d", 0.0, 1.0, nbytes=100),
        sp("d2d", 0.0, 1.0, nbytes=20),
        sp("disk", 0.0, 1.0, nbytes=3),
        sp("gather", 0.0, 1.0, nbytes=1000),  # host-side, not counted
        sp("d2h", 0.0, 1.0, nbytes=1000),  # write-back, not counted
        sp("h2d", 2.0, 3.0, nbytes=7, epoch=1),
    ]
    s0, s1 = summarize(spans, bytes_moved_full={0: 500})
    assert (s0.epoch, s0.bytes_moved, s0.bytes_moved_full) == (0, 123, 500)
    assert (s1.epoch, s1.bytes_moved, s1.bytes_moved_full) == (1, 7, None)


def test_epochs_are_summarised_separately_and_sorted():
    spans = [sp("h2d", 10.0, 11.0, epoch=2), sp("h2d", 0.0, 1.0, epoch=0), sp("kernel", 0.5, 3.0, epoch=0)]
    out = summarize(spans)
    assert [s.epoch for s in out] == [0, 2]
    assert out[0].runtime_seconds == 3.0 and out[1].runtime_seconds == 1.0


def test_summarize_accepts_a_recorder():
    from sagann.profiler import profile, record_interval

    with profile() as prof:
        record_interval("h2d", "cpu0", "copy", 0.0, 1.0, nbytes=5)
    (s,) = summarize(prof)
    assert s.bytes_moved == 5


def test_to_dict_keys_and_round_trip():
    (s,) = summarize([sp("h2d", 0.0, 2.0, nbytes=9), sp("kernel", 1.0, 3.0)], bytes_moved_full={0: 18})
    d = s.to_dict()
    assert list(d) == list(SUMMARY_KEYS) == [
        "epoch", "io_seconds", "compute_seconds", "runtime_seconds", "overlap",
        "bytes_moved", "bytes_moved_full", "stages", "unaccounted_seconds",
    ]
    assert EpochSummary.from_dict(d) == s
    with pytest.raises(ValueError, match="overlap"):
        EpochSummary.from_dict({k: v for k, v in d.items() if k != "overlap"})


intervals = st.lists(
    st.tuples(st.integers(0, 1000), st.integers(0, 200)).map(lambda p: (p[0] / 8, (p[0] + p[1]) / 8)),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(io=intervals, compute=intervals)
def test_properties(io, compute):
    spans = [sp("h2d", a, b) for a, b in io] + [sp("kernel", a, b) for a, b in compute]
    out = summarize(spans)
    if not spans:
        assert out == []
        return
    (s,) = out
    assert 0.0 <= s.overlap <= 1.0
    for iv, total in ((io, s.io_seconds), (compute, s.compute_seconds)):
        assert max((b - a for a, b in iv), default=0.0) <= total <= sum(b - a for a, b in iv)
    assert max(s.io_seconds, s.compute_seconds) <= s.runtime_seconds + 1e-12
    busy = union_seconds(io + compute)
    assert s.unaccounted_seconds == pytest.approx(s.runtime_seconds - busy)
    # With no idle gaps the overlap is exactly the concurrent time over the smaller stage.
    if s.unaccounted_seconds == 0.0 and min(s.io_seconds, s.compute_seconds) > 0:
        both = s.io_seconds + s.compute_seconds - busy
        assert s.overlap == pytest.approx(both / min(s.io_seconds, s.compute_seconds))
