"""benchmarks/step_cost.py: its figure is an epoch over the steps the pass log counted."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "step_cost.py"


def test_the_cost_a_step_is_the_median_epoch_over_the_logged_steps():
    spec = importlib.util.spec_from_file_location("step_cost", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.measure("gcn", chunks=4, epochs=2, warmup=1)
    assert r["num_chunks"] == 4 and r["steps"] >= 16, "a forced P = 4: at least one step a chunk of a pass"
    assert r["us_per_step"] == 1e6 * r["epoch_seconds"] / r["steps"] > 0
    assert r["best_epoch_seconds"] <= r["epoch_seconds"]
