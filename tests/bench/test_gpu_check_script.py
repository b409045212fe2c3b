"""benchmarks/gpu_check.py off the GPU: its refusal, its loud failures, the GCN figures and the markdown it writes.

The GPU sections need a GPU; what can run on a CPU runs here, on a CpuDevice,
so the script's first real run is not also its first run.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sagann
from sagann.chunks.synthetic import rmat

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def graph():
    n = 400
    ei = rmat(n, 4000, seed=0, self_loops=False)
    gen = torch.Generator().manual_seed(0)
    return ei, n, torch.randn(n, 16, generator=gen), torch.randint(0, 4, (n,), generator=gen)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_it_refuses_with_status_2(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback happens on a machine without a usable numba-cuda")
def test_a_fallback_backend_is_a_failed_check(gpu_check):
    rep = gpu_check.Check(60)
    assert not gpu_check.check_backend(rep)
    assert rep.status() == 1 and "fell back to 'reference'" in rep.checks[0]["detail"]


def test_gcn_run_out_of_core_on_the_cpu(gpu_check, graph):
    ei, n, x, y = graph
    mem, _ = gpu_check.gcn_run(ei, n, x, y, sagann.CpuDevice(), reps=1, sync=lambda: None, num_chunks=1)
    dev = sagann.CpuDevice(max(1, mem["ledger_peak_bytes"] // 6))
    ooc, step = gpu_check.gcn_run(ei, n, x, y, dev, reps=2, sync=lambda: None)
    assert mem["num_chunks"] == 1  # out of core: more steps (below), a budget of 1/6; one interval may hold it (ApplyVertex in blocks)
    assert ooc["h2d_bytes_per_epoch"] > 0 and len(ooc["epochs_s"]) == 2
    timed = ooc["h2d_bytes_epochs"]
    assert len(timed) == 2 and min(timed) > 0 and ooc["h2d_bytes_per_epoch"] == pytest.approx(np.mean(timed))
    assert dev.bytes_in - sum(timed) > 0, "the warm-up epoch moved bytes, and they are not in the per-epoch figure"
    floor, ratio = gpu_check.over_floor(ooc, 10.0)  # 10 GB/s: an input of this test, not a measurement
    assert floor == pytest.approx(ooc["h2d_bytes_per_epoch"] / 1e10)
    assert ratio == pytest.approx(float(np.median([t / (b / 1e10) for t, b in zip(ooc["epochs_s"], timed)])))
    assert mem["steps_per_epoch"] < ooc["steps_per_epoch"], "streaming splits the epoch into more steps"
    # two epochs after the first re-plan: the time model may not know every chunk yet (None), and says so
    known = ooc["pass_achieved_seconds_per_epoch"]
    last = ooc["last_epoch_passes"]
    assert last and {r["phase"] for r in last} == {"forward", "backward"} and all(r["prefetch"] >= 0 for r in last)
    assert sum(r["steps"] for r in last) > 0
    assert known is None or (ooc["pass_model_seconds_per_epoch"] > 0 and 0 < known <= ooc["pass_seconds_per_epoch"])


def test_profiled_epoch_checks_nvtx_ranges_and_the_backend(gpu_check, graph, tmp_path, monkeypatch):
    """On the CPU the ranges go to a no-op NVTX, and the kernels that ran are 'cpu': that check must fail."""
    from sagann.profiler import recorder

    ei, n, x, y = graph
    _, step = gpu_check.gcn_run(ei, n, x, y, sagann.CpuDevice("150KB"), reps=1, sync=lambda: None)
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", lambda name: 0, raising=False)
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", lambda: 0, raising=False)
    monkeypatch.setattr(recorder, "_cuda_nvtx", lambda: torch.cuda.nvtx)
    rep = gpu_check.Check(60)
    gpu_check.profiled_epoch(step, rep, tmp_path)
    by_name = {c["name"]: c for c in rep.checks}
    assert by_name["an NVTX range per span"]["ok"], by_name["an NVTX range per span"]["detail"]
    assert not by_name["the GCN ran the cuda kernels only"]["ok"] and "'cpu'" in by_name["the GCN ran the cuda kernels only"]["detail"]
    assert json.loads((tmp_path / "gpu_check_trace.json").read_text())["traceEvents"]


def test_missing_ranges_fail_the_check(gpu_check, graph, tmp_path):
    ei, n, x, y = graph
    _, step = gpu_check.gcn_run(ei, n, x, y, sagann.CpuDevice("150KB"), reps=1, sync=lambda: None)
    rep = gpu_check.Check(60)
    gpu_check.profiled_epoch(step, rep, tmp_path, nvtx=False)  # no ranges at all
    assert not next(c for c in rep.checks if c["name"] == "an NVTX range per span")["ok"]


def test_report_and_markdown(gpu_check, graph, tmp_path):
    """The JSON and the markdown section carry the checks, the targets and the GCN figures (CPU figures here)."""
    ei, n, x, y = graph
    ooc, _ = gpu_check.gcn_run(ei, n, x, y, sagann.CpuDevice("150KB"), reps=1, sync=lambda: None)
    mem, _ = gpu_check.gcn_run(ei, n, x, y, sagann.CpuDevice(), reps=1, sync=lambda: None, num_chunks=1)
    link_gbps = 10.0  # an input of this test, not a measurement
    ooc["h2d_floor_s"], ooc["epoch_over_floor"] = gpu_check.over_floor(ooc, link_gbps)
    ooc["allocated_peak_bytes"] = ooc["ledger_peak_bytes"]
    rep = gpu_check.Check(60)
    numba = {"in_memory": {**mem, "epoch_s": 0.5}}  # the A/B row's figures: inputs of this test
    rep.data.update(kernel_backend="cpu", gcn_in_memory=mem, gcn_out_of_core=ooc, pyg={"error": "not run"}, gcn_numba_kernels=numba)
    rep.check("something right", True, "fine")
    rep.check("something wrong", False, "broken")
    rep.target("epoch over floor", ooc["epoch_over_floor"], 1.15, "lower", "as measured")
    report = gpu_check.write_report(rep, {"gpu": "none (CPU test)"}, tmp_path, "python benchmarks/gpu_check.py")
    assert report["status"] == 1
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [c["ok"] for c in doc["checks"]] == [True, False] and doc["data"]["gcn_out_of_core"]["num_chunks"] == ooc["num_chunks"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.startswith("## GPU acceptance run") and "| something wrong | **FAIL** | broken |" in md
    assert f"| sagann out of core | {ooc['num_chunks']} |" in md and "| PyG GCNConv | | | not run |" in md
    assert f"| sagann in memory, numba kernels (no CSR product) | 1 | {mem['steps_per_epoch']:.0f} | 0.500 |" in md


def test_status_codes(gpu_check):
    rep = gpu_check.Check(60)
    rep.check("a", True, "")
    assert rep.status() == 0
    rep.target("t", 0.5, 1.0, "higher", "")
    assert rep.status() == 3, "only a target missed"
    rep.target("u", None, 1.0, "lower", "")
    assert not rep.targets[-1]["met"], "an unmeasured figure never meets its target"
    rep.check("b", False, "")
    assert rep.status() == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip rule on a machine without CUDA")
def test_tests_skipped_for_want_of_a_gpu_are_not_accepted(gpu_check, tmp_path):
    log = tmp_path / "tests.log"
    rc, summary, skips = gpu_check.run_pytest(["tests/scheduler/test_cuda_device.py"], log, 600)
    assert rc == 0 and "skipped" in summary
    bad = [s for s in skips if not gpu_check.ALLOWED_SKIP.search(s)]
    assert bad and all("needs a CUDA GPU" in s for s in bad), skips
    assert "test_cuda_device.py" in log.read_text()


def test_bf16_transfers_halve_the_bytes_and_are_held_against_their_floor(gpu_check, graph):
    import argparse

    ei, n, x, y = graph
    mem, _ = gpu_check.gcn_run(ei, n, x, y, sagann.CpuDevice(), reps=1, sync=lambda: None, num_chunks=1)
    fp32, _ = gpu_check.gcn_run(ei, n, x, y, sagann.CpuDevice(max(1, mem["ledger_peak_bytes"] // 6)), reps=2, sync=lambda: None)
    rep = gpu_check.Check(60)
    rep.data["pinned_h2d_gbps"] = 10.0  # an input of this test, not a measurement
    bf = gpu_check._bf16_run(rep, ei, n, x, y, fp32, argparse.Namespace(epochs=2), make_device=sagann.CpuDevice, sync=lambda: None)
    assert bf["steps_per_epoch"] > mem["steps_per_epoch"] and bf["h2d_bytes_per_epoch"] > 0
    share = {t["name"]: t for t in rep.targets}["bf16 transfers: bytes over float32's"]
    assert share["measured"] == pytest.approx(bf["h2d_bytes_per_epoch"] / fp32["h2d_bytes_per_epoch"])
    assert share["met"], share["detail"]
    assert bf["epoch_over_floor"] is not None and bf["h2d_floor_s"] == pytest.approx(bf["h2d_bytes_per_epoch"] / 1e10)


def test_the_numba_a_b_runs_its_call_without_the_csr_product(gpu_check):
    from sagann.kernels import cuda as backend

    assert gpu_check._numba(lambda: backend.CSR_PRODUCT)() is False
    assert backend.CSR_PRODUCT is True  # restored: off a GPU and outside the simulator the product is the default
