"""Smoke test of `sagann bench kernels|gcn --quick`: they run and return their keys (no timing checks)."""
from __future__ import annotations

import json

from sagann.bench import gcn, kernels
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


def test_gcn_quick_result_keys():
    r = gcn.run(quick=True)
    assert {"graph", "model", "results", "ratios", "report", "order"} <= set(r)
    assert "dgl" not in r["results"], "--quick leaves DGL out"
    for config, x in r["results"].items():
        assert "error" not in x, (config, x)
        assert x["epoch_s"] > 0 and x["peak_rss_bytes"] > 0 and len(x["runs"][0]["epoch_seconds"]) == r["reps"]
    p1, ooc = r["results"]["sagann_p1"], r["results"]["sagann_ooc"]
    assert p1["num_chunks"] == 1 and ooc["num_chunks"] > 1
    assert r["ooc_budget_fraction"] == "1/2"
    assert ooc["peak_device_bytes"] <= ooc["memory_budget_bytes"] <= p1["peak_device_bytes"] // 2
    # every configuration trains the same model on the same data: the losses are of one size
    losses = [x["runs"][0]["loss"] for x in r["results"].values()]
    assert max(losses) < 10 and min(losses) > 0


def test_cli_bench_json_is_one_object(capsys, tmp_path):
    out = tmp_path / "results.jsonl"
    assert main(["bench", "kernels", "--quick", "--json", "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1 and "rows" in json.loads(lines[0])
    row = json.loads(out.read_text().splitlines()[0])
    assert row["bench"] == "kernels" and "machine" in row and "report" not in row
