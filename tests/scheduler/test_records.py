"""The pass log prints as a table: each pass's prediction beside its achieved time."""
from __future__ import annotations

from sagann.scheduler.records import PassHistory, PassRecord


def _record(layer: str, model_seconds: float, seconds: float) -> PassRecord:
    return PassRecord(layer, "forward", 4, 1, seconds, 0.0, 3_000_000, 4_000_000, steps=9, model_seconds=model_seconds,
                      load_seconds=0.001, compute_seconds=0.002)


def test_the_pass_log_prints_predicted_beside_achieved():
    log = PassHistory([_record("first", float("nan"), 0.030), _record("GCNConv", 0.0044, 0.004)])
    lines = str(log).splitlines()
    assert lines[0] == "2 passes" and "predicted" in lines[1] and "achieved" in lines[1]
    first, conv = lines[2].split(), lines[3].split()
    assert first[:6] == ["first", "forward", "4", "9", "3.00", "-"] and first[6] == "30.00ms" and first[7] == "-"
    assert conv[5:8] == ["4.40ms", "4.00ms", "+10%"]


def test_the_table_shows_the_latest_passes_and_the_log_stays_a_list():
    log = PassHistory(_record(f"layer{k}", 0.001, 0.001) for k in range(20))
    shown = log.table(last=3).splitlines()
    assert shown[0] == "20 passes, the last 3" and [s.split()[0] for s in shown[2:]] == ["layer17", "layer18", "layer19"]
    assert len(log.table(last=None).splitlines()) == 22
    assert isinstance(log, list) and log[-1].layer == "layer19" and log[18:] == [log[18], log[19]]
