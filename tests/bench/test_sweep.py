"""`sagann bench overlap --sweep`: one row per cell with its keys, and the roofline's floor (no timing checks)."""
from __future__ import annotations

import json

import pytest

from sagann.bench import roofline, sweep

TINY = sweep.Grid(graphs=(sweep.GraphSpec("rmat", 9, 8),), widths=(8,), models=("gcn", "gat"), budgets=(4,), caches=(True, False), warmup=2, reps=1)
KEYS = {"graph", "width", "model", "budget_fraction", "cache_gather", "in_memory_seconds", "out_of_core_seconds", "ratio", "num_chunks", "steps",
        "bytes_moved", "bytes_lower_bound", "lower_bound_seconds", "predicted_seconds", "step_overhead_us", "model_step_us", "floor_seconds"}


def test_sweep_rows_cover_the_grid_and_serialise():
    r = sweep.run_sweep(TINY)
    cells = {(c["model"], c["cache_gather"]) for c in r["cells"]}
    assert cells == {("gcn", True), ("gcn", False), ("gat", False)}, "GAT has nothing to cache: one row"
    for c in r["cells"]:
        assert "error" not in c, c
        assert KEYS <= set(c)
        assert c["ratio"] > 0 and c["num_chunks"] > 1 and c["steps"] > c["in_memory_steps"]
        assert 0 < c["bytes_lower_bound"] <= c["bytes_moved"]
        assert c["floor_seconds"] > 0
        assert c["sub_chunk_nnz"] >= 1, "GCN's partition is its self-loop graph's: still reported"
        assert c["pass_prediction_error"] == pytest.approx(c["pass_model_seconds"] / c["pass_achieved_seconds"] - 1)
        split = c["extra_load_seconds"] + c["extra_edge_compute_seconds"] + c["extra_other_seconds"]
        assert split == pytest.approx(c["out_of_core_mean_seconds"] - c["in_memory_mean_seconds"]), "the split is the whole gap"
        assert c["extra_load_seconds"] > 0, "copying loads cost time that views did not"
        # a budget is a fraction of a whole-graph epoch's peak, which the in-memory run's blocks never exceed
        assert c["budget_bytes"] == c["whole_graph_peak_bytes"] // 4 and 0 < c["in_memory_peak_bytes"] <= c["whole_graph_peak_bytes"]
        # ... with the graph's index arrays, which an in-memory device holds and the whole-graph CPU run reads in place
        assert c["graph_index_bytes"] == sweep.graph_index_bytes(c["num_edges"], c["num_vertices"]) > 8 * c["num_edges"]
        assert c["whole_graph_peak_bytes"] == c["vertex_peak_bytes"] + c["graph_index_bytes"] and c["budget_basis"] == "graph"
    assert r["summary"]["all"]["cells"] == 3 and r["summary"]["failed"] == 0
    assert r["summary"]["all"]["median_abs_pass_prediction_error"] >= 0 and "pass-log prediction error" in r["report"]
    json.dumps(r, allow_nan=True)
    assert "us/step" in r["report"] and "+load" in r["report"]


def test_roofline_floor_grows_with_the_work_and_the_cache_lowers_it():
    rates = {"bandwidth_bytes_per_s": 1e10, "gemm_flops_per_s": 1e11}
    small = roofline.epoch_floor("gcn", 1000, 10_000, 64, 64, 16, rates)
    assert roofline.epoch_floor("gcn", 1000, 20_000, 64, 64, 16, rates) > small
    assert roofline.epoch_floor("gcn", 1000, 10_000, 64, 64, 16, rates, cached=True) < small
    for model in ("sage", "gin", "gat"):
        assert roofline.epoch_floor(model, 1000, 10_000, 64, 64, 16, rates) > 0
    with pytest.raises(ValueError, match="known"):
        roofline.epoch_floor("mlp", 1000, 10_000, 64, 64, 16, rates)
    measured = roofline.machine_rates()
    assert measured["bandwidth_bytes_per_s"] > 0 and measured["gemm_flops_per_s"] > 0


def test_an_in_memory_runs_views_cost_nothing_so_every_copied_byte_is_extra():
    """A dense graph's in-memory run 'moves' as many bytes as out of core, as views: the copies must still be priced."""
    from sagann.scheduler.cost_model import StepCosts

    costs = StepCosts(seconds_per_byte=1e-9, seconds_per_step=1e-4, seconds_per_edge_column=0.0, seconds_per_vertex_step=1e-3)
    mem = {"bytes_moved": 1000, "bytes_copied": 0, "steps": 2, "vertex_steps": 4, "epoch_seconds": 1.0}
    ooc = {"bytes_moved": 1000, "bytes_copied": 1000, "bytes_lower_bound": 800, "steps": 12, "vertex_steps": 10, "epoch_seconds": 1.1}
    cell = sweep._cell(mem, ooc, costs)
    assert cell["predicted_seconds"] == pytest.approx(1.0 + 1000e-9 + 10e-4 + 6e-3)  # and the ApplyVertex blocks' steps
    assert cell["step_overhead_us"] == pytest.approx(1e6 * (0.1 - 1000e-9 - 6e-3) / 10)  # what bytes and vertex steps leave
    assert cell["lower_bound_seconds"] == pytest.approx(1.0 + 800e-9)
    views = dict(ooc, bytes_copied=0)  # out of core with loads as views: nothing to price either
    assert sweep._cell(mem, views, costs)["lower_bound_seconds"] == pytest.approx(1.0)


