"""The forecast before training: the planner's P under a budget, larger budgets beside it, nothing of the caller's touched."""
from __future__ import annotations

import torch

import sagann
from sagann.chunks.synthetic import sbm
from sagann.engine.foresight import Forecast, Option, _calibrate, forecast_epoch
from sagann.engine.models import build_model


def _graph(budget):
    d = sbm(3000, 3, 12.0, 16, seed=0)
    return sagann.ChunkedGraph(d.edge_index, d.num_vertices, device=sagann.CpuDevice(budget)), torch.from_numpy(d.x)


def test_forecast_follows_the_planner_and_leaves_the_caller_alone():
    g, x = _graph("96KB")
    torch.manual_seed(3)
    model = build_model("gcn", 16, 32, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    f = forecast_epoch(model, g, 16, sample_edges=5000)
    assert torch.equal(torch.get_rng_state(), rng), "the forecast drew from the caller's RNG"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert g.partition is None and not g.pass_log, "the forecast planned or ran on the caller's graph"
    model(g, x).sum().backward()  # what training does first: the planner's real choice
    assert g.num_chunks > 1
    assert_sub_chunks_near(f, g.with_remaining_self_loops()[0], passes=3)
    budgets = [f.plan, *f.larger]
    assert [o.budget for o in budgets] == [96_000 * k for k in (1, 2, 4, 8, 16)]
    assert all(a.num_chunks >= b.num_chunks and a.sub_chunks >= b.sub_chunks for a, b in zip(budgets, budgets[1:]))
    assert all(o.epoch_seconds > 0 for o in budgets)


def assert_sub_chunks_near(f: Forecast, ran_on, passes: int, factor: float = 2.0) -> None:
    """The forecast's sub-chunks a pass within ``factor`` of those the planner cut (what the epoch's overhead follows)."""
    planned = sum(len(subs) for subs in ran_on.partition.chunks.values())
    forecast = f.plan.sub_chunks / passes
    assert planned / factor <= forecast <= planned * factor, f"forecast {forecast:.0f} sub-chunks a pass, the planner cut {planned}"


def test_a_wide_attention_layer_under_a_tight_budget_is_forecast_fine_and_warned_of():
    """A GAT 128 wide under 400 KB: a backward sub-chunk carries its span's softmax, gradient and input rows, so the
    planner cuts P = 45 or so, a sub-chunk a chunk (about 2,000 a pass). Resident rows alone put P near 6 and saw no
    larger budget worth a warning. The budget is tight enough that the warning does not hang on timing noise: the
    forecast's speed-up of the budget it names is about 6x against the 3x a warning needs (at 600 KB it was 3-4x)."""
    d = sbm(6000, 4, 8.0, 16, seed=0)
    g = sagann.ChunkedGraph(d.edge_index, d.num_vertices, device=sagann.CpuDevice("400KB"))
    torch.manual_seed(0)
    model = build_model("gat", 16, 128, 4)
    f = forecast_epoch(model, g, 16, sample_edges=5000)
    model(g, torch.from_numpy(d.x)).sum().backward()
    assert_sub_chunks_near(f, g.with_remaining_self_loops()[0], passes=4)
    better = f.better()
    assert better is not None and better.budget > 400_000 and better.sub_chunks < f.plan.sub_chunks / 10


def test_no_forecast_without_a_budget_or_edges():
    g, _ = _graph(None)
    assert forecast_epoch(build_model("gcn", 16, 8, 3), g, 16) is None
    empty = sagann.ChunkedGraph(torch.zeros((2, 0), dtype=torch.int64), 10, device=sagann.CpuDevice("1MB"))
    assert forecast_epoch(build_model("gcn", 16, 8, 3), empty, 16) is None


def test_warning_names_the_larger_budget_and_the_speedup():
    slow = Option(1_000_000, 410, 1_000_000, 208.0)
    larger = [Option(2_000_000, 205, 250_000, 60.0), Option(4_000_000, 100, 60_000, 20.0), Option(16_000_000, 26, 4_000, 10.4), Option(8_000_000, 50, 15_000, 11.0)]
    lines = Forecast(slow, sorted(larger, key=lambda o: o.budget), 20_000).lines("--memory-budget")
    assert "P = 410" in lines[0] and "~208 s" in lines[0] and "estimate" in lines[0]
    # the smallest budget within 80 % of the best speed-up: 8MB (11 s) rather than 16MB (10.4 s)
    assert lines[1].startswith("warning: a 8MB --memory-budget would run ~19x faster (P = 50")
    close = Forecast(slow, [Option(2_000_000, 300, 800_000, 150.0)], 20_000)
    assert close.better() is None and len(close.lines()) == 1  # under 3x: no warning



def test_the_forecast_plans_under_the_graphs_own_schedule():
    """With the cached Gather a GCN (no dropout on its input) streams only its second layer: two streamed passes a
    training step, not three; the sample runs under the graph's own schedule."""
    d = sbm(3000, 3, 12.0, 16, seed=0)
    passes = {}
    for cache in (True, False):
        schedule = sagann.ScheduleConfig(cache_gather=cache)
        passes[cache] = _calibrate(build_model("gcn", 16, 32, 3, dropout=0.0), d.edge_index, d.num_vertices, 16, 5000, 0, schedule)[3]
    assert passes == {True: 2, False: 3}
