"""End to end: the demo path through the `sagann` command."""
from __future__ import annotations

import json

from sagann.cli import main

DEMO_KEYS = {"accuracy", "mlp_accuracy", "num_chunks", "memory_budget_bytes", "peak_device_bytes", "measured_device_peak_bytes", "working_set_bytes", "epoch_seconds"}


def test_demo_json_contract_and_promises(capsys):
    assert main(["demo", "--json", "--vertices", "3000", "--epochs", "15"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1, "--json prints exactly one JSON object"
    r = json.loads(lines[0])
    assert DEMO_KEYS <= set(r)
    assert len(r["epoch_seconds"]) == 15
    assert r["memory_budget_bytes"] <= r["working_set_bytes"] // 4
    assert 0 < r["measured_device_peak_bytes"] <= r["memory_budget_bytes"], "measured as allocated, not the ledger's count"
    assert r["num_chunks"] > 1
    assert r["accuracy"] >= r["mlp_accuracy"] + 0.10


def test_demo_report_is_readable(capsys):
    assert main(["demo", "--vertices", "1000", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "peak device bytes" in out


def test_bad_option_exits_nonzero_without_traceback(capsys):
    assert main(["demo", "--budget-fraction", "3"]) == 1
    err = capsys.readouterr().err
    assert "--budget-fraction" in err and "Traceback" not in err


def test_demo_profile_then_profile_command(tmp_path, capsys):
    out = tmp_path / "prof"
    assert main(["demo", "--json", "--vertices", "1500", "--epochs", "2", "--profile", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"trace.json", "timeline.png", "summary.json"}
    capsys.readouterr()
    assert main(["profile", str(out)]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.strip().splitlines() if line.split()[0].isdigit()]
    assert "overlap" in table and len(rows) == 2  # one row per epoch
    assert "bytes full: the same passes with every chunk's source interval V_i sent whole" in table  # the columns say what they count


def test_profile_of_missing_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["profile", str(tmp_path / "nothing")]) == 1
    assert "nothing" in capsys.readouterr().err


def test_demo_profile_without_matplotlib_writes_trace_and_summary(tmp_path, capsys, monkeypatch):
    """No matplotlib: exit 0, trace.json and summary.json written, one line on how to get the PNG."""
    import sys

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # any import of it now raises ImportError
    out = tmp_path / "prof"
    assert main(["demo", "--vertices", "1500", "--epochs", "2", "--profile", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"trace.json", "summary.json"}
    report = capsys.readouterr().out
    hint = [line for line in report.splitlines() if "pip install" in line]
    assert len(hint) == 1 and "sagann[plot]" in hint[0] and "matplotlib" in hint[0], report
    assert "(summary.json, trace.json)" in report
    assert main(["profile", str(out)]) == 0