def test_a_prediction_prices_the_rows_backward_recomputes_at_the_forward_rate():
    """Out of core, a backward evaluates ApplyVertex again where no graph was kept; in memory it never does. The
    prediction adds those rows at what the same run's forward spent per row on them, per function."""
    from sagann.scheduler.cost_model import StepCosts

    costs = StepCosts(seconds_per_byte=0.0, seconds_per_step=0.0, seconds_per_edge_column=0.0)
    work = lambda fwd, secs, again: {"forward_rows": fwd, "forward_seconds": secs, "recomputed_rows": again}  # noqa: E731
    a, b = ("conv1", "apply_vertex"), ("conv2", "apply_src")
    mem = {"bytes_copied": 0, "steps": 2, "epoch_seconds": 1.0, "vertex_work": work({a: 100, b: 100}, {a: 0.2, b: 0.05}, {})}
    ooc = {"bytes_copied": 0, "bytes_lower_bound": 0, "steps": 12, "epoch_seconds": 1.5, "vertex_work": work({a: 100, b: 100}, {a: 0.3, b: 0.1}, {a: 100, b: 50})}
    cell = sweep._cell(mem, ooc, costs)
    assert cell["recompute_seconds"] == pytest.approx(0.3 + 0.05)
    assert cell["predicted_seconds"] == pytest.approx(1.0 + 0.35)
    assert cell["step_overhead_us"] == pytest.approx(1e6 * (0.5 - 0.35) / 10)


def test_the_gap_splits_into_loads_edge_compute_and_the_rest():
    mem = {"mean_epoch_seconds": 1.0, "edge_load_seconds": 0.01, "edge_compute_seconds": 0.5}
    ooc = {"mean_epoch_seconds": 1.6, "edge_load_seconds": 0.21, "edge_compute_seconds": 0.6}
    split = sweep.gap_split(mem, ooc)
    assert split["extra_load_seconds"] == pytest.approx(0.2)
    assert split["extra_edge_compute_seconds"] == pytest.approx(0.1)
    assert split["extra_other_seconds"] == pytest.approx(0.3)
    assert sweep.gap_split({"mean_epoch_seconds": 1.0}, ooc) == {}, "a run without the sums splits nothing"


def test_a_budget_may_be_a_fraction_of_the_vertex_rows_alone():
    grid = sweep.Grid(graphs=TINY.graphs, widths=(8,), models=("gcn",), budgets=(4,), caches=(False,), warmup=1, reps=1, budget_basis="vertices")
    (c,) = sweep.run_sweep(grid)["cells"]
    assert c["budget_basis"] == "vertices" and c["whole_graph_peak_bytes"] == c["vertex_peak_bytes"]
    assert c["budget_bytes"] == c["vertex_peak_bytes"] // 4 and "error" not in c
    with pytest.raises(ValueError, match="budget_basis"):
        sweep.run_sweep(sweep.Grid(graphs=TINY.graphs, widths=(8,), models=("gcn",), budgets=(4,), caches=(False,), warmup=1, reps=1, budget_basis="edges"))


def test_one_out_of_core_run_is_alive_at_a_time(monkeypatch):
    """A group's runs all alive at once took wide models on large graphs past the host's memory: each budget's run is
    dropped before the next is built, and each row is timed against in-memory epochs of its own."""
    import weakref

    alive, most = weakref.WeakSet(), []

    class Counted(sweep._Run):
        def __init__(self, g, *args, **kwargs):
            if g.device.memory_budget is not None:
                most.append(len(alive))
                alive.add(self)
            super().__init__(g, *args, **kwargs)

    monkeypatch.setattr(sweep, "_Run", Counted)
    grid = sweep.Grid(graphs=TINY.graphs, widths=(8,), models=("gcn",), budgets=(4, 8, 16), caches=(False,), warmup=1, reps=2)
    cells = sweep.run_sweep(grid)["cells"]
    assert len(most) == 3 and max(most) == 0, f"out-of-core runs alive when the next was built: {most}"
    assert all(c["in_memory_steps"] > 0 and c["in_memory_seconds"] > 0 for c in cells)
