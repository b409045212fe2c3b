"""Smoke test of `sagann bench kernels|gcn|gat|sage --quick`: they run and return their keys (no timing checks)."""
from __future__ import annotations

import json
import sys

import pytest

from sagann.bench import _epoch, _peers, gcn, kernels, run_bench, sage
from sagann.cli import main


def test_kernels_quick_result_keys():
    r = kernels.run(quick=True, dims=(16, 64))
    assert {"graph", "byte_formula", "memcpy_1t_gbps", "memcpy_2t_gbps", "rows", "speedup_vs_torch_csr", "report"} <= set(r)
    seen = {(row["impl"], row["direction"], row["d"]) for row in r["rows"]}
    assert seen == {(impl, direction, d) for impl in kernels.IMPLS for direction in ("forward", "backward") for d in (16, 64)}
    for row in r["rows"]:
        assert row["ms"] > 0 and row["gbps"] > 0 and len(row["ms_all"]) == r["reps"] >= 5
    assert r["max_rel_diff"] < 1e-5, "the implementations must compute the same A @ X"
    assert "forward_d16" in r["speedup_vs_torch_csr"] and "torch.sparse.mm" in r["report"]


def _check_epoch_bench(r: dict, configs: tuple[str, ...]) -> None:
    """Keys of a `bench gcn|gat|sage` result; the same model from the same weights gives the same loss everywhere."""
    assert {"graph", "model", "results", "ratios", "report", "order", "losses", "loss_spread", "init", "self_loops"} <= set(r)
    assert tuple(r["results"]) == configs and "dgl" not in r["results"], "--quick leaves DGL out"
    for config, x in r["results"].items():
        assert "error" not in x, (config, x)
        assert x["epoch_s"] > 0 and x["peak_rss_bytes"] > 0 and len(x["runs"][0]["epoch_seconds"]) == r["reps"]
        assert f"{x['loss']:.4f}" in r["report"]
    assert set(r["ratios"]) == set(configs) - {"sagann_p1"}
    losses = list(r["losses"].values())
    assert len(losses) == len(configs) and 0 < min(losses) and max(losses) < 1.01 * min(losses), r["losses"]


def _check_ooc(r: dict) -> None:
    p1, ooc = r["results"]["sagann_p1"], r["results"]["sagann_ooc"]
    assert p1["num_chunks"] == 1
    assert r["ooc_budget_fraction"] == "1/2"
    # a fraction of a whole-interval epoch's peak, which the blocked in-memory run's never exceeds
    whole = p1["whole_graph_peak_bytes"]
    assert ooc["peak_device_bytes"] <= ooc["memory_budget_bytes"] == whole // 2 and p1["peak_device_bytes"] <= whole


def test_gcn_quick_result_keys():
    r = gcn.run(quick=True)
    _check_epoch_bench(r, gcn.CONFIGS[:-1])
    _check_ooc(r)  # out of core by its peak: at most half the in-memory one
    assert r["graph"]["edges_with_self_loops"] == _peers.QUICK_GRAPH.num_edges + _peers.QUICK_GRAPH.num_vertices, "gcn keeps R-MAT's duplicate edges"


def test_cli_bench_gat_quick_json(capsys, tmp_path):
    out = tmp_path / "results.jsonl"
    assert main(["bench", "gat", "--quick", "--json", "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    r = json.loads(lines[0])
    _check_epoch_bench(r, ("sagann_p1", "pyg_csr", "sagann_ooc", "pyg_edge_index"))
    _check_ooc(r)
    assert r["graph"]["simple"] and r["graph"]["duplicates_removed"] > 0
    assert json.loads(out.read_text().splitlines()[0])["bench"] == "gat"


def test_sage_quick_result_keys():
    r = sage.run(quick=True)
    _check_epoch_bench(r, sage.CONFIGS[:-1])
    _check_ooc(r)
    assert "appended to the edge list" in r["self_loops"]


def test_reddit_graph_is_shared_and_simple(tmp_path):
    r = sage.run(quick=True, graph="reddit", configs=("sagann_p1", "pyg_csr"), graph_dir=str(tmp_path))
    _check_epoch_bench(r, ("sagann_p1", "pyg_csr"))
    g = r["graph"]
    assert (g["features"], g["classes"], g["scale"]) == (602, 41, _epoch.QUICK_REDDIT_SCALE)
    assert "602->128->41" in r["model"]
    assert "whole_graph_peak_bytes" not in r["results"]["sagann_p1"], "no out-of-core configuration waits for it: not measured"
    files = _epoch.prepare_graph(tmp_path, "reddit", quick=True)  # written once: read back, not drawn again
    assert files.info == g and files.edges.exists() and files.features.exists() and files.labels.exists()


def test_a_failing_configuration_is_a_row_not_a_crash():
    r = sage.run(quick=True, configs=("sagann_ooc",), ooc_budget="1KB")
    x = r["results"]["sagann_ooc"]
    assert "failed" in x["error"] and "BudgetTooSmall" in x["error"], x
    assert x["graph_size"]["num_vertices"] == _peers.QUICK_GRAPH.num_vertices
    assert "sagann_ooc" in r["report"] and r["ratios"] == {}


def test_worker_failures_are_named():
    assert _epoch.is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert _epoch.is_out_of_memory(MemoryError()) and not _epoch.is_out_of_memory(RuntimeError("shape mismatch"))
    row = _epoch.failure("pyg_csr", "the epochs", MemoryError("Unable to allocate 9 GiB"))
    assert row["out_of_memory"] and row["error"].startswith("out of memory during the epochs")
    killed = _peers.run_worker([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], timeout=60)
    assert "SIGKILL" in killed["error"]
    assert "timed out" in _peers.run_worker([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)["error"]


def test_bench_options_are_checked():
    with pytest.raises(ValueError, match="--scale applies to --graph reddit"):
        gcn.run(quick=True, scale=0.1)
    with pytest.raises(ValueError, match="unknown configuration"):
        sage.run(quick=True, configs=("torch_sparse",))
    assert main(["bench", "kernels", "--quick", "--graph", "reddit"]) == 1
    with pytest.raises(ValueError, match=r"does not take --budget-basis; leave it out \(sagann bench overlap takes it\)"):
        run_bench("gcn", quick=True, budget_basis="vertices")
    with pytest.raises(ValueError, match="budget_basis must be"):
        run_bench("overlap", quick=True, budget_basis="edges")


def test_cli_bench_json_is_one_object(capsys, tmp_path):
    out = tmp_path / "results.jsonl"
    assert main(["bench", "kernels", "--quick", "--json", "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1 and "rows" in json.loads(lines[0])
    row = json.loads(out.read_text().splitlines()[0])
    assert row["bench"] == "kernels" and "machine" in row and "report" not in row


def test_overlap_quick_budget_is_a_fraction_of_a_whole_graph_epoch():
    """`sagann bench overlap --quick`: out of core under 1/8 of a whole-interval epoch's peak, within it; the blocked
    in-memory row holds no more than that epoch."""
    from sagann.bench import overlap

    r = overlap.run(quick=True)
    memory, *ooc = r["configs"]
    assert memory["config"] == "in-memory" and memory["num_chunks"] == 1
    assert r["memory_budget_bytes"] == int(r["working_set_bytes"] / 8) and memory["peak_device_bytes"] <= r["working_set_bytes"]
    assert ooc and all(row["peak_device_bytes"] <= r["memory_budget_bytes"] for row in ooc)
    assert "of a whole-graph epoch's working set" in r["report"]
