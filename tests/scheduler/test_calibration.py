"""Measured step costs are stored per machine, so a second process plans as the first did."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

import sagann
from sagann.scheduler import calibration, cost_model

PROBE = "import json, sagann; from sagann.scheduler.cost_model import measure_step_costs; print(json.dumps(measure_step_costs(sagann.CpuDevice(copy_transfers=True)).to_dict()))"


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(calibration.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(calibration.RECALIBRATE_ENV, raising=False)
    monkeypatch.setattr(cost_model, "_MEASURED", {})  # as a fresh process
    return tmp_path


def _probe(env_dir) -> dict:
    env = {**__import__("os").environ, calibration.CACHE_ENV: str(env_dir)}
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_the_first_ones_rates(tmp_path):
    first, second = _probe(tmp_path), _probe(tmp_path)
    assert first == second  # timing noise would make two measurements differ in the last digits
    stored = json.loads((tmp_path / "step_costs.json").read_text())
    assert list(stored.values()) == [first]


def test_rates_survive_the_round_trip_and_recalibration_measures_again(store_dir, monkeypatch):
    device = sagann.CpuDevice(copy_transfers=True)
    measured = cost_model.measure_step_costs(device)
    monkeypatch.setattr(cost_model, "_MEASURED", {})
    planted = cost_model.StepCosts(1.0, 2.0, 3.0)
    (store_dir / "step_costs.json").unlink()  # the first rates stored win: plant them in an empty store
    calibration.store(cost_model._kind(device), planted.to_dict())
    assert cost_model.measure_step_costs(device) == planted  # read back, not measured
    monkeypatch.setattr(cost_model, "_MEASURED", {})
    monkeypatch.setenv(calibration.RECALIBRATE_ENV, "1")
    again = cost_model.measure_step_costs(device)
    assert again != planted and again.seconds_per_step < 1.0
    assert measured.seconds_per_byte > 0


def test_a_corrupt_store_is_ignored_with_a_warning_and_rewritten(store_dir, caplog):
    (store_dir / "step_costs.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="sagann"):
        costs = cost_model.measure_step_costs(sagann.CpuDevice(copy_transfers=True))
    assert "ignoring the stored step costs" in caplog.text
    assert costs.seconds_per_byte > 0
    assert list(json.loads((store_dir / "step_costs.json").read_text()).values()) == [costs.to_dict()]


def test_an_unwritable_store_warns_and_planning_goes_on(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(calibration.CACHE_ENV, str(blocker / "sub"))  # a directory below a file cannot be made
    monkeypatch.setattr(cost_model, "_MEASURED", {})
    with caplog.at_level(logging.WARNING, logger="sagann"):
        costs = cost_model.measure_step_costs(sagann.CpuDevice(copy_transfers=True))
    assert costs.seconds_per_byte > 0 and "could not store" in caplog.text


def test_the_first_rates_stored_win_so_processes_measuring_at_once_plan_alike(tmp_path, store_dir, monkeypatch):
    kind = cost_model._kind(sagann.CpuDevice(copy_transfers=True))
    first, second = {"seconds_per_byte": 1.0, "seconds_per_step": 2.0, "seconds_per_edge_column": 3.0}, {"seconds_per_byte": 9.0, "seconds_per_step": 9.0, "seconds_per_edge_column": 9.0}
    assert calibration.store(kind, first) == first
    assert calibration.store(kind, second) == first, "a later process takes the rates stored first"
    assert calibration.load(kind) == first
    monkeypatch.setenv(calibration.RECALIBRATE_ENV, "1")
    assert calibration.store(kind, second) == second  # asked to measure again: overwritten
    # two real processes measuring at the same time, each slowing the other: one set of rates for both
    env = {**__import__("os").environ, calibration.CACHE_ENV: str(tmp_path / "race")}
    env.pop(calibration.RECALIBRATE_ENV, None)
    runs = [subprocess.Popen([sys.executable, "-c", PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [r.communicate(timeout=300) for r in runs]
    assert all(r.returncode == 0 for r in runs), [err for _, err in outs]
    a, b = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
    assert a == b

